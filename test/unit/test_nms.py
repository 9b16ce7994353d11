"""Duplicate suppression on arrays (features/nms): the fast algorithms against ensemble-boxes and textbook versions.

The property tests draw box sets the way a tiled run produces them (:mod:`tiled_detections`) and check that
the grid + conflict-graph implementation selects exactly what the quadratic reference does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from ensemble_boxes import nms as eb_nms
from ensemble_boxes import soft_nms as eb_soft_nms
from ensemble_boxes.ensemble_boxes_nms import cpu_soft_nms_float
from hypothesis import given, settings
from hypothesis import strategies as st

from modelrunner.features import nms
from modelrunner.features.nms import (
    box_metric,
    canonical_order,
    check_metric,
    connected_components,
    float_key,
    greedy_nmm_indices,
    nmm_indices,
    nms_indices,
    overlapping_pairs,
    radix_argsort,
    rank_of,
    resolve_truncated,
    soft_nms_indices,
    truncated_at_edges,
)
from tiled_detections import EXAMPLES, SETTINGS, SIDE, quiet, rank_scores, thresholds, tiled_boxes

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


def _merges_as_reference(merge: Any, reference: Any, data: tuple[np.ndarray, ...], t: float, metric: str) -> list[int]:
    """``merge`` keeps, in canonical order, the boxes ``reference`` (SAHI's algorithm, run in that order) keeps,
    each grown to the reference's merged box; returns the kept indices."""
    boxes, scores, labels = data
    order = canonical_order(boxes, scores, labels)
    keep, merged = merge(boxes, scores, labels, t, metric)
    expected = reference(boxes, order, labels, t, metric)
    assert keep.tolist() == [k for k in order.tolist() if k in expected]
    np.testing.assert_array_equal(merged, np.array([expected[k] for k in keep.tolist()]).reshape(-1, 4))
    return list(keep.tolist())


@SETTINGS
@given(tiled_boxes(), thresholds, st.sampled_from(["IOU", "IOS"]))
def test_greedy_nmm_is_sahi_greedy_nmm(data: tuple[np.ndarray, ...], t: float, metric: str) -> None:
    keep = _merges_as_reference(greedy_nmm_indices, reference_nmm, data, t, metric)
    boxes, scores, labels = data
    assert keep == nms_indices(boxes, scores, labels, t, metric).tolist()


@SETTINGS
@given(tiled_boxes(), thresholds, st.sampled_from(["IOU", "IOS"]))
def test_nmm_is_sahi_transitive_nmm(data: tuple[np.ndarray, ...], t: float, metric: str) -> None:
    _merges_as_reference(nmm_indices, reference_transitive_nmm, data, t, metric)


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


# Canonical order and the sorting helpers ----------------------------------------------------------------


def test_canonical_order_breaks_full_ties_by_the_tiebreak_then_the_index() -> None:
    boxes = np.array([[0, 0, 5, 5], [1, 1, 4, 4], [1, 1, 4, 4], [1, 1, 4, 4], [1, 1, 4, 4], [0, 0, 5, 5]], dtype=float)
    scores = np.array([0.5, 0.9, 0.9, 0.9, 0.9, 0.5])
    labels = np.array([0, 1, 1, 1, 0, 0])
    # Score first, then the box (index 4 has the lower label), then the index for the full tie 1, 2, 3.
    assert canonical_order(boxes, scores, labels).tolist() == [4, 1, 2, 3, 0, 5]
    asked = []

    def tiebreak(members: np.ndarray) -> list[str]:
        asked.append(sorted(members.tolist()))
        return [{1: "c", 2: "a", 3: "b", 0: "z", 5: "y"}[m] for m in members.tolist()]

    assert canonical_order(boxes, scores, labels, tiebreak).tolist() == [4, 2, 3, 1, 5, 0]
    assert sorted(asked) == [[0, 5], [1, 2, 3]], "asked only about runs equal on every key"


def test_rank_of_inverts_an_order() -> None:
    order = np.array([3, 0, 2, 1])
    rank = rank_of(order)
    assert rank.tolist() == [1, 3, 2, 0]
    assert order[rank].tolist() == [0, 1, 2, 3]


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([3, 1000, 70_000]))
def test_radix_argsort_is_a_stable_sort_by_several_keys(seed: int, spread: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    major = rng.integers(0, spread, n).astype(np.uint64) << np.uint64(rng.integers(0, 40))
    minor = rng.integers(0, 4, n).astype(np.uint64)
    assert radix_argsort([major, minor]).tolist() == np.lexsort((minor, major)).tolist()
    values = np.concatenate((rng.normal(0, 1e3, n), [0.0, -0.0, np.inf, -np.inf, 1e-310, -1e-310, 5.0, 5.0]))
    assert radix_argsort([float_key(values)]).tolist() == np.argsort(values, kind="stable").tolist()
    assert radix_argsort([float_key(values, descending=True)]).tolist() == np.argsort(-values, kind="stable").tolist()


def test_check_metric_names_the_metrics() -> None:
    check_metric("IOU")
    check_metric("IOS")
    with pytest.raises(ValueError, match="IOU, IOS.*'GIOU'"):
        check_metric("GIOU")


def test_connected_components_label_each_node_with_its_smallest_node() -> None:
    src = np.array([5, 1, 7, 3], dtype=np.int64)
    dst = np.array([2, 5, 3, 8], dtype=np.int64)  # 1-5-2, 3-7-8 (edges in any direction), 0, 4, 6 alone
    assert connected_components(9, src, dst).tolist() == [0, 1, 1, 3, 4, 1, 6, 3, 3]
    assert connected_components(3, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)).tolist() == [0, 1, 2]
    chain = np.arange(999, dtype=np.int64)
    assert (connected_components(1000, chain[::-1] + 1, chain[::-1]) == 0).all(), "a long chain is one component"


def test_the_comparison_sort_for_small_sets_orders_as_the_radix_sort(monkeypatch):
    """Below ``_LEXSORT_BELOW`` boxes the canonical order comes from np.lexsort, above it from the radix
    passes: both must give the same order, ties (scores, -0.0 and 0.0, equal corners) included."""
    rng = np.random.default_rng(5)
    for n in (2, 50, 700):
        boxes = np.round(rng.uniform(0, 20, (n, 4)), 0)
        boxes[:, 2:] += boxes[:, :2] + 1
        scores = np.round(rng.uniform(0, 1, n), 1)
        scores[: n // 4] = -0.0
        labels = rng.integers(0, 3, n)
        small = nms.canonical_order(boxes, scores, labels)
        monkeypatch.setattr(nms, "_LEXSORT_BELOW", 0)
        assert np.array_equal(small, nms.canonical_order(boxes, scores, labels))
        monkeypatch.undo()
