"""The embedded default: a moto server standing in for AWS, the queues, tables, topics, bucket and stream
the worker needs, and the bundled model server, all on 127.0.0.1, all stopped by PID.

Used by the demo, the end-to-end tests and the benchmark. Nothing here is used by the worker itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3

REGION = "us-east-1"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_SESSION_TOKEN": "testing"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """Stop a child by PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class Process:
    """A child process we started, with its URL."""

    proc: subprocess.Popen[Any]
    url: str

    def stop(self) -> None:
        stop_process(self.proc)


def start_moto(port: int | None = None, *, fast: bool = True) -> Process:
    """A moto server process on 127.0.0.1 (``fast`` applies the cost fixes in ``local.motofast``)."""
    port = port or free_port()
    module = "modelrunner.local.motofast" if fast else "moto.server"
    proc = subprocess.Popen([sys.executable, "-m", module, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/moto-api/", 30, proc)
    except Exception:
        stop_process(proc)
        raise
    return Process(proc, url)


def start_model(model: str = "centerpoint", *, options: Mapping[str, Any] | None = None) -> Process:
    """The bundled model server process; reads the port it prints when ready."""
    args = [sys.executable, "-m", "modelrunner.local.model_server", "--host", "127.0.0.1", "--port", "0",
            "--model", model]
    for key, value in (options or {}).items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        stop_process(proc)
        raise RuntimeError(f"model server did not start: {line!r}")
    url = line.removeprefix("listening on ")
    _wait_http(url + "/ping", 10, proc)
    return Process(proc, url)


@dataclass
class Resources:
    """Names and URLs of everything created on the moto server."""

    endpoint: str
    prefix: str
    image_queue: str = ""
    region_queue: str = ""
    status_queue: str = ""
    job_table: str = ""
    region_table: str = ""
    feature_table: str = ""
    endpoint_table: str = ""
    image_topic: str = ""
    region_topic: str = ""
    bucket: str = ""
    stream: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,  # type: ignore[call-overload]
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            aws_session_token="testing")

    def worker_env(self, *, model_url: str | None = None, workers: int = 4, region_size: int = 10240,
                   visibility_timeout: int = 30, region_wait: int = 1, **extra: str) -> dict[str, str]:
        """Environment of a worker process pointed at this stack (the reference's variables)."""
        host = self.endpoint.removeprefix("http://")
        env = {
            **FAKE_CREDENTIALS,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "JOB_TABLE": self.job_table,
            "REGION_REQUEST_TABLE": self.region_table,
            "FEATURE_TABLE": self.feature_table,
            "ENDPOINT_TABLE": self.endpoint_table,
            "IMAGE_QUEUE": self.image_queue,
            "REGION_QUEUE": self.region_queue,
            "IMAGE_STATUS_TOPIC": self.image_topic,
            "REGION_STATUS_TOPIC": self.region_topic,
            "WORKERS": str(workers),
            "WORKERS_PER_CPU": "1",
            "REGION_SIZE": f"({region_size}, {region_size})",
            "MR_VISIBILITY_TIMEOUT": str(visibility_timeout),
            "MR_REGION_WAIT_SECONDS": str(region_wait),
            # moto takes any rate: pacing to a real shard's limits would only slow local runs down.
            "MR_KINESIS_SHARD_LIMITS": "false",
            # GDAL's /vsis3/ against moto.
            "AWS_S3_ENDPOINT": host,
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            # Fewer glibc malloc arenas: tile threads otherwise each keep their own (as in the Dockerfile).
            "MALLOC_ARENA_MAX": "2",
            # Test images live in temporary folders; models on loopback.
            "MR_LOCAL_IMAGE_ROOT": tempfile.gettempdir(),
            "MR_HTTP_ENDPOINT_HOSTS": "127.0.0.1,localhost",
        }
        if model_url:
            env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = model_url
        env.update(extra)
        return env


def create_resources(endpoint: str, prefix: str = "mr") -> Resources:
    """Create queues, tables, topics, bucket and stream as the reference deployment does."""
    res = Resources(endpoint=endpoint, prefix=prefix)
    sqs, ddb, sns = res.client("sqs"), res.client("dynamodb"), res.client("sns")
    attrs = {"VisibilityTimeout": "1800"}
    res.image_queue = sqs.create_queue(QueueName=f"{prefix}-ImageRequestQueue", Attributes=attrs)["QueueUrl"]
    res.region_queue = sqs.create_queue(QueueName=f"{prefix}-RegionRequestQueue", Attributes=attrs)["QueueUrl"]
    res.status_queue = sqs.create_queue(QueueName=f"{prefix}-ImageStatusQueue")["QueueUrl"]

    def table(name: str, hash_key: str, range_key: str | None = None) -> str:
        keys = [{"AttributeName": hash_key, "KeyType": "HASH"}]
        defs = [{"AttributeName": hash_key, "AttributeType": "S"}]
        if range_key:
            keys.append({"AttributeName": range_key, "KeyType": "RANGE"})
            defs.append({"AttributeName": range_key, "AttributeType": "S"})
        ddb.create_table(TableName=name, KeySchema=keys, AttributeDefinitions=defs, BillingMode="PAY_PER_REQUEST")
        return name

    res.job_table = table(f"{prefix}-ImageProcessingJobStatus", "image_id")
    res.region_table = table(f"{prefix}-RegionProcessingJobStatus", "image_id", "region_id")
    res.feature_table = table(f"{prefix}-ImageProcessingFeatures", "hash_key", "range_key")
    res.endpoint_table = table(f"{prefix}-EndpointStatistics", "endpoint")
    res.image_topic = sns.create_topic(Name=f"{prefix}-ImageStatusTopic")["TopicArn"]
    res.region_topic = sns.create_topic(Name=f"{prefix}-RegionStatusTopic")["TopicArn"]
    status_arn = sqs.get_queue_attributes(QueueUrl=res.status_queue,
                                          AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=res.image_topic, Protocol="sqs", Endpoint=status_arn)
    res.bucket = f"{prefix}-results"
    s3 = res.client("s3")
    s3.create_bucket(Bucket=res.bucket)
    res.extra["image_bucket"] = f"{prefix}-images"
    s3.create_bucket(Bucket=res.extra["image_bucket"])
    res.stream = f"{prefix}-results"
    kinesis = res.client("kinesis")
    kinesis.create_stream(StreamName=res.stream, ShardCount=1)
    return res


def read_statuses(res: Resources, wait: float = 0.0) -> list[dict[str, Any]]:
    """Image status messages delivered so far (SNS -> the status queue), each {message, attributes}."""
    sqs = res.client("sqs")
    out: list[dict[str, Any]] = []
    while True:
        answer = sqs.receive_message(QueueUrl=res.status_queue, MaxNumberOfMessages=10,
                                     WaitTimeSeconds=int(wait) if not out else 0)
        messages = answer.get("Messages") or []
        if not messages:
            return out
        for m in messages:
            envelope = json.loads(m["Body"])
            attrs = {k: v.get("Value") for k, v in (envelope.get("MessageAttributes") or {}).items()}
            out.append({"message": envelope.get("Message"), "attributes": attrs,
                        "timestamp": envelope.get("Timestamp")})
            sqs.delete_message(QueueUrl=res.status_queue, ReceiptHandle=m["ReceiptHandle"])


def kinesis_records(res: Resources, stream: str | None = None) -> list[dict[str, Any]]:
    kinesis = res.client("kinesis")
    name = stream or res.stream
    out: list[dict[str, Any]] = []
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=name, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            answer = kinesis.get_records(ShardIterator=iterator, Limit=10000)
            out.extend({"partition_key": r["PartitionKey"], "data": json.loads(r["Data"])} for r in answer["Records"])
            if not answer["Records"]:
                break
            iterator = answer.get("NextShardIterator")
    return out


@contextlib.contextmanager
def running(*processes: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.stop()


def start_worker(env: Mapping[str, str], *, log_path: str | None = None, args: list[str] | None = None
                 ) -> subprocess.Popen[Any]:
    """A worker process started as the container starts it (``bin/oversightml-mr-entry-point.py``)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    entry = os.path.join(root, "bin", "oversightml-mr-entry-point.py")
    command = [sys.executable, entry, *(args or [])] if os.path.exists(entry) else \
        [sys.executable, "-m", "modelrunner.cli", "worker", *(args or [])]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full_env.update(env)
    full_env["PYTHONUNBUFFERED"] = "1"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    return subprocess.Popen(command, env=full_env, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
