"""Run the worker image against the local stack and check it, as ``scripts/container-test`` does once the
image is built: the container must do what the worker does on the host, and stop as ECS stops it.

With podman (``--runtime runc``, ``--network host``), a moto server and the bundled model on 127.0.0.1:

1. container A serves one job (a scene on moto's S3 read through GDAL's ``/vsis3/``, the flood model, four
   regions): SUCCESS, the S3 GeoJSON and one Kinesis record per feature; its HEALTHCHECK passes, a stale
   limit fails it, and it runs as a non-root user. Idle, it stops on SIGTERM at once.
2. container B (one tile thread) is stopped with SIGTERM in the middle of a region: it must exit 0 within the
   stop timeout, leaving no message hidden (each one finished or handed back).
3. a worker on the host (the tested environment) finishes B's job and runs the same job again: both must
   give exactly A's features, so the image's Debian GDAL, numpy and wheels change nothing.

Every container is removed by its id and every process stopped by its PID, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..state.jobs import JobStore
from .scene import make_scene
from .stack import (
    Process,
    Resources,
    create_resources,
    kinesis_records,
    read_statuses,
    start_model,
    start_moto,
    start_worker,
    stop_process,
)

FINAL = ("SUCCESS", "PARTIAL", "FAILED")
#: The scene and tiling: 1300 x 1100 px in 256 px tiles overlapping by 64: 7 x 6 = 42 tiles, in regions of
#: 1024 px: 4 regions. The flood model (seeded by tile bytes) answers 6 boxes a tile, overlapping across tiles.
WIDTH, HEIGHT, TILE, OVERLAP, REGION, TILES, REGIONS = 1300, 1100, 256, 64, 1024, 42, 4
MODEL_OPTIONS = {"flood_count": 6, "seed": 5, "delay_ms": 100}
#: Seconds from SIGTERM to exit that container B is given (MR_STOP_TIMEOUT and podman's stop timeout).
STOP_TIMEOUT = 6


class CheckFailed(AssertionError):
    """A check of the container's behaviour failed (the message says which)."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Podman:
    """The podman commands this test needs, always with runc and the given ``containers.conf``."""

    conf: str
    started: list[str] = field(default_factory=list)

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CONTAINERS_CONF": self.conf}
        done = subprocess.run(["podman", "--runtime", "runc", *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise CheckFailed(f"podman {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def run(self, image: str, env: Mapping[str, str], stop_timeout: int) -> str:
        """Start the image detached on the host's network; returns the container id."""
        with tempfile.NamedTemporaryFile("w", suffix=".env", delete=False) as handle:
            handle.write("".join(f"{key}={value}\n" for key, value in env.items()))
        try:
            # Podman runs the HEALTHCHECK on a systemd timer; without systemd (here) it logs an error and
            # runs none: the checks below run it by hand (podman healthcheck run).
            cid = self("run", "--detach", "--network", "host", "--env-file", handle.name,
                       "--stop-timeout", str(stop_timeout), image).stdout.strip()
        finally:
            os.unlink(handle.name)
        self.started.append(cid)
        return cid

    def state(self, cid: str) -> dict[str, Any]:
        return dict(json.loads(self("inspect", "--format", "{{json .State}}", cid).stdout))

    def logs(self, cid: str) -> str:
        done = self("logs", cid, check=False)
        return done.stdout + done.stderr

    def stop(self, cid: str, timeout: int) -> float:
        """SIGTERM, then SIGKILL after ``timeout`` s (as ECS does); returns the seconds until it exited."""
        began = time.monotonic()
        self("stop", "--time", str(timeout), cid, timeout=timeout + 60)
        return time.monotonic() - began

    def remove_all(self) -> None:
        for cid in self.started:
            self("rm", "--force", cid, check=False)
        self.started.clear()

    def image_size(self, image: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


@dataclass
class Statuses:
    """Image statuses from the SNS -> SQS status queue, kept per job (reading one consumes them all)."""

    res: Resources
    by_job: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def final(self, job_id: str, timeout: float, watch: Sequence[tuple[Podman, str]] = ()) -> dict[str, Any]:
        """Wait for the job's final status; fail early if a container in ``watch`` exits meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in read_statuses(self.res, wait=1):
                self.by_job.setdefault(status["attributes"].get("job_id", ""), []).append(status)
            for status in self.by_job.get(job_id, []):
                if status["attributes"]["status"] in FINAL:
                    return status
            for podman, cid in watch:
                state = podman.state(cid)
                expect(state.get("Running", False),
                       f"container {cid[:12]} exited ({state.get('ExitCode')}) while job {job_id} ran:\n"
                       f"{podman.logs(cid)[-3000:]}")
        raise CheckFailed(f"job {job_id} did not end within {timeout} s: {self.names(job_id)}")

    def names(self, job_id: str) -> list[str]:
        return [s["attributes"]["status"] for s in self.by_job.get(job_id, [])]


def request(res: Resources, job_id: str, url: str) -> dict[str, Any]:
    return {"jobId": job_id, "jobName": job_id, "imageUrls": [url],
            "outputs": [{"type": "S3", "bucket": res.bucket, "prefix": "results/"},
                        # One PutRecords call: moto can lose records of two concurrent calls on a shard.
                        {"type": "Kinesis", "stream": res.stream, "batchSize": 500}],
            "imageProcessor": {"name": "flood", "type": "SM_ENDPOINT"},
            "imageProcessorTileSize": TILE, "imageProcessorTileOverlap": OVERLAP,
            "imageProcessorTileFormat": "GTIFF", "imageProcessorTileCompression": "NONE"}


def submit(res: Resources, job_id: str, url: str) -> None:
    res.client("sqs").send_message(QueueUrl=res.image_queue, MessageBody=json.dumps(request(res, job_id, url)))


def features(res: Resources, job_id: str) -> list[str]:
    """The job's S3 features, each as sorted JSON, without what differs by job (its id, times)."""
    body = res.client("s3").get_object(Bucket=res.bucket, Key=f"results/{job_id}.geojson")["Body"].read()
    collection = json.loads(body)
    expect(collection.get("type") == "FeatureCollection", f"{job_id}: the S3 object is not a FeatureCollection")
    out = []
    for feature in collection["features"]:
        feature["properties"].pop("inferenceMetadata", None)
        out.append(json.dumps(feature, sort_keys=True))
    return sorted(out)


def hidden_messages(res: Resources) -> int:
    """Messages some worker still holds (invisible) on the image and region queues."""
    sqs, total = res.client("sqs"), 0
    for queue in (res.image_queue, res.region_queue):
        attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
        total += int(attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"])
    return total


def region_started(res: Resources, job_id: str) -> bool:
    answer = res.client("dynamodb").scan(TableName=res.region_table)
    return any(item["image_id"]["S"].startswith(f"{job_id}:") and item.get("region_status", {}).get("S") == "STARTED"
               for item in answer.get("Items", []))


class Report:
    """Prints each step with the seconds since the start."""

    def __init__(self) -> None:
        self.began = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f} s] {message}", flush=True)


@dataclass
class Checked:
    """What the steps share: the stack they run against, the scene's URL and the worker environment."""

    res: Resources
    url: str
    env: dict[str, str]
    statuses: Statuses
    podman: Podman
    image: str
    say: Report


def streamed_features(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The features of Kinesis records as sorted canonical JSON, without ``inferenceMetadata``.

    The S3 GeoJSON carries no inference metadata, so the two outputs compare equal only without it.
    """
    streamed = []
    for record in records:
        for feature in record["data"]["features"]:
            feature["properties"].pop("inferenceMetadata", None)
            streamed.append(json.dumps(feature, sort_keys=True))
    return sorted(streamed)


def check_container_a(run: Checked) -> list[str]:
    """Step 1: container A serves a job, matches S3 and Kinesis, is healthy, non-root, and stops idle at once.

    Returns the job's features, which steps 3 compare against.
    """
    res, podman, say = run.res, run.podman, run.say
    a = podman.run(run.image, run.env, stop_timeout=30)
    submit(res, "in-container", run.url)
    final = run.statuses.final("in-container", 180, watch=[(podman, a)])
    names = run.statuses.names("in-container")
    expect(final["attributes"]["status"] == "SUCCESS", f"job in container A: {names}: {final['message']}")
    expect(names[0] == "STARTED" and names.count("SUCCESS") == 1, f"statuses of the job: {names}")
    job = JobStore(res.client("dynamodb"), res.job_table).get(f"in-container:{run.url}")
    expect(job is not None and (job.tile_count, job.region_count) == (TILES, REGIONS),
           f"the job row counts {job and job.tile_count} tiles in {job and job.region_count} regions, "
           f"not {TILES} in {REGIONS}")
    got = features(res, "in-container")
    records = [r for r in kinesis_records(res) if r["partition_key"] == "in-container"]
    expect(len(got) > 0, "container A's job has no features")
    streamed = streamed_features(records)
    expect(streamed == got, f"{len(streamed)} Kinesis features differ from the {len(got)} in S3")
    say(f"container A {a[:12]}: job SUCCESS ({' -> '.join(names)}), {TILES} tiles in {REGIONS} regions, "
        f"{len(got)} features in the S3 GeoJSON, the same in {len(records)} Kinesis records")
    check_health(podman, a, say)
    took = podman.stop(a, 30)
    state = podman.state(a)
    expect(state["ExitCode"] == 0 and took < 15, f"idle container A: exit {state['ExitCode']} after {took:.1f} s")
    say(f"container A, idle: SIGTERM -> exit 0 in {took:.1f} s")
    return got


def check_health(podman: Podman, container: str, say: Report) -> None:
    """The HEALTHCHECK passes on a serving worker, a 0 s heartbeat limit fails it, and the user is not root."""
    health = podman("healthcheck", "run", container, check=False)
    expect(health.returncode == 0, f"HEALTHCHECK failed on a serving worker: {health.stdout}{health.stderr}")
    stale = podman("exec", container, "python3", "-m", "modelrunner.liveness", "--max-age", "0", check=False)
    expect(stale.returncode == 1 and "stale" in stale.stdout, f"a stale heartbeat passed: {stale.stdout}")
    uid = podman("exec", container, "id", "-u").stdout.strip()
    expect(uid != "0", "the worker runs as root")
    say(f"container A: HEALTHCHECK healthy; with a 0 s limit: {stale.stdout.strip()!r} (exit 1); uid {uid}")


def check_container_b(run: Checked) -> None:
    """Step 2: container B, stopped with SIGTERM mid-region, exits 0 in time and leaves no message hidden."""
    res, podman = run.res, run.podman
    b = podman.run(run.image, {**run.env, "WORKERS": "1", "MR_STOP_TIMEOUT": str(STOP_TIMEOUT)},
                   stop_timeout=STOP_TIMEOUT)
    submit(res, "stopped", run.url)
    deadline = time.monotonic() + 120
    while not region_started(res, "stopped"):
        expect(time.monotonic() < deadline, "container B never started a region")
        expect(podman.state(b).get("Running", False), f"container B exited:\n{podman.logs(b)[-3000:]}")
        time.sleep(0.1)
    time.sleep(0.5)
    took = podman.stop(b, STOP_TIMEOUT)
    state, logs, hidden = podman.state(b), podman.logs(b), hidden_messages(res)
    expect(state["ExitCode"] == 0, f"container B exited {state['ExitCode']} after SIGTERM:\n{logs[-3000:]}")
    expect(took < STOP_TIMEOUT, f"container B took {took:.1f} s to stop (limit {STOP_TIMEOUT} s)")
    expect(hidden == 0, f"{hidden} messages still hidden after container B stopped")
    outcome = "handed back" if "handed back" in logs else "finished"
    run.say(f"container B {b[:12]}: SIGTERM mid-region -> exit 0 in {took:.1f} s (limit {STOP_TIMEOUT} s), "
            f"its message {outcome}, none left hidden")


def check_host_worker(run: Checked, got: list[str]) -> None:
    """Step 3: the host's worker (already started) finishes B's job and reruns A's: all three give ``got``."""
    res, statuses = run.res, run.statuses
    final = statuses.final("stopped", 180)
    expect(final["attributes"]["status"] == "SUCCESS", f"job stopped in B: {statuses.names('stopped')}")
    submit(res, "on-host", run.url)
    final = statuses.final("on-host", 180)
    expect(final["attributes"]["status"] == "SUCCESS", f"job on the host: {statuses.names('on-host')}")
    expect(features(res, "on-host") == got, "the host worker's features differ from container A's")
    expect(features(res, "stopped") == got, "the features of the job stopped in B differ from container A's")
    run.say(f"host worker: finished B's job and ran A's again: the same {len(got)} features as container A")


def run_checks(image: str, podman: Podman, workdir: str, say: Report) -> None:
    """The three steps of the module docstring against a fresh local stack, which is torn down whatever happens."""
    moto: Process | None = None
    model: Process | None = None
    host: subprocess.Popen[Any] | None = None
    try:
        moto = start_moto()
        model = start_model("flood", options=MODEL_OPTIONS)
        res = create_resources(moto.url, prefix="container")
        scene = make_scene(os.path.join(workdir, "scene.tif"), WIDTH, HEIGHT, seed=3)
        res.client("s3").upload_file(scene.path, res.extra["image_bucket"], "scene.tif")
        url = f"s3://{res.extra['image_bucket']}/scene.tif"
        env = res.worker_env(model_url=model.url, workers=4, region_size=REGION, visibility_timeout=30)
        run = Checked(res, url, env, Statuses(res), podman, image, say)
        say(f"stack up: moto {moto.url}, flood model {model.url}, scene {WIDTH} x {HEIGHT} on s3")
        got = check_container_a(run)
        check_container_b(run)
        host = start_worker(env, log_path=os.path.join(workdir, "host-worker.log"))
        check_host_worker(run, got)
    finally:
        podman.remove_all()
        if host is not None:
            stop_process(host)
        for process in (model, moto):
            if process is not None:
                process.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelrunner.local.container", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="the built image, e.g. localhost/modelrunner:test")
    parser.add_argument("--containers-conf", required=True, help="containers.conf for podman (CONTAINERS_CONF)")
    args = parser.parse_args(argv)
    podman = Podman(args.containers_conf)
    say = Report()
    with tempfile.TemporaryDirectory(prefix="container-test-") as workdir:
        try:
            run_checks(args.image, podman, workdir, say)
        except CheckFailed as err:
            say(f"FAILED: {err}")
            return 1
    size = podman.image_size(args.image)
    say(f"PASSED; image {args.image}: {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
