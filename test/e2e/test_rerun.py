"""Failed tiles re-run: a job ends PARTIAL because the model failed on some tiles; once the model is healed,
the same request submitted again runs only those tiles, merges their features into the job's result and ends
SUCCESS with the features of a run that never failed; Kinesis gets only the new features."""

from __future__ import annotations

import json
import time

import pytest
from e2e_support import control, model_stats, submit, wait_final

from modelrunner.local.scene import make_scene
from modelrunner.local.stack import kinesis_records, read_statuses

pytestmark = pytest.mark.e2e




def request(stack, job_id, scene):
    return {"jobId": job_id, "imageUrls": [scene.path],
            "outputs": [{"type": "S3", "bucket": stack.bucket, "prefix": ""},
                        {"type": "Kinesis", "stream": stack.stream, "batchSize": 500}],
            "imageProcessor": {"name": "centerpoint", "type": "SM_ENDPOINT"},
            "imageProcessorTileSize": 256, "imageProcessorTileOverlap": 32, "imageProcessorTileFormat": "PNG"}


def comparable(stack, job_id):
    body = stack.client("s3").get_object(Bucket=stack.bucket, Key=f"{job_id}.geojson")["Body"].read()
    out = []
    for feature in json.loads(body)["features"]:
        props = {k: v for k, v in feature["properties"].items() if k != "inferenceMetadata"}
        out.append(json.dumps({**feature, "properties": props}, sort_keys=True))
    return sorted(out)


def test_a_resubmitted_partial_job_reruns_only_its_failed_tiles(stack, own_model, worker_factory, tmp_path):
    scene = make_scene(str(tmp_path / "s.tif"), 900, 600, seed=12)
    worker_factory(stack.worker_env(model_url=own_model.url, workers=1, region_size=512,
                                    MR_MAX_TILE_ATTEMPTS="1", MR_TILE_RETRY_BASE_SECONDS="0"))
    control(own_model, fail_rate=0.0, fail_mode="model")
    submit(stack, request(stack, "calm", scene))
    assert wait_final(stack, "calm")[0]["attributes"]["status"] == "SUCCESS"
    expected = comparable(stack, "calm")

    control(own_model, fail_rate=0.5, fail_mode="model")  # every second tile fails, for good (one attempt)
    submit(stack, request(stack, "flaky", scene))
    first, _ = wait_final(stack, "flaky")
    assert first["attributes"]["status"] == "PARTIAL", first["message"]
    failed = int(first["message"].split(" of ")[0].rsplit(" ", 1)[-1])
    assert 0 < failed < len(expected)
    partial = comparable(stack, "flaky")
    records_before = [r for r in kinesis_records(stack) if r["partition_key"] == "flaky"]
    assert len(records_before) == len(partial)

    control(own_model, fail_rate=0.0)  # healed; the counts restart
    submit(stack, request(stack, "flaky", scene))  # the same request, submitted again
    final, _ = wait_final(stack, "flaky")
    assert final["attributes"]["status"] == "SUCCESS", final["message"]
    assert model_stats(own_model)["invocations"] == failed  # only the failed tiles ran again
    assert comparable(stack, "flaky") == expected
    records = [r for r in kinesis_records(stack) if r["partition_key"] == "flaky"]
    assert len(records) == len(expected)  # the earlier records and the new features' records, none twice
    assert len({json.dumps(r["data"]["features"][0], sort_keys=True) for r in records}) == len(expected)
    print(f"re-run: {failed} failed tiles of {len(expected)} run again; {len(records) - len(records_before)} "
          f"new Kinesis records; features equal to an undisturbed run")

    submit(stack, request(stack, "flaky", scene))  # a SUCCESS job is not run again, and says nothing more
    time.sleep(3)
    assert model_stats(own_model)["invocations"] == failed
    assert [s for s in read_statuses(stack, wait=1) if s["attributes"].get("job_id") == "flaky"] == []
