"""Output sinks against moto in-process: wire format, multipart streaming, PutRecords limits and retries."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from moto import mock_aws

from modelrunner.errors import SinkError
from modelrunner.local.kinesis_limits import LimitedStream
from modelrunner.requests import KinesisOutput, S3Output
from modelrunner.sinks import SinkResult, result_key, write_kinesis, write_s3
from modelrunner.sinks.kinesis import MAX_RECORD_BYTES

MiB = 1024 * 1024
REGION = "us-east-1"
BUCKET = "results"
STREAM = "features"
JOB = "job-1234"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials and region, so nothing can reach real AWS, and moto for the test's duration."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


@pytest.fixture
def s3(aws: None) -> Any:
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def kinesis(aws: None) -> Any:
    client = boto3.client("kinesis", region_name=REGION)
    client.create_stream(StreamName=STREAM, ShardCount=1)
    return client


def feature(i: int, **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "id": f"f{i}",
        "geometry": {"type": "Point", "coordinates": [10.0 + i / 1000, 20.0]},
        "properties": {"score": 0.5, "label": "ünïcode", **props},
    }


def count_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """Record the API parameters of every ``operation`` call the client makes (a botocore event hook).

    ``before-parameter-build`` sees the caller's parameters (``before-call`` only sees the serialised
    request); it fires once per call, before botocore's own retries.
    """
    calls: list[dict[str, Any]] = []
    service = client.meta.service_model.service_id.hyphenize()

    def hook(params: dict[str, Any], **_: Any) -> None:
        calls.append(params)

    client.meta.events.register(f"before-parameter-build.{service}.{operation}", hook)
    return calls


# S3 ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "job_id", "key"),
    [
        ("job/", "j1", "job/j1.geojson"),
        ("", "j1", "j1.geojson"),
        ("job", "j1", "job/j1.geojson"),
        ("a/b/", "batch/7/j1", "a/b/j1.geojson"),
    ],
)
def test_result_key_matches_reference(prefix: str, job_id: str, key: str) -> None:
    assert result_key(prefix, job_id) == key


@pytest.mark.parametrize(("prefix", "key"), [("job/", "job/j1.geojson"), ("", "j1.geojson")])
def test_s3_writes_feature_collection_in_reference_format(s3: Any, prefix: str, key: str) -> None:
    features = [feature(i) for i in range(5)]
    puts = count_calls(s3, "PutObject")

    result = write_s3(s3, S3Output(bucket=BUCKET, prefix=prefix), "j1", iter(features))

    assert result == SinkResult(sink=f"s3://{BUCKET}/{key}", features_written=5, locations=[f"s3://{BUCKET}/{key}"])
    obj = s3.get_object(Bucket=BUCKET, Key=key)
    body = obj["Body"].read()
    assert body == json.dumps({"type": "FeatureCollection", "features": features}).encode()
    assert json.loads(body) == {"type": "FeatureCollection", "features": features}
    assert obj["ContentType"] == "application/geo+json"
    assert len(puts) == 1 and puts[0]["ACL"] == "bucket-owner-full-control"


def test_s3_empty_feature_list_is_a_valid_collection(s3: Any) -> None:
    result = write_s3(s3, S3Output(bucket=BUCKET, prefix="out/"), JOB, [])

    assert (result.features_written, result.features_failed) == (0, 0)
    body = s3.get_object(Bucket=BUCKET, Key=f"out/{JOB}.geojson")["Body"].read()
    assert json.loads(body) == {"type": "FeatureCollection", "features": []}
    assert body == b'{"type": "FeatureCollection", "features": []}'


def test_s3_missing_bucket_is_a_sink_error_naming_it(aws: None) -> None:
    client = boto3.client("s3", region_name=REGION)
    with pytest.raises(SinkError, match="no-such-bucket"):
        write_s3(client, S3Output(bucket="no-such-bucket"), JOB, [feature(0)])


def test_s3_unserialisable_feature_fails_before_anything_is_written(s3: Any) -> None:
    bad = feature(1, when=object())
    with pytest.raises(SinkError, match="'f1'"):
        write_s3(s3, S3Output(bucket=BUCKET), JOB, [feature(0), bad])
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_s3_large_result_is_streamed_as_multipart(s3: Any) -> None:
    # ~55 MB of features sharing one padding string: cheap to build, large to serialise.
    pad = "x" * 90_000
    count = 600
    creates = count_calls(s3, "CreateMultipartUpload")
    parts = count_calls(s3, "UploadPart")
    puts = count_calls(s3, "PutObject")
    config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4)

    result = write_s3(
        s3, S3Output(bucket=BUCKET, prefix="big/"), JOB, (feature(i, pad=pad) for i in range(count)),
        transfer_config=config,
    )

    assert result.features_written == count
    expected = json.dumps(
        {"type": "FeatureCollection", "features": [feature(i, pad=pad) for i in range(count)]}
    ).encode()
    assert len(expected) > 50 * MiB
    assert len(creates) == 1 and not puts
    assert creates[0]["ContentType"] == "application/geo+json"
    assert creates[0]["ACL"] == "bucket-owner-full-control"
    assert len(parts) == -(-len(expected) // (8 * MiB))
    obj = s3.get_object(Bucket=BUCKET, Key=f"big/{JOB}.geojson")
    assert obj["ETag"].strip('"').endswith(f"-{len(parts)}")
    assert obj["Body"].read() == expected


# Kinesis -------------------------------------------------------------------------------------------------


def read_stream(client: Any, stream: str = STREAM) -> list[tuple[dict[str, Any], str]]:
    """Every record on the stream as (decoded data, partition key), shard by shard, in order."""
    out: list[tuple[dict[str, Any], str]] = []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while True:
            response = client.get_records(ShardIterator=iterator, Limit=10_000)
            if not response["Records"]:
                break
            out.extend((json.loads(r["Data"]), r["PartitionKey"]) for r in response["Records"])
            iterator = response["NextShardIterator"]
    return out


def one(f: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [f]}


class FlakyKinesis:
    """A real (moto) client whose PutRecords pretends some records failed inside a successful call.

    ``fail(call_number, data)`` returns an ErrorCode for records to fail (they are not sent), else None.
    """

    def __init__(self, client: Any, fail: Callable[[int, dict[str, Any]], str | None]) -> None:
        self._client = client
        self._fail = fail
        self.calls: list[list[dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.calls.append(Records)
        codes = [self._fail(len(self.calls), json.loads(r["Data"])) for r in Records]
        passing = [r for r, code in zip(Records, codes, strict=True) if code is None]
        sent = iter(
            self._client.put_records(StreamName=StreamName, Records=passing)["Records"] if passing else []
        )
        entries = [
            next(sent) if code is None else {"ErrorCode": code, "ErrorMessage": "Rate exceeded for shard"}
            for code in codes
        ]
        return {"FailedRecordCount": sum(code is not None for code in codes), "Records": entries}


def ident(data: dict[str, Any]) -> str:
    return data["features"][0]["id"]


def test_kinesis_records_read_back_equal_features(kinesis: Any) -> None:
    features = [feature(i) for i in range(25)]

    result = write_kinesis(kinesis, KinesisOutput(stream=STREAM), JOB, iter(features))

    assert result == SinkResult(sink=f"kinesis:{STREAM}", features_written=25)
    assert read_stream(kinesis) == [(one(f), JOB) for f in features]


def test_kinesis_record_data_is_reference_json(kinesis: Any) -> None:
    calls = count_calls(kinesis, "PutRecords")
    f = feature(3)

    write_kinesis(kinesis, KinesisOutput(stream=STREAM), JOB, [f])

    assert calls[0]["Records"] == [{"Data": json.dumps(one(f)).encode("utf-8"), "PartitionKey": JOB}]


@pytest.mark.parametrize(
    ("batch_size", "count", "sizes"), [(7, 20, [7, 7, 6]), (1000, 1201, [500, 500, 201])]
)
def test_kinesis_batches_honour_batch_size_and_500_cap(
    kinesis: Any, batch_size: int, count: int, sizes: list[int]
) -> None:
    calls = count_calls(kinesis, "PutRecords")

    result = write_kinesis(kinesis, KinesisOutput(stream=STREAM, batch_size=batch_size), JOB,
                           (feature(i) for i in range(count)))

    assert [len(c["Records"]) for c in calls] == sizes
    assert result.features_written == count
    assert [ident(d) for d, _ in read_stream(kinesis)] == [f"f{i}" for i in range(count)]


def padded_feature(i: int, record_bytes: int) -> dict[str, Any]:
    """A feature whose Kinesis record (data + partition key ``JOB``) is exactly ``record_bytes``."""
    overhead = len(json.dumps(one(feature(i, pad=""))).encode()) + len(JOB)
    return feature(i, pad="x" * (record_bytes - overhead))


def record_bytes(call: dict[str, Any]) -> int:
    return sum(len(r["Data"]) + len(r["PartitionKey"].encode()) for r in call["Records"])


class VirtualClock:
    """A clock that only the sink's sleeps move (one shard sender: one timeline)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_kinesis_calls_to_one_shard_stay_within_its_1_mib_per_second(kinesis: Any) -> None:
    # A shard takes 1 MiB/s: a call of more (the 5 MiB PutRecords allows) would be throttled at once.
    calls = count_calls(kinesis, "PutRecords")
    features = [padded_feature(i, 400_000) for i in range(12)]
    time = VirtualClock()

    result = write_kinesis(kinesis, KinesisOutput(stream=STREAM), JOB, features, clock=time.clock, sleep=time.sleep)

    assert [len(c["Records"]) for c in calls] == [2] * 6
    assert all(record_bytes(c) <= MAX_RECORD_BYTES for c in calls)
    assert result.features_written == 12
    assert [d for d, _ in read_stream(kinesis)] == [one(f) for f in features]
    assert 5 <= time.now < 6, "one call per second: 800,000 bytes, and a second would exceed 1 MiB"


