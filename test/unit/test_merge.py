"""Duplicate merge (feature distillation): the fast algorithms against ensemble-boxes and textbook versions.

The property tests draw box sets the way a tiled run produces them (objects duplicated across synthetic tile
and region seams, jittered and cut at the seam, exact duplicates, quantised scores with many ties) and check
that the grid + conflict-graph implementation selects exactly what the quadratic reference does. The image is
1024 px wide so normalising to ensemble-boxes' [0, 1] divides by a power of two: every IoU it computes is
then bit-identical to ours and even boxes sitting exactly on the threshold must agree.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import random
from typing import Any

import numpy as np
import pytest
from ensemble_boxes import nms as eb_nms
from ensemble_boxes import soft_nms as eb_soft_nms
from ensemble_boxes.ensemble_boxes_nms import cpu_soft_nms_float
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelrunner.features.merge import (
    box_metric,
    canonical_order,
    distill,
    greedy_nmm_indices,
    nmm_indices,
    nms_indices,
    overlapping_pairs,
    resolve_truncated,
    soft_nms_indices,
    truncated_at_edges,
)
from modelrunner.requests import DistillationOption

SIDE = 1024.0
# MERGE_EXAMPLES=1000 for a deeper search; the default keeps the file at a few seconds.
EXAMPLES = int(os.environ.get("MERGE_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LABELS = ("building", "ship", "vehicle")


# Generators --------------------------------------------------------------------------------------------


@st.composite
def tiled_boxes(draw: st.DrawFn, max_objects: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes, scores and labels as tiles and regions return them: objects seen by every tile covering them."""
    seed = draw(st.integers(0, 2**32 - 1))
    n_obj = draw(st.integers(1, max_objects))
    tile = draw(st.sampled_from([128, 256]))
    overlap = draw(st.sampled_from([16, 32, 64]))
    region = draw(st.sampled_from([384, 512, 10_000]))  # region seams: tiles restart at region borders
    jitter = draw(st.sampled_from([0.0, 0.5, 1.0, 3.0]))
    quantum = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5]))  # 0.5: almost every score ties
    big = draw(st.booleans())  # a few boxes far larger than the rest (exercise the grid's levels)
    n_labels = draw(st.integers(1, 3))
    rng = np.random.default_rng(seed)
    size = rng.uniform(4, 60, (n_obj, 2))
    if big:
        size[: max(1, n_obj // 10)] *= rng.uniform(3, 12)
    centre = rng.uniform(0, SIDE, (n_obj, 2))
    objects = np.clip(np.concatenate((centre - size / 2, centre + size / 2), axis=1), 0, SIDE)
    quality = rng.uniform(0.05, 1.0, n_obj)
    label = rng.integers(0, n_labels, n_obj)
    # Tile origins: regions of `region` px, each tiled from its own corner with the given overlap.
    stride = tile - overlap
    starts = sorted({r + k * stride for r in range(0, int(SIDE), region)
                     for k in range(0, max(1, (min(region, int(SIDE) - r) - overlap) // stride + 1))})
    boxes, scores, labels = [], [], []
    for x0 in starts:
        for y0 in starts:
            x1, y1 = min(x0 + tile, SIDE), min(y0 + tile, SIDE)
            seen = (objects[:, 0] < x1) & (objects[:, 2] > x0) & (objects[:, 1] < y1) & (objects[:, 3] > y0)
            for k in np.flatnonzero(seen):
                b = objects[k].copy()
                b[[0, 2]] = np.clip(b[[0, 2]], x0, x1)
                b[[1, 3]] = np.clip(b[[1, 3]], y0, y1)
                b = b + rng.normal(0, jitter, 4) if jitter else b
                b = np.round(b * 2) / 2
                boxes.append(b)
                s = float(np.clip(quality[k] + rng.normal(0, 0.05), 0.01, 1.0))
                scores.append(round(s / quantum) * quantum if quantum else s)
                labels.append(label[k])
    if not boxes:
        boxes, scores, labels = [objects[0]], [0.5], [0]
    b = np.clip(np.array(boxes), 0, SIDE)
    b[:, 2] = np.clip(np.maximum(b[:, 2], b[:, 0] + 1), 0, SIDE)
    b[:, 0] = np.minimum(b[:, 0], b[:, 2] - 1)
    b[:, 3] = np.clip(np.maximum(b[:, 3], b[:, 1] + 1), 0, SIDE)
    b[:, 1] = np.minimum(b[:, 1], b[:, 3] - 1)
    # exact duplicates (same box and score, as two tiles can return)
    dup = rng.integers(0, len(b), len(b) // 8)
    b = np.concatenate((b, b[dup]))
    s_arr = np.concatenate((np.array(scores), np.array(scores)[dup]))
    l_arr = np.concatenate((np.array(labels), np.array(labels)[dup]))
    return b, s_arr, l_arr


thresholds = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 0.99])


def quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """ensemble-boxes prints warnings (clipping, zero area) on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def rank_scores(order: np.ndarray) -> np.ndarray:
    """Distinct scores that make any score-sorting algorithm visit boxes in ``order``."""
    out = np.empty(order.size)
    out[order] = (order.size - np.arange(order.size)) / order.size
    return out


# Textbook references (quadratic, obviously right) -------------------------------------------------------


def reference_nms(boxes: np.ndarray, order: np.ndarray, labels: np.ndarray | None, t: float, metric: str) -> list[int]:
    alive = np.ones(len(boxes), dtype=bool)
    kept = []
    for i in order.tolist():
        if not alive[i]:
            continue
        kept.append(i)
        same = np.ones(len(boxes), dtype=bool) if labels is None else labels == labels[i]
        alive &= ~((box_metric(boxes[i][None, :], boxes, metric) > t) & same)
    return kept


def reference_nmm(boxes: np.ndarray, order: np.ndarray, labels: np.ndarray | None, t: float,
                  metric: str) -> dict[int, list[float]]:
    """SAHI's greedy NMM: groups like NMS, then the union box grown member by member with a re-check."""
    alive = np.ones(len(boxes), dtype=bool)
    merged = {}
    for i in order.tolist():
        if not alive[i]:
            continue
        alive[i] = False
        same = np.ones(len(boxes), dtype=bool) if labels is None else labels == labels[i]
        hit = alive & same & (box_metric(boxes[i][None, :], boxes, metric) > t)
        group = [j for j in order.tolist() if hit[j]]
        alive[group] = False
        box = boxes[i].copy()
        for j in group:
            if box_metric(box[None, :], boxes[j][None, :], metric)[0] > t:
                box = np.concatenate((np.minimum(box[:2], boxes[j][:2]), np.maximum(box[2:], boxes[j][2:])))
        merged[i] = box.tolist()
    return merged


def reference_transitive_nmm(boxes: np.ndarray, order: np.ndarray, labels: np.ndarray | None, t: float,
                             metric: str) -> dict[int, list[float]]:
    """SAHI's NMM, its loop written out: every visited box claims its unclaimed lower matches for its group."""
    owner = np.full(len(boxes), -1)
    groups: dict[int, list[int]] = {}
    position = {k: p for p, k in enumerate(order.tolist())}
    for i in order.tolist():
        if owner[i] < 0:
            owner[i] = i
            groups[i] = []
        same = np.ones(len(boxes), dtype=bool) if labels is None else labels == labels[i]
        hit = same & (box_metric(boxes[i][None, :], boxes, metric) > t)
        for j in sorted(np.flatnonzero(hit).tolist(), key=position.__getitem__):
            if position[j] > position[i] and owner[j] < 0:
                owner[j] = owner[i]
                groups[owner[i]].append(j)
    merged = {}
    for keeper, members in groups.items():
        box = boxes[keeper].copy()
        for j in members:
            if box_metric(box[None, :], boxes[j][None, :], metric)[0] > t:
                box = np.concatenate((np.minimum(box[:2], boxes[j][:2]), np.maximum(box[2:], boxes[j][2:])))
        merged[keeper] = box.tolist()
    return merged


def reference_soft(boxes: np.ndarray, scores: np.ndarray, rank: np.ndarray, t: float, sigma: float,
                   skip: float, metric: str) -> dict[int, float]:
    cur = scores.astype(float).copy()
    left = set(range(len(boxes)))
    out = {}
    while left:
        i = max(left, key=lambda k: (cur[k], -rank[k]))
        left.discard(i)
        if cur[i] > skip:
            out[i] = float(cur[i])
        rest = np.array(sorted(left), dtype=int)
        if rest.size:
            m = box_metric(boxes[i][None, :], boxes[rest], metric)
            decay = m > t
            cur[rest[decay]] *= np.exp(-(m[decay] * m[decay]) / sigma)
    return out


# Array API against ensemble-boxes -----------------------------------------------------------------------


@SETTINGS
@given(tiled_boxes(), thresholds)
def test_nms_selects_what_ensemble_boxes_selects(data: tuple[np.ndarray, ...], t: float) -> None:
    boxes, scores, labels = data
    order = canonical_order(boxes, scores, labels)
    keep = nms_indices(boxes, scores, labels, t)
    # Ties: ensemble-boxes visits equal scores in array-position order; give it distinct scores in our
    # canonical order, which must not change what we select.
    distinct = rank_scores(order)
    assert keep.tolist() == nms_indices(boxes, distinct, labels, t).tolist()
    _, kept_scores, _ = quiet(eb_nms, [(boxes / SIDE).tolist()], [distinct.tolist()], [labels.tolist()], iou_thr=t)
    assert sorted(kept_scores.tolist()) == sorted(distinct[keep].tolist())
    # best first, and the textbook loop agrees too
    assert np.all(np.diff(scores[keep]) <= 0)
    assert sorted(keep.tolist()) == sorted(reference_nms(boxes, order, labels, t, "IOU"))


@SETTINGS
@given(tiled_boxes(max_objects=40), st.sampled_from([0.05, 0.1, 0.5, 1.0]), st.sampled_from([0.0001, 0.01, 0.3]))
def test_soft_nms_with_threshold_zero_is_ensemble_boxes_soft_nms(
        data: tuple[np.ndarray, ...], sigma: float, skip: float) -> None:
    boxes, scores, labels = data
    rng = np.random.default_rng(len(boxes))
    distinct = rng.permutation(len(boxes)) / len(boxes) * 0.9 + 0.05  # its ties are positional: avoid them
    keep, decayed = soft_nms_indices(boxes, distinct, labels, 0.0, sigma, skip)
    _, kept_scores, _ = quiet(eb_soft_nms, [(boxes / SIDE).tolist()], [distinct.tolist()], [labels.tolist()],
                              iou_thr=0.5, sigma=sigma, thresh=skip)
    assert sorted(kept_scores.tolist()) == sorted(distinct[keep].tolist())  # it returns the original scores
    # the decayed scores, from its own loop (it decays the array it is given in place)
    expected: dict[int, float] = {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        sc = distinct[members].copy()
        kept = cpu_soft_nms_float((boxes[members] / SIDE).copy(), sc, Nt=0.5, sigma=sigma, thresh=skip, method=2)
        expected.update(zip(members[kept].tolist(), sc[sc > skip].tolist(), strict=True))
    assert set(expected) == set(keep.tolist())
    np.testing.assert_allclose(decayed, [expected[k] for k in keep.tolist()], rtol=1e-12)
    assert np.all(np.diff(decayed) <= 0)


@SETTINGS
@given(tiled_boxes(max_objects=40), thresholds, st.sampled_from([0.05, 0.3]), st.sampled_from(["IOU", "IOS"]))
def test_soft_nms_honours_the_threshold(data: tuple[np.ndarray, ...], t: float, sigma: float, metric: str) -> None:
    boxes, scores, _ = data
    order = canonical_order(boxes, scores)
    keep, decayed = soft_nms_indices(boxes, scores, None, t, sigma, 0.001, metric)
    expected = reference_soft(boxes, scores, np.argsort(order), t, sigma, 0.001, metric)
    assert sorted(keep.tolist()) == sorted(expected)
    np.testing.assert_allclose(decayed, [expected[k] for k in keep.tolist()], rtol=1e-12)


@SETTINGS
@given(tiled_boxes(), thresholds, st.booleans())
def test_ios_and_class_agnostic_match_the_textbook_loop(data: tuple[np.ndarray, ...], t: float, agnostic: bool) -> None:
    boxes, scores, labels = data
    lab = None if agnostic else labels
    order = canonical_order(boxes, scores, lab)
    keep = nms_indices(boxes, scores, lab, t, "IOS")
    assert keep.tolist() == [k for k in order.tolist() if k in set(reference_nms(boxes, order, lab, t, "IOS"))]


@SETTINGS
@given(tiled_boxes(), thresholds)
def test_per_class_is_nms_of_each_class(data: tuple[np.ndarray, ...], t: float) -> None:
    boxes, scores, labels = data
    keep = set(nms_indices(boxes, scores, labels, t).tolist())
    union = set()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        union |= set(members[nms_indices(boxes[members], scores[members], None, t)].tolist())
    assert keep == union


@SETTINGS
@given(tiled_boxes(), thresholds, st.sampled_from(["IOU", "IOS"]))
def test_greedy_nmm_is_sahi_greedy_nmm(data: tuple[np.ndarray, ...], t: float, metric: str) -> None:
    boxes, scores, labels = data
    order = canonical_order(boxes, scores, labels)
    keep, merged = greedy_nmm_indices(boxes, scores, labels, t, metric)
    expected = reference_nmm(boxes, order, labels, t, metric)
    assert keep.tolist() == [k for k in order.tolist() if k in expected]
    np.testing.assert_array_equal(merged, np.array([expected[k] for k in keep.tolist()]).reshape(-1, 4))
    assert keep.tolist() == nms_indices(boxes, scores, labels, t, metric).tolist()


@SETTINGS
@given(tiled_boxes(), thresholds, st.sampled_from(["IOU", "IOS"]))
def test_nmm_is_sahi_transitive_nmm(data: tuple[np.ndarray, ...], t: float, metric: str) -> None:
    boxes, scores, labels = data
    order = canonical_order(boxes, scores, labels)
    keep, merged = nmm_indices(boxes, scores, labels, t, metric)
    expected = reference_transitive_nmm(boxes, order, labels, t, metric)
    assert keep.tolist() == [k for k in order.tolist() if k in expected]
    np.testing.assert_array_equal(merged, np.array([expected[k] for k in keep.tolist()]).reshape(-1, 4))


def test_transitive_nmm_follows_a_chain_that_greedy_nmm_cuts() -> None:
    """A matches B, B matches C, A does not match C: NMM makes one object, greedy NMM two."""
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7])
    keep, merged = nmm_indices(boxes, scores, None, 0.3)
    assert keep.tolist() == [0]
    assert merged.tolist() == [[0, 0, 18, 10]]  # the re-check passes for C against the grown box A+B
    keep_g, merged_g = greedy_nmm_indices(boxes, scores, None, 0.3)
    assert keep_g.tolist() == [0, 2] and merged_g.tolist() == [[0, 0, 14, 10], [8, 0, 18, 10]]


# Edge-truncated partial views ---------------------------------------------------------------------------

LEFT_TILE = (0.0, 0.0, 100.0, 100.0)
RIGHT_TILE = (60.0, 0.0, 160.0, 100.0)  # 40 px overlap


def test_a_box_is_truncated_only_by_an_interior_edge_within_the_margin() -> None:
    boxes = np.array([
        [90, 10, 100, 30],  # cut by the left tile's right edge, beyond which the right tile goes on
        [0, 10, 20, 30],  # on the image's left border: nothing beyond it
        [70, 40, 97, 60],  # 3 px short of the edge: cut only with a margin of 3
        [10, 0, 30, 20],  # on the image's top border
    ], dtype=float)
    assert truncated_at_edges(boxes, LEFT_TILE, [RIGHT_TILE], 2).tolist() == [True, False, False, False]
    assert truncated_at_edges(boxes, LEFT_TILE, [RIGHT_TILE], 3).tolist() == [True, False, True, False]
    assert not truncated_at_edges(boxes, LEFT_TILE, np.zeros((0, 4)), 2).any()
    below = (0.0, 60.0, 100.0, 160.0)
    cut = truncated_at_edges(np.array([[10, 80, 30, 100]], dtype=float), LEFT_TILE, [below], 0)
    assert cut.tolist() == [True]


def test_resolve_truncated_keeps_the_whole_view_or_merges_the_pieces() -> None:
    boxes = np.array([
        [90, 10, 100, 30],  # 0: sliver of object A, cut by the left tile
        [90, 10, 110, 30],  # 1: object A whole, seen by the right tile
        [50, 50, 100, 90],  # 2: object B (110 px wide) cut by the left tile ...
        [60, 50, 160, 90],  # 3: ... and by the right tile: no tile saw it whole
        [10, 10, 30, 30],  # 4: an untouched object
    ], dtype=float)
    cut = np.array([True, False, True, True, False])
    rank = np.array([0, 1, 2, 3, 4])  # the sliver ranks best: a score must not make a piece win
    stay, out = resolve_truncated(boxes, cut, rank, "SUPPRESS")
    assert stay.tolist() == [False, True, True, False, True]
    np.testing.assert_array_equal(out[stay], boxes[[1, 2, 4]])
    stay, out = resolve_truncated(boxes, cut, rank, "MERGE")
    assert stay.tolist() == [False, True, True, False, True]
    np.testing.assert_array_equal(out[stay], [[90, 10, 110, 30], [50, 50, 160, 90], [10, 10, 30, 30]])
    # Other labels are other objects; a partial without a partner stays.
    stay, _ = resolve_truncated(boxes, cut, rank, "MERGE", labels=np.array([0, 1, 0, 0, 0]))
    assert stay.tolist() == [True, True, True, False, True]
    with pytest.raises(ValueError, match="SUPPRESS or MERGE"):
        resolve_truncated(boxes, cut, rank, "NONE")


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


@settings(max_examples=max(EXAMPLES // 2, 10), deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.3, 0.75, 0.95]), st.sampled_from(["IOU", "IOS"]))
def test_pairs_are_all_pairs_over_the_threshold(seed: int, t: float, metric: str) -> None:
    """The grid must find every pair a brute-force comparison finds, whatever the size mix."""
    rng = np.random.default_rng(seed)
    n = 300
    size = np.exp(rng.uniform(0, np.log(2000), (n, 2)))  # 1 px to 2000 px boxes
    xy = rng.uniform(0, 3000, (n, 2))
    boxes = np.concatenate((xy, xy + size), axis=1)
    boxes[n // 2:] = boxes[: n // 2] + rng.normal(0, 2, (n // 2, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    i, j, value = overlapping_pairs(boxes, t, metric)
    got = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist(), strict=True)}
    assert len(got) == i.size  # each pair once
    m = box_metric(boxes[:, None, :], boxes[None, :, :], metric)
    a, b = np.nonzero(np.triu(m > t, 1))
    assert got == set(zip(a.tolist(), b.tolist(), strict=True))
    np.testing.assert_array_equal(value, m[i, j])


def test_sparse_boxes_over_a_huge_extent() -> None:
    """Too many grid cells for a dense table: cells are found by binary search instead."""
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 1e9, (200, 2))
    boxes = np.concatenate((xy, xy + rng.uniform(1, 50, (200, 2))), axis=1)
    boxes = np.concatenate((boxes, boxes + rng.normal(0, 1, boxes.shape)))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    for t in (0.0, 0.5):
        i, j, _ = overlapping_pairs(boxes, t)
        m = box_metric(boxes[:, None, :], boxes[None, :, :])
        a, b = np.nonzero(np.triu(m > t, 1))
        assert {(min(x, y), max(x, y)) for x, y in zip(i.tolist(), j.tolist(), strict=True)} == set(
            zip(a.tolist(), b.tolist(), strict=True))


def test_long_chains_finish_sequentially_and_still_match() -> None:
    """A chain of boxes each overlapping the next (more rounds than the vectorised loop allows)."""
    n = 400
    x = np.arange(n) * 2.0
    boxes = np.stack((x, np.zeros(n), x + 20, np.full(n, 20.0)), axis=1)
    scores = np.linspace(1.0, 0.1, n)
    order = canonical_order(boxes, scores)
    keep = nms_indices(boxes, scores, None, 0.8)
    assert keep.tolist() == reference_nms(boxes, order, None, 0.8, "IOU")
    _, kept_scores, _ = quiet(eb_nms, [(boxes / 1024).tolist()], [scores.tolist()], [[0] * n], iou_thr=0.8)
    assert sorted(kept_scores.tolist()) == sorted(scores[keep].tolist())
    keep_s, decayed = soft_nms_indices(boxes, scores, None, 0.5, 0.5, 0.001)
    expected = reference_soft(boxes, scores, np.argsort(order), 0.5, 0.5, 0.001, "IOU")
    assert sorted(keep_s.tolist()) == sorted(expected)
    np.testing.assert_allclose(decayed, [expected[k] for k in keep_s.tolist()], rtol=1e-12)
    keep_m, merged = greedy_nmm_indices(boxes, scores, None, 0.8)
    assert {k: v for k, v in zip(keep_m.tolist(), merged.tolist(), strict=True)} == reference_nmm(
        boxes, order, None, 0.8, "IOU")
    keep_t, merged_t = nmm_indices(boxes, scores, None, 0.8)
    assert {k: v for k, v in zip(keep_t.tolist(), merged_t.tolist(), strict=True)} == reference_transitive_nmm(
        boxes, order, None, 0.8, "IOU")
    assert keep_t.tolist() == [int(order[0])], "a chain is one group for the transitive merge"


def test_a_realistic_tiled_set_matches_ensemble_boxes() -> None:
    rng = np.random.default_rng(7)
    objects = rng.uniform(0, 4000, (3000, 2))
    size = rng.uniform(10, 60, (3000, 2))
    base = np.concatenate((objects, objects + size), axis=1)
    copies = [base + rng.normal(0, 1, base.shape) for _ in range(2)]
    boxes = np.clip(np.concatenate([base, *copies]), 0, 4096)
    scores = rng.uniform(0, 1, len(boxes))
    labels = rng.integers(0, 3, len(boxes))
    keep = nms_indices(boxes, scores, labels, 0.5)
    _, kept_scores, _ = quiet(eb_nms, [(boxes / 4096).tolist()], [scores.tolist()], [labels.tolist()], iou_thr=0.5)
    assert sorted(kept_scores.tolist()) == sorted(scores[keep].tolist())


def test_bad_arguments() -> None:
    boxes = np.array([[0, 0, 1, 1]], dtype=float)
    with pytest.raises(ValueError):
        nms_indices(boxes, [0.5], None, -0.1)
    with pytest.raises(ValueError):
        nms_indices(boxes, [0.5], None, 0.5, "GIOU")
    with pytest.raises(ValueError):
        nms_indices(boxes, [0.5, 0.6])
    with pytest.raises(ValueError):
        nms_indices(boxes, [0.5], order=[1])
    assert nms_indices(np.empty((0, 4)), []).tolist() == []
    assert nms_indices(boxes, [0.5], None, 1.0).tolist() == [0]


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
