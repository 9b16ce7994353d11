"""Sharing a model endpoint across a fleet: two worker processes never send it more tiles at once than its
capacity; a dead worker's lease expires; a free endpoint is not held up behind a busy one; a worker lowers
its concurrency when the endpoint throttles anyway."""

from __future__ import annotations

import time

import pytest
from e2e_support import Statuses, control, model_stats, submit, wait_final

from modelrunner.inference.capacity import CONCURRENCY_TAG
from modelrunner.local.scene import make_scene

pytestmark = pytest.mark.e2e




@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(str(tmp_path_factory.mktemp("sched") / "scene.tif"), 1300, 1100, seed=8)






def sagemaker_endpoint(stack, name, instances, per_instance):
    """The endpoint in moto's SageMaker control plane (its runtime is the model server)."""
    sm = stack.client("sagemaker")
    sm.create_model(ModelName=name, ExecutionRoleArn="arn:aws:iam::123456789012:role/m",
                    PrimaryContainer={"Image": "model"})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": instances,
        "InstanceType": "ml.m5.xlarge"}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name,
                       Tags=[{"Key": CONCURRENCY_TAG, "Value": str(per_instance)}])


def job(stack, job_id, scene, endpoint, mode="SM_ENDPOINT", tile=256):
    return {"jobId": job_id, "imageUrls": [scene.path], "outputs": [{"type": "S3", "bucket": stack.bucket}],
            "imageProcessor": {"name": endpoint, "type": mode}, "imageProcessorTileSize": tile,
            "imageProcessorTileOverlap": 32, "imageProcessorTileFormat": "PNG"}


def env(stack, own_model, **extra):
    return stack.worker_env(model_url=own_model.url, workers=4, region_size=512, visibility_timeout=10,
                            THROTTLING_RETRY_TIMEOUT="1", MR_CAPACITY_LEASE_SECONDS="3", **extra)


def test_two_workers_keep_an_endpoint_within_its_capacity(stack, own_model, worker_factory, scene):
    sagemaker_endpoint(stack, "shared", instances=2, per_instance=2)  # capacity 4
    control(own_model, delay_ms=60, fail_rate=0.0, throttle_above=0)
    for name in ("a", "b"):
        worker_factory(env(stack, own_model), name=name)
    started = time.monotonic()
    for n in range(3):
        submit(stack, job(stack, f"shared-{n}", scene, "shared"))
    statuses = Statuses(stack)  # keeps every job's statuses: the jobs may end in any order
    for n in range(3):
        final = statuses.final(f"shared-{n}", timeout=120)
        assert final["attributes"]["status"] == "SUCCESS", final["message"]
    seen = model_stats(own_model)
    print(f"3 jobs, {seen['requests']} tiles, 2 workers x 4 threads, capacity 4: max {seen['max_in_flight']} "
          f"in flight at the model, {time.monotonic() - started:.1f} s")
    assert 2 <= seen["max_in_flight"] <= 4


def test_a_dead_workers_capacity_comes_back(stack, own_model, worker_factory, scene):
    sagemaker_endpoint(stack, "lease", instances=1, per_instance=4)
    control(own_model, delay_ms=60, fail_rate=0.0, throttle_above=0)
    doomed = worker_factory(env(stack, own_model, MR_FAILPOINTS="region.tile@2"), name="doomed")
    submit(stack, job(stack, "orphan", scene, "lease"))
    deadline = time.monotonic() + 60
    while doomed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert doomed.poll() == -9  # died holding the whole capacity
    died = time.monotonic()
    worker_factory(env(stack, own_model), name="heir")
    final, _ = wait_final(stack, "orphan")
    assert final["attributes"]["status"] == "SUCCESS", final["message"]
    print(f"a worker killed holding capacity: the job ended {time.monotonic() - died:.1f} s later "
          "(lease 3 s, message visibility 10 s)")


def test_a_free_endpoint_is_not_held_up_by_a_busy_one(stack, own_model, worker_factory, scene):
    sagemaker_endpoint(stack, "busy", instances=1, per_instance=1)
    sagemaker_endpoint(stack, "free", instances=1, per_instance=4)
    control(own_model, delay_ms=150, fail_rate=0.0, throttle_above=0)
    worker_factory(env(stack, own_model), name="one")
    worker_factory(env(stack, own_model), name="two")
    submit(stack, job(stack, "big", scene, "busy"))
    time.sleep(2)  # the big job's regions hold or wait for the busy endpoint
    submit(stack, job(stack, "small", scene, "free", tile=512))
    small, _ = wait_final(stack, "small")
    small_done = time.monotonic()
    assert small["attributes"]["status"] == "SUCCESS"
    big_final, _ = wait_final(stack, "big")
    assert big_final["attributes"]["status"] == "SUCCESS"
    print(f"the small job on a free endpoint ended {time.monotonic() - small_done:.1f} s before the big one")
    assert time.monotonic() - small_done > 2


def test_a_worker_lowers_its_concurrency_when_the_endpoint_throttles(stack, own_model, worker_factory, scene):
    """The model throttles above 2 requests in flight while the worker believes in 10 (HTTP default)."""
    control(own_model, delay_ms=30, fail_rate=0.0, throttle_above=2)
    worker_factory(env(stack, own_model, MR_TILE_RETRY_BASE_SECONDS="0.05", MR_MAX_TILE_ATTEMPTS="8"), name="aimd")
    url = own_model.url + "/invocations"
    submit(stack, job(stack, "warm", scene, url, mode="HTTP_ENDPOINT", tile=128))
    warm, _ = wait_final(stack, "warm")
    assert warm["attributes"]["status"] == "SUCCESS", warm["message"]
    first = model_stats(own_model)
    control(own_model, delay_ms=30, throttle_above=2)  # counts restart
    submit(stack, job(stack, "steady", scene, url, mode="HTTP_ENDPOINT", tile=128))
    steady, _ = wait_final(stack, "steady")
    assert steady["attributes"]["status"] == "SUCCESS", steady["message"]
    after = model_stats(own_model)
    share = after["throttled"] / after["requests"]
    print(f"throttled share: warm-up {first['throttled']}/{first['requests']}, "
          f"after {after['throttled']}/{after['requests']} = {share:.1%}")
    control(own_model, throttle_above=0, delay_ms=0)
    assert share < 0.10
