"""The completion's seam merge selects what a merge of every region's result would."""

from __future__ import annotations

import json
import random
import zlib

import pytest

from modelrunner.features.distill import distill
from modelrunner.features.featureset import FeatureSet, PackedFeatureSet
from modelrunner.features.seams import merge_seams
from modelrunner.requests import DistillationOption
from modelrunner.runner.complete import merge_regions
from tiled_detections import box_feature

# Four regions of 1000 px overlapping by 100 px (as regions of whole overlapping tiles do).
WINDOWS = [(0, 0), (900, 0), (0, 900), (900, 900)]


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
        results[region_id] = PackedFeatureSet.pack(FeatureSet.of(kept), 5000)
    return rows, results


@pytest.mark.parametrize("seed", range(5))
def test_seam_merge_equals_a_merge_of_everything(seed):
    rows, results = region_results(seed)
    option = DistillationOption(iou_threshold=0.3)
    everything = [f for r in rows for f in results[r["region_id"]].features()]
    expected = sorted(json.dumps(f, sort_keys=True) for f in distill(everything, option))
    merged = list(merge_regions(rows, results, option))
    got = sorted(json.dumps(json.loads(f), sort_keys=True) for f in merged)
    assert got == expected
    assert len(merged) < len(everything), "the seams held duplicates"


def test_soft_nms_runs_once_over_every_feature():
    rows, results = region_results(7)
    option = DistillationOption(algorithm_type="SOFT_NMS", iou_threshold=0.3)
    everything = [f for r in rows for f in results[r["region_id"]].features()]
    expected = sorted(json.dumps(f, sort_keys=True) for f in distill(everything, option))
    merged = list(merge_regions(rows, results, option))
    assert sorted(json.dumps(json.loads(f), sort_keys=True) for f in merged) == expected


def test_features_a_seam_merge_changes_are_relocated():
    rows, results = region_results(3)
    relocated = []

    def relocate(feature):
        relocated.append(feature["id"])
        feature["geometry"] = {"type": "Point", "coordinates": [0.0, 0.0, 0.0]}
        return feature

    merged = [json.loads(text) for text in merge_regions(
        rows, results, DistillationOption(algorithm_type="NMM", iou_threshold=0.3), relocate)]
    assert relocated, "NMM grew some boxes across the seams"
    changed = [f for f in merged if f["id"] in relocated]
    assert changed and all(f["geometry"]["type"] == "Point" for f in changed)


def test_output_order_does_not_depend_on_the_order_parts_finished_in():
    rows, results = region_results(11)
    option = DistillationOption(iou_threshold=0.3)
    first = list(merge_regions(rows, results, option))
    shuffled = list(rows)
    random.Random(2).shuffle(shuffled)
    assert list(merge_regions(shuffled, results, option)) == first


@pytest.mark.parametrize("algorithm", ["NMS", "SOFT_NMS", "NMM", "GREEDYNMM"])
def test_streamed_job_features_are_the_in_memory_merge(algorithm):
    rows, results = region_results(5)
    option = DistillationOption(algorithm_type=algorithm, iou_threshold=0.3)
    in_memory = [(w, FeatureSet.from_bytes(zlib.decompress(b"".join(p.chunks)))) for w, p in _windows(rows, results)]
    expected = merge_seams(in_memory, option).texts
    streamed = merge_regions(rows, results, option)
    assert len(streamed) == len(expected)
    assert list(streamed) == expected
    assert list(streamed) == expected, "each output streams it again"


def _windows(rows, results):
    for row in rows:
        (top, left), (width, height) = row["region_bounds"]
        yield (float(left), float(top), float(left + width), float(top + height)), results[row["region_id"]]


def test_a_failed_region_without_result_changes_no_selection():
    rows, results = region_results(4)
    option = DistillationOption(iou_threshold=0.3)
    missing = rows[1]["region_id"]
    without = {k: v for k, v in results.items() if k != missing}
    empty = dict(without, **{missing: PackedFeatureSet.pack(FeatureSet.empty(), 1000)})
    assert sorted(merge_regions(rows, without, option)) == sorted(merge_regions(rows, empty, option))
    everything = [f for r in rows if r["region_id"] != missing for f in results[r["region_id"]].features()]
    expected = sorted(json.dumps(f, sort_keys=True) for f in distill(everything, option))
    assert sorted(json.dumps(json.loads(t), sort_keys=True) for t in merge_regions(rows, without, option)) == expected
