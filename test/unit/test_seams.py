"""The seam merge (features/seams): parts already merged inside themselves, merged across their windows'
seams, select what one merge of all their features would, parsing only the features near a seam."""

from __future__ import annotations

import json
import random

import pytest

from modelrunner.features.distill import distill
from modelrunner.features.featureset import FeatureSet, PackedFeatureSet
from modelrunner.features.seams import merge_packed, merge_seams, merge_set, merge_tiles
from modelrunner.requests import DistillationOption
from tiled_detections import box_feature

# Four parts of 500 px overlapping by 60 px.
PARTS = [(0.0, 0.0, 500.0, 500.0), (440.0, 0.0, 940.0, 500.0), (0.0, 440.0, 500.0, 940.0),
         (440.0, 440.0, 940.0, 940.0)]


def _parts(seed: int, option: DistillationOption) -> list[tuple[tuple[float, float, float, float], FeatureSet]]:
    """Each part's detections (crowded into the overlaps), merged inside the part as a lower level does."""
    rng = random.Random(seed)
    parts = []
    for index, window in enumerate(PARTS):
        x0, y0, x1, y1 = window
        features = []
        for n in range(80):
            x = rng.choice([rng.uniform(x0, x0 + 70), rng.uniform(x1 - 70, x1 - 20), rng.uniform(x0, x1 - 20)])
            y = rng.uniform(y0, y1 - 20)
            features.append(box_feature(index * 1000 + n, round(x), round(y), rng.choice([10, 20]), 20,
                                        round(rng.random(), 2), rng.choice("ab")))
        parts.append((window, merge_set(FeatureSet.of(features), option)))
    return parts


def _canonical(texts: list[str]) -> list[str]:
    return sorted(json.dumps(json.loads(t), sort_keys=True) for t in texts)


@pytest.mark.parametrize("algorithm", ["NMS", "SOFT_NMS", "NMM", "GREEDYNMM"])
def test_a_seam_merge_selects_what_one_merge_of_all_parts_selects(algorithm):
    option = DistillationOption(algorithm_type=algorithm, iou_threshold=0.3)
    parts = _parts(1, option)
    union = [f for _, part in parts for f in part.features()]
    merged = merge_seams(parts, option)
    assert _canonical(merged.texts) == _canonical([json.dumps(f) for f in distill(union, option)])
    if algorithm != "SOFT_NMS":
        assert len(merged) < len(union), "the seams held duplicates"
    packed = [(window, PackedFeatureSet.pack(part, 2048)) for window, part in parts]
    assert list(merge_packed(packed, option)) == merged.texts, "stored parts: the same texts, in the same order"


def test_lower_levels_pass_soft_nms_through_in_window_order():
    option = DistillationOption(algorithm_type="SOFT_NMS", iou_threshold=0.3)
    parts = _parts(2, option)
    shuffled = parts[::-1]
    passed = merge_seams(shuffled, option, final=False)
    assert passed.texts == [t for _, part in parts for t in part.texts], "unmerged, row-major by window"


def test_merge_set_on_columns_selects_what_distill_selects():
    rng = random.Random(3)
    features = [box_feature(n, rng.randrange(0, 200), rng.randrange(0, 200), 20, 20, round(rng.random(), 1),
                            "ab"[n % 2]) for n in range(300)]
    features += [dict(features[0], id="twin")]  # equal but for the id: the text breaks the tie
    candidates = FeatureSet.of(features)
    for option in (DistillationOption(iou_threshold=0.3), DistillationOption(iou_threshold=0.3, class_agnostic=True)):
        on_columns = merge_set(candidates, option)  # NMS, boxes only: nothing parsed
        assert _canonical(on_columns.texts) == _canonical([json.dumps(f) for f in distill(features, option)])
        assert on_columns.texts == sorted(on_columns.texts), "kept features come out in text order"
    nmm = DistillationOption(algorithm_type="NMM", iou_threshold=0.3)
    handed = merge_set(candidates, nmm, features=features)  # the tile level hands its features over
    assert _canonical(handed.texts) == _canonical([json.dumps(f) for f in distill(features, nmm)])
    assert handed.boxes.tolist() == FeatureSet.of(handed.features()).boxes.tolist(), "columns follow the grown boxes"
    assert not len(merge_set(FeatureSet.empty(), nmm))


# Two tiles (or regions) 100 px wide overlapping by 40 px, and what each saw of three objects.
LEFT, RIGHT = (0.0, 0.0, 100.0, 100.0), (60.0, 0.0, 160.0, 100.0)


