"""Precision beside recall: the scoring itself, and the recommended merge on a tiled dense scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from modelrunner.features.featureset import FeatureSet
from modelrunner.features.seams import merge_seams, merge_set
from modelrunner.imagery.encode import encode_tile
from modelrunner.imagery.grid import TileGrid
from modelrunner.local.accuracy import Accuracy, match_boxes, score_features
from modelrunner.local.models import make_feature, objects
from modelrunner.local.scene import make_scene
from modelrunner.requests import RECOMMENDED_DISTILLATION, DistillationOption

TRUTH = [(0.0, 0.0, 10.0, 10.0), (20.0, 0.0, 30.0, 10.0), (40.0, 0.0, 50.0, 10.0)]


def test_each_detection_and_each_object_match_once() -> None:
    found = [(0, 0, 10, 10), (0, 0, 10, 9),  # a duplicate of the first object: a false positive
             (20, 0, 28, 10),  # IoU 0.8
             (44, 0, 54, 10)]  # IoU 6/14 < 0.5: neither a match nor a find
    score = match_boxes(TRUTH, found)
    assert score == Accuracy(2, 4, 3, iou_sum=1.8)
    assert (score.precision, score.recall) == (0.5, pytest.approx(2 / 3))
    assert score.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert score.mean_iou == pytest.approx(0.9)
    assert "precision 0.500  recall 0.667" in score.line()
    assert match_boxes(TRUTH, found, min_iou=0.4).matched == 3


def test_the_best_pairs_are_matched_first() -> None:
    # One detection between two objects matches the closer; the other object takes its own detection.
    score = match_boxes([(0, 0, 10, 10), (4, 0, 14, 10)], [(1, 0, 11, 10), (4, 0, 14, 10)])
    assert score.matched == 2


def test_empty_sides_and_features() -> None:
    assert match_boxes([], []).precision == 1.0 and match_boxes([], []).recall == 1.0
    assert match_boxes(TRUTH, np.zeros((0, 4))).recall == 0.0
    assert match_boxes([], [(0, 0, 1, 1)]).precision == 0.0
    features = [make_feature(box, score=0.5, iri="x", feature_id=str(i), model_name="m") for i, box in enumerate(TRUTH)]
    assert score_features(TRUTH, features) == Accuracy(3, 3, 3, iou_sum=3.0)


def _tiled_merge(path: Path, option: DistillationOption) -> Accuracy:
    """A dense scene through the worker's own path: per-tile detections, the tile merge, the seam merge."""
    scene = make_scene(path, 1536, 1536, seed=5, object_count=256)
    dataset = gdal.Open(scene.path)
    parts = []
    for tile in TileGrid.plan(scene.width, scene.height, 512, 128).tiles():
        pixels = dataset.ReadAsArray(tile.col, tile.row, tile.width, tile.height)
        features = []
        for found in objects(encode_tile(pixels, "GTIFF", "NONE"))["features"]:
            x1, y1, x2, y2 = found["properties"]["imageBBox"]
            features.append(make_feature((x1 + tile.col, y1 + tile.row, x2 + tile.col, y2 + tile.row),
                                         score=found["properties"]["featureClasses"][0]["score"],
                                         iri="bright_object", feature_id=found["id"], model_name="objects"))
        window = (tile.col, tile.row, tile.col + tile.width, tile.row + tile.height)
        parts.append((window, merge_set(FeatureSet.of(features), option)))
    return score_features(scene.objects, merge_seams(parts, option).features())


def test_the_recommended_merge_gives_one_feature_per_object_on_a_dense_scene(tmp_path: Path) -> None:
    recommended = _tiled_merge(tmp_path / "a.tif", RECOMMENDED_DISTILLATION)
    assert recommended.precision >= 0.98 and recommended.recall >= 0.99, recommended
    default = _tiled_merge(tmp_path / "b.tif", DistillationOption())
    assert default.recall >= 0.99 and default.precision < 0.9, "NMS 0.75 keeps slivers beside whole views"
