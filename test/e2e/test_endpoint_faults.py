"""A model endpoint that fails on command (the bundled model server's ``/control``): every fault is retried
with back-off up to ``MR_MAX_TILE_ATTEMPTS``; a flaky endpoint still gives SUCCESS, tiles that fail for good
give PARTIAL with the counts and the cause, an endpoint that never answers gives FAILED with the cause."""

from __future__ import annotations

import json

import pytest
from e2e_support import control, model_stats, submit, wait_final

from modelrunner.local.scene import make_scene
from modelrunner.local.stack import free_port
from modelrunner.state.regions import RegionStore

pytestmark = pytest.mark.e2e




@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(str(tmp_path_factory.mktemp("faults") / "scene.tif"), 600, 400, seed=6)




def job(stack, job_id, scene, model, mode):
    return {"jobId": job_id, "imageUrls": [scene.path],
            "outputs": [{"type": "S3", "bucket": stack.bucket, "prefix": ""}],
            "imageProcessor": {"name": model, "type": mode},
            "imageProcessorTileSize": 256, "imageProcessorTileOverlap": 32, "imageProcessorTileFormat": "PNG"}


def tiles(stack, job_id, scene):
    rows = RegionStore(stack.client("dynamodb"), stack.region_table).all(f"{job_id}:{scene.path}")
    return sum(r.succeeded_tile_count for r in rows), sum(r.failed_tile_count for r in rows)


FLAKY = [("HTTP_ENDPOINT", mode) for mode in ("internal", "throttle", "empty", "garbage", "badgeometry", "drop",
                                              "slow")] + [("SM_ENDPOINT", mode) for mode in ("model", "throttle",
                                                                                             "internal")]


def test_faults(stack, own_model, worker_factory, scene):
    """One worker serves every case in turn: each fault at every second call ends SUCCESS; failing for good
    ends FAILED with the cause; the worker keeps serving throughout.

    One tile thread, so that "every second call" fails every tile's first attempt and never its retry: with
    several threads in lockstep on a strictly alternating schedule, one thread can meet the failing slot on
    every attempt (then the tile fails after its attempts and the job is PARTIAL, which is right too)."""
    env = stack.worker_env(model_url=own_model.url, workers=1, MR_MAX_TILE_ATTEMPTS="4",
                           MR_TILE_RETRY_BASE_SECONDS="0.05", MR_TILE_RETRY_MAX_SECONDS="0.2", MR_HTTP_TIMEOUT="1")
    worker = worker_factory(env)
    http = own_model.url + "/invocations"
    report = []
    for n, (mode, fault) in enumerate(FLAKY):
        control(own_model, fail_rate=0.5, fail_mode=fault, slow_ms=2500)
        job_id = f"flaky-{n}-{fault}"
        submit(stack, job(stack, job_id, scene, http if mode == "HTTP_ENDPOINT" else "centerpoint", mode))
        final, _ = wait_final(stack, job_id)
        assert final["attributes"]["status"] == "SUCCESS", (mode, fault, final["message"])
        assert tiles(stack, job_id, scene) == (6, 0)
        report.append(f"{mode} {fault}: SUCCESS")

    # Failing for good on every call: FAILED, with the endpoint's answer in the reason.
    control(own_model, fail_rate=1.0, fail_mode="internal")
    submit(stack, job(stack, "down", scene, http, "HTTP_ENDPOINT"))
    final, _ = wait_final(stack, "down")
    assert final["attributes"]["status"] == "FAILED"
    assert "6 of 6 tiles failed" in final["message"] and "answered 500" in final["message"]
    assert "after 4 attempts" in final["message"]
    assert tiles(stack, "down", scene) == (0, 6)

    # Nobody listening at all: connection refused, FAILED, the cause named.
    submit(stack, job(stack, "refused", scene, f"http://127.0.0.1:{free_port()}/invocations", "HTTP_ENDPOINT"))
    final, _ = wait_final(stack, "refused")
    assert final["attributes"]["status"] == "FAILED" and "refused" in final["message"].lower()

    # A SageMaker endpoint that does not exist: FAILED at once, the region stops calling it.
    control(own_model, fail_rate=0.0, strict_endpoints=True)
    before = model_stats(own_model)["invocations"]
    submit(stack, job(stack, "missing", scene, "no-such-endpoint", "SM_ENDPOINT"))
    final, _ = wait_final(stack, "missing")
    assert final["attributes"]["status"] == "FAILED" and "not found" in final["message"]
    calls = model_stats(own_model)["invocations"] - before
    assert calls <= 2  # the tiles already in flight when the first answer came back, no retries
    control(own_model, strict_endpoints=False)
    assert worker.poll() is None
    print("\n".join(report))


def test_tiles_failing_for_good_make_the_job_partial(stack, own_model, worker_factory, scene):
    env = stack.worker_env(model_url=own_model.url, workers=1, MR_MAX_TILE_ATTEMPTS="1")
    worker_factory(env)
    control(own_model, fail_rate=0.5, fail_mode="internal")
    submit(stack, job(stack, "partial", scene, own_model.url + "/invocations", "HTTP_ENDPOINT"))
    final, _ = wait_final(stack, "partial")
    control(own_model, fail_rate=0.0)
    assert final["attributes"]["status"] == "PARTIAL", final["message"]
    assert "3 of 6 tiles failed" in final["message"] and "answered 500" in final["message"]
    assert tiles(stack, "partial", scene) == (3, 3)
    body = stack.client("s3").get_object(Bucket=stack.bucket, Key="partial.geojson")["Body"].read()
    assert len(json.loads(body)["features"]) == 3
