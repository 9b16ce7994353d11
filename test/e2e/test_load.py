"""Load (issue 14): 20 image requests queued at once, valid and bad mixed, served by 2 worker processes
(started as the container starts them) against a moto server and the bundled centerpoint model.

Every valid job must end SUCCESS exactly once with its outputs complete (centerpoint answers one box per
tile, and the tiles here do not overlap, so each job's S3 GeoJSON and its Kinesis stream hold exactly one
feature per tile); every bad one FAILED exactly once with its reason; both queues empty at the end; and
the workers' resident memory after job 20 within 10 % of what it was after job 5 (printed for the record).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

import pytest
from e2e_support import Statuses, rss_kib, wait_queue_empty

from modelrunner.local.scene import make_scene
from modelrunner.local.stack import Resources, kinesis_records
from modelrunner.state.jobs import JobStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TILE = 256
#: (width, height) of the valid scenes; tile 256 without overlap: 4 x 4 = 16 and 3 x 2 = 6 tiles, in
#: regions of 512 x 512 pixels: 4 and 2 regions, so regions also travel through the region queue.
SCENES = {"big": (1024, 1024), "small": (768, 512)}
VALID, BAD = 14, 6
RSS_TOLERANCE = 0.10
#: Seconds a received message stays invisible (extended by the workers' heartbeat while they work on it).
VISIBILITY = 5


@dataclass
class Job:
    job_id: str
    body: str
    status: str
    says: str = ""
    tiles: int = 0
    stream: str = ""


def valid_request(res: Resources, job_id: str, image: str, stream: str) -> dict[str, Any]:
    return {"jobId": job_id, "imageUrls": [image], "imageProcessor": {"name": "centerpoint", "type": "SM_ENDPOINT"},
            "outputs": [{"type": "S3", "bucket": res.bucket, "prefix": "load/"},
                        {"type": "Kinesis", "stream": stream}],
            "imageProcessorTileSize": TILE, "imageProcessorTileOverlap": 0,
            "imageProcessorTileFormat": "GTIFF", "imageProcessorTileCompression": "NONE"}


def jobs_for(res: Resources, scenes: dict[str, str]) -> list[Job]:
    """14 valid jobs and 6 bad ones, each bad one failing at a different step. Each valid job has a Kinesis
    stream of its own and writes it in one PutRecords call: moto can lose records of concurrent PutRecords
    on one shard (a missing lock), which two workers completing at once, or one job's calls in flight side
    by side, would otherwise meet."""
    kinesis = res.client("kinesis")
    jobs = []
    for i in range(VALID):
        name = "big" if i % 2 else "small"
        width, height = SCENES[name]
        stream = f"{res.prefix}-load-{i}"
        kinesis.create_stream(StreamName=stream, ShardCount=1)
        job_id = f"load-ok-{i}"
        jobs.append(Job(job_id, json.dumps(valid_request(res, job_id, scenes[name], stream)), "SUCCESS",
                        tiles=(width // TILE) * (height // TILE), stream=stream))

    def bad(job_id: str, says: str, **changes: Any) -> Job:
        body = valid_request(res, job_id, scenes["small"], res.stream)
        body.update(changes)
        return Job(job_id, json.dumps(body), "FAILED", says)

    jobs += [
        bad("load-bad-tile-size", "imageProcessorTileSize: must be >= 1, got 0", imageProcessorTileSize=0),
        bad("load-bad-url", "imageUrls[0]: the http:// scheme is not accepted",
            imageUrls=["http://127.0.0.1:9/scene.tif"]),
        bad("load-bad-missing-image", "cannot open image", imageUrls=[scenes["small"] + ".missing"]),
        bad("load-bad-output-bucket", "outputs[0].bucket: bucket no-such-load-bucket does not exist",
            outputs=[{"type": "S3", "bucket": "no-such-load-bucket"}]),
        bad("load-bad-roi", "regionOfInterest does not intersect the image",
            regionOfInterest="POLYGON ((120 -30, 121 -30, 121 -31, 120 -31, 120 -30))"),
        bad("load-bad-pair", "tile format PNG cannot be written with compression LZW",
            imageProcessorTileFormat="PNG", imageProcessorTileCompression="LZW"),
    ]
    return jobs


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("load")
    return {name: make_scene(str(root / f"{name}.tif"), w, h, seed=21, origin=(10.0, 50.0), pixel_size=1e-4).path
            for name, (w, h) in SCENES.items()}


def test_twenty_mixed_requests_two_workers(stack: Resources, model_server: Any, worker_factory: Any,
                                           scenes: dict[str, str]) -> None:
    started = time.monotonic()
    jobs = jobs_for(stack, scenes)
    assert len(jobs) == VALID + BAD == 20
    env = stack.worker_env(model_url=model_server.url, workers=2, region_size=512, region_wait=0,
                           visibility_timeout=VISIBILITY)
    workers = [worker_factory(env, name=f"worker-{i}") for i in range(2)]

    random.Random(14).shuffle(jobs)
    sqs = stack.client("sqs")
    for start in range(0, len(jobs), 10):
        answer = sqs.send_message_batch(QueueUrl=stack.image_queue, Entries=[
            {"Id": str(i), "MessageBody": job.body} for i, job in enumerate(jobs[start:start + 10])])
        assert not answer.get("Failed")

    statuses = Statuses(stack)
    rss: dict[int, list[int]] = {}
    deadline = time.monotonic() + 150
    wanted = {job.job_id for job in jobs}
    while not wanted <= set(statuses.finals):
        assert time.monotonic() < deadline, f"jobs not ended: {sorted(wanted - set(statuses.finals))}"
        assert all(w.poll() is None for w in workers), "a worker exited"
        statuses.drain(wait=1)
        for count in (5, 20):
            if count not in rss and len(statuses.finals) >= count:
                rss[count] = [rss_kib(w.pid) for w in workers]
    elapsed = time.monotonic() - started

    # Every message handled and deleted: nothing left on either queue, visible or in flight. A message
    # whose region ended while the other worker held the job's completion is kept on purpose (it comes
    # back after the visibility timeout, to complete the job should that worker have died) and deleted
    # on its return: so wait up to two visibility timeouts.
    assert wait_queue_empty(stack, stack.image_queue, timeout=2 * VISIBILITY + 5) == 0
    assert wait_queue_empty(stack, stack.region_queue, timeout=2 * VISIBILITY + 5) == 0
    statuses.drain()

    s3, ddb = stack.client("s3"), stack.client("dynamodb")
    job_rows = JobStore(ddb, stack.job_table)
    for job in jobs:
        finals = statuses.final_statuses(job.job_id)
        assert len(finals) == 1, f"{job.job_id}: {[s['message'] for s in finals]}"
        final = finals[0]
        assert final["attributes"]["status"] == job.status, f"{job.job_id}: {final['message']}"
        assert job.says in final["message"]
        assert job_rows.get(final["attributes"]["image_id"]).job_status == job.status
        if job.status != "SUCCESS":
            continue
        body = s3.get_object(Bucket=stack.bucket, Key=f"load/{job.job_id}.geojson")["Body"].read()
        features = json.loads(body)["features"]
        assert len(features) == job.tiles
        centres = {tuple(f["properties"]["imageBBox"]) for f in features}
        assert len(centres) == job.tiles, "one box per tile, none twice"
        assert all(f["properties"]["inferenceMetadata"]["jobId"] == job.job_id for f in features)
        records = kinesis_records(stack, job.stream)
        assert len(records) == job.tiles and all(r["partition_key"] == job.job_id for r in records)
        assert sorted(json.dumps(r["data"]["features"][0], sort_keys=True) for r in records) == \
            sorted(json.dumps(f, sort_keys=True) for f in features)

    print(f"\nload: {len(jobs)} jobs ({VALID} valid, {BAD} bad) on 2 workers in {elapsed:.1f} s")
    for i, worker in enumerate(workers):
        print(f"worker {i} (pid {worker.pid}): VmRSS {rss[5][i] / 1024:.1f} MiB after job 5, "
              f"{rss[20][i] / 1024:.1f} MiB after job 20 ({(rss[20][i] - rss[5][i]) / rss[5][i]:+.1%})")
    for i in range(len(workers)):
        assert abs(rss[20][i] - rss[5][i]) <= RSS_TOLERANCE * rss[5][i], \
            f"worker {i}: VmRSS {rss[5][i]} KiB after job 5, {rss[20][i]} KiB after job 20"
