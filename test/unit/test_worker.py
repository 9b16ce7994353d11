"""modelrunner.worker: how messages are settled (delete, keep, hand back), the heartbeat, receive-count
limits and pending final statuses, in-process against moto's SQS, SNS and DynamoDB."""

from __future__ import annotations

import gc
import json
import time
import zlib
from typing import Any

import pytest
from botocore.exceptions import ClientError

from modelrunner.aws import AwsClients
from modelrunner.config import Settings
from modelrunner.errors import InferenceError
from modelrunner.local.scene import make_scene
from modelrunner.local.stack import create_resources
from modelrunner.runner.complete import job_outcome
from modelrunner.runner.services import Services
from modelrunner.sinks import SinkResult
from modelrunner.state.records import RegionRecord
from modelrunner.worker import GC_YOUNG_THRESHOLD, MAX_VISIBILITY_SECONDS, Heartbeat, Outcome, Worker, settle_heap


class Model:
    """Deterministic boxes; fails every ``fail_every``-th call (0: never) with a retriable error."""

    name = "fake"

    def __init__(self, fail_every: int = 0) -> None:
        self.calls = 0
        self.fail_every = fail_every

    def __call__(self, payload: bytes) -> dict:
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise InferenceError(f"HTTP endpoint fake answered 500 (call {self.calls})")
        x = zlib.crc32(payload) % 300
        return {"type": "FeatureCollection", "features": [{"type": "Feature", "id": f"f{x}", "properties": {
            "imageBBox": [x, 10, x + 40, 50], "featureClasses": [{"iri": "thing", "score": 0.9}]}}]}


class FlakySns:
    """An SNS client whose publish fails while ``down`` (after boto3's retries, as it would reach us)."""

    def __init__(self, real: Any) -> None:
        self.real, self.down = real, False

    def publish(self, **kwargs: Any) -> Any:
        if self.down:
            raise ConnectionError("SNS unreachable")
        return self.real.publish(**kwargs)


@pytest.fixture
def world(moto_aws, tmp_path):
    res = create_resources(None, prefix="wk")
    settings = Settings(aws_region="us-east-1", job_table=res.job_table, region_table=res.region_table,
                        endpoint_table=res.endpoint_table, feature_table=res.feature_table,
                        image_queue=res.image_queue, region_queue=res.region_queue, workers=2,
                        image_status_topic=res.image_topic, region_status_topic=res.region_topic,
                        region_size=(10240, 10240), region_wait_seconds=0, visibility_timeout=30,
                        local_image_root=str(tmp_path), tile_retry_base_seconds=0.0, max_tile_attempts=3)
    services = Services.create(settings, AwsClients("us-east-1"), metrics=False)
    services.status.sns = FlakySns(services.status.sns)
    model = Model()
    services.detector = lambda region: model  # type: ignore[method-assign]
    scene = make_scene(str(tmp_path / "s.tif"), 600, 400, seed=2)
    worker = Worker(services)
    yield worker, res, scene, model
    worker.heartbeat.stop()


def request_body(res, scene, job_id="j1", **changes):
    body = {"jobId": job_id, "imageUrls": [scene.path], "imageProcessor": {"name": "fake"},
            "imageProcessorTileSize": 256, "imageProcessorTileOverlap": 32, "imageProcessorTileFormat": "GTIFF",
            "outputs": [{"type": "S3", "bucket": res.bucket, "prefix": "out/"}]}
    body.update(changes)
    return json.dumps(body)


def queued(res, queue):
    attrs = res.client("sqs").get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def statuses(res):
    from modelrunner.local.stack import read_statuses

    return [(s["attributes"]["job_id"], s["attributes"]["status"], s["message"]) for s in read_statuses(res)]


def test_a_job_runs_and_its_message_is_deleted(world):
    worker, res, scene, model = world
    res.client("sqs").send_message(QueueUrl=res.image_queue, MessageBody=request_body(res, scene))
    assert worker.poll_once()
    assert queued(res, res.image_queue) == (0, 0)
    assert [s[:2] for s in statuses(res)] == [("j1", "STARTED"), ("j1", "IN_PROGRESS"), ("j1", "SUCCESS")]
    assert worker.services.jobs.get(f"j1:{scene.path}").status_published is True


