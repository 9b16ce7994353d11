"""Typed job and region records (state/records.py): the items the stores write are, attribute for attribute,
the ones written before the records existed (``data/state_items.json``, snapshot of the dict-based stores),
and records survive the round trip through an item, unknown attributes included."""

from __future__ import annotations

import json
import time
import types
from pathlib import Path
from typing import Any

import boto3
import pytest

from modelrunner.local.stack import create_resources
from modelrunner.requests import ImageRequest, RegionRequest
from modelrunner.state import ddb
from modelrunner.state import jobs as jobs_module
from modelrunner.state.jobs import JobStore
from modelrunner.state.records import JobRecord, RegionRecord
from modelrunner.state.regions import RegionStore

SNAPSHOT = Path(__file__).parent / "data" / "state_items.json"
NOW_S = 1_765_000_000.125  # the frozen clock the snapshot was taken with
REQUEST = {"jobId": "j1", "imageUrls": ["s3://b/k.ntf"], "imageProcessor": {"name": "ep", "type": "SM_ENDPOINT"},
           "outputs": [{"type": "S3", "bucket": "b", "prefix": "p/"}, {"type": "Kinesis", "stream": "s"}],
           "imageProcessorTileSize": 512, "imageProcessorTileOverlap": 64, "imageProcessorTileFormat": "GTIFF",
           "regionOfInterest": "POLYGON ((0 0, 1 0, 1 1, 0 1, 0 0))", "featureProperties": [{"a": 1}],
           "imageReadRole": "arn:aws:iam::123456789012:role/read",
           "postProcessing": [{"step": "FEATURE_DISTILLATION",
                               "algorithm": {"algorithmType": "SOFT_NMS", "iouThreshold": 0.5}}]}


