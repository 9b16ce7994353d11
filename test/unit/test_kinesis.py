"""The Kinesis sink against a stream that enforces the real per-shard limits (LimitedStream, virtual clock):
no record lost to throttling, shards used in parallel, partition keys, packing, and the delivery checkpoint."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError

from modelrunner.local.kinesis_limits import LimitedStream
from modelrunner.requests import KinesisOutput
from modelrunner.sinks import SinkResult, write_kinesis
from modelrunner.sinks.checkpoint import DeliveryCheckpoint, decode_chunks, encode_chunks
from modelrunner.sinks.kinesis import MAX_SENDERS, QUEUED_BATCHES, retry_bound

STREAM = "features"
JOB = "job-1234"


def feature(i: int, pad: int = 0, x: float | None = None, y: float = 0.0) -> dict[str, Any]:
    """A feature like the runner's: a pixel box (``imageBBox``) at (x, y), ``pad`` bytes of padding."""
    x = float(i) if x is None else x
    return {"type": "Feature", "id": f"f{i}", "geometry": {"type": "Point", "coordinates": [10.0 + i / 1e5, 20.0]},
            "properties": {"imageBBox": [x, y, x + 10, y + 10], "featureClasses": [{"iri": "car", "score": 0.9}],
                           "pad": "x" * pad}}


def delivered_ids(stream: LimitedStream) -> list[str]:
    return [f["id"] for _, data in stream.records() for f in json.loads(data)["features"]]


def test_throttled_records_are_retried_until_delivered_within_the_bound() -> None:
    # Issue 14's case: 2,000 features of 20 KB (39 MiB) on one shard that other writers also use (half its
    # capacity): the sink's own pacing is not enough, records fail with ProvisionedThroughputExceeded, and
    # every one is still delivered (8 attempts lost about a third before).
    stream = LimitedStream(STREAM, shards=1, other_load=0.5)
    features = [feature(i, pad=20_000) for i in range(2000)]

    result = write_kinesis(stream, KinesisOutput(stream=STREAM), JOB, features, clock=stream.clock,
                           sleep=stream.sleep)

    assert result == SinkResult(sink=f"kinesis:{STREAM}", features_written=2000)
    assert stream.throttled > 100, "the shard was really throttled"
    assert sorted(delivered_ids(stream)) == sorted(f"f{i}" for i in range(2000))
    nbytes = sum(len(data) + len(key) for key, data in stream.records())
    assert stream.elapsed() <= retry_bound(2000, nbytes)
    assert stream.elapsed() >= nbytes / (0.5 * 1024 * 1024) - 1, "no faster than half a shard allows"


def test_records_past_the_retry_bound_are_reported_never_dropped() -> None:
    # A shard that takes nothing (other writers use all of it): after the bound every feature is reported.
    stream = LimitedStream(STREAM, shards=1, other_load=1.0)

    result = write_kinesis(stream, KinesisOutput(stream=STREAM), JOB, [feature(i) for i in range(30)],
                           clock=stream.clock, sleep=stream.sleep)

    assert (result.features_written, result.features_failed) == (0, 30)
    assert "ProvisionedThroughputExceededException" in result.reasons[0]
    assert "retry bound" in result.reasons[0]
    assert retry_bound(30, 0) <= stream.elapsed() <= retry_bound(30, 0) + 10


def test_a_paced_sink_alone_on_the_stream_is_never_throttled_and_uses_every_shard() -> None:
    stream = LimitedStream(STREAM, shards=4)

    result = write_kinesis(stream, KinesisOutput(stream=STREAM, partition_key="feature"), JOB,
                           (feature(i) for i in range(20_000)), clock=stream.clock, sleep=stream.sleep)

    assert result.features_written == 20_000 and stream.throttled == 0
    assert all(3500 < len(shard) < 6500 for shard in stream.stored)
    # 20,000 records at 4 x 1,000/s: 5 s, where one shard (the reference's job-id key) takes 20 s.
    assert 4 <= stream.elapsed() < 7