def test_a_bad_request_fails_once_and_is_deleted(world):
    worker, res, scene, _ = world
    sqs = res.client("sqs")
    bad = request_body(res, scene, imageProcessorTileSize=0)
    sqs.send_message(QueueUrl=res.image_queue, MessageBody=bad)
    sqs.send_message(QueueUrl=res.image_queue, MessageBody=bad)  # a duplicate delivery
    assert worker.poll_once() and worker.poll_once()
    assert queued(res, res.image_queue) == (0, 0)
    seen = statuses(res)
    assert len(seen) == 1 and seen[0][1] == "FAILED" and "imageProcessorTileSize: must be >= 1" in seen[0][2]
    row = worker.services.jobs.get(f"j1:{scene.path}")
    assert row.job_status == "FAILED" and "imageProcessorTileSize" in row.status_reason


def test_a_refused_url_names_the_field(world):
    worker, res, scene, _ = world
    res.client("sqs").send_message(QueueUrl=res.image_queue, MessageBody=request_body(
        res, scene, imageUrls=["/vsicurl?url=http://evil/&header_file=/etc/passwd"]))
    assert worker.poll_once()
    (_, status, message), = statuses(res)
    assert status == "FAILED" and "imageUrls[0]: GDAL virtual file systems" in message


def test_a_final_status_sns_refused_is_published_by_the_next_delivery(world):
    worker, res, scene, _ = world
    sqs = res.client("sqs")
    sqs.send_message(QueueUrl=res.image_queue, MessageBody=request_body(res, scene))
    message = sqs.receive_message(QueueUrl=res.image_queue, AttributeNames=["All"])["Messages"][0]
    worker.services.status.sns.down = True
    assert worker.handle_image(message) is Outcome.RETRY_LATER  # ended in the row, not yet published
    row = worker.services.jobs.get(f"j1:{scene.path}")
    assert row.job_status == "SUCCESS" and row.status_published is False
    assert statuses(res) == []
    worker.services.status.sns.down = False
    # The publication claim of the failed attempt must lapse first (a worker may still be publishing).
    worker.services.jobs.client.update_item(
        TableName=res.job_table, Key={"image_id": {"S": f"j1:{scene.path}"}},
        UpdateExpression="SET status_publishing = :old", ExpressionAttributeValues={":old": {"N": "0"}})
    assert worker.handle_image(message) is Outcome.DONE
    assert [s[1] for s in statuses(res)] == ["SUCCESS"]
    assert worker.handle_image(message) is Outcome.DONE  # a third delivery publishes nothing more
    assert statuses(res) == []


def test_a_model_failing_every_second_call_still_succeeds(world):
    worker, res, scene, model = world
    model.fail_every = 2
    res.client("sqs").send_message(QueueUrl=res.image_queue, MessageBody=request_body(res, scene))
    assert worker.poll_once()
    assert statuses(res)[-1][1] == "SUCCESS"
    row = worker.services.regions.all(f"j1:{scene.path}")[0]
    assert row.failed_tile_count == 0 and row.succeeded_tile_count == row.total_tiles == 6


def test_a_model_failing_some_tiles_for_good_ends_partial_with_the_cause(world):
    worker, res, scene, model = world
    worker.services.settings = worker.settings = worker.settings.__class__(
        **{**worker.settings.__dict__, "max_tile_attempts": 1})
    model.fail_every = 3
    res.client("sqs").send_message(QueueUrl=res.image_queue, MessageBody=request_body(res, scene))
    assert worker.poll_once()
    job_id, status, message = statuses(res)[-1]
    assert status == "PARTIAL"
    assert "2 of 6 tiles failed" in message and "HTTP endpoint fake answered 500" in message


def test_a_message_that_keeps_killing_workers_fails_its_job(world):
    worker, res, scene, model = world
    sqs = res.client("sqs")
    sqs.send_message(QueueUrl=res.image_queue, MessageBody=request_body(res, scene))
    for _ in range(4):  # four deliveries whose workers "died" (never settled the message)
        message = sqs.receive_message(QueueUrl=res.image_queue, AttributeNames=["All"], VisibilityTimeout=0)
    message = message["Messages"][0]
    # The first delivery got as far as the job row (it was killed while reading the image).
    from modelrunner.requests import ImageRequest

    worker.services.jobs.create(ImageRequest.from_message(message["Body"]))
    assert int(message["Attributes"]["ApproximateReceiveCount"]) == 4
    assert worker.handle_image(message) is Outcome.DONE
    assert model.calls == 0
    (_, status, reason), = [s for s in statuses(res) if s[1] != "STARTED"]
    assert status == "FAILED" and "received 4 times" in reason and "MR_MAX_RECEIVE_COUNT = 3" in reason