def test_kinesis_limits_are_inclusive(kinesis: Any) -> None:
    # A record of exactly 1 MiB (data + key) is sent, alone in its call, one a second.
    calls = count_calls(kinesis, "PutRecords")
    features = [padded_feature(i, MAX_RECORD_BYTES) for i in range(3)]
    time = VirtualClock()

    result = write_kinesis(kinesis, KinesisOutput(stream=STREAM), JOB, features, clock=time.clock, sleep=time.sleep)

    assert [record_bytes(c) for c in calls] == [MAX_RECORD_BYTES] * 3
    assert (result.features_written, result.features_failed) == (3, 0)
    assert 2 <= time.now < 3


def test_kinesis_oversize_feature_is_reported_not_dropped(kinesis: Any) -> None:
    big = padded_feature(1, MAX_RECORD_BYTES + 1)
    big["id"] = "big-one"
    size = len(json.dumps(one(big)).encode()) + len(JOB)
    features = [feature(0), big, feature(2)]

    result = write_kinesis(kinesis, KinesisOutput(stream=STREAM), JOB, features)

    assert (result.features_written, result.features_failed) == (2, 1)
    assert len(result.reasons) == 1
    assert "'big-one'" in result.reasons[0] and f"{size:,} bytes" in result.reasons[0]
    assert [ident(d) for d, _ in read_stream(kinesis)] == ["f0", "f2"]


