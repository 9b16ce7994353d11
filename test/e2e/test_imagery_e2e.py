"""Imagery breadth end to end: one worker process, the bundled models, a moto server.

GeoTIFF and NITF+RPC of one scene give the same detections at the same world coordinates; regions of
interest select tiles and features (or fail the job when they miss the image); 16-bit 4-band UTM input
reaches the model as stretched 8-bit RGB JPEG; ``georegistration`` NONE keeps features in pixels.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import shapely
import shapely.geometry
from e2e_support import submit, wait_final
from osgeo import gdal

from modelrunner.imagery.grid import TileGrid
from modelrunner.local.scene import make_scene
from modelrunner.state.jobs import JobStore
from modelrunner.state.regions import RegionStore

pytestmark = pytest.mark.e2e
gdal.UseExceptions()


def request_for(res, job_id, url, *, model="objects", tile_format="NITF", compression="NONE", size=512,
                overlap=64, **extra):
    return {"jobId": job_id, "imageUrls": [url], "outputs": [{"type": "S3", "bucket": res.bucket, "prefix": "r/"}],
            "imageProcessor": {"name": model, "type": "SM_ENDPOINT"}, "imageProcessorTileSize": size,
            "imageProcessorTileOverlap": overlap, "imageProcessorTileFormat": tile_format,
            "imageProcessorTileCompression": compression, **extra}


def upload(res, path, key):
    res.client("s3").upload_file(path, res.extra["image_bucket"], key)
    return f"s3://{res.extra['image_bucket']}/{key}"


def outputs(res, job_id):
    body = res.client("s3").get_object(Bucket=res.bucket, Key=f"r/{job_id}.geojson")["Body"].read()
    return json.loads(body)["features"]


def job_row(res, job_id, url):
    return JobStore(res.client("dynamodb"), res.job_table).get(f"{job_id}:{url}")


def run_jobs(res, requests):
    """Submit every request, then wait for each; returns {job_id: (final status, seconds)}."""
    started = time.monotonic()
    for request in requests:
        submit(res, request)
    finals = {}
    for request in requests:
        final, _ = wait_final(res, request["jobId"], timeout=90)
        finals[request["jobId"]] = (final, time.monotonic() - started)
    return finals


def bbox_key(feature):
    return tuple(round(v, 3) for v in feature["properties"]["imageBBox"])


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def recall(features, objects):
    boxes = [f["properties"]["imageBBox"] for f in features]
    return sum(any(iou(o, b) > 0.5 for b in boxes) for o in objects) / len(objects)


def test_geotiff_and_nitf_rpc_give_the_same_world_detections(stack, model_server, worker_factory, tmp_path):
    tif = make_scene(str(tmp_path / "s.tif"), 1200, 1000, seed=11)
    ntf = make_scene(str(tmp_path / "s.ntf"), 1200, 1000, seed=11, driver="NITF", rpc=True)
    tif_url, ntf_url = upload(stack, tif.path, "s.tif"), upload(stack, ntf.path, "s.ntf")
    worker_factory(stack.worker_env(model_url=model_server.url, workers=4, region_size=1024))
    finals = run_jobs(stack, [request_for(stack, "geotiff", tif_url), request_for(stack, "nitf-rpc", ntf_url)])
    assert all(final["attributes"]["status"] == "SUCCESS" for final, _ in finals.values()), finals

    a = {bbox_key(f): f for f in outputs(stack, "geotiff")}
    b = {bbox_key(f): f for f in outputs(stack, "nitf-rpc")}
    assert a.keys() == b.keys() and len(a) >= len(tif.objects), "the same detections, pixel for pixel"
    assert recall(list(a.values()), tif.objects) == 1.0
    transformer = gdal.Transformer(gdal.Open(tif.path), None, ["DST_SRS=EPSG:4326"])
    for key, fa in a.items():
        fb = b[key]
        pa, pb = fa["properties"], fb["properties"]
        assert abs(pa["center_longitude"] - pb["center_longitude"]) < 1e-7
        assert abs(pa["center_latitude"] - pb["center_latitude"]) < 1e-7
        # ... and both are GDAL's own transform of the same pixel position.
        x0, y0, x1, y1 = pa["imageBBox"]
        (lon, lat, _), = transformer.TransformPoints(0, [((x0 + x1) / 2, (y0 + y1) / 2)])[0]
        assert abs(pb["center_longitude"] - lon) < 1e-7 and abs(pb["center_latitude"] - lat) < 1e-7
        ga, gb = np.array(fa["geometry"]["coordinates"][0]), np.array(fb["geometry"]["coordinates"][0])
        assert np.abs(ga - gb).max() <= 1.01e-6, "equal up to the 6-decimal rounding of GeoJSON geometry"
        assert fa["bbox"] == pytest.approx(fb["bbox"], abs=1e-7)
        assert "sourceMetadata" not in pa
        assert pb["sourceMetadata"] == [{"location": ntf_url, "format": "NITF", "category": "VIS",
                                         "sourceId": "modelrunner synthetic scene seed=11 1200x1000x3 uint8",
                                         "sourceDT": "2024-06-01T12:00:00Z"}]
        assert set(pb) >= {"imageGeometry", "imageBBox", "featureClasses", "center_longitude", "center_latitude",
                           "inferenceMetadata"}
    rows = {name: job_row(stack, name, url) for name, url in (("geotiff", tif_url), ("nitf-rpc", ntf_url))}
    assert rows["geotiff"].sensor_model == "AFFINE" and rows["nitf-rpc"].sensor_model == "RPC"
    for name, row in rows.items():  # for the record: the end-to-end cost per tile
        print(f"{name}: {row.tile_count} tiles, {float(row.processing_duration):.2f} s")


def roi(scene, x0, y0, x1, y1):
    (lon0, lat0), (lon1, lat1) = scene.pixel_to_world(x0, y0), scene.pixel_to_world(x1, y1)
    return shapely.box(min(lon0, lon1), min(lat0, lat1), max(lon0, lon1), max(lat0, lat1))


def test_region_of_interest_inside_crossing_outside(stack, model_server, worker_factory, tmp_path):
    scene = make_scene(str(tmp_path / "roi.tif"), 1300, 1100, seed=3)
    url = upload(stack, scene.path, "roi.tif")
    worker_factory(stack.worker_env(model_url=model_server.url, workers=4, region_size=1024))
    inside = roi(scene, 600, 500, 700, 600)
    crossing = roi(scene, 950, -300, 1600, 480)  # over the top-right corner, half off the image
    outside = roi(scene, 2000, 2000, 2100, 2100)
    finals = run_jobs(stack, [
        request_for(stack, "roi-inside", url, model="centerpoint", tile_format="GTIFF", size=256, overlap=32,
                    regionOfInterest=inside.wkt),
        request_for(stack, "roi-crossing", url, model="objects", tile_format="PNG", size=256, overlap=32,
                    regionOfInterest=crossing.wkt),
        request_for(stack, "roi-outside", url, regionOfInterest=outside.wkt),
    ])
    assert finals["roi-inside"][0]["attributes"]["status"] == "SUCCESS"
    assert finals["roi-crossing"][0]["attributes"]["status"] == "SUCCESS"
    final = finals["roi-outside"][0]
    assert final["attributes"]["status"] == "FAILED"
    assert "regionOfInterest does not intersect the image" in final["message"]

    # Inside: exactly the tiles of the grid that intersect the ROI ran.
    row = job_row(stack, "roi-inside", url)
    assert row.job_status == "SUCCESS" and row.roi_wkt == inside.wkt
    regions = RegionStore(stack.client("dynamodb"), stack.region_table).all(f"roi-inside:{url}")
    ran = {tuple(t[0]) for r in regions for t in r.succeeded_tiles or []}
    grid = TileGrid.plan(1300, 1100, 256, 32)
    expected = {(t.row, t.col) for t in grid.tiles() if t.col < 700 and t.col + 256 > 600 and t.row < 600
                and t.row + 256 > 500}
    # Of the 2 x 2 regions planned (6 tile columns shared 3 + 3, 5 tile rows 3 + 2), the ROI's tiles lie in the
    # first two, across their seam; the other two are not planned at all.
    assert ran == expected and row.tile_count == len(expected) and len(regions) == 2
    features = outputs(stack, "roi-inside")
    for feature in features:  # every feature kept touches the ROI
        assert shapely.geometry.shape(feature["geometry"]).intersects(inside)
    assert len(features) < len(ran), "centre boxes of tiles that only graze the ROI are dropped"

    # Crossing: the detections are exactly the scene's objects that touch the ROI.
    features = outputs(stack, "roi-crossing")
    in_roi = [o for o in scene.objects if shapely.box(*(scene.pixel_to_world(o[0], o[3]) +
                                                        scene.pixel_to_world(o[2], o[1]))).intersects(crossing)]
    assert len(in_roi) == 2 and recall(features, in_roi) == 1.0
    for feature in features:
        assert shapely.geometry.shape(feature["geometry"]).intersects(crossing)


def test_16bit_4band_utm_jpeg_tiles_and_georegistration_none(stack, model_server, worker_factory, tmp_path):
    scene = make_scene(str(tmp_path / "ms.tif"), 1000, 900, seed=21, bands=4, dtype="uint16", epsg=32618)
    url = upload(stack, scene.path, "ms.tif")
    worker_factory(stack.worker_env(model_url=model_server.url, workers=4, region_size=1024))
    finals = run_jobs(stack, [
        request_for(stack, "ms-jpeg", url, tile_format="JPEG", compression="JPEG"),
        request_for(stack, "ms-none", url, tile_format="PNG", georegistration="NONE"),
    ])
    assert all(final["attributes"]["status"] == "SUCCESS" for final, _ in finals.values()), finals

    # JPEG tiles: 8-bit RGB from the first three bands, stretched once per image (stored in the job row).
    row = job_row(stack, "ms-jpeg", url)
    stored = json.loads(row.tile_radiometry)
    assert stored["bands"] == [0, 1, 2] and stored["percentiles"] == [2.0, 98.0]
    low, high = stored["stretch"]
    assert 24 * 257 <= low < high <= 255 * 257
    features = outputs(stack, "ms-jpeg")
    assert recall(features, scene.objects) >= 0.95, "objects are still found in stretched JPEG tiles"
    transformer = gdal.Transformer(gdal.Open(scene.path), None, ["DST_SRS=EPSG:4326"])
    for feature in features:
        props = feature["properties"]
        x0, y0, x1, y1 = props["imageBBox"]
        (lon, lat, _), = transformer.TransformPoints(0, [((x0 + x1) / 2, (y0 + y1) / 2)])[0]
        assert abs(props["center_longitude"] - lon) < 1e-7 and abs(props["center_latitude"] - lat) < 1e-7
        assert -75.1 < lon < -74.9

    # georegistration NONE: 16-bit PNG tiles (pixel type kept, no stretch), features in pixels only.
    row = job_row(stack, "ms-none", url)
    assert row.tile_radiometry is None
    features = outputs(stack, "ms-none")
    assert recall(features, scene.objects) >= 0.95
    for feature in features:
        props = feature["properties"]
        assert feature["geometry"] is None and "bbox" not in feature
        assert "center_longitude" not in props and "imageGeometry" in props and "imageBBox" in props