@pytest.fixture
def written(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every kind of job and region item, written through the stores as the runner writes them."""
    clock = types.SimpleNamespace(time=lambda: NOW_S, sleep=time.sleep)
    monkeypatch.setattr(ddb, "time", clock)
    monkeypatch.setattr(jobs_module, "time", clock)
    res = create_resources(None, prefix="u")
    client = boto3.client("dynamodb")
    jobs, regions = JobStore(client, res.job_table), RegionStore(client, res.region_table)

    def job_item(image_id: str) -> dict[str, Any]:
        return client.get_item(TableName=res.job_table, Key=ddb.marshal({"image_id": image_id}))["Item"]

    def region_item(region: RegionRequest) -> dict[str, Any]:
        return client.get_item(TableName=res.region_table, Key=regions.key(region.image_id, region.region_id))["Item"]

    req = ImageRequest.from_dict(REQUEST)
    out: dict[str, Any] = {}
    jobs.create(req, message_id="m-1")
    out["job_created"] = job_item(req.image_id)
    jobs.create_failed("bad:x", "bad", "x", "jobId: missing")
    out["job_failed"] = job_item("bad:x")
    r0 = RegionRequest.for_image(req, ((0, 0), (2048, 2048)), "NITF")
    r1 = RegionRequest.for_image(req, ((0, 2048), (1000, 2048)), "NITF")
    regions.plan(r0, 0, 16)
    regions.plan(r1, 1, 8)
    out["region_planned"] = region_item(r1)
    regions.start(r0, "w-1")
    out["region_started"] = region_item(r0)
    r2 = RegionRequest.for_image(req, ((2048, 0), (100, 100)), "NITF")  # a region message whose row was never planned
    regions.start(r2, "w-2")
    out["region_started_unplanned"] = region_item(r2)
    jobs.update(req.image_id, {"region_count": 2})
    regions.finish(jobs, req.image_id, r0.region_id, "PARTIAL", start_ms=1_765_000_000_000,
                   succeeded=[[[0, 0], [512, 512]]], failed=[[[0, 448], [512, 512]]], total=2,
                   message="1 of 2 tiles failed: boom (1 tile)", feature_count=3, result_chunks=1,
                   result_attempt="w-1@1765000000000", raw_feature_count=5, failed_tile_reasons=["boom (1 tile)"])
    out["region_finished"] = region_item(r0)
    regions.finish(jobs, req.image_id, r1.region_id, "FAILED", start_ms=1_765_000_000_000, succeeded=[], failed=[],
                   total=0, message="Failed to process image region: no", feature_count=0, result_chunks=0,
                   result_attempt="w-1@1765000000001", raw_feature_count=0, failed_tile_reasons=None)
    out["region_failed"] = region_item(r1)
    jobs.update_unfinished(req.image_id, {"width": 3000, "height": 2048, "tile_count": 24, "extents": None,
                                          "image_extension": "NITF", "sensor_model": "NONE",
                                          "job_status": "IN_PROGRESS"})
    jobs.checkpoint_output(req.image_id, "kinesis:s/jobId/1", "0-2")
    jobs.end(req.image_id, "PARTIAL", "1 of 2 tiles failed", {"feature_count": 3, "raw_feature_count": 5,
                                                               "failed_tile_count": 1, "outputs_written": '["s3"]'})
    out["job_ended"] = job_item(req.image_id)
    row = regions.get(req.image_id, r0.region_id)
    assert row is not None
    regions.reopen(req.image_id, row)
    out["region_reopened"] = region_item(r0)
    return out


def test_items_are_those_written_before_the_records(written: dict[str, Any]) -> None:
    snapshot = json.loads(SNAPSHOT.read_text())
    assert sorted(written) == sorted(snapshot)
    for name, item in written.items():
        assert item == snapshot[name], name


def test_every_written_item_round_trips_through_its_record(written: dict[str, Any]) -> None:
    for name, raw in written.items():
        item = ddb.unmarshal(raw)
        record = (JobRecord if name.startswith("job") else RegionRecord).from_item(item)
        assert record.extra == {}, f"{name}: every attribute the stores write is a field"
        assert record.to_item() == item, name
        assert ddb.marshal(record.to_item()) == raw, name


def test_the_records_read_back_typed(written: dict[str, Any]) -> None:
    job = JobRecord.from_item(ddb.unmarshal(written["job_ended"]))
    assert job.ended and job.publication_pending and job.job_status == "PARTIAL"
    assert job.delivered == {"kinesis:s/jobId/1": "0-2"}
    assert JobStore.output_checkpoint(job, "kinesis:s/jobId/1") == "0-2"
    assert job.image_request() == ImageRequest.from_dict(REQUEST), "the request rebuilt from its columns"
    region = RegionRecord.from_item(ddb.unmarshal(written["region_reopened"]))
    assert region.is_rerun and region.bounds == ((0, 0), (2048, 2048)) and region.index == 0
    unplanned = RegionRecord.from_item(ddb.unmarshal(written["region_started_unplanned"]))
    assert unplanned.region_index is None and unplanned.index == 0 and not unplanned.is_rerun


JOB_ROWS = [
    JobRecord(image_id="j:u"),
    JobRecord(image_id="j:u", job_id="j", image_url="u", start_time=5, end_time=9, job_status="FAILED",
              status_reason="why", status_published=False, status_publishing=1.5),
    JobRecord(image_id="j:u", runs=["m1", "m2"], regions_done=3, region_count=3, regions_queued=True,
              timeline=[{"at": 1, "event": "queued", "detail": "x"}], delivered={"kinesis:s/jobId/1": "0-4"},
              extra={"added_by_a_newer_worker": {"nested": [1, 2.5, "x"]}}),
]
REGION_ROWS = [
    RegionRecord(image_id="j:u", region_id="j-r"),
    RegionRecord(image_id="j:u", region_id="j-r", region_index=2, region_status="PARTIAL",
                 region_bounds=[[0, 0], [512, 512]], failed_tiles=[[[0, 0], [512, 512]]], succeeded_tiles=[],
                 failed_tile_reasons=["boom (1 tile)"], result_attempt="w@1", result_chunks=2),
    RegionRecord(image_id="j:u", region_id="j-r", rerun_tiles=[], prior_chunks=0, extra={"future": True}),
]


@pytest.mark.parametrize("record", JOB_ROWS + REGION_ROWS)
def test_record_round_trip(record: JobRecord | RegionRecord) -> None:
    assert type(record).from_item(record.to_item()) == record
    assert type(record).from_item(ddb.unmarshal(ddb.marshal(record.to_item()))) == record, "through DynamoDB JSON"


def test_older_rows_load_with_defaults_and_unknown_attributes_are_kept() -> None:
    older = {"image_id": "j:u", "job_id": "j", "image_url": "u", "start_time": 1, "processing_duration": 0,
             "region_count": 0, "region_success": 0, "region_error": 0, "job_status": "STARTED"}
    job = JobRecord.from_item(older)
    assert job.regions_done is None and job.runs is None and not job.ended and job.to_item() == older
    newer = {**older, "priority": 7, "delivered:kinesis:s/jobId/1": "0"}
    job = JobRecord.from_item(newer)
    assert job.extra == {"priority": 7} and job.delivered == {"kinesis:s/jobId/1": "0"}
    assert job.to_item() == newer
    region = RegionRecord.from_item({"image_id": "j:u", "region_id": "r", "shard": "a"})
    assert region.extra == {"shard": "a"} and region.total_tiles is None and region.succeeded_tile_count == 0
