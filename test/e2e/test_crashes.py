"""A worker SIGKILLed at any moment, and its replacement: the job ends with exactly one final status and the
same features as a run without the kill, with no duplicates in S3 and no Kinesis record lost.

The kills are the worker's own failpoints (``MR_FAILPOINTS``, see ``modelrunner/failpoints.py``): the worker
kills itself with SIGKILL at an exact moment, which a test timing an external ``kill`` could not hit
reliably. The replacement starts without failpoints.
"""

from __future__ import annotations

import json
import time

import pytest
from e2e_support import submit, wait_final

from modelrunner.local.scene import make_scene
from modelrunner.local.stack import kinesis_records, read_statuses
from modelrunner.state.jobs import JobStore

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(str(tmp_path_factory.mktemp("crash") / "scene.tif"), 1300, 1100, seed=4)


def request(stack, job_id, scene):
    return {"jobId": job_id, "imageUrls": [scene.path],
            "outputs": [{"type": "S3", "bucket": stack.bucket, "prefix": "out/"},
                        {"type": "Kinesis", "stream": stack.stream}],
            "imageProcessor": {"name": "centerpoint", "type": "SM_ENDPOINT"},
            "imageProcessorTileSize": 512, "imageProcessorTileOverlap": 128, "imageProcessorTileFormat": "GTIFF"}


def comparable(features):
    """Features without what differs between runs of a deterministic model (job id, inference time)."""
    out = []
    for feature in features:
        props = {k: v for k, v in feature["properties"].items() if k != "inferenceMetadata"}
        out.append(json.dumps({**feature, "properties": props}, sort_keys=True))
    return sorted(out)


def s3_features(stack, job_id):
    body = stack.client("s3").get_object(Bucket=stack.bucket, Key=f"out/{job_id}.geojson")["Body"].read()
    return json.loads(body)["features"]


def env_for(stack, model_server, **extra):
    return stack.worker_env(model_url=model_server.url, workers=2, region_size=1024, visibility_timeout=4, **extra)


def wait_exit(proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc.poll()


_undisturbed: list[list[str]] = []


def undisturbed(stack, model_server, worker_factory, scene):
    """The features of a run without a kill (run once for the module)."""
    if not _undisturbed:
        worker = worker_factory(env_for(stack, model_server), name="calm")
        submit(stack, request(stack, "calm", scene))
        final, _ = wait_final(stack, "calm")
        assert final["attributes"]["status"] == "SUCCESS"
        _undisturbed.append(comparable(s3_features(stack, "calm")))
        worker.terminate()
        assert wait_exit(worker) is not None
    return _undisturbed[0]


@pytest.mark.parametrize("point", ["region.tile@3", "complete.merged", "output.s3", "complete.ended"])
def test_killed_worker_is_replaced_without_loss_or_duplicates(stack, model_server, worker_factory, scene, point):
    expected = undisturbed(stack, model_server, worker_factory, scene)
    assert len(expected) == 12
    kinesis_before = len(kinesis_records(stack))

    # The same image, a worker that dies at ``point``, then its replacement.
    doomed = worker_factory(env_for(stack, model_server, MR_FAILPOINTS=point), name="doomed")
    submit(stack, request(stack, "crash", scene))
    assert wait_exit(doomed) == -9, "the worker must have died at its failpoint"
    replacement = worker_factory(env_for(stack, model_server), name="replacement")
    final, seen = wait_final(stack, "crash", timeout=120)
    time.sleep(1.5)  # a second final status, if one were sent, would arrive now
    seen += [s for s in read_statuses(stack, wait=1) if s["attributes"].get("job_id") == "crash"]
    finals = [s["attributes"]["status"] for s in seen if s["attributes"]["status"] in ("SUCCESS", "PARTIAL", "FAILED")]
    assert finals == ["SUCCESS"], seen
    assert replacement.poll() is None

    features = s3_features(stack, "crash")
    assert comparable(features) == expected  # same features, none twice
    records = [r for r in kinesis_records(stack)[kinesis_before:] if r["partition_key"] == "crash"]
    delivered = {json.dumps(r["data"]["features"][0], sort_keys=True) for r in records}
    assert delivered == {json.dumps(f, sort_keys=True) for f in features}  # at least once, none lost
    job = JobStore(stack.client("dynamodb"), stack.job_table).get(f"crash:{scene.path}")
    assert job.job_status == "SUCCESS" and job.status_published is True
    print(f"{point}: {len(features)} features, {len(records)} Kinesis records "
          f"({len(records) - len(features)} re-sent)")


def test_a_request_that_keeps_killing_workers_ends_failed(stack, model_server, worker_factory, scene):
    """Each worker that takes the request dies on it (as one did on a segfaulting image URL before URLs were
    checked); once the message has come back more than MR_MAX_RECEIVE_COUNT times, the next worker fails the
    job with that reason instead of dying too."""
    submit(stack, request(stack, "poison", scene))
    env = {**env_for(stack, model_server, MR_FAILPOINTS="region.tile", MR_MAX_RECEIVE_COUNT="2"),
           "REGION_SIZE": "(10240, 10240)"}  # one region: the image message is the only one
    for n in range(2):  # receives 1 and 2 kill their workers
        assert wait_exit(worker_factory(env, name=f"doomed{n}")) == -9
    survivor = worker_factory(env, name="survivor")
    final, _ = wait_final(stack, "poison", timeout=60)
    assert final["attributes"]["status"] == "FAILED"
    assert "received 3 times" in final["message"] and "MR_MAX_RECEIVE_COUNT = 2" in final["message"]
    assert survivor.poll() is None, "the worker that failed the job keeps serving"
