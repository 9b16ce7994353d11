"""Tests of the bundled model functions: output schema, determinism, decoding, and real detection recall."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from osgeo import gdal

from modelrunner.imagery.encode import read_vsimem
from modelrunner.local import models
from modelrunner.local.models import MODELS, TileDecodeError, decode_tile, run_model
from modelrunner.local.scene import make_scene

gdal.UseExceptions()

_GDAL_TYPES = {
    np.dtype("uint8"): gdal.GDT_Byte,
    np.dtype("uint16"): gdal.GDT_UInt16,
    np.dtype("float32"): gdal.GDT_Float32,
}


def encode(pixels: np.ndarray, driver: str = "GTiff") -> bytes:
    """Encode a ``(bands, height, width)`` array as an image file's bytes, like the runner's tile encoder."""
    bands, height, width = pixels.shape
    source = gdal.GetDriverByName("MEM").Create("", width, height, bands, _GDAL_TYPES[pixels.dtype])
    source.WriteRaster(0, 0, width, height, np.ascontiguousarray(pixels).tobytes())
    name = f"/vsimem/test-encode-{id(pixels)}.{driver}"
    gdal.GetDriverByName(driver).CreateCopy(name, source)
    try:
        data = read_vsimem(name)
    finally:
        for leftover in (name, name + ".aux.xml"):
            if gdal.VSIStatL(leftover) is not None:
                gdal.Unlink(leftover)
    return data


def synthetic_tile(
    width: int = 512, height: int = 512, bands: int = 3, boxes: tuple[tuple[int, int, int, int], ...] = ()
) -> np.ndarray:
    """A dark noisy uint8 tile with bright rectangles at ``boxes`` (minx, miny, maxx, maxy)."""
    rng = np.random.default_rng(width * 7 + height)
    pixels = (rng.integers(0, 32, size=(bands, height, width)) + 30).astype(np.uint8)
    for x0, y0, x1, y1 in boxes:
        pixels[:, y0:y1, x0:x1] = 190
    return pixels


def vsimem_files() -> list[str]:
    return sorted(gdal.ReadDir("/vsimem/") or [])


def assert_feature_schema(feature: dict[str, Any], iri: str, width: int, height: int) -> None:
    assert feature["type"] == "Feature"
    assert feature["geometry"] is None
    assert isinstance(feature["id"], str) and feature["id"]
    properties = feature["properties"]
    minx, miny, maxx, maxy = properties["imageBBox"]
    assert 0 <= minx < maxx <= width and 0 <= miny < maxy <= height
    geometry = properties["imageGeometry"]
    assert geometry["type"] == "Polygon"
    assert geometry["coordinates"] == [[[maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny], [maxx, miny]]]
    (feature_class,) = properties["featureClasses"]
    assert feature_class["iri"] == iri
    assert 0.0 < feature_class["score"] <= 1.0


# ---------- decoding


@pytest.mark.parametrize(
    ("driver", "dtype", "bands"),
    [
        ("GTiff", "uint8", 3),
        ("GTiff", "uint16", 4),
        ("GTiff", "float32", 1),
        ("NITF", "uint8", 3),
        ("NITF", "uint16", 1),
        ("PNG", "uint8", 4),
        ("PNG", "uint16", 1),
        ("JPEG", "uint8", 3),
        ("JPEG", "uint8", 1),
    ],
)
def test_decode_tile_formats(driver: str, dtype: str, bands: int) -> None:
    pixels = synthetic_tile(96, 64, bands).astype(dtype)
    before = vsimem_files()
    decoded = decode_tile(encode(pixels, driver))
    assert decoded.shape == (bands, 64, 96)
    assert decoded.dtype == np.dtype(dtype)
    if driver != "JPEG":  # lossless formats round-trip exactly
        np.testing.assert_array_equal(decoded, pixels)
    assert vsimem_files() == before


@pytest.mark.parametrize("garbage", [b"", b"not an image at all", b"II*\x00" + b"\x00" * 20])
def test_undecodable_bytes_raise_tile_decode_error_and_leak_nothing(garbage: bytes) -> None:
    before = vsimem_files()
    for name in MODELS:
        with pytest.raises(TileDecodeError):
            run_model(name, garbage)
    assert vsimem_files() == before


def test_decode_accepts_bytearray_and_memoryview() -> None:
    tile = encode(synthetic_tile(32, 32))
    expected = decode_tile(tile)
    np.testing.assert_array_equal(decode_tile(bytearray(tile)), expected)
    np.testing.assert_array_equal(decode_tile(memoryview(tile)), expected)


# ---------- centerpoint


@pytest.mark.parametrize("driver", ["GTiff", "NITF", "PNG", "JPEG"])
def test_centerpoint_is_the_demo_models_box(driver: str) -> None:
    tile = encode(synthetic_tile(300, 200), driver)
    result = run_model("centerpoint", tile)
    assert result["type"] == "FeatureCollection"
    (feature,) = result["features"]
    assert_feature_schema(feature, "sample_object", 300, 200)
    assert feature["properties"]["imageBBox"] == [120.0, 80.0, 180.0, 120.0]
    assert feature["properties"]["featureClasses"] == [{"iri": "sample_object", "score": 1.0}]
    json.dumps(result)  # plain JSON types only


def test_centerpoint_square_tile_and_deterministic_ids() -> None:
    tile = encode(synthetic_tile(512, 512))
    first, second = models.centerpoint(tile), models.centerpoint(tile)
    assert first == second
    assert first["features"][0]["properties"]["imageBBox"] == pytest.approx([204.8, 204.8, 307.2, 307.2])
    other = models.centerpoint(encode(synthetic_tile(512, 512, bands=1)))
    assert other["features"][0]["id"] != first["features"][0]["id"]


# ---------- flood


def test_flood_schema_count_and_bounds() -> None:
    tile = encode(synthetic_tile(400, 250))
    result = run_model("flood", tile)
    assert len(result["features"]) == 10
    for feature in result["features"]:
        assert_feature_schema(feature, "sample_object", 400, 250)
    assert len({feature["id"] for feature in result["features"]}) == 10
    assert len(run_model("flood", tile, count=137)["features"]) == 137
    assert run_model("flood", tile, count=0)["features"] == []


def test_flood_is_deterministic_per_tile_and_seed() -> None:
    tile = encode(synthetic_tile(256, 256))
    other_tile = encode(synthetic_tile(256, 256, bands=1))
    first = run_model("flood", tile, count=25, seed=3)
    assert run_model("flood", tile, count=25, seed=3) == first
    assert run_model("flood", tile, count=25, seed=4) != first
    boxes = [f["properties"]["imageBBox"] for f in first["features"]]
    other_boxes = [
        f["properties"]["imageBBox"] for f in run_model("flood", other_tile, count=25, seed=3)["features"]
    ]
    assert boxes != other_boxes


def test_flood_rejects_bad_options() -> None:
    tile = encode(synthetic_tile(32, 32))
    with pytest.raises(ValueError):
        run_model("flood", tile, count=-1)
    with pytest.raises(TypeError):
        run_model("flood", tile, colour="red")


# ---------- objects


def test_objects_finds_exact_boxes_including_edge_cut_ones() -> None:
    boxes = ((100, 50, 140, 80), (300, 300, 360, 345), (0, 200, 25, 230), (480, 490, 512, 512))
    tile = encode(synthetic_tile(512, 512, boxes=boxes))
    result = run_model("objects", tile)
    found = sorted(tuple(f["properties"]["imageBBox"]) for f in result["features"])
    assert found == sorted(tuple(float(v) for v in box) for box in boxes)
    for feature in result["features"]:
        assert_feature_schema(feature, "bright_object", 512, 512)
        assert 0.5 < feature["properties"]["featureClasses"][0]["score"] < 0.8  # (190 - 45) / (190 + 45)
    assert run_model("objects", tile) == result


def test_objects_on_background_only_finds_nothing() -> None:
    assert run_model("objects", encode(synthetic_tile(512, 512)))["features"] == []
    flat = np.full((1, 64, 64), 50, dtype=np.uint8)
    assert run_model("objects", encode(flat))["features"] == []


@pytest.mark.parametrize(("dtype", "scale"), [("uint16", 257.0), ("float32", 1.0 / 255.0)])
def test_objects_scores_do_not_depend_on_the_data_type(dtype: str, scale: float) -> None:
    pixels = synthetic_tile(128, 128, boxes=((10, 10, 40, 50), (70, 90, 120, 128)))
    reference = run_model("objects", encode(pixels))
    scaled = run_model("objects", encode((pixels.astype(np.float64) * scale).astype(dtype)))
    assert [f["properties"]["imageBBox"] for f in scaled["features"]] == [
        f["properties"]["imageBBox"] for f in reference["features"]
    ]
    for got, want in zip(scaled["features"], reference["features"], strict=True):
        assert got["properties"]["featureClasses"][0]["score"] == pytest.approx(
            want["properties"]["featureClasses"][0]["score"], abs=1e-3
        )


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_objects_recall_on_a_tiled_synthetic_scene(tmp_path: Path) -> None:
    """Tile a scene with an overlap wider than any object, as the runner does, and score the detections."""
    scene = make_scene(tmp_path / "scene.tif", 1100, 900, seed=11, object_count=60)
    assert len(scene.objects) == 60
    dataset = gdal.Open(scene.path)
    tile, overlap = 256, 64
    detections: list[tuple[float, ...]] = []
    for y in range(0, scene.height, tile - overlap):
        for x in range(0, scene.width, tile - overlap):
            w, h = min(tile, scene.width - x), min(tile, scene.height - y)
            pixels = dataset.ReadAsArray(x, y, w, h)
            for feature in run_model("objects", encode(pixels))["features"]:
                minx, miny, maxx, maxy = feature["properties"]["imageBBox"]
                detections.append((minx + x, miny + y, maxx + x, maxy + y))
    matched = sum(1 for truth in scene.objects if any(_iou(truth, d) >= 0.9 for d in detections))
    assert matched / len(scene.objects) >= 0.9
    # No false positives: every detection is (a part of) a real object.
    assert all(max(_iou(d, truth) for truth in scene.objects) > 0 for d in detections)


# ---------- registry


def test_registry_and_unknown_model() -> None:
    assert set(MODELS) == {"centerpoint", "flood", "objects"}
    with pytest.raises(KeyError, match="unknown model"):
        run_model("nope", b"")