def test_settling_deletes_keeps_or_hands_back(world):
    worker, res, scene, _ = world
    sqs = res.client("sqs")
    for n in range(3):
        sqs.send_message(QueueUrl=res.region_queue, MessageBody=f"m{n}")
    taken = [sqs.receive_message(QueueUrl=res.region_queue, VisibilityTimeout=60)["Messages"][0] for _ in range(3)]
    for message, outcome in zip(taken, (Outcome.DONE, Outcome.RETRY_LATER, Outcome.HAND_BACK), strict=True):
        worker.heartbeat.hold(res.region_queue, message["ReceiptHandle"])
        worker.settle(res.region_queue, message, outcome)
    assert queued(res, res.region_queue) == (1, 1)  # handed back: visible; kept: still invisible
    again = sqs.receive_message(QueueUrl=res.region_queue)["Messages"][0]
    assert again["Body"] == taken[2]["Body"]
    assert worker.heartbeat._held == {}


def test_an_invalid_region_message_fails_its_job_once(world):
    """A region its job can never count would leave the job IN_PROGRESS forever: the job ends FAILED."""
    worker, res, scene, _ = world
    sqs = res.client("sqs")
    sqs.send_message(QueueUrl=res.region_queue, MessageBody="{not json")
    assert worker.poll_once()
    assert queued(res, res.region_queue) == (0, 0)
    (_, status, reason), = statuses(res)
    assert status == "FAILED" and "region request" in reason and "body: is not valid JSON" in reason

    from modelrunner.requests import ImageRequest

    request = ImageRequest.from_message(request_body(res, scene, job_id="j2"))
    worker.services.jobs.create(request)
    bad = {"job_id": "j2", "image_url": scene.path, "model_name": "fake", "region_bounds": [[0, 0], [0, 10]]}
    for _ in range(2):  # delivered twice: one FAILED status
        sqs.send_message(QueueUrl=res.region_queue, MessageBody=json.dumps(bad))
        assert worker.poll_once()
    (_, status, reason), = statuses(res)
    assert status == "FAILED" and "region_bounds: must have a non-negative origin and positive size" in reason
    assert worker.services.jobs.get(request.image_id).job_status == "FAILED"