def test_kinesis_failed_records_are_retried_in_order_and_delivered(kinesis: Any) -> None:
    flaky = FlakyKinesis(
        kinesis, lambda call, data: "ProvisionedThroughputExceededException"
        if call == 1 and ident(data) in ("f1", "f3", "f4") else None
    )
    sleeps: list[float] = []

    result = write_kinesis(flaky, KinesisOutput(stream=STREAM), JOB, [feature(i) for i in range(6)],
                           sleep=sleeps.append)

    assert result == SinkResult(sink=f"kinesis:{STREAM}", features_written=6)
    assert [[ident(json.loads(r["Data"])) for r in c] for c in flaky.calls] == [
        [f"f{i}" for i in range(6)], ["f1", "f3", "f4"]]
    assert len(sleeps) == 1 and 0.05 <= sleeps[0] <= 0.1
    assert sorted(ident(d) for d, _ in read_stream(kinesis)) == [f"f{i}" for i in range(6)]


def test_kinesis_record_that_keeps_failing_is_reported_after_max_attempts(kinesis: Any) -> None:
    flaky = FlakyKinesis(kinesis, lambda call, data: "InternalFailure" if ident(data) == "f2" else None)
    sleeps: list[float] = []

    result = write_kinesis(flaky, KinesisOutput(stream=STREAM), JOB, [feature(i) for i in range(4)],
                           max_attempts=4, base_delay=0.2, sleep=sleeps.append)

    assert (result.features_written, result.features_failed) == (3, 1)
    assert len(result.reasons) == 1
    assert "'f2'" in result.reasons[0] and "InternalFailure" in result.reasons[0]
    assert "4 attempts" in result.reasons[0]
    assert len(flaky.calls) == 4
    assert len(sleeps) == 3
    for n, delay in enumerate(sleeps, start=1):
        ceiling = 0.2 * 2 ** (n - 1)
        assert ceiling / 2 <= delay <= ceiling
    assert [ident(d) for d, _ in read_stream(kinesis)] == ["f0", "f1", "f3"]


