"""Many workers, one image: region fan-out, crash safety, graceful stop (issue: region fan-out).

Each test runs a clean one-worker job and the scenario on the same scene and the same deterministic model
(flood, seeded by tile bytes), and compares outputs feature for feature.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from e2e_support import submit, wait_final

from modelrunner.local.scene import make_scene
from modelrunner.local.stack import start_model
from modelrunner.state.features import FeatureStore
from modelrunner.state.jobs import JobStore
from modelrunner.state.regions import RegionStore

pytestmark = pytest.mark.e2e

# 2000 x 1800, tile 512 / overlap 128, regions of 1024: 5 x 5 tiles in 3 x 3 = 9 regions of <= 2 x 2 tiles.
WIDTH, HEIGHT, TILES, REGIONS, PER_TILE = 2000, 1800, 25, 9, 6


@pytest.fixture(scope="module")
def scene_url(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "fanout.tif"
    return make_scene(str(path), WIDTH, HEIGHT, seed=11).path


@pytest.fixture(scope="module")
def slow_flood():
    """A deterministic model slow enough (80 ms a tile) that work overlaps and can be interrupted."""
    proc = start_model("flood", options={"flood_count": PER_TILE, "seed": 5, "delay_ms": 80})
    yield proc
    proc.stop()


def upload(stack, path):
    stack.client("s3").upload_file(path, stack.extra["image_bucket"], "fanout.tif")
    return f"s3://{stack.extra['image_bucket']}/fanout.tif"


def request(stack, job_id, url):
    return {"jobId": job_id, "imageUrls": [url], "imageProcessor": {"name": "flood", "type": "SM_ENDPOINT"},
            "outputs": [{"type": "S3", "bucket": stack.bucket, "prefix": ""}],
            "imageProcessorTileSize": 512, "imageProcessorTileOverlap": 128, "imageProcessorTileFormat": "GTIFF"}


def comparable(stack, job_id):
    """The job's output features without what legitimately differs between runs (job id, times)."""
    body = stack.client("s3").get_object(Bucket=stack.bucket, Key=f"{job_id}.geojson")["Body"].read()
    out = []
    for feature in json.loads(body)["features"]:
        feature["properties"].pop("inferenceMetadata")
        out.append(json.dumps(feature, sort_keys=True))
    return sorted(out)


def env_for(stack, model, **extra):
    return stack.worker_env(model_url=model.url, workers=2, region_size=1024, visibility_timeout=4, **extra)


def run_clean(stack, model, worker_factory, url, job_id="clean"):
    worker = worker_factory(env_for(stack, model), name="clean")
    submit(stack, request(stack, job_id, url))
    final, _ = wait_final(stack, job_id)
    assert final["attributes"]["status"] == "SUCCESS"
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    return comparable(stack, job_id)


def image_id(stack, job_id, url):
    return f"{job_id}:{url}"


def test_two_workers_share_regions_and_match_one_worker(stack, slow_flood, worker_factory, scene_url):
    url = upload(stack, scene_url)
    clean = run_clean(stack, slow_flood, worker_factory, url)
    assert len(clean) > 0

    workers = [worker_factory(env_for(stack, slow_flood), name=f"w{i}") for i in range(2)]
    submit(stack, request(stack, "two", url))
    final, statuses = wait_final(stack, "two")
    assert final["attributes"]["status"] == "SUCCESS"
    assert [s["attributes"]["status"] for s in statuses].count("SUCCESS") == 1
    rows = RegionStore(stack.client("dynamodb"), stack.region_table).all(image_id(stack, "two", url))
    assert len(rows) == REGIONS and all(r.region_status == "SUCCESS" for r in rows)
    by_worker = {r.worker.rsplit(":", 1)[1] for r in rows}
    assert by_worker == {str(w.pid) for w in workers}, "both workers took regions"
    assert comparable(stack, "two") == clean


def test_killed_worker_is_replaced_and_nothing_is_lost_or_doubled(stack, slow_flood, worker_factory, scene_url):
    url = upload(stack, scene_url)
    clean = run_clean(stack, slow_flood, worker_factory, url)
    ddb = stack.client("dynamodb")
    regions = RegionStore(ddb, stack.region_table)

    victim = worker_factory(env_for(stack, slow_flood), name="victim")
    submit(stack, request(stack, "crash", url))
    iid = image_id(stack, "crash", url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it in the middle of a region, after some regions are done
        rows = regions.all(iid)
        done = [r for r in rows if r.region_status == "SUCCESS"]
        busy = [r for r in rows if r.region_status == "STARTED" and (r.worker or "").endswith(f":{victim.pid}")]
        if len(done) >= 2 and busy:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the victim never got mid-region")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)

    worker_factory(env_for(stack, slow_flood), name="rescuer")
    final, statuses = wait_final(stack, "crash", timeout=120)
    assert final["attributes"]["status"] == "SUCCESS"
    time.sleep(1)
    from modelrunner.local.stack import read_statuses

    late = [s for s in read_statuses(stack, wait=1) if s["attributes"].get("job_id") == "crash"]
    finals = [s for s in statuses + late if s["attributes"]["status"] in ("SUCCESS", "PARTIAL", "FAILED")]
    assert len(finals) == 1, "the job ends once"
    assert comparable(stack, "crash") == clean
    assert len(FeatureStore(ddb, stack.feature_table).raw_features(iid)) == TILES * PER_TILE
    job = JobStore(ddb, stack.job_table).get(iid)
    assert (job.region_success, job.region_error, job.regions_done) == (REGIONS, 0, REGIONS)


def test_sigterm_stops_within_the_limit_and_another_worker_finishes(stack, slow_flood, worker_factory, scene_url):
    url = upload(stack, scene_url)
    clean = run_clean(stack, slow_flood, worker_factory, url)
    stop_timeout = 8
    first = worker_factory(env_for(stack, slow_flood, MR_STOP_TIMEOUT=str(stop_timeout)), name="stopping")
    submit(stack, request(stack, "term", url))
    iid = image_id(stack, "term", url)
    regions = RegionStore(stack.client("dynamodb"), stack.region_table)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r.region_status == "STARTED" for r in regions.all(iid)):
        time.sleep(0.05)
    started = time.monotonic()
    first.send_signal(signal.SIGTERM)
    first.wait(stop_timeout + 5)
    assert time.monotonic() - started <= stop_timeout, "exits within the stop timeout"
    assert first.returncode == 0

    worker_factory(env_for(stack, slow_flood), name="successor")
    final, _ = wait_final(stack, "term", timeout=120)
    assert final["attributes"]["status"] == "SUCCESS"
    assert comparable(stack, "term") == clean