class RecordingSqs:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def change_message_visibility(self, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> None:
        self.calls.append((ReceiptHandle, VisibilityTimeout))


def test_heartbeat_extends_held_messages_within_the_12_hour_limit():
    sqs = RecordingSqs()
    beat = Heartbeat(sqs, timeout=3)  # extends every second
    try:
        beat.hold("q", "fresh")
        beat.hold("q", "old")
        beat._held["old"].since = time.monotonic() - MAX_VISIBILITY_SECONDS + 30  # 30 s left: no extension
        time.sleep(2.5)
        assert ("fresh", 3) in sqs.calls and not any(r == "old" for r, _ in sqs.calls)
        assert beat._held["old"].warned
        beat.release("fresh")
        count = len(sqs.calls)
        time.sleep(1.5)
        assert len(sqs.calls) == count
    finally:
        beat.stop()


def test_stop_hands_unfinished_work_back(world, monkeypatch):
    """SIGTERM: no new message; the region in progress is aborted and its message handed back."""
    worker, res, scene, model = world
    worker.settings = worker.services.settings = worker.settings.__class__(
        **{**worker.settings.__dict__, "stop_timeout": 0.0})
    real = model.__call__

    def slow(payload: bytes) -> dict:
        worker.request_stop()  # the signal arrives while the first tile is with the model
        time.sleep(0.3)
        return real(payload)

    worker.services.detector = lambda region: slow  # type: ignore[method-assign]
    res.client("sqs").send_message(QueueUrl=res.image_queue, MessageBody=request_body(res, scene))
    assert worker.run(max_messages=5) == 1
    assert queued(res, res.image_queue) == (1, 0)  # visible again for another worker
    assert worker.services.jobs.get(f"j1:{scene.path}").end_time is None


def rows(*specs):
    return [RegionRecord(image_id="j:u", region_id=f"r{i}", region_status=s, total_tiles=t, failed_tile_count=f,
                         failed_tile_reasons=r, message=m) for i, (s, t, f, r, m) in enumerate(specs)]


@pytest.mark.parametrize("regions, sinks, expected, words", [
    (rows(("SUCCESS", 4, 0, None, None)), [SinkResult("s3", 3)], "SUCCESS", []),
    (rows(("PARTIAL", 4, 3, ["500 (3 tiles)"], "x")), [SinkResult("s3", 1)], "PARTIAL",
     ["3 of 4 tiles failed", "500 (3 tiles)"]),
    (rows(("FAILED", 4, 4, ["500 (4 tiles)"], "x"), ("SUCCESS", 4, 0, None, None)), [SinkResult("s3", 1)],
     "PARTIAL", ["4 of 8 tiles failed"]),
    (rows(("FAILED", 4, 4, ["timeout (4 tiles)"], "x")), [SinkResult("s3", 0)], "FAILED", ["timeout"]),
    (rows(("FAILED", 0, 0, None, "Failed to process image region: cannot read window"), ("SUCCESS", 2, 0, None,
                                                                                          None)),
     [SinkResult("s3", 1)], "PARTIAL", ["1 of 2 regions could not be processed", "cannot read window"]),
    (rows(("SUCCESS", 4, 0, None, None)), [], "FAILED", []),
])
def test_job_outcome(regions, sinks, expected, words):
    status, reason = job_outcome(regions, sinks, [])
    assert status == expected
    for word in words:
        assert word in reason


def test_an_output_that_cannot_be_written_for_now_leaves_the_job_to_retry(world, monkeypatch):
    """S3 throttles past boto3's retries: no final status, the message comes back, the next delivery
    completes the job (never a SUCCESS without its output)."""
    from botocore.exceptions import ClientError

    from modelrunner.runner import complete as completion

    worker, res, scene, _ = world
    real, failures = completion.write_s3, []

    def slow_down(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
        return real(*args, **kwargs)

    monkeypatch.setattr(completion, "write_s3", slow_down)
    sqs = res.client("sqs")
    sqs.send_message(QueueUrl=res.image_queue, MessageBody=request_body(res, scene))
    message = sqs.receive_message(QueueUrl=res.image_queue, AttributeNames=["All"])["Messages"][0]
    assert worker.handle_image(message) is Outcome.RETRY_LATER
    row = worker.services.jobs.get(f"j1:{scene.path}")
    assert row.end_time is None and row.completion_worker is None  # open, and its claim given back
    assert [s[1] for s in statuses(res)] == ["STARTED", "IN_PROGRESS"]
    assert worker.handle_image(message) is Outcome.DONE
    assert [s[1] for s in statuses(res)] == ["SUCCESS"]
    assert res.client("s3").get_object(Bucket=res.bucket, Key="out/j1.geojson")["ContentLength"] > 0


# ---------- an image message whose job failed for good

@pytest.fixture
def worker(moto_aws: None) -> Any:
    res = create_resources(None, prefix="wf")
    settings = Settings(aws_region="us-east-1", job_table=res.job_table, region_table=res.region_table,
                        endpoint_table=res.endpoint_table, feature_table=res.feature_table,
                        image_queue=res.image_queue, region_queue=res.region_queue, workers=1,
                        image_status_topic=res.image_topic, region_status_topic=res.region_topic)
    services = Services.create(settings, AwsClients("us-east-1"), metrics=False)
    statuses: list[tuple[str, dict[str, Any]]] = []
    services.status.listener = lambda message, attrs: statuses.append((message, attrs))
    worker = Worker(services)
    yield worker, statuses
    worker.heartbeat.stop()


def test_a_job_whose_row_is_refused_fails_under_its_own_job_id(worker: Any) -> None:
    """DynamoDB refused the job row itself (a permanent error): the FAILED status and row name the job,
    instead of a row written by the failure path with no job id, and a status for job ''."""
    worker, statuses = worker
    services = worker.services
    refused = ClientError({"Error": {"Code": "ValidationException",
                                     "Message": "Item size has exceeded the maximum allowed size"},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutItem")

    def create(_request: Any, _start_ms: Any = None, message_id: str = "") -> bool:
        raise refused

    services.jobs.create = create  # type: ignore[method-assign]
    body = {"jobId": "refused", "imageUrls": ["s3://images/k.tif"], "imageProcessor": {"name": "ep"},
            "outputs": [{"type": "S3", "bucket": "results"}]}
    message = {"MessageId": "m-1", "ReceiptHandle": "r-1", "Body": json.dumps(body), "Attributes": {}}

    assert worker.handle_image(message) is Outcome.DONE
    [(text, attrs)] = statuses
    assert attrs["status"] == "FAILED" and attrs["job_id"] == "refused"
    assert text == ("StatusMonitor update: RequestStatus.FAILED refused: An error occurred (ValidationException) "
                    "when calling the PutItem operation: Item size has exceeded the maximum allowed size")
    row = services.jobs.get("refused:s3://images/k.tif")
    assert row.job_status == "FAILED" and row.job_id == "refused" and row.status_published is True


# ---------- the process-level heap settings: start-up objects out of the collector's sight

def test_settle_heap_freezes_start_up_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        # Cycles made afterwards are still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