def test_tile_keys_keep_a_tiles_records_on_one_shard_in_order() -> None:
    stream = LimitedStream(STREAM, shards=4)
    # 3 x 3 tiles of stride 100 px, 50 features each, in the order a job streams them.
    features = [feature(100 * t + i, x=(t % 3) * 100 + i, y=(t // 3) * 100 + 5.0) for t in range(9) for i in range(50)]

    result = write_kinesis(stream, KinesisOutput(stream=STREAM, partition_key="tile"), JOB, features,
                           tile_stride=100, clock=stream.clock, sleep=stream.sleep)

    assert result.features_written == 450
    by_key: dict[str, list[str]] = {}
    for shard, records in enumerate(stream.stored):
        for key, data in records:
            assert stream.shard_of(key) == shard
            by_key.setdefault(key, []).extend(f["id"] for f in json.loads(data)["features"])
    assert sorted(by_key) == sorted(f"{JOB}/{row}/{col}" for row in range(3) for col in range(3))
    assert by_key[f"{JOB}/1/2"] == [f"f{500 + i}" for i in range(50)], "tile (1, 2)'s features, in order"


def test_packed_records_hold_up_to_n_features_within_1_mib() -> None:
    stream = LimitedStream(STREAM, shards=1)
    small = [feature(i) for i in range(250)]
    big = [feature(1000 + i, pad=300_000) for i in range(7)]  # three fit in 1 MiB, not four

    result = write_kinesis(stream, KinesisOutput(stream=STREAM, features_per_record=100), JOB, small + big,
                           clock=stream.clock, sleep=stream.sleep)

    assert result.features_written == 257
    sizes = [len(json.loads(data)["features"]) for _, data in stream.records()]
    assert sizes == [100, 100, 53, 3, 1], "the last 50 small ones share a record with three big ones"
    assert all(len(data) + len(key) <= 1024 * 1024 for key, data in stream.records())
    assert delivered_ids(stream) == [f["id"] for f in small + big]
    first = stream.records()[0][1]
    assert first.startswith(b'{"type": "FeatureCollection", "features": [{') and b'}, {"type"' in first


def test_one_feature_per_record_keeps_the_references_bytes() -> None:
    stream = LimitedStream(STREAM, shards=2)
    f = feature(3)

    write_kinesis(stream, KinesisOutput(stream=STREAM), JOB, [f], clock=stream.clock, sleep=stream.sleep)

    assert stream.records() == [(JOB, json.dumps({"type": "FeatureCollection", "features": [f]}).encode())]


# The delivery checkpoint ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [set(), {0}, {0, 1, 2, 5, 7, 8}, {3}, set(range(100)) - {50}])
def test_chunk_sets_round_trip_as_runs(chunks: set[int]) -> None:
    text = encode_chunks(chunks)
    assert decode_chunks(text) == chunks
    assert len(text) <= 12


def test_corrupt_checkpoint_text_is_an_error_not_a_skip() -> None:
    with pytest.raises(ValueError):
        decode_chunks("3-1")


class KilledAfter(LimitedStream):
    """A stream whose writer dies after ``calls`` PutRecords: later calls raise, as a dead worker sends none."""

    def __init__(self, calls: int, **kwargs: Any) -> None:
        super().__init__(STREAM, **kwargs)
        self.limit = calls

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        if self.calls >= self.limit:
            raise ClientError({"Error": {"Code": "WorkerKilled", "Message": "killed"}}, "PutRecords")
        return super().put_records(StreamName, Records)


@pytest.mark.parametrize("partition_key", ["jobId", "feature"])
def test_a_replacement_resends_only_the_chunks_not_confirmed(partition_key: str) -> None:
    features = [feature(i) for i in range(10_000)]
    output = KinesisOutput(stream=STREAM, partition_key=partition_key)
    saved: list[str] = []

    first = KilledAfter(7, shards=4)
    checkpoint = DeliveryCheckpoint(frozenset(), lambda text: saved.append(text) is None)
    killed = write_kinesis(first, output, JOB, features, clock=first.clock, sleep=first.sleep, checkpoint=checkpoint)
    assert 0 < killed.features_written < 10_000 and saved
    # The replacement starts from the last save the dead worker made (its final save included: the first
    # write only stopped; a killed one may have saved less, and re-sends at most those chunks more).
    done = decode_chunks(saved[-1])
    assert done and all(c * 1000 < killed.features_written + 1000 for c in done)

    second = LimitedStream(STREAM, shards=4)
    resumed = write_kinesis(second, output, JOB, features, clock=second.clock, sleep=second.sleep,
                            checkpoint=DeliveryCheckpoint(done, lambda text: saved.append(text) is None))

    assert (resumed.features_written, resumed.features_failed) == (10_000, 0)
    resent = delivered_ids(second)
    assert len(resent) == 10_000 - 1000 * len(done), "only the chunks not confirmed"
    assert not set(resent) & {f"f{i}" for c in done for i in range(c * 1000, c * 1000 + 1000)}
    everything = delivered_ids(first) + resent
    assert set(everything) == {f"f{i}" for i in range(10_000)}
    in_flight = sum(1 for c in range(10) if c not in done) * 1000
    assert len(everything) - 10_000 <= in_flight, "duplicates only from chunks not confirmed when it died"
    # ... which are at most the reader's lead: per shard in use, a batch being built, the queued ones and
    # the one on the wire (500 records each).
    shards_used = 1 if partition_key == "jobId" else 4
    assert len(everything) - 10_000 <= shards_used * (QUEUED_BATCHES + 2) * 500
    assert decode_chunks(saved[-1]) == set(range(10))


def test_a_rerun_after_everything_was_confirmed_sends_nothing() -> None:
    stream = LimitedStream(STREAM, shards=1)
    checkpoint = DeliveryCheckpoint(frozenset(range(3)), lambda text: True)

    result = write_kinesis(stream, KinesisOutput(stream=STREAM), JOB, [feature(i) for i in range(2500)],
                           clock=stream.clock, sleep=stream.sleep, checkpoint=checkpoint)

    assert result.features_written == 2500 and stream.calls == 0


def test_a_stream_of_more_shards_than_senders_keeps_every_shard_within_its_limits() -> None:
    class Counting(LimitedStream):
        def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
            self.threads.add(threading.current_thread().name)
            return super().put_records(StreamName, Records)

    stream = Counting(STREAM, shards=40)
    stream.threads = set()

    result = write_kinesis(stream, KinesisOutput(stream=STREAM, partition_key="feature"), JOB,
                           (feature(i) for i in range(40_000)), clock=stream.clock, sleep=stream.sleep)

    assert result.features_written == 40_000 and stream.throttled == 0
    assert len(stream.threads) == MAX_SENDERS
    assert all(len(shard) > 600 for shard in stream.stored)
    # 1,000 records per shard: about a second where each shard has its own sender, two where senders serve two.
    assert 1 <= stream.elapsed() < 4


def test_without_pacing_a_stand_in_without_limits_is_not_waited_for() -> None:
    # MR_KINESIS_SHARD_LIMITS=false (the local stack against moto): no waits, one call per 500 records.
    stream = LimitedStream(STREAM, shards=1, records_per_second=10**9, bytes_per_second=10**12)

    result = write_kinesis(stream, KinesisOutput(stream=STREAM), JOB, (feature(i) for i in range(5000)),
                           clock=stream.clock, sleep=stream.sleep, pace=False)

    assert result.features_written == 5000 and stream.calls == 10
    assert stream.elapsed() == pytest.approx(10 * stream.call_seconds)


def test_pacing_is_on_unless_the_deployment_says_its_stream_has_no_limits() -> None:
    from modelrunner.config import Settings
    from modelrunner.local.stack import Resources

    base = {"AWS_DEFAULT_REGION": "r", "JOB_TABLE": "j", "REGION_REQUEST_TABLE": "r", "FEATURE_TABLE": "f",
            "IMAGE_QUEUE": "i", "REGION_QUEUE": "q", "WORKERS": "2"}
    assert Settings.from_env(base).kinesis_shard_limits
    assert not Settings.from_env({**base, "MR_KINESIS_SHARD_LIMITS": "false"}).kinesis_shard_limits
    local = Resources(endpoint="http://127.0.0.1:1", prefix="p").worker_env()
    assert not Settings.from_env({**local, **base}).kinesis_shard_limits, "moto: no limits to respect"
