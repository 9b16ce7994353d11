"""The completion's seam merge selects what a merge of every region's result would."""

from __future__ import annotations

import json
import random
import zlib
from types import SimpleNamespace
from typing import Any

import boto3
import orjson
import pytest

from modelrunner.failpoints import Failpoints
from modelrunner.features.distill import distill
from modelrunner.features.featureset import FeatureSet, PackedFeatureSet
from modelrunner.features.seams import merge_seams
from modelrunner.local.job_features import job_feature_texts
from modelrunner.local.stack import create_resources
from modelrunner.metrics import Metrics
from modelrunner.requests import DistillationOption, ImageRequest
from modelrunner.runner.complete import _write_output, merge_regions
from modelrunner.state.jobs import JobStore
from modelrunner.state.records import RegionRecord
from tiled_detections import box_feature

# Four regions of 1000 px overlapping by 100 px (as regions of whole overlapping tiles do).
WINDOWS = [(0, 0), (900, 0), (0, 900), (900, 900)]


def region_results(seed: int) -> tuple[list[dict], dict[str, FeatureSet]]:
    rng = random.Random(seed)
    rows, results = [], {}
    for index, (col, row) in enumerate(WINDOWS):
        features = []
        for n in range(150):
            # Crowd the overlap bands so that seams hold many duplicates.
            if rng.random() < 0.5:
                x = rng.choice([col + rng.uniform(0, 120), col + rng.uniform(880, 940)])
                y = rng.uniform(row, row + 940)
            else:
                x, y = rng.uniform(col, col + 940), rng.uniform(row, row + 940)
            features.append(box_feature(index * 1000 + n, round(x), round(y), rng.choice([20, 40, 60]),
                                        rng.choice([20, 40]), round(rng.random(), 2), rng.choice("ab")))
        kept = distill(features, DistillationOption(iou_threshold=0.3))
        region_id = f"r{index}"
        rows.append(RegionRecord(image_id="img", region_id=region_id, region_index=index,
                                 region_bounds=[[row, col], [1000, 1000]]))
        results[region_id] = PackedFeatureSet.pack(FeatureSet.of(kept), 5000)
    return rows, results


@pytest.mark.parametrize("seed", range(5))
def test_seam_merge_equals_a_merge_of_everything(seed):
    rows, results = region_results(seed)
    option = DistillationOption(iou_threshold=0.3)
    everything = [f for r in rows for f in results[r.region_id].features()]
    expected = sorted(json.dumps(f, sort_keys=True) for f in distill(everything, option))
    merged = list(merge_regions(rows, results, option))
    got = sorted(json.dumps(json.loads(f), sort_keys=True) for f in merged)
    assert got == expected
    assert len(merged) < len(everything), "the seams held duplicates"


def test_soft_nms_runs_once_over_every_feature():
    rows, results = region_results(7)
    option = DistillationOption(algorithm_type="SOFT_NMS", iou_threshold=0.3)
    everything = [f for r in rows for f in results[r.region_id].features()]
    expected = sorted(json.dumps(f, sort_keys=True) for f in distill(everything, option))
    merged = list(merge_regions(rows, results, option))
    assert sorted(json.dumps(json.loads(f), sort_keys=True) for f in merged) == expected


def test_features_a_seam_merge_changes_are_relocated():
    rows, results = region_results(3)
    relocated = []

    def relocate(feature):
        relocated.append(feature["id"])
        feature["geometry"] = {"type": "Point", "coordinates": [0.0, 0.0, 0.0]}
        return feature

    merged = [json.loads(text) for text in merge_regions(
        rows, results, DistillationOption(algorithm_type="NMM", iou_threshold=0.3), relocate)]
    assert relocated, "NMM grew some boxes across the seams"
    changed = [f for f in merged if f["id"] in relocated]
    assert changed and all(f["geometry"]["type"] == "Point" for f in changed)


def test_output_order_does_not_depend_on_the_order_parts_finished_in():
    rows, results = region_results(11)
    option = DistillationOption(iou_threshold=0.3)
    first = list(merge_regions(rows, results, option))
    shuffled = list(rows)
    random.Random(2).shuffle(shuffled)
    assert list(merge_regions(shuffled, results, option)) == first


@pytest.mark.parametrize("algorithm", ["NMS", "SOFT_NMS", "NMM", "GREEDYNMM"])
def test_streamed_job_features_are_the_in_memory_merge(algorithm):
    rows, results = region_results(5)
    option = DistillationOption(algorithm_type=algorithm, iou_threshold=0.3)
    in_memory = [(w, FeatureSet.from_bytes(zlib.decompress(b"".join(p.chunks)))) for w, p in _windows(rows, results)]
    expected = merge_seams(in_memory, option).texts
    streamed = merge_regions(rows, results, option)
    assert len(streamed) == len(expected)
    assert list(streamed) == expected
    assert list(streamed) == expected, "each output streams it again"


def _windows(rows, results):
    for row in rows:
        (top, left), (width, height) = row.bounds
        yield (float(left), float(top), float(left + width), float(top + height)), results[row.region_id]


def test_a_failed_region_without_result_changes_no_selection():
    rows, results = region_results(4)
    option = DistillationOption(iou_threshold=0.3)
    missing = rows[1].region_id
    without = {k: v for k, v in results.items() if k != missing}
    empty = dict(without, **{missing: PackedFeatureSet.pack(FeatureSet.empty(), 1000)})
    assert sorted(merge_regions(rows, without, option)) == sorted(merge_regions(rows, empty, option))
    everything = [f for r in rows if r.region_id != missing for f in results[r.region_id].features()]
    expected = sorted(json.dumps(f, sort_keys=True) for f in distill(everything, option))
    assert sorted(json.dumps(json.loads(t), sort_keys=True) for t in merge_regions(rows, without, option)) == expected


# ---------- the outputs (_write_output) on moto: the Kinesis delivery checkpoint in the job row

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
