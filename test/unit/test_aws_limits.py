"""The state layer, status publisher, region queueing and S3 sink against real AWS's limits and errors
(test/realaws.py around moto): cancellations read by their reasons, conflicts retried, limits kept or
refused before the call with AwsLimitError naming the limit, the value and the resource."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import random
import threading
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from modelrunner.errors import AwsLimitError
from modelrunner.features.featureset import FeatureSet
from modelrunner.local.stack import create_resources
from modelrunner.requests import ImageRequest, RegionRequest, S3Output
from modelrunner.runner.image import _queue_regions
from modelrunner.sinks import write_s3
from modelrunner.state import ddb
from modelrunner.state import regions as regions_module
from modelrunner.state.features import FeatureStore
from modelrunner.state.jobs import JobStore
from modelrunner.state.regions import FINAL_FIELDS_BYTES, RegionStore, fit_final_fields
from modelrunner.status import StatusPublisher
from realaws import ITEM_BYTES, SNS_BYTES, RealAws, item_size

BOUNDS = (((0, 0), (512, 512)), ((0, 400), (512, 512)))
DONE = {"start_ms": 0, "succeeded": [[[0, 0], [512, 512]]], "failed": [], "total": 1, "message": None,
        "feature_count": 1}


@pytest.fixture
def res(moto_aws: None) -> Any:
    return create_resources(None, prefix="u")


@pytest.fixture
def aws(res: Any, monkeypatch: pytest.MonkeyPatch) -> RealAws:
    monkeypatch.setattr(ddb, "CONFLICT_BACKOFF_S", 0.005)  # the same back-off, shorter, for test time
    return RealAws()


def stores(aws: RealAws, res: Any) -> tuple[JobStore, RegionStore, FeatureStore]:
    client = aws.wrap(boto3.client("dynamodb"))
    return (JobStore(client, res.job_table), RegionStore(client, res.region_table),
            FeatureStore(client, res.feature_table))


def request(job_id: str = "j1", **extra: Any) -> ImageRequest:
    return ImageRequest.from_dict({"jobId": job_id, "imageUrls": ["s3://b/k.tif"], "imageProcessor": {"name": "ep"},
                                   "outputs": [{"type": "S3", "bucket": "b", "prefix": ""}], **extra})


def started_job(jobs: JobStore, regions: RegionStore, count: int = 2) -> tuple[ImageRequest, list[RegionRequest]]:
    req = request()
    jobs.create(req)
    jobs.update(req.image_id, {"region_count": count})
    started = [RegionRequest.for_image(req, bounds) for bounds in BOUNDS[:count]]
    for i, region in enumerate(started):
        regions.plan(region, i, 1)
        regions.start(region, "w")
    return req, started


# -- DynamoDB transactions: cancellation reasons ---------------------------------------------------------------


def test_a_condition_that_failed_is_the_guarded_state(aws, res):
    jobs, regions, _ = stores(aws, res)
    req, (region, _) = started_job(jobs, regions)
    assert regions.finish(jobs, req.image_id, region.region_id, "SUCCESS", **DONE) is True
    assert regions.finish(jobs, req.image_id, region.region_id, "SUCCESS", **DONE) is False, "a redelivery"
    assert jobs.get(req.image_id).regions_done == 1


@pytest.mark.parametrize("reason", ["TransactionConflict", "ThrottlingError"])
def test_a_conflict_or_throttling_is_retried_then_succeeds(aws, res, reason):
    jobs, regions, _ = stores(aws, res)
    req, (region, _) = started_job(jobs, regions)
    aws.inject("TransactWriteItems", reason, times=2, index=1)  # the job row's counter
    assert regions.finish(jobs, req.image_id, region.region_id, "SUCCESS", **DONE) is True
    assert aws.calls["TransactWriteItems"] == 3
    assert jobs.get(req.image_id).regions_done == 1, "counted once"
    assert regions.get(req.image_id, region.region_id).region_status == "SUCCESS"


def test_two_regions_finishing_at_once_are_both_counted(res, monkeypatch):
    monkeypatch.setattr(ddb, "CONFLICT_BACKOFF_S", 0.2)
    aws = RealAws(hold_s=0.3)  # each transaction holds the job row 0.3 s: the two meet on it
    jobs, regions, _ = stores(aws, res)
    req, started = started_job(jobs, regions)
    barrier = threading.Barrier(len(started))
    results: list[bool] = []

    def finish(region: RegionRequest) -> None:
        barrier.wait()
        results.append(regions.finish(jobs, req.image_id, region.region_id, "SUCCESS", **DONE))

    threads = [threading.Thread(target=finish, args=(region,)) for region in started]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ("TransactWriteItems", "TransactionCanceledException") in aws.refusals, "they did meet"
    assert results == [True, True]
    row = jobs.get(req.image_id)
    assert (row.regions_done, row.region_success) == (2, 2)
    assert jobs.claim_completion(req.image_id, "w", 60), "the job completes (it stayed IN_PROGRESS before)"


def test_conflicts_that_do_not_end_are_raised_as_they_are(aws, res):
    jobs, regions, _ = stores(aws, res)
    req, (region, _) = started_job(jobs, regions)
    aws.inject("TransactWriteItems", "TransactionConflict", times=ddb.CONFLICT_ATTEMPTS)
    with pytest.raises(ClientError) as err:
        regions.finish(jobs, req.image_id, region.region_id, "SUCCESS", **DONE)
    assert not isinstance(err.value, AwsLimitError) and aws.calls["TransactWriteItems"] == ddb.CONFLICT_ATTEMPTS
    assert regions.get(req.image_id, region.region_id).region_status == "STARTED", "left for the redelivery"
    assert regions.finish(jobs, req.image_id, region.region_id, "SUCCESS", **DONE) is True


def test_a_refused_transaction_fails_with_its_reason(aws, res):
    jobs, regions, _ = stores(aws, res)
    req, (first, second) = started_job(jobs, regions)
    aws.inject("TransactWriteItems", "ValidationError")
    with pytest.raises(AwsLimitError, match=rf"item 0 \(table {res.region_table}\): ValidationError: Item size"):
        regions.finish(jobs, req.image_id, first.region_id, "SUCCESS", **DONE)
    # Not injected: a field that makes the row too large for DynamoDB (the wrapper replays the update). The
    # reasons are not cut to fit (the region keeps at most ten of 500 characters): one this large is refused.
    with pytest.raises(AwsLimitError, match="ValidationError: Item size to update has exceeded"):
        regions.finish(jobs, req.image_id, second.region_id, "SUCCESS", **DONE, failed_tile_reasons=["x" * 450_000])
    assert jobs.get(req.image_id).regions_done == 0


def test_a_region_of_many_tiles_fits_its_row():
    tiles = [[[x * 64, y * 64], [64, 64]] for x in range(160) for y in range(160)]  # 25,600 tiles: 700 KB
    fields = {"region_status": "PARTIAL", "succeeded_tile_count": 20_000, "failed_tile_count": 5_600,
              "succeeded_tiles": tiles[:20_000], "failed_tiles": tiles[20_000:], "message": None}
    fitted = fit_final_fields(fields)
    assert item_size(ddb.marshal(fitted)) <= FINAL_FIELDS_BYTES < ITEM_BYTES  # counted by the wrapper's rules
    kept = fitted["succeeded_tiles"]
    assert 0 < len(kept) < 20_000 and kept == tiles[:len(kept)]
    assert len(kept) + fitted["succeeded_tiles_omitted"] == 20_000
    assert fitted["failed_tiles"] == tiles[20_000:] and "failed_tiles_omitted" not in fitted, "failed tiles first"
    assert fitted["succeeded_tile_count"] == 20_000, "counts stay exact"
    worse = fit_final_fields({**fields, "succeeded_tiles": [], "failed_tiles": tiles, "message": "m" * 500_000})
    assert worse["failed_tiles"] == [] and worse["failed_tiles_omitted"] == len(tiles)
    assert worse["message"].startswith("mmm") and worse["message"].endswith(" bytes cut]")
    assert item_size(ddb.marshal(worse)) <= FINAL_FIELDS_BYTES
    assert fit_final_fields(fields := {**fields, "succeeded_tiles": tiles[:10]}) is fields, "a small row as it is"


def test_a_region_row_is_cut_to_fit_when_it_finishes(aws, res, monkeypatch):
    jobs, regions, _ = stores(aws, res)
    req, (first, second) = started_job(jobs, regions)
    tiles = [[[x * 64, y * 64], [64, 64]] for x in range(60) for y in range(50)]  # 3,000 tiles: 81 KB
    with monkeypatch.context() as patch:  # a smaller row budget: moto is slow with 400 KB of tiles
        patch.setattr(regions_module, "FINAL_FIELDS_BYTES", 60_000)
        assert regions.finish(jobs, req.image_id, first.region_id, "PARTIAL", start_ms=0, succeeded=tiles[:2_000],
                              failed=tiles[2_000:], total=len(tiles), message=None, feature_count=0)
    row = regions.get(req.image_id, first.region_id)
    assert (row.succeeded_tile_count, row.failed_tile_count) == (2_000, 1_000)
    assert len(row.succeeded_tiles) + row.succeeded_tiles_omitted == 2_000
    assert row.failed_tiles == tiles[2_000:]
    aws_limit = regions.finish(jobs, req.image_id, second.region_id, "FAILED", start_ms=0, succeeded=[], failed=[],
                               total=0, message="m" * 500_000, feature_count=0)
    assert aws_limit and regions.get(req.image_id, second.region_id).message.endswith(" bytes cut]")
    assert jobs.get(req.image_id).regions_done == 2


# -- DynamoDB keys and items -----------------------------------------------------------------------------------


def test_keys_too_long_are_refused_before_the_call(aws, res):
    # Request validation may refuse such ids earlier; the state layer does not count on it.
    jobs, regions, features = stores(aws, res)
    with pytest.raises(AwsLimitError, match=rf"partition key image_id .* is 2,\d{{3}} bytes, over the AWS limit of "
                                            rf"2,048 bytes \(table {res.job_table}\)"):
        jobs.create(dataclasses.replace(request(), image_url="s3://b/" + "k" * 2100 + ".tif"))
    assert aws.calls["PutItem"] == 0, "checked before the call"
    req = dataclasses.replace(request(), job_id="j" * 1010)  # fits the job row's key, not the region's
    assert jobs.create(req)
    with pytest.raises(AwsLimitError, match=rf"sort key region_id .* over the AWS limit of 1,024 bytes "
                                            rf"\(table {res.region_table}\)"):
        regions.plan(RegionRequest.for_image(req, BOUNDS[0]), 0, 1)
    with pytest.raises(AwsLimitError, match="partition key hash_key"):
        features.raw_items("j" * 1000 + ":" + "u" * 1100, "r", "0:0:0:0", ["{}"])


def test_a_job_row_too_large_is_refused_before_the_call(aws, res):
    jobs, _, _ = stores(aws, res)
    big = request(featureProperties=[{"note": "p" * 420_000}])  # over the item limit on its own
    with pytest.raises(AwsLimitError, match=rf"DynamoDB item \(the job row.*over the AWS limit of 409,600 bytes "
                                            rf"\(table {res.job_table}\)"):
        jobs.create(big)
    assert aws.calls["PutItem"] == 0


def mask(vertices: int) -> dict[str, Any]:
    rng = random.Random(7)
    ring = [[500 + 400 * math.cos(2 * math.pi * i / vertices) + rng.random(),
             500 + 400 * math.sin(2 * math.pi * i / vertices) + rng.random()] for i in range(vertices)]
    return {"type": "Feature", "id": "mask", "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]},
            "properties": {"imageGeometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]},
                           "imageBBox": [100, 100, 900, 900]}}


def test_a_feature_too_large_for_an_item_is_stored_and_read_back_intact(aws, res):
    _, _, features = stores(aws, res)
    big = mask(20_000)
    text = json.dumps(big)
    assert len(text) > ITEM_BYTES, "would fail its region as one item"
    small = [json.dumps({"type": "Feature", "id": f"s{i}", "properties": {"n": i}}) for i in range(50)]
    items = features.raw_items("img", "r1", "0:0:0:0", [*small[:25], text, *small[25:]])
    assert sum(1 for item in items if "feature_part" in item) >= 2
    for _ in range(2):  # a redelivered region overwrites its own items
        features.put_items(items)
    stored = features.raw_features("img")
    assert len(stored) == 51 and big in stored
    assert sorted(f["id"] for f in stored if f["id"] != "mask") == sorted(f"s{i}" for i in range(50))
    # The region's merged result too: compressed chunks, each within an item, read by another worker.
    chunks = features.put_region_result("img", "r1", "a1", FeatureSet.of([big, *map(json.loads, small)]))
    assert FeatureStore(features.client, features.table).region_results("img", {"r1": ("a1", chunks)})[
        "r1"].features()[0] == big


# -- SNS -------------------------------------------------------------------------------------------------------


def publisher(aws: RealAws, res: Any) -> StatusPublisher:
    return StatusPublisher(aws.wrap(boto3.client("sns")), res.image_topic, res.region_topic)


def test_a_long_failed_tile_list_is_cut_to_fit_sns_and_says_so(aws, res):
    sent: list[dict[str, Any]] = []
    status = publisher(aws, res)
    status.sns.meta.events.register("before-parameter-build.sns.Publish", lambda params, **_: sent.append(params))
    tiles = [[[x * 512, y * 512], [512, 512]] for x in range(100) for y in range(100)]
    assert status.region("PARTIAL", "j1", "j1:s3://b/k", "r1", 1234, tiles) is True
    attrs = sent[0]["MessageAttributes"]
    kept = ast.literal_eval(attrs["failed_tiles"]["StringValue"])
    omitted = int(attrs["failed_tiles_omitted"]["StringValue"])
    assert kept and len(kept) + omitted == len(tiles) and omitted > 0
    assert kept == [{str(i + 1): tile} for i, tile in enumerate(tiles[:len(kept)])], "the first tiles, in order"
    assert len(sent[0]["Message"].encode()) + sum(len(k) + len(v["DataType"]) + len(v["StringValue"].encode())
                                                  for k, v in attrs.items()) <= SNS_BYTES
    assert status.region("PARTIAL", "j1", "j1:s3://b/k", "r1", 1234, tiles[:3]) is True
    assert "failed_tiles_omitted" not in sent[1]["MessageAttributes"], "a short list is sent whole"
    assert status.image("FAILED", "j1", "j1:s3://b/k", "why " * 100_000) is True
    assert sent[2]["Message"].startswith("StatusMonitor update: RequestStatus.FAILED j1: why why")
    assert sent[2]["Message"].endswith(" bytes cut]") and len(sent[2]["Message"]) <= SNS_BYTES
    assert not aws.refusals


def test_a_status_publish_tells_its_caller_whether_sns_took_it(aws, res):
    status = publisher(aws, res)
    assert status.image("SUCCESS", "j1", "i", "done", 1.5) is True
    assert StatusPublisher(None, None, None).image("SUCCESS", "j1", "i", "done") is True, "no topic: nothing to send"
    aws.inject("Publish", "Throttling")  # still throttled after boto3's retries
    assert status.image("SUCCESS", "j1", "i", "done", 1.5) is False
    aws.inject("Publish", "InvalidParameter")  # refused for good: logged, and the status stays pending (its
    assert status.image("SUCCESS", "j1", "i", "done", 1.5) is False  # message ends in the DLQ, not a failed job)


# -- SQS and S3 ------------------------------------------------------------------------------------------------


def test_region_messages_keep_to_sqs_limits(aws, res):
    sqs = aws.wrap(boto3.client("sqs"))
    services = SimpleNamespace(aws=SimpleNamespace(sqs=sqs), settings=SimpleNamespace(region_queue=res.region_queue))
    req = request(imageProcessorParameters={"prompt": "p" * 60_000})  # each region message carries it
    regions = [RegionRequest.for_image(req, ((row * 512, 0), (512, 512))) for row in range(12)]
    _queue_regions(services, regions)
    assert not aws.refusals and aws.calls["SendMessageBatch"] == 3, "4 messages of 60 KB a call"
    got = set()
    while len(got) < 12:
        for message in sqs.receive_message(QueueUrl=res.region_queue, MaxNumberOfMessages=10).get("Messages", []):
            got.add(json.loads(message["Body"])["region_id"])
    assert got == {r.region_id for r in regions}
    too_big = request(imageProcessorParameters={"prompt": "p" * 270_000})
    with pytest.raises(AwsLimitError, match=rf"region message for .* is 270,\d{{3}} bytes, over the AWS limit of "
                                            rf"262,144 bytes \(queue {res.region_queue}\)"):
        _queue_regions(services, [RegionRequest.for_image(too_big, BOUNDS[0])] * 2)
    assert aws.calls["SendMessageBatch"] == 3, "nothing sent"
    aws.inject("SendMessageBatch", "InvalidParameterValue")  # what SQS refuses as it is: permanent
    with pytest.raises(AwsLimitError, match=f"sqs refused SendMessageBatch on queue {res.region_queue}"):
        _queue_regions(services, regions[:1])
    aws.inject("SendMessageBatch", "ServiceUnavailable")  # after boto3's retries: transient, raised as it is
    with pytest.raises(ClientError) as err:
        _queue_regions(services, regions[:1])
    assert not isinstance(err.value, AwsLimitError)


def test_an_s3_key_too_long_is_refused_before_the_upload(aws, res):
    s3 = aws.wrap(boto3.client("s3"))
    output = S3Output(bucket=res.bucket, prefix="p" * 1000)
    with pytest.raises(AwsLimitError, match=rf"S3 object key .* is 1,0\d\d bytes, over the AWS limit of 1,024 bytes "
                                            rf"\(bucket {res.bucket}\)"):
        write_s3(s3, output, "job-" + "j" * 30, [{"type": "Feature", "properties": {}}])
    assert aws.calls["HeadBucket"] == 0 and aws.calls["PutObject"] == 0
    assert write_s3(s3, S3Output(bucket=res.bucket, prefix="p" * 900), "job-1", []).features_written == 0
