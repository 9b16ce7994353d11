"""The completion's seam merge selects what a merge of every region's result would."""

from __future__ import annotations

import json
import random

import pytest

from modelrunner.features.convert import box_polygon
from modelrunner.features.merge import distill
from modelrunner.features.seams import FeatureSet
from modelrunner.requests import DistillationOption
from modelrunner.runner.complete import merge_regions

# Four regions of 1000 px overlapping by 100 px (as regions of whole overlapping tiles do).
WINDOWS = [(0, 0), (900, 0), (0, 900), (900, 900)]


def box_feature(n: int, x: float, y: float, w: float, h: float, score: float, label: str) -> dict:
    return {"type": "Feature", "id": f"f{n}", "geometry": None,
            "properties": {"imageGeometry": box_polygon(x, y, x + w, y + h),
                           "featureClasses": [{"iri": label, "score": score}]}}


def region_results(seed: int) -> tuple[list[dict], dict[str, FeatureSet]]:
    rng = random.Random(seed)
    rows, results = [], {}
    for index, (col, row) in enumerate(WINDOWS):
        features = []
        for n in range(150):
            # Crowd the overlap bands so that seams hold many duplicates.
            if rng.random() < 0.5:
                x = rng.choice([col + rng.uniform(0, 120), col + rng.uniform(880, 940)])
                y = rng.uniform(row, row + 940)
            else:
                x, y = rng.uniform(col, col + 940), rng.uniform(row, row + 940)
            features.append(box_feature(index * 1000 + n, round(x), round(y), rng.choice([20, 40, 60]),
                                        rng.choice([20, 40]), round(rng.random(), 2), rng.choice("ab")))
        kept = distill(features, DistillationOption(iou_threshold=0.3))
        region_id = f"r{index}"
        rows.append({"region_id": region_id, "region_index": index,
                     "region_bounds": [[row, col], [1000, 1000]]})
        results[region_id] = FeatureSet.from_bytes(FeatureSet.of(kept).to_bytes())
    return rows, results


@pytest.mark.parametrize("seed", range(5))
def test_seam_merge_equals_a_merge_of_everything(seed):
    rows, results = region_results(seed)
    option = DistillationOption(iou_threshold=0.3)
    everything = [f for r in rows for f in results[r["region_id"]].features()]
    expected = sorted(json.dumps(f, sort_keys=True) for f in distill(everything, option))
    merged = merge_regions(rows, results, option).texts
    got = sorted(json.dumps(json.loads(f), sort_keys=True) for f in merged)
    assert got == expected
    assert len(merged) < len(everything), "the seams held duplicates"


def test_soft_nms_runs_once_over_every_feature():
    rows, results = region_results(7)
    option = DistillationOption(algorithm_type="SOFT_NMS", iou_threshold=0.3)
    everything = [f for r in rows for f in results[r["region_id"]].features()]
    expected = sorted(json.dumps(f, sort_keys=True) for f in distill(everything, option))
    merged = merge_regions(rows, results, option).texts
    assert sorted(json.dumps(json.loads(f), sort_keys=True) for f in merged) == expected


def test_features_a_seam_merge_changes_are_relocated():
    rows, results = region_results(3)
    relocated = []

    def relocate(feature):
        relocated.append(feature["id"])
        feature["geometry"] = {"type": "Point", "coordinates": [0.0, 0.0, 0.0]}
        return feature

    merged = merge_regions(rows, results, DistillationOption(algorithm_type="NMM", iou_threshold=0.3),
                           relocate).features()
    assert relocated, "NMM grew some boxes across the seams"
    changed = [f for f in merged if f["id"] in relocated]
    assert changed and all(f["geometry"]["type"] == "Point" for f in changed)


def test_output_order_does_not_depend_on_the_order_parts_finished_in():
    rows, results = region_results(11)
    option = DistillationOption(iou_threshold=0.3)
    first = merge_regions(rows, results, option).texts
    shuffled = list(rows)
    random.Random(2).shuffle(shuffled)
    assert merge_regions(shuffled, results, option).texts == first
