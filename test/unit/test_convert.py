"""features/convert.py: model answers to image and world features (the one-pass box placement gives what the
general path gives), box polygons and the finishing of features."""

import copy
import json
import math

import numpy as np
import pytest
from osgeo import gdal, osr

from modelrunner.errors import FeatureError
from modelrunner.features.convert import (
    box_polygon,
    finish,
    geolocate,
    place_features,
    place_tile,
    to_image_features,
)
from modelrunner.features.distill import box_columns
from modelrunner.imagery.encode import encode_tile
from modelrunner.imagery.geolocate import Geolocator
from modelrunner.local.models import flood


def fc(*features):
    return {"type": "FeatureCollection", "features": list(features)}


def test_image_geometry_and_bbox_are_moved_to_full_image_pixels():
    feature = {"type": "Feature", "geometry": None, "properties": {
        "imageGeometry": box_polygon(10, 20, 30, 40), "imageBBox": [10, 20, 30, 40],
        "featureClasses": [{"iri": "car", "score": 0.9}]}}
    (out,) = to_image_features(fc(feature), col=100, row=1000)
    assert out["properties"]["imageBBox"] == [110.0, 1020.0, 130.0, 1040.0]
    assert out["properties"]["imageGeometry"]["coordinates"][0][0] == [130.0, 1020.0]
    assert feature["properties"]["imageBBox"] == [10, 20, 30, 40], "the model's answer is not mutated"


def test_deprecated_forms_become_image_geometry():
    bounds = {"properties": {"bounds_imcoords": [1, 2, 3, 4], "feature_types": {"ship": 0.5, "boat": 0.2},
                             "detection_score": 0.5}}
    ring = {"properties": {"geom_imcoords": [[0, 0], [4, 0], [4, 4]]}}
    det = {"properties": {"detection": {"type": "Point", "pixelCoordinates": [5, 6]}}}
    a, b, c = to_image_features(fc(bounds, ring, det), col=10, row=20)
    assert a["properties"]["imageGeometry"] == box_polygon(11, 22, 13, 24)
    assert a["properties"]["featureClasses"] == [{"iri": "ship", "score": 0.5}, {"iri": "boat", "score": 0.2}]
    assert b["properties"]["imageGeometry"]["coordinates"][0][-1] == [10.0, 20.0]
    assert c["properties"]["imageGeometry"] == {"type": "Point", "coordinates": [15.0, 26.0]}


@pytest.mark.parametrize("answer", [[], {"features": "x"}, fc({"properties": {}}), fc({"properties": []}),
                                    fc({"properties": {"imageGeometry": {"type": "Blob", "coordinates": []}}}),
                                    fc({"properties": {"imageBBox": [1, 2]}})])
def test_unplaceable_answers_fail_the_tile(answer):
    with pytest.raises(FeatureError):
        to_image_features(answer, 0, 0)


def test_object_without_features_means_no_detections():
    assert to_image_features({"type": "FeatureCollection"}, 0, 0) == []


@pytest.fixture
def utm_dataset():
    ds = gdal.GetDriverByName("MEM").Create("", 1000, 1000, 1)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32618)
    ds.SetProjection(srs.ExportToWkt())
    ds.SetGeoTransform((580000.0, 0.5, 0.0, 4510000.0, 0.0, -0.5))
    return ds


def test_geolocation_matches_gdal_and_rounds(utm_dataset):
    geolocator = Geolocator.for_dataset(utm_dataset)
    features = to_image_features(fc({"properties": {"imageGeometry": box_polygon(10.25, 20.5, 30, 40),
                                                    "imageBBox": [10.25, 20.5, 30, 40]}}), 100, 200)
    geolocate(features, geolocator.to_world)
    transformer = gdal.Transformer(utm_dataset, None, ["DST_SRS=EPSG:4326"])
    ring = features[0]["properties"]["imageGeometry"]["coordinates"][0]
    expected = np.array(transformer.TransformPoints(0, [tuple(p) for p in ring])[0])
    got = np.array(features[0]["geometry"]["coordinates"][0])
    assert np.allclose(got[:, :2], expected[:, :2], atol=5e-7)
    assert all(round(v, 6) == v for p in got for v in p)
    assert features[0]["geometry"]["type"] == "Polygon"
    lon, lat, _ = transformer.TransformPoints(0, [(120.125, 230.25)])[0][0]
    assert features[0]["properties"]["center_longitude"] == pytest.approx(lon, abs=1e-12)
    assert features[0]["properties"]["center_latitude"] == pytest.approx(lat, abs=1e-12)
    bbox = features[0]["bbox"]
    assert bbox[0] < bbox[2] and bbox[1] < bbox[3]


