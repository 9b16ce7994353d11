"""Region processing under at-least-once delivery, in-process (moto mock, a fake model, a local image)."""

from __future__ import annotations

import json
import threading
import time
import zlib

import boto3
import pytest
from osgeo import gdal

from modelrunner.aws import AwsClients
from modelrunner.config import Settings
from modelrunner.local.scene import make_scene
from modelrunner.local.stack import create_resources
from modelrunner.requests import ImageRequest, RegionRequest
from modelrunner.runner.complete import maybe_complete
from modelrunner.runner.image import start_image
from modelrunner.runner.region import _run_tiles, process_region
from modelrunner.runner.services import Services


class FakeModel:
    """Deterministic: one box per tile, placed from the tile bytes."""

    name = "fake"

    def __init__(self):
        self.calls = 0

    def __call__(self, payload: bytes) -> dict:
        self.calls += 1
        x = zlib.crc32(payload) % 300
        return {"type": "FeatureCollection", "features": [{"type": "Feature", "id": f"f{x}", "properties": {
            "imageBBox": [x, 10, x + 40, 50], "featureClasses": [{"iri": "thing", "score": 0.9}]}}]}


@pytest.fixture
def world(moto_aws, tmp_path):
    res = create_resources(None, prefix="idem")
    settings = Settings(aws_region="us-east-1", job_table=res.job_table, region_table=res.region_table,
                        endpoint_table=res.endpoint_table, feature_table=res.feature_table,
                        image_queue=res.image_queue, region_queue=res.region_queue, workers=2,
                        image_status_topic=res.image_topic, region_status_topic=res.region_topic,
                        region_size=(1024, 1024))
    services = Services.create(settings, AwsClients("us-east-1"), metrics=False)
    statuses: list[tuple[str, dict]] = []
    services.status.listener = lambda message, attrs: statuses.append((message, attrs))
    model = FakeModel()
    services.detector = lambda region: model  # type: ignore[method-assign]
    scene = make_scene(str(tmp_path / "s.tif"), 1300, 1100, seed=2)
    request = ImageRequest.from_dict({
        "jobId": "idem", "imageUrls": [scene.path], "imageProcessor": {"name": "fake"},
        "imageProcessorTileSize": 512, "imageProcessorTileOverlap": 128, "imageProcessorTileFormat": "GTIFF",
        "outputs": [{"type": "S3", "bucket": res.bucket, "prefix": ""}]})
    return services, request, statuses, model, res


def regions_of(services, request):
    rows = sorted(services.regions.all(request.image_id), key=lambda r: r.index)
    return [RegionRequest.for_image(request, r.bounds, "TIFF") for r in rows]


def test_duplicate_deliveries_change_nothing(world):
    services, request, statuses, model, res = world
    first, job = start_image(services, request)
    assert first is not None
    regions = regions_of(services, request)
    assert len(regions) == 4
    assert first == regions[0]
    assert services.jobs.get(request.image_id).regions_queued is True

    # A worker died mid-region: its tiles ran and its raw features were written, the row never finished.
    _run_tiles(services, regions[1], job.image_request(), job, None)
    calls = model.calls
    for region in regions:
        assert process_region(services, region, job=job).counted
    assert model.calls == calls + 12
    # Redelivered after the work but before the delete: found finished, not run, not counted again.
    again = process_region(services, regions[2], job=job)
    assert not again.counted and model.calls == calls + 12
    row = services.jobs.get(request.image_id)
    assert (row.regions_done, row.region_success) == (4, 4)
    assert len(services.features.raw_features(request.image_id)) == 12

    # The image message redelivered: same job, nothing queued again, the first region found finished.
    sqs = boto3.client("sqs")
    queued = int(sqs.get_queue_attributes(QueueUrl=res.region_queue, AttributeNames=["ApproximateNumberOfMessages"])
                 ["Attributes"]["ApproximateNumberOfMessages"])
    first_again, _ = start_image(services, request)
    assert first_again == first
    assert int(sqs.get_queue_attributes(QueueUrl=res.region_queue, AttributeNames=["ApproximateNumberOfMessages"])
               ["Attributes"]["ApproximateNumberOfMessages"]) == queued == 3
    assert [m for m, _ in statuses].count(
        "StatusMonitor update: RequestStatus.STARTED idem: Started image request") == 1

    # Completion happens once, whoever asks.
    assert maybe_complete(services, request.image_id) is True
    assert maybe_complete(services, request.image_id) is True
    finals = [a for _, a in statuses if a.get("image_status") in ("SUCCESS", "PARTIAL", "FAILED")]
    assert len(finals) == 1 and finals[0]["status"] == "SUCCESS"
    body = boto3.client("s3").get_object(Bucket=res.bucket, Key="idem.geojson")["Body"].read()
    assert len(json.loads(body)["features"]) <= 12
    assert start_image(services, request)[0] is None, "a finished job is not started again"


class PixelRecorder:
    """Records, for every tile it is sent, where the tile's georeferencing puts it and whether its pixels
    are the image's pixels there; slow enough that the strip reader runs ahead of it."""

    name = "pixels"

    def __init__(self, image_path: str):
        self.image = gdal.Open(image_path)
        self.origin = self.image.GetGeoTransform()
        self.seen: list[tuple[int, int, bool]] = []
        self.lock = threading.Lock()  # the tile threads share this dataset

    def __call__(self, payload: bytes) -> dict:
        time.sleep(0.02)
        name = f"/vsimem/recorded-{threading.get_ident()}.tif"
        gdal.FileFromMemBuffer(name, payload)
        try:
            tile = gdal.Open(name)
            gt = tile.GetGeoTransform()
            col = round((gt[0] - self.origin[0]) / self.origin[1])
            row = round((gt[3] - self.origin[3]) / self.origin[5])
            pixels = tile.ReadAsArray()
            tile = None
        finally:
            gdal.Unlink(name)
        with self.lock:
            expected = self.image.ReadAsArray(col, row, pixels.shape[-1], pixels.shape[-2])
        self.seen.append((col, row, bool((pixels == expected).all())))
        return {"type": "FeatureCollection", "features": []}


@pytest.mark.parametrize("width", [500, 512, 1300])
def test_every_tile_carries_its_own_pixels(world, tmp_path, width):
    services, _, _, _, res = world
    scene = make_scene(str(tmp_path / "narrow.tif"), width, 2400, seed=5)
    recorder = PixelRecorder(scene.path)
    services.detector = lambda region: recorder  # type: ignore[method-assign]
    request = ImageRequest.from_dict({
        "jobId": f"narrow-{width}", "imageUrls": [scene.path], "imageProcessor": {"name": "pixels"},
        "imageProcessorTileSize": 512, "imageProcessorTileOverlap": 128, "imageProcessorTileFormat": "GTIFF",
        "outputs": [{"type": "S3", "bucket": res.bucket, "prefix": ""}]})
    first, job = start_image(services, request)
    assert first is not None
    for region in regions_of(services, request):
        process_region(services, region, job=job)
    rows = sorted({row for _, row, _ in recorder.seen})
    assert len(rows) == 6 and rows[-1] == 2400 - 512
    assert recorder.seen and all(same for _, _, same in recorder.seen), \
        [(col, row) for col, row, same in recorder.seen if not same]
