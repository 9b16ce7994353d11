"""Job, region and feature state against moto in-process: conditional writes make each step once-only."""

import json
import os

import boto3
import pytest

from modelrunner.features.featureset import FeatureSet, PackedFeatureSet
from modelrunner.local.stack import create_resources
from modelrunner.requests import ImageRequest, RegionRequest
from modelrunner.state.features import FeatureStore, OwnResults
from modelrunner.state.jobs import JobStore
from modelrunner.state.regions import RegionStore
from modelrunner.status import StatusPublisher


@pytest.fixture
def res(moto_aws):
    return create_resources(None, prefix="u")  # endpoint None: boto3 goes to moto's in-process mock


@pytest.fixture
def stores(res):
    ddb = boto3.client("dynamodb")
    return JobStore(ddb, res.job_table), RegionStore(ddb, res.region_table), FeatureStore(ddb, res.feature_table)


def request():
    return ImageRequest.from_dict({"jobId": "j1", "imageUrls": ["s3://b/k.tif"], "imageProcessor": {"name": "ep"},
                                   "outputs": [{"type": "S3", "bucket": "b", "prefix": ""}]})


ONE_TILE_DONE = {"start_ms": 0, "succeeded": [[[0, 0], [512, 512]]], "failed": [], "total": 1, "message": None,
                 "feature_count": 1}


def started_job(jobs, regions, *bounds):
    """A job with one planned, started region per bounds."""
    req = request()
    jobs.create(req)
    jobs.update(req.image_id, {"region_count": len(bounds)})
    started = [RegionRequest.for_image(req, b) for b in bounds]
    for i, r in enumerate(started):
        regions.plan(r, i, 1)
        regions.start(r, "w")
    return req, started


def test_job_is_created_once_and_ended_once(stores):
    jobs, _, _ = stores
    req = request()
    assert jobs.create(req) is True
    assert jobs.create(req) is False
    row = jobs.get(req.image_id)
    assert row.job_status == "STARTED" and row.tile_size == "(1024, 1024)"
    assert row.feature_distillation_option == '{"algorithm_type": "NMS", "iou_threshold": 0.75}'
    assert row.expire_time == row.start_time // 1000 + 86400
    assert jobs.end(req.image_id, "SUCCESS", "done") > 0
    assert jobs.end(req.image_id, "FAILED", "again") is None
    assert jobs.get(req.image_id).job_status == "SUCCESS"


def test_a_request_as_large_as_an_sqs_message_fits_its_job_row(stores):
    """SQS takes 256 KiB; featureProperties padding or a long ROI stored twice made the row exceed DynamoDB's
    400 KB item limit (moto enforces it), and the job failed before it had a row."""
    jobs, _, _ = stores
    ring = ", ".join(f"{10 + i * 1e-6:.6f} 50.000000" for i in range(4000)) + ", 10.01 49.99, 10.000000 50.000000"
    raw = {"jobId": "big", "imageUrls": ["s3://b/k.tif"], "imageProcessor": {"name": "ep"},
           "outputs": [{"type": "S3", "bucket": "b", "prefix": ""}], "regionOfInterest": f"POLYGON (({ring}))",
           "featureProperties": [{"padding": "x" * 160_000}]}
    assert 240_000 < len(json.dumps(raw)) < 262_144
    req = ImageRequest.from_dict(raw)
    assert jobs.create(req) is True
    row = jobs.get(req.image_id)
    assert json.loads(row.feature_properties) == raw["featureProperties"]
    assert row.roi_wkt == raw["regionOfInterest"]
    assert ImageRequest.from_dict(json.loads(row.request)).outputs == req.outputs


def test_regions_count_once_and_exactly_one_worker_completes(stores):
    jobs, regions, _ = stores
    req, (r1, r2) = started_job(jobs, regions, ((0, 0), (512, 512)), ((0, 400), (512, 512)))
    kwargs = {**ONE_TILE_DONE, "feature_count": 3}
    assert regions.finish(jobs, req.image_id, r1.region_id, "SUCCESS", **kwargs) is True
    assert regions.finish(jobs, req.image_id, r1.region_id, "SUCCESS", **kwargs) is False, "redelivery"
    assert jobs.claim_completion(req.image_id, "w1", 60) is False, "one region still open"
    assert regions.finish(jobs, req.image_id, r2.region_id, "PARTIAL", **{**kwargs, "failed": [[[0, 0], [1, 1]]]})
    row = jobs.get(req.image_id)
    assert (row.regions_done, row.region_success, row.region_error) == (2, 1, 1)
    assert jobs.claim_completion(req.image_id, "w1", 60) is True
    assert jobs.claim_completion(req.image_id, "w2", 60) is False
    assert jobs.claim_completion(req.image_id, "w3", -1) is True, "a stale claim is taken over"
    assert [r.region_status for r in sorted(regions.all(req.image_id), key=lambda r: r.region_index)] == \
        ["SUCCESS", "PARTIAL"]