def test_kinesis_kms_access_denied_is_not_retried(kinesis: Any) -> None:
    flaky = FlakyKinesis(
        kinesis, lambda call, data: "KMSAccessDeniedException" if ident(data) == "f0" else None
    )
    sleeps: list[float] = []

    result = write_kinesis(flaky, KinesisOutput(stream=STREAM), JOB, [feature(0), feature(1)],
                           sleep=sleeps.append)

    assert (result.features_written, result.features_failed) == (1, 1)
    assert not sleeps and len(flaky.calls) == 1
    assert "KMSAccessDeniedException" in result.reasons[0]


def test_kinesis_missing_stream_is_a_sink_error_naming_it(aws: None) -> None:
    client = boto3.client("kinesis", region_name=REGION)
    with pytest.raises(SinkError, match="no-such-stream"):
        write_kinesis(client, KinesisOutput(stream="no-such-stream"), JOB, [feature(0)])


class RaisingKinesis(FlakyKinesis):
    """PutRecords raises (as after botocore's retries) from call ``raise_from`` on: ``code`` is a permanent
    error (the write stops and reports) or a transient one (the error goes up: the completion is retried)."""

    def __init__(self, client: Any, raise_from: int, code: str = "AccessDeniedException") -> None:
        super().__init__(client, lambda call, data: None)
        self._raise_from = raise_from
        self._code = code

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        if len(self.calls) + 1 >= self._raise_from:
            self.calls.append(Records)
            error = {"Error": {"Code": self._code, "Message": "refused"}}
            raise ClientError(error, "PutRecords")
        return super().put_records(StreamName, Records)


def test_kinesis_call_raising_before_any_delivery_is_a_sink_error(kinesis: Any) -> None:
    with pytest.raises(SinkError, match="AccessDeniedException"):
        write_kinesis(RaisingKinesis(kinesis, 1), KinesisOutput(stream=STREAM), JOB, [feature(0)])


def test_kinesis_throttled_past_its_retries_raises_for_a_retried_completion(kinesis: Any) -> None:
    """Throttling after botocore's retries is transient: the error goes up, so the job stays open and its
    completion is retried (the delivery checkpoint skips what was delivered), never a partial result."""
    with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
        write_kinesis(RaisingKinesis(kinesis, 2, "ProvisionedThroughputExceededException"),
                      KinesisOutput(stream=STREAM, batch_size=1), JOB, (feature(i) for i in range(5)))


def test_kinesis_call_raising_after_some_delivery_reports_the_rest_failed(kinesis: Any) -> None:
    raising = RaisingKinesis(kinesis, 2)

    result = write_kinesis(raising, KinesisOutput(stream=STREAM, batch_size=3), JOB,
                           (feature(i) for i in range(10)))

    assert (result.features_written, result.features_failed) == (3, 7)
    assert len(raising.calls) == 2
    assert "7 features not delivered" in result.reasons[0]


@pytest.mark.parametrize(("status", "ok"), [("CREATING", False), ("DELETING", False), ("UPDATING", True)])
def test_kinesis_stream_must_be_writable(kinesis: Any, status: str, ok: bool) -> None:
    class Described(FlakyKinesis):
        def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:  # noqa: N803
            return {"StreamDescriptionSummary": {"StreamName": StreamName, "StreamStatus": status}}

    client = Described(kinesis, lambda call, data: None)
    if ok:
        assert write_kinesis(client, KinesisOutput(stream=STREAM), JOB, [feature(0)]).features_written == 1
    else:
        with pytest.raises(SinkError, match=status):
            write_kinesis(client, KinesisOutput(stream=STREAM), JOB, [feature(0)])


