"""One worker process (started as the container starts it) against a moto server and the bundled model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from e2e_support import submit, wait_final
from osgeo import gdal

from modelrunner.local.scene import make_scene
from modelrunner.local.stack import kinesis_records
from modelrunner.state.features import FeatureStore
from modelrunner.state.jobs import JobStore
from modelrunner.state.regions import RegionStore

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    return make_scene(str(path), 1300, 1100, seed=3)


def request_for(res, job_id, url, model, model_type):
    return {
        "jobId": job_id, "jobName": job_id, "imageUrls": [url],
        "outputs": [{"type": "S3", "bucket": res.bucket, "prefix": "results/"},
                    {"type": "Kinesis", "stream": res.stream, "batchSize": 7}],
        "imageProcessor": {"name": model, "type": model_type},
        "imageProcessorTileSize": 512, "imageProcessorTileOverlap": 128,
        "imageProcessorTileFormat": "GTIFF", "imageProcessorTileCompression": "NONE",
    }


@pytest.mark.parametrize("model_type", ["SM_ENDPOINT", "HTTP_ENDPOINT"])
def test_image_request_to_merged_outputs(stack, model_server, worker_factory, scene, model_type):
    s3 = stack.client("s3")
    s3.upload_file(scene.path, stack.extra["image_bucket"], "scenes/scene.tif")
    url = f"s3://{stack.extra['image_bucket']}/scenes/scene.tif"
    model = "centerpoint" if model_type == "SM_ENDPOINT" else model_server.url + "/invocations"
    env = stack.worker_env(model_url=model_server.url, workers=4, region_size=1024)
    worker = worker_factory(env)

    # A bad request first: FAILED naming the field, its message removed, and the worker keeps serving.
    bad = request_for(stack, "bad-job", url, model, model_type)
    bad["imageProcessorTileFormat"] = "TIFF"
    submit(stack, bad)
    final, _ = wait_final(stack, "bad-job")
    assert final["attributes"]["status"] == "FAILED"
    assert "imageProcessorTileFormat" in final["message"]

    # An image that does not exist: one FAILED status that names it; the worker still serves.
    submit(stack, request_for(stack, "missing-job", url + ".missing", model, model_type))
    final, statuses = wait_final(stack, "missing-job")
    assert [s["attributes"]["status"] for s in statuses] == ["STARTED", "FAILED"]
    assert "scene.tif.missing" in final["message"]

    job_id = f"job-{model_type.lower()}"
    submit(stack, request_for(stack, job_id, url, model, model_type))
    final, statuses = wait_final(stack, job_id)
    assert worker.poll() is None, "the worker must keep running"
    assert [s["attributes"]["status"] for s in statuses] == ["STARTED", "IN_PROGRESS", "SUCCESS"]
    attrs = final["attributes"]
    assert attrs["image_id"] == f"{job_id}:{url}"
    assert float(attrs["processing_duration"]) > 0
    assert final["message"] == f"StatusMonitor update: RequestStatus.SUCCESS {job_id}: Completed image processing"

    # 1300 x 1100, tile 512, overlap 128: 4 x 3 tiles; centerpoint gives one box per tile, none overlapping.
    body = s3.get_object(Bucket=stack.bucket, Key=f"results/{job_id}.geojson")
    assert body["ContentType"] == "application/geo+json"
    collection = json.loads(body["Body"].read())
    features = collection["features"]
    assert collection["type"] == "FeatureCollection" and len(features) == 12

    dataset = gdal.Open(scene.path)
    transformer = gdal.Transformer(dataset, None, ["DST_SRS=EPSG:4326"])
    centres = set()
    for feature in features:
        props = feature["properties"]
        ring = props["imageGeometry"]["coordinates"][0]
        (maxx, miny), (_, maxy), (minx, _) = ring[0], ring[1], ring[2]
        centres.add(((minx + maxx) / 2, (miny + maxy) / 2))
        expected, _ = transformer.TransformPoints(0, [tuple(p) for p in ring])
        got = np.array(feature["geometry"]["coordinates"][0])
        assert np.allclose(got[:, :2], np.array(expected)[:, :2], atol=1e-6)
        assert np.all(got[:, 2] == 0.0)
        (cx, cy, _), = transformer.TransformPoints(0, [((minx + maxx) / 2, (miny + maxy) / 2)])[0]
        assert props["center_longitude"] == pytest.approx(cx, abs=1e-9)
        assert props["center_latitude"] == pytest.approx(cy, abs=1e-9)
        assert props["featureClasses"][0]["iri"] == "sample_object"
        assert props["inferenceMetadata"]["jobId"] == job_id
        assert "sourceMetadata" not in props
    xs = sorted({x for x, _ in centres})
    ys = sorted({y for _, y in centres})
    assert xs == [256.0, 518.0, 780.0, 1044.0] and ys == [256.0, 550.0, 844.0]

    records = kinesis_records(stack)
    assert len(records) == 12
    assert all(r["partition_key"] == job_id and len(r["data"]["features"]) == 1 for r in records)
    assert sorted(json.dumps(r["data"]["features"][0], sort_keys=True) for r in records) == \
        sorted(json.dumps(f, sort_keys=True) for f in features)

    ddb = stack.client("dynamodb")
    image_id = f"{job_id}:{url}"
    job = JobStore(ddb, stack.job_table).get(image_id)
    assert job.job_status == "SUCCESS"
    assert (job.tile_count, job.region_count, job.region_success, job.region_error) == (12, 4, 4, 0)
    regions = RegionStore(ddb, stack.region_table).all(image_id)
    assert sorted(r.region_status for r in regions) == ["SUCCESS"] * 4
    assert sum(r.total_tiles for r in regions) == 12
    assert len(FeatureStore(ddb, stack.feature_table).raw_features(image_id)) == 12