def test_raw_features_overwrite_on_redelivery_and_region_results_round_trip(stores):
    _, _, features = stores
    tile_features = [{"type": "Feature", "properties": {"n": i, "pad": "x" * 5000}} for i in range(100)]
    texts = [json.dumps(f) for f in tile_features]
    for _ in range(2):
        items = features.raw_items("img", "r1", "0:0:0:0", texts)
        assert len(items) == 3, "chunked well under 400 KB"
        features.put_items(items)
    assert sorted(f["properties"]["n"] for f in features.raw_features("img")) == list(range(100))
    big = [{"type": "Feature", "id": str(i), "properties": {"imageBBox": [i, 2, i + 5, 9], "blob": i * 7919 % 100003}}
           for i in range(30000)]
    chunks = features.put_region_result("img", "r1", "a1", FeatureSet.of(big))
    features.put_region_result("img", "r1", "a0", FeatureSet.of(big[:10]))  # a losing duplicate
    features.put_region_result("img", "r2", "a1", FeatureSet.of([]))
    finished = {"r1": ("a1", chunks), "r2": ("a1", 1)}
    other_worker = FeatureStore(features.client, features.table)
    for store in (features, other_worker):  # from this worker's memory, and read from the table
        out = store.region_results("img", finished)
        assert out["r1"].features() == big and out["r2"].features() == []
        assert out["r1"].boxes.shape == (30000, 4) and list(out["r1"].boxes[7]) == [7, 2, 12, 9]
    assert features.region_results("img", finished)["r1"] is features.own.get("img", "r1", "a1")
    assert other_worker.region_results("img", {"r1": ("a0", 1)})["r1"].features() == big[:10]
    features.forget("img")
    assert features.own.get("img", "r1", "a1") is None
    assert features.region_results("img", finished)["r1"].features() == big, "read back once forgotten"
    with pytest.raises(RuntimeError, match="r1: 1 of 2 result chunks"):
        other_worker.region_results("img", {"r1": ("a0", 2)})


