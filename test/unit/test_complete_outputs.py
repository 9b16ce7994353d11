"""A completion's outputs (runner/complete.py ``_write_output``) on moto: the Kinesis delivery checkpoint is
read from and saved to the job row, so a completion that follows a crashed one skips what was confirmed;
an S3 output gets the job's description (STAC Item footprint and request)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import boto3
import orjson
import pytest

from modelrunner.failpoints import Failpoints
from modelrunner.local.job_features import job_feature_texts
from modelrunner.local.stack import create_resources
from modelrunner.metrics import Metrics
from modelrunner.requests import ImageRequest
from modelrunner.runner.complete import _write_output
from modelrunner.state.jobs import JobStore

STREAM = "out-stream"


@pytest.fixture
def env(moto_aws: None) -> SimpleNamespace:
    res = create_resources(None, prefix="c")  # endpoint None: boto3 goes to moto's in-process mock
    kinesis = boto3.client("kinesis")
    kinesis.create_stream(StreamName=STREAM, ShardCount=1)
    jobs = JobStore(boto3.client("dynamodb"), res.job_table)
    clients = SimpleNamespace(kinesis=kinesis, s3=boto3.client("s3"))
    services = SimpleNamespace(aws=SimpleNamespace(for_role=lambda role: clients), jobs=jobs,
                               settings=SimpleNamespace(kinesis_shard_limits=True), failpoints=Failpoints(),
                               metrics=Metrics(enabled=False))
    return SimpleNamespace(res=res, kinesis=kinesis, jobs=jobs, services=services, s3=clients.s3)


def make_request(res: Any) -> ImageRequest:
    return ImageRequest.from_dict({
        "jobId": "j-ck", "imageUrls": ["s3://images/scene.tif"], "imageProcessor": {"name": "flood"},
        "outputs": [{"type": "Kinesis", "stream": STREAM, "featuresPerRecord": 10},
                    {"type": "S3", "bucket": res.bucket, "prefix": "r/", "formats": ["GeoParquet"], "stacItem": True}],
    })


def stream_ids(kinesis: Any) -> list[str]:
    shard = kinesis.list_shards(StreamName=STREAM)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=STREAM, ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records = kinesis.get_records(ShardIterator=iterator, Limit=10_000)["Records"]
    return [f["id"] for r in records for f in json.loads(r["Data"])["features"]]


def test_a_completion_after_a_crash_skips_the_chunks_the_job_row_says_were_delivered(env: SimpleNamespace) -> None:
    request = make_request(env.res)
    env.jobs.create(request)
    key = f"kinesis:{STREAM}/jobId/10"
    # The crashed completion confirmed chunks 0 and 1 (features 0-1999) before it died.
    assert env.jobs.checkpoint_output(request.image_id, key, "0-1")
    texts = list(job_feature_texts(2500, seed=5, job_id=request.job_id))
    job = env.jobs.get(request.image_id)

    result, reason = _write_output(env.services, request.job_id, request.outputs[0], texts, request=request, job=job)

    assert reason is None and result is not None
    assert (result.features_written, result.features_failed) == (2500, 0)
    assert stream_ids(env.kinesis) == [orjson.loads(t)["id"] for t in texts[2000:]], "only the unconfirmed chunk"
    assert JobStore.output_checkpoint(env.jobs.get(request.image_id), key) == "0-2"

    # Once everything is confirmed, yet another completion sends nothing at all.
    again, _ = _write_output(env.services, request.job_id, request.outputs[0], texts, request=request,
                             job=env.jobs.get(request.image_id))
    assert again is not None and again.features_written == 2500
    assert len(stream_ids(env.kinesis)) == 500


def test_an_unreadable_checkpoint_resends_everything_rather_than_skip(env: SimpleNamespace) -> None:
    request = make_request(env.res)
    env.jobs.create(request)
    env.jobs.checkpoint_output(request.image_id, f"kinesis:{STREAM}/jobId/10", "garbage")
    texts = list(job_feature_texts(1200, seed=6))

    result, _ = _write_output(env.services, request.job_id, request.outputs[0], texts, request=request,
                              job=env.jobs.get(request.image_id))

    assert result is not None and result.features_written == 1200
    assert len(stream_ids(env.kinesis)) == 1200


def test_an_s3_output_gets_the_jobs_footprint_for_its_stac_item(env: SimpleNamespace) -> None:
    request = make_request(env.res)
    env.jobs.create(request)
    env.jobs.update(request.image_id, {"extents": json.dumps({"north": 1.0, "south": 0.0, "east": 3.0, "west": 2.0}),
                                       "sensor_model": "AFFINE", "width": 100, "height": 100})

    result, reason = _write_output(env.services, request.job_id, request.outputs[1], list(job_feature_texts(10)),
                                   request=request, job=env.jobs.get(request.image_id))

    assert reason is None and result is not None
    assert result.locations == [f"s3://{env.res.bucket}/r/j-ck.parquet", f"s3://{env.res.bucket}/r/j-ck.stac-item.json"]
    item = json.loads(env.s3.get_object(Bucket=env.res.bucket, Key="r/j-ck.stac-item.json")["Body"].read())
    assert item["bbox"] == [2.0, 0.0, 3.0, 1.0]