def test_without_sensor_model_features_keep_image_coordinates_only():
    features = to_image_features(fc({"geometry": None, "properties": {"imageGeometry": box_polygon(1, 2, 3, 4)}}), 0, 0)
    geolocate(features, None)
    assert features[0]["geometry"] is None and "center_longitude" not in features[0]["properties"]


def test_finish_adds_metadata_and_drops_deprecated_properties():
    features = to_image_features(fc({"properties": {"bounds_imcoords": [1, 2, 3, 4], "detection_score": 0.4,
                                                    "image_id": "x", "keep": 1}}), 0, 0)
    (out,) = finish(features, job_id="j", inference_dt="2026-01-01T00:00:00Z", feature_properties=[{"team": "a"}],
                    source_metadata=[{"format": "NITF"}])
    props = out["properties"]
    assert props["inferenceMetadata"] == {"jobId": "j", "inferenceDT": "2026-01-01T00:00:00Z"}
    assert props["team"] == "a" and props["keep"] == 1 and props["sourceMetadata"] == [{"format": "NITF"}]
    assert not {"bounds_imcoords", "detection_score", "image_id"} & set(props)


# ---------- placing box features in one pass gives what the general path gives

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
    "other winding": {"features": [_box(1, ring=[[0, 1], [3, 1], [3, 8], [0, 8], [0, 1]]), _box(2)]},
    "a line of zero height": {"features": [_box(1, ring=[[0, 1], [3, 1], [3, 1], [0, 1], [0, 1]]), _box(2)]},
    "not closed": {"features": [_box(1, ring=[[3, 1], [3, 8], [0, 8], [0, 1], [3, 2]]), _box(2)]},
    "two classes": {"features": [_box(1, extra={"featureClasses": [{"iri": "a", "score": 0.2},
                                                                   {"iri": "b", "score": 0.7}]}), _box(2)]},
    "integer score": {"features": [_box(1, extra={"featureClasses": [{"iri": "a", "score": 1}]}), _box(2)]},
    "no score": {"features": [_box(1, extra={"featureClasses": [{"iri": "a"}]}), _box(2)]},
    "NaN score": {"features": [_box(1, extra={"featureClasses": [{"iri": "a", "score": math.nan}]}), _box(2)]},
    "mixed labels": {"features": [_box(1), _box(2, extra={"featureClasses": [{"iri": "bus", "score": 0.25}]})]},
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


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_box_columns_of_a_placed_tile_are_what_parsing_its_features_gives(name):
    """place_tile's columns (read from the arrays it placed the features from) are exactly box_columns of the
    placed features, or None where any feature is not a plain box (then the caller parses)."""
    features, columns = place_tile(copy.deepcopy(ANSWERS[name]), 384, 768, _affine)
    if columns is None:
        return  # the general path, or a feature that is not a plain box: the caller parses (see the next test)
    boxes, scores, labels, is_box = box_columns(features)
    assert is_box.all() and all(len(f["properties"]["featureClasses"]) == 1 for f in features)
    assert np.array_equal(columns.boxes, boxes) and columns.boxes.dtype == boxes.dtype
    assert np.array_equal(columns.scores, scores) and columns.labels == labels


def test_box_columns_are_given_for_plain_boxes_only():
    for name in ("flood", "no bbox", "ints", "other winding", "a line of zero height", "mixed labels"):
        assert place_tile(copy.deepcopy(ANSWERS[name]), 0, 0, None)[1] is not None, name
    for name in ("rotated", "not closed", "two classes", "integer score", "no score", "NaN score", "3-D ring",
                 "a point among boxes", "feature_types", "empty"):
        assert place_tile(copy.deepcopy(ANSWERS[name]), 0, 0, _affine)[1] is None, name


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
