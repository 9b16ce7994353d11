"""The per-tile fast paths give what the general code gives: placing box features in one pass, compact
feature texts, the model answer parser, and GTiff tiles written without a translation copy."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from osgeo import gdal

from modelrunner.errors import FeatureError
from modelrunner.features.convert import geolocate, place_features, to_image_features
from modelrunner.imagery.encode import encode_tile
from modelrunner.imagery.geolocate import Georeference
from modelrunner.inference.detectors import _parse
from modelrunner.local.models import flood


def _affine(points: np.ndarray) -> np.ndarray:
    lon = -77.05 + points[:, 0] * 1e-5
    lat = 38.9 - points[:, 1] * 1e-5
    return np.stack([lon, lat, np.zeros(len(points))], axis=1)


def _general(answer, col, row, to_world):
    features = to_image_features(copy.deepcopy(answer), col, row)
    geolocate(features, to_world)
    return features


def _box(i, *, bbox=True, ring=None, extra=None):
    x, y = 10.5 * i, 7.25 * i
    props = {"imageGeometry": {"type": "Polygon", "coordinates": [ring or [[x + 9, y], [x + 9, y + 4], [x, y + 4],
                                                                             [x, y], [x + 9, y]]]},
             "featureClasses": [{"iri": "car", "score": 0.5 + i / 100}]}
    if bbox:
        props["imageBBox"] = [x, y, x + 9, y + 4]
    props.update(extra or {})
    return {"type": "Feature", "id": f"f{i}", "geometry": None, "properties": props}


ANSWERS = {
    "flood": flood(encode_tile(np.zeros((1, 512, 512), dtype=np.uint8), "PNG", "NONE"), count=40, seed=3),
    "no bbox": {"type": "FeatureCollection", "features": [_box(i, bbox=False) for i in range(5)]},
    "ints": {"features": [_box(1, ring=[[3, 1], [3, 8], [0, 8], [0, 1], [3, 1]])]},
    "feature_types": {"features": [_box(2, extra={"feature_types": {"ship": 0.9}, "featureClasses": None})]},
    "rotated": {"features": [_box(1, ring=[[0, 0], [5, 1], [4, 6], [-1, 5], [0, 0]]), _box(2)]},
    "a point among boxes": {"features": [_box(1), {"type": "Feature", "properties": {
        "imageGeometry": {"type": "Point", "coordinates": [3, 4]}}}]},
    "3-D ring": {"features": [_box(1, ring=[[3, 1, 0], [3, 8, 0], [0, 8, 0], [0, 1, 0], [3, 1, 0]])]},
    "bool in ring": {"features": [_box(1, ring=[[True, 1], [3, 8], [0, 8], [0, 1], [True, 1]])]},
    "empty": {"type": "FeatureCollection", "features": []},
    "no features": {"type": "FeatureCollection"},
}
for answer in ANSWERS.values():  # feature_types given, featureClasses absent
    for feature in answer.get("features") or []:
        if feature["properties"].get("featureClasses", 1) is None:
            del feature["properties"]["featureClasses"]


@pytest.mark.parametrize("name", sorted(ANSWERS))
@pytest.mark.parametrize("to_world", [_affine, None], ids=["world", "pixels only"])
def test_placing_in_one_pass_equals_moving_then_geolocating(name, to_world):
    answer = ANSWERS[name]
    before = copy.deepcopy(answer)
    got = place_features(answer, 384, 768, to_world)
    assert got == _general(answer, 384, 768, to_world)
    assert json.dumps(got) == json.dumps(_general(answer, 384, 768, to_world)), "same key order"
    assert answer == before, "the model's answer is not changed"


@pytest.mark.parametrize("bad", [
    {"features": [_box(1, ring=[["1", 1], [3, 8], [0, 8], [0, 1], ["1", 1]])]},
    {"features": [_box(1, ring=[[math.nan, 1], [3, 8], [0, 8], [0, 1], [math.nan, 1]])]},
    {"features": [_box(1, extra={"imageBBox": [1, 2, 3]})]},
    {"features": [_box(1, extra={"imageBBox": None})]},
    {"features": [_box(1, extra={"featureClasses": "car"})]},
    {"features": [_box(1, extra={"imageBBox": [1, {"x": 2}, 3, 4]})]},
    {"features": [_box(1, ring=[[3, 1], [3, 8], "1", [0, 1], [3, 1]])]},
    {"features": [_box(1, ring=[1, 2, 3, 4])]},  # positions one array too shallow for a Polygon
    {"features": [_box(1, ring=[[3, 1], [3, 8, 0, [1]], [0, 8], [0, 1], [3, 1]])]},
    {"features": [_box(1, extra={"imageGeometry": {"type": ["Polygon"], "coordinates": []}})]},
    {"features": [_box(1, extra={"imageGeometry": 3.0})]},
    {"features": [_box(1, extra={"imageBBox": [0, 0, 10 ** 400, 1]})]},  # a big int json keeps, beyond float
    {"features": [_box(1, extra={"imageBBox": [1, 2, 3]}), _box(2, ring=[[10 ** 400, 1], [3, 8], [0, 8], [0, 1],
                                                                       [10 ** 400, 1]])]},
    {"features": [_box(1, extra={"imageGeometry": {"type": "LineString", "coordinates": [[1, 2]]}})]},
    {"features": [_box(1, extra={"imageGeometry": {"type": "Polygon",
                                                   "coordinates": [[[0, 0], [1, 1]], [[0, 0], [1, 1]]]}})]},
    {"features": [{"type": "Feature", "properties": None}]},
    {"features": "nope"},
    ["not", "an", "object"],
])
def test_bad_features_fail_their_tile_the_same_way(bad):
    with pytest.raises(FeatureError) as general:
        _general(bad, 0, 0, _affine)
    with pytest.raises(FeatureError) as fast:
        place_features(copy.deepcopy(bad), 0, 0, _affine)
    assert str(fast.value) == str(general.value)


def test_model_answers_are_read_with_the_json_fallback():
    assert _parse(b'{"features": [], "n": 2}', "m") == {"features": [], "n": 2}
    assert _parse(b'{"big": 123456789012345678901234567890}', "m")["big"] == 123456789012345678901234567890
    assert math.isnan(_parse(b'{"score": NaN}', "m")["score"])


@pytest.mark.parametrize("layout", ["band-sequential", "pixel-interleaved", "strided"])
def test_gtiff_tiles_keep_pixels_and_georeference_whatever_the_memory_layout(layout):
    rng = np.random.default_rng(1)
    by_pixel = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    pixels = {"band-sequential": np.ascontiguousarray(by_pixel.transpose(2, 0, 1)),
              "pixel-interleaved": by_pixel.transpose(2, 0, 1),
              "strided": np.ascontiguousarray(by_pixel.transpose(2, 0, 1))[:, ::2, ::2]}[layout]
    georef = Georeference(geotransform=(10.0, 0.5, 0.0, 20.0, 0.0, -0.5), projection=_wgs84())
    data = encode_tile(pixels, "GTIFF", "NONE", georef.for_chip(4, 6))
    gdal.FileFromMemBuffer("/vsimem/layout.tif", data)
    try:
        tile = gdal.Open("/vsimem/layout.tif")
        assert np.array_equal(tile.ReadAsArray(), pixels)
        assert tile.GetGeoTransform() == pytest.approx((12.0, 0.5, 0.0, 17.0, 0.0, -0.5))
        assert [tile.GetRasterBand(i).GetColorInterpretation() for i in (1, 2, 3)] == \
            [gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand]
        tile = None
    finally:
        gdal.Unlink("/vsimem/layout.tif")


def _wgs84() -> str:
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    return srs.ExportToWkt()


@pytest.mark.parametrize(("bands", "dtype", "interpretation"), [
    (3, np.uint8, [gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand]),
    (4, np.uint8, [gdal.GCI_GrayIndex, gdal.GCI_Undefined, gdal.GCI_Undefined, gdal.GCI_Undefined]),
    (3, np.uint16, [gdal.GCI_GrayIndex, gdal.GCI_Undefined, gdal.GCI_Undefined]),
])
def test_gtiff_tiles_never_call_a_fourth_band_alpha(bands, dtype, interpretation):
    pixels = np.arange(bands * 32 * 32, dtype=dtype).reshape(bands, 32, 32)
    gdal.FileFromMemBuffer("/vsimem/bands.tif", encode_tile(pixels, "GTIFF", "NONE"))
    try:
        tile = gdal.Open("/vsimem/bands.tif")
        assert [tile.GetRasterBand(i + 1).GetColorInterpretation() for i in range(bands)] == interpretation
        assert all(tile.GetRasterBand(i + 1).GetMaskFlags() == gdal.GMF_ALL_VALID for i in range(bands))
        assert np.array_equal(tile.ReadAsArray(), pixels)
        tile = None
    finally:
        gdal.Unlink("/vsimem/bands.tif")


def test_gdal_options_in_the_environment_win_over_ours(monkeypatch):
    import modelrunner.imagery.source as source

    monkeypatch.setattr(source, "_done", False)
    monkeypatch.setenv("GDAL_CACHEMAX", "77")
    before = gdal.GetConfigOption("GDAL_CACHEMAX")
    gdal.SetConfigOption("GDAL_CACHEMAX", None)
    try:
        source.configure_gdal()
        assert gdal.GetConfigOption("GDAL_CACHEMAX") == "77"
        assert gdal.GetConfigOption("CPL_VSIL_CURL_CACHE_SIZE") == source.GDAL_OPTIONS["CPL_VSIL_CURL_CACHE_SIZE"]
    finally:
        gdal.SetConfigOption("GDAL_CACHEMAX", before)