def test_own_results_keep_the_newest_within_their_bytes():
    def packed(n: int, text_bytes: int) -> PackedFeatureSet:
        features = [{"type": "Feature", "properties": {"r": os.urandom(text_bytes // 2).hex()}} for _ in range(n)]
        return PackedFeatureSet.pack(FeatureSet.of(features), 1 << 20)

    sets = [packed(3, 300) for _ in range(3)]
    size = max(p.nbytes for p in sets)
    own = OwnResults(max_bytes=int(2.5 * size))
    for n, result in enumerate(sets):
        own.put("img", f"r{n}", "a", result)
    assert own.get("img", "r0", "a") is None, "the oldest went when the third came"
    assert own.get("img", "r1", "a") is sets[1] and own.get("img", "r2", "a") is sets[2]
    assert own.get("img", "r2", "another attempt") is None
    own.put("img", "huge", "a", packed(3, 3 * size))
    assert own.get("img", "huge", "a") is None and own.get("img", "r2", "a") is sets[2], "too big to keep"
    own.put("img", "r2", "a", sets[2])  # stored again: counted once
    own.put("img", "r1", "a", sets[1])
    assert own.get("img", "r2", "a") is sets[2], "two entries fit however often they were stored"
    own.put("other", "r0", "a", sets[0])
    own.forget("img")
    assert own.get("img", "r2", "a") is None and own.get("other", "r0", "a") is sets[0]


def test_status_messages_are_the_references():
    sent = []

    class Sns:
        def publish(self, **kwargs):
            sent.append(kwargs)

    status = StatusPublisher(Sns(), "arn:image", "arn:region")
    status.image("SUCCESS", "j1", "j1:s3://b/k", "Completed image processing", 0.25)
    status.region("PARTIAL", "j1", "j1:s3://b/k", "(0, 0)(5, 5)-j1", 1234, [[[0, 0], [512, 512]]])
    status.image("STARTED", "j1", "j1:s3://b/k", "Started image request")
    image, region, started = sent
    assert image["Message"] == "StatusMonitor update: RequestStatus.SUCCESS j1: Completed image processing"
    assert image["MessageAttributes"]["processing_duration"] == {"DataType": "String", "StringValue": "0.25"}
    assert set(image["MessageAttributes"]) == {"status", "job_id", "image_id", "image_status", "processing_duration"}
    assert region["MessageAttributes"]["failed_tiles"]["StringValue"] == "[{'1': [[0, 0], [512, 512]]}]"
    assert region["MessageAttributes"]["processing_duration"]["StringValue"] == "1234"
    assert "processing_duration" not in started["MessageAttributes"]


def test_a_region_finished_meanwhile_is_not_reopened_nor_counted_twice(stores):
    jobs, regions, _ = stores
    req, (region, _) = started_job(jobs, regions, ((0, 0), (512, 512)), ((0, 400), (512, 512)))
    # Worker b read the row while it was STARTED (a duplicate delivery); worker a then finishes it.
    stale = regions.get(req.image_id, region.region_id)
    kwargs = ONE_TILE_DONE
    assert regions.finish(jobs, req.image_id, region.region_id, "SUCCESS", **kwargs)
    original_get = regions.get
    reads = iter([stale])  # b's first read happened before a's finish
    regions.get = lambda *a: next(reads, None) or original_get(*a)
    try:
        after = regions.start(region, "b")
    finally:
        regions.get = original_get
    assert after.region_status == "SUCCESS", "b is told the region is finished"
    regions.progress(req.image_id, region.region_id, 1, 0, 0)
    assert not regions.finish(jobs, req.image_id, region.region_id, "SUCCESS", **kwargs)
    row = regions.get(req.image_id, region.region_id)
    assert (row.region_status, row.succeeded_tile_count) == ("SUCCESS", 1)
    assert jobs.get(req.image_id).regions_done == 1


def test_a_finished_job_is_not_reopened_and_claims_are_renewed_by_their_owner(stores):
    jobs, _, _ = stores
    req = request()
    jobs.create(req)
    jobs.update(req.image_id, {"region_count": 1, "regions_done": 1})
    assert jobs.claim_completion(req.image_id, "w1", 60)
    assert jobs.renew_claim(req.image_id, "w1") and not jobs.renew_claim(req.image_id, "w2")
    assert jobs.update_unfinished(req.image_id, {"width": 10})
    jobs.end(req.image_id, "SUCCESS", "done")
    assert not jobs.update_unfinished(req.image_id, {"job_status": "IN_PROGRESS"})
    assert jobs.get(req.image_id).job_status == "SUCCESS"
    assert jobs.create_failed("bad:x", "bad", "x", "reason") is True
    assert jobs.create_failed("bad:x", "bad", "x", "reason") is False


def test_output_checkpoints_are_saved_per_output_until_the_job_ends(stores):
    jobs, _, _ = stores
    req = request()
    assert not jobs.checkpoint_output(req.image_id, "kinesis:s", "0-3"), "no job row: nothing written"
    jobs.create(req)
    assert jobs.checkpoint_output(req.image_id, "kinesis:s", "0-3")
    assert jobs.checkpoint_output(req.image_id, "kinesis:s", "0-5,7")
    assert jobs.checkpoint_output(req.image_id, "kinesis:other", "1")
    row = jobs.get(req.image_id)
    assert JobStore.output_checkpoint(row, "kinesis:s") == "0-5,7"
    assert JobStore.output_checkpoint(row, "kinesis:other") == "1"
    assert JobStore.output_checkpoint(row, "kinesis:none") == ""
    jobs.end(req.image_id, "SUCCESS", "done")
    assert not jobs.checkpoint_output(req.image_id, "kinesis:s", "0-9")
    assert JobStore.output_checkpoint(jobs.get(req.image_id), "kinesis:s") == "0-5,7"


def test_raw_items_are_cut_by_utf8_bytes_not_characters():
    from modelrunner.state.features import ITEM_BYTES, FeatureStore

    texts = ['{"name":"' + "東" * 20_000 + '"}'] * 12  # 60,011 bytes each, 20,011 characters
    items = FeatureStore(None, "t").raw_items("img", "r1", "0:0:0:0", texts)
    sizes = [sum(len(t.encode()) for t in item["features"]) for item in items]
    assert max(sizes) <= ITEM_BYTES and sum(len(item["features"]) for item in items) == 12


def test_raw_items_are_written_as_the_generic_marshaller_would_write_them():
    from modelrunner.state import ddb
    from modelrunner.state.features import FeatureStore

    sent: list[dict] = []

    class Client:
        def batch_write_item(self, RequestItems):  # noqa: N803 (boto3's name)
            sent.extend(RequestItems["t"])
            return {}

    store = FeatureStore(Client(), "t")
    items = store.raw_items("img", "r1", "0:0:0:0", ['{"a":1}', '{"b":"é"}'])
    store.put_items(items)
    assert [r["PutRequest"]["Item"] for r in sent] == [ddb.marshal(item) for item in items]
