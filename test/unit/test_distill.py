"""Feature distillation (features/distill): GeoJSON features in, features out, whatever their order.

Box sets are drawn the way a tiled run produces them (:mod:`tiled_detections`); the array algorithms
themselves are checked against ensemble-boxes and textbook versions in test_nms.
"""

from __future__ import annotations

import copy
import json
import math
import random
from typing import Any

import numpy as np
import pytest
from ensemble_boxes import nms as eb_nms
from hypothesis import given
from hypothesis import strategies as st

from modelrunner.features.distill import box_columns, distill
from modelrunner.features.nms import canonical_order, nms_indices
from modelrunner.requests import DistillationOption
from tiled_detections import LABELS, SETTINGS, SIDE, quiet, rank_scores, thresholds, tiled_boxes

# distill(): features in, features out ------------------------------------------------------------------


def box_feature(box: Any, score: float | None, label: str = "vehicle", fid: str = "", *, bbox: bool = True,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box)
    props: dict[str, Any] = {
        "imageGeometry": {"type": "Polygon", "coordinates": [[[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]]},
    }
    if bbox:
        props["imageBBox"] = [x1, y1, x2, y2]
    if score is not None:
        props["featureClasses"] = [{"iri": label, "score": score}]
    props.update(extra or {})
    return {"type": "Feature", "id": fid, "geometry": None, "properties": props}


def as_features(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    # zero-padded ids: features equal but for the id are ordered by their JSON, i.e. by index here
    return [box_feature(b, float(s), LABELS[int(lab)], f"f{k:05d}")
            for k, (b, s, lab) in enumerate(zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True))]


@SETTINGS
@given(tiled_boxes(), thresholds, st.sampled_from(["NMS", "SOFT_NMS", "NMM", "GREEDYNMM"]), st.booleans(),
       st.randoms())
def test_distill_does_not_depend_on_input_order(data: tuple[np.ndarray, ...], t: float, algorithm: str,
                                                agnostic: bool, rnd: random.Random) -> None:
    boxes, scores, labels = data
    features = as_features(boxes, scores, labels)
    # features identical but for their id: which one survives must not depend on where it was
    features += [dict(features[0], id="twin"), dict(features[-1], id="twin2")]
    option = DistillationOption(algorithm_type=algorithm, iou_threshold=t, class_agnostic=agnostic)
    before = copy.deepcopy(features)
    out = distill(features, option)
    assert features == before  # nothing mutated
    shuffled = features[:]
    rnd.shuffle(shuffled)
    assert distill(shuffled, option) == out
    assert distill(list(reversed(features)), option) == out


@SETTINGS
@given(tiled_boxes(), thresholds, st.booleans())
def test_distill_nms_keeps_the_ensemble_boxes_selection(data: tuple[np.ndarray, ...], t: float, agnostic: bool) -> None:
    boxes, scores, labels = data
    features = as_features(boxes, scores, labels)
    out = distill(features, DistillationOption(iou_threshold=t, class_agnostic=agnostic))
    ids = [f["id"] for f in out]
    lab = np.zeros(len(boxes), dtype=int) if agnostic else labels
    expected = nms_indices(boxes, scores, lab, t)
    assert ids == [f"f{k:05d}" for k in expected.tolist()]
    distinct = rank_scores(canonical_order(boxes, scores, lab))
    _, kept_scores, _ = quiet(eb_nms, [(boxes / SIDE).tolist()], [distinct.tolist()], [lab.tolist()], iou_thr=t)
    assert sorted(kept_scores.tolist()) == sorted(distinct[expected].tolist())
    assert all(a is b for a, b in zip(out, (features[k] for k in expected.tolist()), strict=True))


def test_per_class_and_class_agnostic() -> None:
    features = [box_feature((10, 10, 50, 50), 0.9, "ship", "a"), box_feature((11, 10, 51, 50), 0.8, "vehicle", "b"),
                box_feature((10, 11, 50, 51), 0.7, "ship", "c")]
    per_class = distill(features, DistillationOption())
    assert [f["id"] for f in per_class] == ["a", "b"]
    agnostic = distill(features, DistillationOption(class_agnostic=True))
    assert [f["id"] for f in agnostic] == ["a"]


def test_ios_suppresses_a_box_inside_a_bigger_one() -> None:
    features = [box_feature((0, 0, 100, 100), 0.9, fid="big"), box_feature((10, 10, 30, 30), 0.8, fid="inside")]
    assert [f["id"] for f in distill(features, DistillationOption(iou_threshold=0.5))] == ["big", "inside"]
    ios = DistillationOption(iou_threshold=0.5, match_metric="IOS")
    assert [f["id"] for f in distill(features, ios)] == ["big"]


def test_points_bboxes_and_unplaceable_features() -> None:
    point = {"type": "Feature", "id": "p1", "properties": {
        "imageGeometry": {"type": "Point", "coordinates": [5.0, 5.0]},
        "featureClasses": [{"iri": "x", "score": 0.9}]}}
    twin = copy.deepcopy(point)
    twin["id"] = "p2"
    twin["properties"]["featureClasses"][0]["score"] = 0.5
    bbox_only = [{"type": "Feature", "id": f"b{k}", "properties": {
        "imageBBox": [100 + k, 100, 140 + k, 140], "featureClasses": [{"iri": "x", "score": 0.5 + k / 10}]}}
        for k in range(2)]
    nowhere = {"type": "Feature", "id": "n", "properties": {"featureClasses": [{"iri": "x", "score": 0.99}]}}
    unscored = box_feature((500, 500, 520, 520), None, fid="u")
    out = distill([point, twin, *bbox_only, nowhere, unscored], DistillationOption())
    assert [f["id"] for f in out] == ["n", "p1", "b1", "u"]
    assert out[2] is bbox_only[1]


def test_identical_boxes_are_only_merged_by_the_algorithm() -> None:
    same = [box_feature((10, 10, 50, 50), 0.8, "ship", "a"), box_feature((10, 10, 50, 50), 0.8, "ship", "b"),
            box_feature((10, 10, 50, 50), 0.8, "vehicle", "c")]
    assert [f["id"] for f in distill(same, DistillationOption(iou_threshold=1.0))] == ["a", "b", "c"]
    assert [f["id"] for f in distill(same, DistillationOption(iou_threshold=0.99))] == ["a", "c"]
    assert [f["id"] for f in distill(same[::-1], DistillationOption(iou_threshold=0.99))] == ["a", "c"]


def test_geojson_objects_keep_their_type() -> None:
    geojson = pytest.importorskip("geojson")
    a = geojson.Feature(id="a", geometry=None, properties=box_feature((0, 0, 40, 40), 0.9)["properties"])
    b = geojson.Feature(id="b", geometry=None, properties=box_feature((2, 0, 42, 40), 0.8)["properties"])
    out = distill([a, b], DistillationOption(algorithm_type="NMM"))
    assert len(out) == 1 and isinstance(out[0], geojson.Feature) and out[0]["id"] == "a"
    assert out[0]["properties"]["imageBBox"] == [0.0, 0.0, 42.0, 40.0]
    assert a["properties"]["imageBBox"] == [0.0, 0.0, 40.0, 40.0]


def test_multiple_classes_use_the_best() -> None:
    feature = box_feature((0, 0, 10, 10), None, fid="m")
    feature["properties"]["featureClasses"] = [{"iri": "car", "score": 0.4}, {"iri": "truck", "score": 0.6}]
    other = box_feature((0, 0, 10, 10), 0.5, "truck", "t")
    assert [f["id"] for f in distill([other, feature], DistillationOption())] == ["m"]
    assert [f["id"] for f in distill([box_feature((0, 0, 10, 10), 0.5, "car", "c"), feature],
                                     DistillationOption())] == ["m", "c"]


def test_soft_nms_writes_the_decayed_score_and_the_raw_one() -> None:
    a = box_feature((0, 0, 100, 100), 0.9, fid="a")
    b = box_feature((0, 0, 100, 95), 0.8, fid="b")
    far = box_feature((500, 500, 600, 600), 0.3, fid="far")
    before = copy.deepcopy([a, b, far])
    option = DistillationOption(algorithm_type="SOFT_NMS", iou_threshold=0.5, sigma=0.5)
    out = distill([b, far, a], option)
    assert [f["id"] for f in out] == ["a", "far", "b"]  # b decayed to 0.13
    iou = 0.95
    top = {f["id"]: f["properties"]["featureClasses"][0] for f in out}
    assert top["a"] == {"iri": "vehicle", "score": 0.9, "rawScore": 0.9}
    assert top["b"]["score"] == pytest.approx(0.8 * math.exp(-iou * iou / 0.5))
    assert top["b"]["rawScore"] == 0.8
    assert top["far"] == {"iri": "vehicle", "score": 0.3, "rawScore": 0.3}
    assert [a, b, far] == before


def test_soft_nms_below_the_threshold_is_not_decayed() -> None:
    a = box_feature((0, 0, 100, 100), 0.9, fid="a")
    b = box_feature((0, 0, 100, 60), 0.8, fid="b")  # IoU 0.6
    option = DistillationOption(algorithm_type="SOFT_NMS", iou_threshold=0.7, sigma=0.5)
    out = distill([a, b], option)
    assert [f["properties"]["featureClasses"][0]["score"] for f in out] == [0.9, 0.8]
    out = distill([a, b], DistillationOption(algorithm_type="SOFT_NMS", iou_threshold=0.5, sigma=0.5))
    assert out[1]["properties"]["featureClasses"][0]["score"] == pytest.approx(0.8 * math.exp(-0.36 / 0.5))


def test_nmm_merges_into_the_union_box_and_relocates() -> None:
    a = box_feature((10, 10, 50, 50), 0.9, fid="a")
    b = box_feature((12, 8, 52, 48), 0.7, fid="b")
    alone = box_feature((300, 300, 320, 320), 0.8, fid="alone")
    before = copy.deepcopy([a, b, alone])
    relocated: list[str] = []

    def relocate(feature: dict[str, Any]) -> dict[str, Any]:
        relocated.append(feature["id"])
        return dict(feature, geometry={"type": "Point", "coordinates": [0, 0]})

    out = distill([b, alone, a], DistillationOption(algorithm_type="NMM", iou_threshold=0.5), relocate)
    assert [f["id"] for f in out] == ["a", "alone"]
    props = out[0]["properties"]
    assert props["imageGeometry"] == {"type": "Polygon", "coordinates": [
        [[52.0, 8.0], [52.0, 50.0], [10.0, 50.0], [10.0, 8.0], [52.0, 8.0]]]}
    assert props["imageBBox"] == [10.0, 8.0, 52.0, 50.0]
    assert props["featureClasses"] == [{"iri": "vehicle", "score": 0.9}]
    assert out[0]["geometry"] == {"type": "Point", "coordinates": [0, 0]}
    assert relocated == ["a"]
    assert out[1] is alone
    assert [a, b, alone] == before


def polygon_feature(coords: list[list[float]], score: float, label: str, fid: str,
                    kind: str = "Polygon") -> dict[str, Any]:
    ring = [coords] if kind == "Polygon" else coords
    return {"type": "Feature", "id": fid, "geometry": None, "properties": {
        "imageGeometry": {"type": kind, "coordinates": ring},
        "featureClasses": [{"iri": label, "score": score}]}}


def test_masks_and_roads_are_joined_across_a_seam() -> None:
    # an L-shaped building mask cut by a tile seam at x = 100, seen by both tiles (they overlap 90..110)
    left = polygon_feature([[60, 10], [110, 10], [110, 30], [80, 30], [80, 60], [60, 60], [60, 10]], 0.7, "b", "L")
    right = polygon_feature([[90, 10], [140, 10], [140, 30], [90, 30], [95, 20], [90, 10]], 0.9, "b", "R")
    other_class = polygon_feature([[100, 15], [130, 15], [120, 25], [100, 15]], 0.8, "c", "C")
    # a road seen by both tiles (overlapping along 90..110), continued by a third piece from its end
    road_a = polygon_feature([[0, 200], [110, 211]], 0.6, "road", "ra", "LineString")
    road_b = polygon_feature([[90, 209], [200, 220]], 0.5, "road", "rb", "LineString")
    road_c = polygon_feature([[200, 220], [290, 310]], 0.4, "road", "rc", "LineString")
    box = box_feature((90, 10, 140, 30), 0.95, "b", "box")
    before = copy.deepcopy([left, right, other_class, road_a, road_b, road_c, box])
    moved: list[str] = []
    out = distill([road_b, left, box, road_a, other_class, right, road_c], DistillationOption(),
                  lambda f: moved.append(f["id"]) or f)
    assert [f["id"] for f in out] == ["box", "R", "C", "ra"]
    joined = out[1]["properties"]
    assert joined["featureClasses"] == [{"iri": "b", "score": 0.9}]
    import shapely.geometry as sg

    shape = sg.shape(joined["imageGeometry"])
    expected = sg.shape(left["properties"]["imageGeometry"]).union(sg.shape(right["properties"]["imageGeometry"]))
    assert shape.geom_type == "Polygon" and shape.symmetric_difference(expected).area < 1e-9
    assert out[2] is other_class
    road = sg.shape(out[3]["properties"]["imageGeometry"])
    assert road.geom_type == "LineString"  # merged end to end, the overlap counted once
    assert road.length == pytest.approx(math.hypot(200, 20) + math.hypot(90, 90))
    assert road.coords[0] == (0, 200) and road.coords[-1] == (290, 310)
    assert sorted(moved) == ["R", "ra"]
    assert [left, right, other_class, road_a, road_b, road_c, box] == before
    json.dumps(out)  # plain JSON-serialisable lists


def test_joining_keeps_geojson_types_and_leaves_lonely_pieces_alone() -> None:
    lonely = polygon_feature([[0, 0], [10, 0], [5, 8], [0, 0]], 0.5, "b", "x")
    multi = {"type": "Feature", "id": "m", "properties": {
        "imageGeometry": {"type": "MultiPolygon", "coordinates": [[[[20, 0], [30, 0], [25, 8], [20, 0]]]]},
        "imageBBox": [20, 0, 30, 8], "featureClasses": [{"iri": "b", "score": 0.6}]}}
    touching = polygon_feature([[30, 0], [40, 0], [35, 8], [30, 0]], 0.4, "b", "t")
    out = distill([lonely, multi, touching], DistillationOption())
    assert [f["id"] for f in out] == ["m", "x"]
    assert out[1] is lonely
    assert out[0]["properties"]["imageBBox"] == [20.0, 0.0, 40.0, 8.0]


def test_invalid_masks_are_repaired_before_joining() -> None:
    bow_tie = polygon_feature([[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]], 0.9, "b", "bow")
    beside = polygon_feature([[5, 0], [15, 0], [15, 5], [9, 6], [5, 0]], 0.5, "b", "beside")
    out = distill([beside, bow_tie], DistillationOption())
    assert [f["id"] for f in out] == ["bow"]
    assert out[0]["properties"]["imageGeometry"]["type"] in ("Polygon", "MultiPolygon")


def test_empty_and_garbage() -> None:
    assert distill([], DistillationOption()) == []
    weird = [{"type": "Feature", "properties": None}, {"type": "Feature"},
             {"type": "Feature", "properties": {"imageGeometry": {"type": "Polygon", "coordinates": "nope"}}},
             {"type": "Feature", "properties": {"imageGeometry": {"type": "Polygon", "coordinates": [[
                 ["a", "b"], ["a", "b"], ["a", "b"], ["a", "b"], ["a", "b"]]]},
                 "featureClasses": [{"iri": "x", "score": "high"}]}}]
    out = distill(weird, DistillationOption())
    assert len(out) == 4
    assert distill(list(reversed(weird)), DistillationOption()) == out


# Edge truncation -----------------------------------------------------------------------------------------


def test_distill_with_edge_truncation_outputs_one_whole_box() -> None:
    sliver = box_feature((90, 10, 100, 30), 0.9)
    whole = box_feature((90, 10, 110, 30), 0.8)
    plain = DistillationOption()
    assert len(distill([sliver, whole], plain)) == 2, "IoU 0.5 < 0.75: NMS keeps both views"
    option = DistillationOption(edge_truncation="SUPPRESS")
    assert distill([sliver, whole], option, truncated=[True, False]) == [whole]
    assert len(distill([sliver, whole], option)) == 2, "without flags nothing is known to be cut"
    left, right = box_feature((50, 50, 100, 90), 0.9), box_feature((60, 50, 160, 90), 0.7)
    moved = []
    out = distill([left, right], DistillationOption(edge_truncation="MERGE"), lambda f: moved.append(f) or f,
                  truncated=[True, True])
    assert len(out) == 1 and out[0]["properties"]["imageBBox"] == [50.0, 50.0, 160.0, 90.0]
    assert out[0]["properties"]["featureClasses"] == left["properties"]["featureClasses"] and moved == out


# Columns for callers that keep features serialised -------------------------------------------------------


def test_box_columns_are_what_distill_reads() -> None:
    point = {"type": "Feature", "properties": {"imageGeometry": {"type": "Point", "coordinates": [5.0, 6.0]},
                                               "featureClasses": [{"iri": "car", "score": 0.25}]}}
    road = {"type": "Feature", "properties": {"imageGeometry": {"type": "LineString", "coordinates": [[0, 0], [8, 3]]},
                                              "featureClasses": [{"iri": "road", "score": 0.5}]}}
    features = [box_feature((14, 30, 10, 20), 0.9, "ship", bbox=False), point, road, {"type": "Feature"}]
    boxes, scores, labels, is_box = box_columns(features)
    assert boxes[:3].tolist() == [[10, 20, 14, 30], [5, 6, 5.1, 6.1], [0, 0, 8, 3]], "sorted corners, a padded point"
    assert not np.isfinite(boxes[3]).any(), "no pixel geometry: no box"
    assert scores.tolist() == [0.9, 0.25, 0.5, -1.0] and labels == ["ship", "car", "road", ""]
    assert is_box.tolist() == [True, True, False, False]
    assert [len(c) for c in box_columns([])] == [0, 0, 0, 0]
    # With boxes only, NMS on the columns keeps what distill keeps.
    dupes = [box_feature((0, 0, 10, 10), 0.9, fid="a"), box_feature((0, 0, 10, 11), 0.8, fid="b"),
             box_feature((20, 0, 30, 10), 0.7, fid="c")]
    boxes, scores, labels, _ = box_columns(dupes)
    kept = nms_indices(boxes, scores, np.unique(labels, return_inverse=True)[1], 0.75)
    assert [dupes[k]["id"] for k in kept.tolist()] == [f["id"] for f in distill(dupes, DistillationOption())]