def _views() -> tuple[list[dict], list[dict]]:
    left = [box_feature(1, 90, 10, 10, 20, 0.9, "a"),  # object A, cut by the left window's right edge
            box_feature(2, 50, 50, 50, 40, 0.8, "a"),  # object B (50..160), cut ...
            box_feature(3, 70, 30, 10, 8, 0.7, "a")]  # object C, whole in the overlap
    right = [box_feature(4, 90, 10, 20, 20, 0.6, "a"),  # A whole
             box_feature(5, 60, 50, 100, 40, 0.5, "a"),  # B, cut by the right window's left edge
             box_feature(6, 70, 30, 10, 8, 0.7, "a")]  # C again
    return left, right


@pytest.mark.parametrize("algorithm", ["NMS", "NMM", "GREEDYNMM"])
def test_edge_truncation_makes_one_feature_per_object_across_a_seam(algorithm):
    left, right = _views()
    parts = [(LEFT, FeatureSet.of(left)), (RIGHT, FeatureSet.of(right))]
    plain = merge_seams(parts, DistillationOption(algorithm_type=algorithm))
    assert len(plain) == 5, "IoU 0.5 and 0.45 between the views of A and B: both views of each stay"
    relocated = []

    def relocate(feature):
        relocated.append(feature["id"])
        return feature

    option = DistillationOption(algorithm_type=algorithm, edge_truncation="MERGE")
    merged = merge_seams(parts, option, relocate)
    # A: the right tile's whole view; B: rebuilt from its two pieces (kept: the better-scored piece); C: once.
    assert sorted(f["id"] for f in merged.features()) == ["f2", "f3", "f4"]
    assert sorted(map(tuple, merged.boxes.tolist())) == [(50.0, 50.0, 160.0, 90.0), (70.0, 30.0, 80.0, 38.0),
                                                         (90.0, 10.0, 110.0, 30.0)]
    assert relocated == ["f2"], "only the rebuilt box of B changed geometry"
    suppressed = merge_seams(parts, DistillationOption(algorithm_type=algorithm, edge_truncation="SUPPRESS"))
    assert len(suppressed) == 3 and "f1" not in {f["id"] for f in suppressed.features()}
    # At the job level the parts are regions, stored packed: the same selection.
    packed = [(w, PackedFeatureSet.pack(p, 4096)) for w, p in parts]
    assert sorted(merge_packed(packed, option)) == sorted(merged.texts)


def _crowded_tile(rng: random.Random, tile: int, size: int) -> FeatureSet:
    """A tile's detections with many duplicates and exact ties: equal scores, equal boxes, equal texts."""
    features = []
    for n in range(size):
        if features and rng.random() < 0.2:  # an exact copy (same id: the same text), or the same box again
            copy = json.loads(json.dumps(rng.choice(features)))
            if rng.random() < 0.5:
                copy["id"] = f"f{tile}-{n}"
            features.append(copy)
            continue
        features.append(box_feature(tile * 1000 + n, rng.choice([0, 5, 10]), rng.choice([0, 5]), rng.choice([10, 20]),
                                    20, rng.choice([0.5, 0.7, 0.9]), rng.choice("ab")))
    rng.shuffle(features)
    return FeatureSet.of(features)


@pytest.mark.parametrize("option", [
    DistillationOption(), DistillationOption(iou_threshold=0.3), DistillationOption(class_agnostic=True),
    DistillationOption(iou_threshold=0.5, match_metric="IOS"), DistillationOption(algorithm_type="NMM"),
    DistillationOption(algorithm_type="GREEDYNMM", iou_threshold=0.3)], ids=str)
def test_tiles_merged_at_once_are_each_what_merging_it_alone_gives(option):
    """merge_tiles gives each set exactly merge_set's result (the same texts in the same order), whether the
    sets go through its one NMS (boxes of the same place in different sets are never compared) or not."""
    rng = random.Random(7)
    sets = [_crowded_tile(rng, tile, rng.choice([0, 1, 2, 30, 60])) for tile in range(12)]
    sets.append(FeatureSet.of([{"type": "Feature", "properties": {"imageGeometry": {
        "type": "Polygon", "coordinates": [[[0, 0], [9, 1], [8, 9], [0, 0]]]}}}, box_feature(1, 0, 0, 9, 9, 0.5, "a")]))
    merged = merge_tiles(sets, option)
    assert [m.texts for m in merged] == [merge_set(s, option).texts for s in sets]
    for m, s in zip(merged, sets, strict=True):
        alone = merge_set(s, option)
        assert (m.boxes == alone.boxes).all() and list(m.scores) == list(alone.scores) and m.labels == alone.labels
    assert sum(map(len, merged)) < sum(map(len, sets)), "the tiles held duplicates"