def test_kinesis_falls_back_to_describe_stream_when_summary_is_denied(kinesis: Any) -> None:
    class Denied(FlakyKinesis):
        def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:  # noqa: N803
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                              "DescribeStreamSummary")

    result = write_kinesis(Denied(kinesis, lambda call, data: None), KinesisOutput(stream=STREAM), JOB,
                           [feature(0)])
    assert result.features_written == 1


def test_kinesis_calls_in_flight_together_deliver_everything_once(kinesis: Any) -> None:
    failed_once: set[str] = set()

    def fail_first_time(call: int, data: dict[str, Any]) -> str | None:
        name = ident(data)
        if name in ("f3", "f10", "f17", "f40") and name not in failed_once:
            failed_once.add(name)
            return "ProvisionedThroughputExceededException"
        return None

    kinesis.create_stream(StreamName="wide", ShardCount=4)
    flaky = FlakyKinesis(kinesis, fail_first_time)
    result = write_kinesis(flaky, KinesisOutput(stream="wide", batch_size=7, partition_key="feature"), JOB,
                           [feature(i) for i in range(50)], sleep=lambda _: None)

    assert result == SinkResult(sink="kinesis:wide", features_written=50)
    records = read_stream(kinesis, "wide")
    assert sorted(ident(d) for d, _ in records) == sorted(f"f{i}" for i in range(50))
    assert {key for _, key in records} == {f"{JOB}/{i}" for i in range(50)}
    shards = kinesis.list_shards(StreamName="wide")["Shards"]
    per_shard = [len(kinesis.get_records(ShardIterator=kinesis.get_shard_iterator(
        StreamName="wide", ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"])["Records"])
        for s in shards]
    assert sum(per_shard) == 50 and sum(n > 0 for n in per_shard) >= 3, per_shard
    # One call in flight per shard: no call mixes shards.
    assert all(len({LimitedStream(shards=4).shard_of(r["PartitionKey"]) for r in call}) == 1 for call in flaky.calls)


def test_kinesis_in_flight_calls_count_what_they_delivered_when_one_raises(kinesis: Any) -> None:
    kinesis.create_stream(StreamName="wide", ShardCount=4)
    raising = RaisingKinesis(kinesis, 3)

    result = write_kinesis(raising, KinesisOutput(stream="wide", batch_size=5, partition_key="feature"), JOB,
                           (feature(i) for i in range(40)))

    delivered = len(read_stream(kinesis, "wide"))
    assert result.features_written == delivered >= 5
    assert result.features_written + result.features_failed == 40


class OneShard:
    """A stream whose every record lands on one shard (the job id is every record's partition key), taking at
    most 1,000 records per second as Kinesis does, on a virtual clock that the sink's sleeps advance."""

    def __init__(self, per_second: int = 1000, call_seconds: float = 0.02) -> None:
        self.per_second, self.call_seconds = per_second, call_seconds
        self.now, self.second, self.taken, self.stored = 0.0, -1, 0, 0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:  # noqa: N803
        return {"StreamDescriptionSummary": {"StreamStatus": "ACTIVE"}}

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.now += self.call_seconds
        if int(self.now) != self.second:
            self.second, self.taken = int(self.now), 0
        entries = []
        for _ in Records:
            if self.taken < self.per_second:
                self.taken += 1
                entries.append({"SequenceNumber": str(self.stored), "ShardId": "shardId-000000000000"})
                self.stored += 1
            else:
                entries.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"})
        return {"FailedRecordCount": sum("ErrorCode" in e for e in entries), "Records": entries}


def test_kinesis_a_job_throttled_to_one_shards_rate_still_delivers_every_record() -> None:
    shard = OneShard()
    features = [feature(i) for i in range(20_000)]
    result = write_kinesis(shard, KinesisOutput(stream=STREAM, batch_size=500), JOB, features, sleep=shard.sleep,
                           clock=lambda: shard.now)
    assert result == SinkResult(sink=f"kinesis:{STREAM}", features_written=20_000)
    assert shard.stored == 20_000
    assert 19 <= shard.now < 40, "paced by the shard's rate, without back-off running away"
