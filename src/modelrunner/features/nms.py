"""Duplicate suppression on arrays: pixel boxes, scores and labels in, indices out.

The box algorithms behind feature distillation (:func:`~.distill.distill` applies them to GeoJSON features):
box metrics (IoU, IoS), the grid that finds the candidate pairs, the canonical visiting order, and NMS,
soft-NMS, NMM and greedy NMM, plus the helpers that find and resolve partial views cut by tile edges. Nothing
here knows GeoJSON or shapely, so benchmarks and other callers can use the algorithms on plain arrays.

The algorithms select exactly what the reference's global ``ensemble_boxes`` call would, without its
quadratic cost: candidate pairs come from a spatial grid in numpy (only boxes that can reach the threshold
are ever compared), and the greedy suppression runs on the resulting conflict graph in vectorised rounds,
which is how 100,000 boxes take tens of milliseconds instead of seconds. ``metric`` IOS (intersection over
the smaller box's area) replaces IoU everywhere, for all four algorithms.

Determinism: every choice between equal scores is made by a canonical key (score descending, then the box
``minx, miny, maxx, maxy``, the label, then a caller's tie-break or the index: :func:`canonical_order`), and
what is kept is listed in that order.

Where this deliberately differs from ``ensemble_boxes`` (1.0.9):

* ties: it visits equal scores in reverse array order (``argsort()[::-1]``), so which of two equal
  detections survives depends on the input order; here the canonical key decides;
* coordinates: it wants boxes in [0, 1], clips anything outside and silently drops zero-area boxes; here
  pixel boxes are used as given (dividing x and y by any scale does not change IoU or IoS), and a zero-area
  box never matches (:func:`~.distill.distill` gives a zero width or height
  :data:`~.distill.POINT_PAD` first);
* soft-NMS: it decays every box and ignores ``iou_thr``; here only boxes overlapping more than the
  threshold are decayed (``threshold=0`` is its behaviour), and the kept boxes' *decayed* scores are
  returned where it returns the original ones.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..requests import MATCH_METRICS

__all__ = [
    "EDGE_MATCH",
    "FloatArray",
    "IntArray",
    "box_metric",
    "canonical_order",
    "check_metric",
    "connected_components",
    "float_key",
    "greedy_nmm_indices",
    "nmm_indices",
    "nms_indices",
    "overlapping_pairs",
    "radix_argsort",
    "rank_of",
    "resolve_truncated",
    "soft_nms_indices",
    "truncated_at_edges",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

POINT_PAD = 0.1
"""Pixels added to a zero width or height, so Points and degenerate boxes have an area and can match."""

# After this many vectorised rounds the rest of a conflict graph is finished by a plain sequential loop: a
# round decides at least the best undecided box of every component, so rounds are few for real detections
# (chains of a handful of duplicates) but would be quadratic on a pathological long chain of boxes.
_MAX_ROUNDS = 24
_LEXSORT_BELOW = 3000  # boxes: np.lexsort beats radix_argsort below this (2 against 57 us at 100; even near 4,000)
# Slack on the grid reach, so rounding in the metric can never create a pair the grid did not offer.
_REACH_SLACK = 1.0 + 1e-6
_LEVEL_RATIO = 8.0  # box sizes within one grid level differ by at most this factor
_MAX_CELLS_PER_AXIS = float(1 << 30)


# Geometry of boxes ------------------------------------------------------------------------------------


def _as_boxes(boxes: ArrayLike) -> FloatArray:
    array = np.ascontiguousarray(boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4), got {array.shape}")
    return array


def check_metric(metric: str) -> None:
    """Raise ValueError unless ``metric`` is one the functions here compute (``IOU``, ``IOS``): callers that
    may not reach one of them (a feature list without boxes) still refuse a bad metric the same way."""
    if metric not in MATCH_METRICS:
        raise ValueError(f"metric must be one of {', '.join(MATCH_METRICS)}, got {metric!r}")


def _check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    return value


def _metric_columns(
    ax1: FloatArray, ay1: FloatArray, ax2: FloatArray, ay2: FloatArray,
    bx1: FloatArray, by1: FloatArray, bx2: FloatArray, by2: FloatArray, metric: str,
) -> FloatArray:
    """IoU or IoS of box pairs given as columns.

    The operations and their order are those of ``ensemble_boxes`` (``w = max(0, min(x2) - max(x1))``,
    ``inter = w * h``, ``inter / (area_a + area_b - inter)`` with ``area = (x2 - x1) * (y2 - y1)``), so the
    values are bit-identical to the ones it compares against the threshold. Degenerate boxes give NaN,
    which never exceeds a threshold.
    """
    w = np.maximum(0.0, np.minimum(ax2, bx2) - np.maximum(ax1, bx1))
    h = np.maximum(0.0, np.minimum(ay2, by2) - np.maximum(ay1, by1))
    inter = w * h
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "IOU":
            iou: FloatArray = inter / (area_a + area_b - inter)
            return iou
        ios: FloatArray = inter / np.minimum(area_a, area_b)
        return ios


def box_metric(a: ArrayLike, b: ArrayLike, metric: str = "IOU") -> FloatArray:
    """Row-wise IoU (intersection over union) or IoS (intersection over the smaller box's area).

    ``a`` and ``b`` are ``(n, 4)`` arrays of ``[minx, miny, maxx, maxy]`` (broadcastable).
    """
    check_metric(metric)
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return _metric_columns(a_[..., 0], a_[..., 1], a_[..., 2], a_[..., 3],
                           b_[..., 0], b_[..., 1], b_[..., 2], b_[..., 3], metric)


# Candidate pairs ---------------------------------------------------------------------------------------


def radix_argsort(keys: Sequence[NDArray[np.uint64]], bits: int = 64) -> IntArray:
    """Stable argsort by several unsigned keys (most significant first), then by index.

    numpy sorts 16-bit integers with a stable radix sort, an order of magnitude faster than its
    comparison sorts, so this is an LSD radix sort made of 16-bit passes; digits that are the same for
    every element are skipped. ``bits`` bounds the keys (cell numbers need two passes, not four).
    """
    order: IntArray | None = None
    for key in reversed(keys):
        for shift in range(0, bits, 16):
            digit = ((key >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.uint16)
            if digit.size and digit.min() == digit.max():
                continue
            if order is None:
                order = np.argsort(digit, kind="stable").astype(np.int64)
            else:
                order = order[np.argsort(digit[order], kind="stable")]
    n = keys[0].size if keys else 0
    return np.arange(n, dtype=np.int64) if order is None else order


def float_key(values: FloatArray, descending: bool = False) -> NDArray[np.uint64]:
    """Unsigned integers that sort like the floats (IEEE bits, negatives flipped; -0.0 counts as 0.0)."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    key = np.where(negative, ~bits, bits | np.uint64(1 << 63))
    return ~key if descending else key


def _expand(src: IntArray, lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """All pairs (src[k], p) for p in [lo[k], hi[k]), vectorised (repeat + running offsets)."""
    counts = hi - lo
    np.maximum(counts, 0, out=counts)
    total = int(counts.sum())
    if total == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    first = np.cumsum(counts) - counts
    pairs_src = np.repeat(src, counts)
    pairs_dst = np.arange(total, dtype=np.int64) + np.repeat(lo - first, counts)
    return pairs_src, pairs_dst


class _CellIndex:
    """Boxes sorted by grid cell, with the range of each cell: a dense table when the grid is small
    enough (a gather per lookup), binary search otherwise (sparse boxes over a huge extent)."""

    def __init__(self, keys: IntArray, members: IntArray, ncell: int, dense: bool) -> None:
        order = radix_argsort([keys.astype(np.uint64)], max(16, int(ncell).bit_length()))
        self.keys = keys[order]
        self.members = members[order]
        self.table: IntArray | None = None
        if dense:
            table = np.zeros(ncell + 1, dtype=np.int64)
            np.cumsum(np.bincount(self.keys, minlength=ncell), out=table[1:])
            self.table = table

    def first(self, query: IntArray) -> IntArray:
        """Position of the first box in cell ``query`` (or where it would be)."""
        if self.table is not None:
            return self.table[query]
        return np.searchsorted(self.keys, query, "left").astype(np.int64)

    def end(self, query: IntArray) -> IntArray:
        """Position after the last box in cell ``query``."""
        if self.table is not None:
            return self.table[query + 1]
        return np.searchsorted(self.keys, query, "right").astype(np.int64)


def _candidate_pairs(
    boxes: FloatArray, reach: FloatArray, min_ratio: float,
) -> Iterator[tuple[IntArray, IntArray, IntArray, IntArray]]:
    """Yield chunks of candidate pairs, every unordered pair at most once.

    A chunk is ``(a, s, b, d)``: the pairs ``(a[s[k]], b[d[k]])`` of box indices. ``a`` and ``b`` list boxes
    in grid-cell order and are shared by consecutive chunks, so the caller can gather their coordinates
    once and then read them almost sequentially (``s`` ascends, ``d`` stays near it): at a million boxes,
    random gathers into the coordinate arrays cost more than the arithmetic.

    Contract: every pair whose min corners are closer than ``max(reach_i, reach_j)`` in both x and y, and
    whose reaches differ by less than a factor ``1 / min_ratio``, is yielded. Boxes are hashed by their
    min corner into a grid whose cell is at least the largest reach in it, so a partner can only be in
    the same or an adjacent cell. A few huge boxes must not make every cell huge, so boxes reaching
    further than a few times the mean get coarser grids of their own (levels a factor 8 apart) in which the
    finer levels' boxes are looked up too. ``reach`` <= 0 or NaN excludes a box.
    """
    idx = np.flatnonzero(reach > 0)
    if idx.size < 2:
        return
    r = reach[idx]
    base = min(float(r.max()), 3.0 * float(r.mean()))
    level = np.ceil(np.log2(r / base) / math.log2(_LEVEL_RATIO)).astype(np.int64)
    np.maximum(level, 0, out=level)
    x1, y1 = boxes[idx, 0], boxes[idx, 1]
    x0, y0 = float(x1.min()), float(y1.min())
    extent = max(float(x1.max()) - x0, float(y1.max()) - y0)
    # Levels more than this many steps finer than a box cannot match it (size ratio below min_ratio).
    depth = math.inf if min_ratio <= 0 else 1 + math.log(1.0 / min_ratio, _LEVEL_RATIO)
    single = bool(level.max() == 0)
    for lvl in [0] if single else np.unique(level).tolist():
        cell = max(base * _LEVEL_RATIO**lvl * _REACH_SLACK, extent / _MAX_CELLS_PER_AXIS)
        if single:
            a_pos, b_pos = np.arange(idx.size, dtype=np.int64), np.empty(0, dtype=np.int64)
        else:
            a_pos = np.flatnonzero(level == lvl)
            b_pos = np.flatnonzero((level < lvl) & (level > lvl - depth))
        used = np.concatenate((a_pos, b_pos)) if b_pos.size else a_pos
        cx = ((x1[used] - x0) / cell).astype(np.int64)
        cy = ((y1[used] - y0) / cell).astype(np.int64)
        gx = int(cx.max()) + 3
        ncell = gx * (int(cy.max()) + 3)
        dense = ncell <= 8 * used.size + (1 << 20)
        key = (cy + 1) * gx + (cx + 1)
        a_index = _CellIndex(key[: a_pos.size], a_pos, ncell, dense)
        a_boxes = idx[a_index.members]
        ka = a_index.keys
        pos = np.arange(ka.size, dtype=np.int64)
        # Half of the 3x3 neighbourhood sees each pair once: the rest of this cell plus the next cell of the
        # row (consecutive keys, one range), and the three cells of the row below (one range again).
        for lo, hi in ((pos + 1, a_index.end(ka + 1)), (a_index.first(ka + (gx - 1)), a_index.end(ka + (gx + 1)))):
            s, d = _expand(pos, lo, hi)
            if s.size:
                yield a_boxes, s, a_boxes, d
        if b_pos.size:
            b_index = _CellIndex(key[a_pos.size:], b_pos, ncell, dense)
            b_boxes = idx[b_index.members]
            for row in (-gx, 0, gx):  # the whole 3x3 neighbourhood, a row (three cells) at a time
                lo, hi = b_index.first(ka + (row - 1)), b_index.end(ka + (row + 1))
                s, d = _expand(pos, lo, hi)
                if s.size:
                    yield a_boxes, s, b_boxes, d


def overlapping_pairs(
    boxes: ArrayLike, threshold: float, metric: str = "IOU", labels: ArrayLike | None = None,
) -> tuple[IntArray, IntArray, FloatArray]:
    """Every unordered pair of boxes whose metric is ``> threshold`` (and, with ``labels``, of one label).

    Returns ``(i, j, value)``, each pair once, in no particular order. Only boxes that can reach the
    threshold are compared: for IoU > t the min corners of a matching pair are closer than
    ``(1 - t) * max(width or height)`` (IoU <= overlap width / larger width), for IoS or t = 0 closer than the
    box size (the boxes must intersect), and the grid of :func:`_candidate_pairs` only offers such pairs.
    """
    check_metric(metric)
    t = _check_threshold(threshold)
    b = _as_boxes(boxes)
    lab = None if labels is None else np.asarray(labels)
    empty_i, empty_f = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    if t >= 1.0 or len(b) < 2:  # IoU and IoS never exceed 1
        return empty_i, empty_i, empty_f
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    with np.errstate(invalid="ignore"):
        size = np.maximum(x2 - x1, y2 - y1)
        size[~((x2 > x1) & (y2 > y1))] = 0.0  # no area (or NaN): never matches anything
    factor = 1.0 - t if metric == "IOU" and t > 0 else 1.0
    reach = size * (factor * _REACH_SLACK)
    # IoU > t also needs each side within a factor t of the other's, so far-apart size levels are skipped.
    min_ratio = t if metric == "IOU" else 0.0
    out_i, out_j, out_v = [], [], []
    columns: dict[int, tuple[NDArray[Any], ...]] = {}  # per cell-ordered list: its boxes' columns

    def gather(members: IntArray) -> tuple[NDArray[Any], ...]:
        if id(members) not in columns:
            cols = (x1[members], y1[members], x2[members], y2[members])
            columns[id(members)] = cols if lab is None else (*cols, lab[members])
        return columns[id(members)]

    for a, s, c, d in _candidate_pairs(b, reach, min_ratio):
        ca, cc = gather(a), gather(c)
        if lab is not None:
            same = ca[4][s] == cc[4][d]
            s, d = s[same], d[same]
        value = _metric_columns(ca[0][s], ca[1][s], ca[2][s], ca[3][s], cc[0][d], cc[1][d], cc[2][d], cc[3][d],
                                metric)
        hit = value > t
        out_i.append(a[s[hit]])
        out_j.append(c[d[hit]])
        out_v.append(value[hit])
    if not out_i:
        return empty_i, empty_i, empty_f
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_v)


# Canonical order ---------------------------------------------------------------------------------------


def _order(
    scores: FloatArray, x1: FloatArray, y1: FloatArray, x2: FloatArray, y2: FloatArray, labels: IntArray,
    tiebreak: Callable[[IntArray], list[str]] | None = None,
) -> IntArray:
    """Indices sorted by (score desc, x1, y1, x2, y2, label[, tiebreak], index).

    A full ``np.lexsort`` on six keys costs more than the whole NMS, so it radix-sorts by (score, x1) and
    only sorts the rare runs still tied on both by the remaining keys.
    """
    n = scores.size
    by = [float_key(scores, descending=True), float_key(x1)]
    # The radix passes cost a fixed 50 us or so; below a few thousand boxes (a tile's) a comparison sort of
    # the same keys is faster, and gives the same stable order.
    order = np.lexsort(by[::-1]) if n <= _LEXSORT_BELOW else radix_argsort(by)
    if n < 2:
        return order
    s, x = scores[order], x1[order]
    tied = (s[1:] == s[:-1]) & (x[1:] == x[:-1])
    if not tied.any():
        return order
    order = _sort_runs(order, tied, (y1, x2, y2, labels))
    if tiebreak is None:
        return order
    keys = (scores, x1, y1, x2, y2, labels)
    full = np.ones(n - 1, dtype=bool)
    for k in keys:
        ks = k[order]
        full &= ks[1:] == ks[:-1]
    if not full.any():
        return order
    run = np.concatenate(([0], np.cumsum(~full)))
    for r in np.unique(run[1:][full]).tolist():
        where = np.flatnonzero(run == r)
        members = order[where]
        texts = tiebreak(members)
        order[where] = members[sorted(range(len(members)), key=texts.__getitem__)]
    return order


def _sort_runs(order: IntArray, tied: NDArray[np.bool_], keys: tuple[NDArray[Any], ...]) -> IntArray:
    """Re-sort the members of each run of tied neighbours by ``keys`` (most significant first)."""
    run = np.concatenate(([0], np.cumsum(~tied)))
    sizes = np.bincount(run)
    where = np.flatnonzero(sizes[run] > 1)
    members = order[where]
    sub = np.lexsort(tuple(k[members] for k in reversed(keys)) + (run[where],))
    order = order.copy()
    order[where] = members[sub]
    return order


def canonical_order(
    boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike | None = None,
    tiebreak: Callable[[IntArray], list[str]] | None = None,
) -> IntArray:
    """The order in which the algorithms visit boxes (and list what they keep).

    Score descending, ties by ``minx, miny, maxx, maxy``, then label, then index: arrays carry no other
    identity. ``tiebreak``, given the indices of a run of boxes equal on all of those, returns a string per
    index that orders them before the index does (:func:`~.distill.distill` passes the features' JSON, so
    that its result does not depend on input order); it is only called for such runs, which are rare.
    ensemble-boxes instead visits equal scores in reverse array order.
    """
    b = _as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64)
    lab = np.zeros(len(b), dtype=np.int64) if labels is None else np.asarray(labels)
    # Contiguous columns: the sort gathers from them, about 1.6 times faster than from strided views of b.
    x1, y1, x2, y2 = np.ascontiguousarray(b.T)
    return _order(s, x1, y1, x2, y2, lab, tiebreak)


def rank_of(order: IntArray) -> IntArray:
    """Each index's position in ``order`` (a permutation): its inverse, so ``rank[i] < rank[j]`` says i
    comes first."""
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size, dtype=np.int64)
    return rank


def _prepare(
    boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike | None, threshold: float, metric: str,
    order: ArrayLike | None,
) -> tuple[FloatArray, FloatArray, IntArray, IntArray, IntArray, FloatArray]:
    b = _as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size != len(b):
        raise ValueError(f"{len(b)} boxes but {s.size} scores")
    if np.isnan(s).any():
        raise ValueError("scores must not be NaN")
    if labels is not None and np.asarray(labels).shape != (len(b),):
        raise ValueError(f"{len(b)} boxes but labels of shape {np.asarray(labels).shape}")
    if order is None:
        ordered = canonical_order(b, s, labels)
    else:
        ordered = np.asarray(order, dtype=np.int64).reshape(-1)
        seen = np.zeros(len(b), dtype=bool)
        if ordered.size == len(b) and (ordered.size == 0 or (ordered.min() >= 0 and ordered.max() < len(b))):
            seen[ordered] = True
        if not seen.all():
            raise ValueError("order must be a permutation of range(len(boxes))")
    rank = rank_of(ordered)
    i, j, value = overlapping_pairs(b, threshold, metric, labels)
    return b, s, ordered, rank, np.stack((i, j)), value


# Greedy suppression on the conflict graph --------------------------------------------------------------


def _orient(rank: IntArray, pairs: IntArray) -> tuple[IntArray, IntArray]:
    """Edges from the better-ranked box ``u`` to the worse one ``v``."""
    i, j = pairs
    swap = rank[i] > rank[j]
    return np.where(swap, j, i), np.where(swap, i, j)


def _greedy_keep(n: int, rank: IntArray, u: IntArray, v: IntArray) -> NDArray[np.bool_]:
    """Which boxes greedy NMS keeps, given the conflict edges ``u -> v`` (u ranked better).

    Greedy NMS keeps a box iff no *kept* better box conflicts with it (the lexicographically first maximal
    independent set). Instead of walking all boxes in order, each round keeps every undecided box whose
    better neighbours are all suppressed, then suppresses the boxes those conflict with; isolated boxes
    (most of them) are kept in the first round. A round always decides the best undecided box of every
    component, so a seam's few duplicates take a few rounds; long chains finish sequentially.
    """
    undecided = np.ones(n, dtype=bool)
    kept = np.zeros(n, dtype=bool)
    blocked = np.zeros(n, dtype=bool)
    active = np.arange(n, dtype=np.int64)
    for _ in range(_MAX_ROUNDS):
        if u.size == 0:
            kept[active] = True
            return kept
        blocked[v] = True
        new = active[~blocked[active]]
        blocked[v] = False
        kept[new] = True
        undecided[new] = False
        undecided[v[kept[u]]] = False
        live = undecided[u] & undecided[v]
        u, v = u[live], v[live]
        active = active[undecided[active]]
    # Sequential finish (rare): walk the undecided boxes in rank order.
    rest = active[np.argsort(rank[active])]
    by_u = np.argsort(u, kind="stable")
    us, vs = u[by_u], v[by_u]
    starts = np.searchsorted(us, rest).tolist()
    ends = np.searchsorted(us, rest, "right").tolist()
    targets = vs.tolist()
    alive = bytearray(n)
    for node in rest.tolist():
        alive[node] = 1
    for node, lo, hi in zip(rest.tolist(), starts, ends, strict=True):
        if alive[node]:
            kept[node] = True
            for other in targets[lo:hi]:
                alive[other] = 0
    return kept


def nms_indices(
    boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike | None = None, threshold: float = 0.75,
    metric: str = "IOU", order: ArrayLike | None = None,
) -> IntArray:
    """Greedy non-maximum suppression: indices of the kept boxes, best first.

    The kept set is exactly what ``ensemble_boxes.nms`` (method 3) keeps with ``iou_thr=threshold`` (per
    label, or across labels when ``labels`` is None): visiting boxes by score, a box is dropped when its
    metric with an already kept box is ``> threshold`` (it keeps ``ovr <= thr``). Equal scores are
    visited in ``order`` (default :func:`canonical_order`) instead of ensemble-boxes' array-position order.
    Boxes are ``[minx, miny, maxx, maxy]`` in any unit (the metric is scale-free).
    """
    b, _, ordered, rank, pairs, _ = _prepare(boxes, scores, labels, threshold, metric, order)
    u, v = _orient(rank, pairs)
    kept = _greedy_keep(len(b), rank, u, v)
    return ordered[kept[ordered]]


def _soft_scores(
    scores: FloatArray, rank: IntArray, a: IntArray, c: IntArray, weight: FloatArray, skip: float,
) -> FloatArray:
    """Final soft-NMS scores (the score each box has when it is selected).

    Sequential soft-NMS selects the box with the highest current score and multiplies its neighbours' by
    their weight. Selected scores never increase, so a box's final score only depends on the neighbours
    selected before it; a box is *ready* once it beats every undecided neighbour, and all ready boxes of a
    round can be selected at once (they are never neighbours of each other). Decay factors from one round
    are applied in selection order; across rounds the order of multiplications can differ from the
    sequential one, which changes a decayed score by at most a few ulps. A box at or below ``skip`` can
    only be followed by boxes at or below it, so it is dropped together with its edges.
    """
    n = scores.size
    cur = scores.astype(np.float64, copy=True)
    done = np.zeros(n, dtype=bool)
    blocked = np.zeros(n, dtype=bool)
    active = np.arange(n, dtype=np.int64)
    for _ in range(_MAX_ROUNDS):
        low = active[cur[active] <= skip]
        if low.size:
            done[low] = True
            live = ~(done[a] | done[c])
            a, c, weight = a[live], c[live], weight[live]
            active = active[~done[active]]
        if a.size == 0:
            done[active] = True
            return cur
        a_wins = (cur[a] > cur[c]) | ((cur[a] == cur[c]) & (rank[a] < rank[c]))
        loser = np.where(a_wins, c, a)
        blocked[loser] = True
        ready = active[~blocked[active]]
        blocked[loser] = False
        done[ready] = True
        from_a, from_c = done[a], done[c]
        hit = from_a | from_c
        src = np.where(from_a, a, c)[hit]
        dst = np.where(from_a, c, a)[hit]
        w = weight[hit]
        if src.size:
            by_key = np.lexsort((rank[src], -cur[src]))
            np.multiply.at(cur, dst[by_key], w[by_key])
        a, c, weight = a[~hit], c[~hit], weight[~hit]
        active = active[~done[active]]
    return _soft_sequential(cur, rank, active, a, c, weight, skip)


def _soft_sequential(
    cur: FloatArray, rank: IntArray, active: IntArray, a: IntArray, c: IntArray, weight: FloatArray, skip: float,
) -> FloatArray:
    """Exact sequential soft-NMS (a lazy max-heap) on what the rounds left undecided."""
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for x, y, w in zip(a.tolist(), c.tolist(), weight.tolist(), strict=True):
        neighbours.setdefault(x, []).append((y, w))
        neighbours.setdefault(y, []).append((x, w))
    score = {node: float(cur[node]) for node in active.tolist()}
    ranks = rank.tolist()
    heap = [(-s, ranks[node], node) for node, s in score.items()]
    heapq.heapify(heap)
    done: set[int] = set()
    while heap:
        neg, _, node = heapq.heappop(heap)
        if node in done or -neg != score[node]:
            continue
        done.add(node)
        if -neg <= skip:
            break
        for other, w in neighbours.get(node, ()):
            if other not in done:
                score[other] *= w
                heapq.heappush(heap, (-score[other], ranks[other], other))
    out = cur.copy()
    for node, s in score.items():
        out[node] = s
    return out


def soft_nms_indices(
    boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike | None = None, threshold: float = 0.75,
    sigma: float = 0.1, skip_threshold: float = 0.0001, metric: str = "IOU", order: ArrayLike | None = None,
) -> tuple[IntArray, FloatArray]:
    """Gaussian soft-NMS: ``(kept indices, their decayed scores)``, by decayed score descending.

    The ``ensemble_boxes.soft_nms`` Gaussian variant (method 2): repeatedly select the box with the highest
    current score and multiply every other box's score by ``exp(-m**2 / sigma)``, ``m`` its metric with the
    selected box; keep boxes whose final score is ``> skip_threshold``. Unlike ensemble-boxes, which decays
    every box and ignores ``iou_thr`` for this method, only boxes with ``m > threshold`` are decayed, so
    ``threshold=0`` reproduces ensemble-boxes (a box with m = 0 has weight 1 there). Note ensemble-boxes
    returns the *original* scores of the kept boxes; this returns the decayed ones.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    b, s, ordered, rank, pairs, value = _prepare(boxes, scores, labels, threshold, metric, order)
    weight = np.exp(-(value * value) / sigma)
    final = _soft_scores(s, rank, pairs[0], pairs[1], weight, float(skip_threshold))
    keep = np.flatnonzero(final > skip_threshold)
    keep = keep[np.lexsort((rank[keep], -final[keep]))]
    return keep, final[keep]


def _grow_groups(b: FloatArray, owner_of: IntArray, member: IntArray, threshold: float, metric: str) -> FloatArray:
    """Each owner's box grown to the union of its members' boxes, SAHI's way.

    Members are taken in the order given (grouped by owner), and a member is merged only when its metric with
    the box merged so far is still ``> threshold`` (SAHI's ``has_match`` re-check); one failing it is dropped
    all the same. All groups advance one member at a time together, so the loop runs as many times as the
    largest group has members, not once per box.
    """
    merged = b.copy()
    if not member.size:
        return merged
    start = np.concatenate(([True], owner_of[1:] != owner_of[:-1]))
    group_start = np.maximum.accumulate(np.where(start, np.arange(member.size), 0))
    position = np.arange(member.size) - group_start
    for k in range(int(position.max()) + 1):
        at = position == k
        o, m = owner_of[at], member[at]
        cur = merged[o]
        other = b[m]
        ok = _metric_columns(cur[:, 0], cur[:, 1], cur[:, 2], cur[:, 3],
                             other[:, 0], other[:, 1], other[:, 2], other[:, 3], metric) > threshold
        o, cur, other = o[ok], cur[ok], other[ok]
        merged[o] = np.concatenate((np.minimum(cur[:, :2], other[:, :2]),
                                    np.maximum(cur[:, 2:], other[:, 2:])), axis=1)
    return merged


def greedy_nmm_indices(
    boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike | None = None, threshold: float = 0.75,
    metric: str = "IOU", order: ArrayLike | None = None,
) -> tuple[IntArray, FloatArray]:
    """Greedy non-maximum merging (SAHI's ``GREEDYNMM``): ``(kept indices best first, their merged boxes)``.

    Groups are formed exactly like NMS: visiting boxes by score, a kept box takes every not yet taken box
    whose metric with it is ``> threshold``. As SAHI does, the kept box is then grown to the *union* box
    (not a weighted average) of its group, taking members best first and only those whose metric with the
    box merged so far is still ``> threshold`` (SAHI's ``has_match`` re-check); a member failing the
    re-check is dropped all the same. The merged score is the kept box's, the group's maximum.
    """
    b, _, ordered, rank, pairs, _ = _prepare(boxes, scores, labels, threshold, metric, order)
    u, v = _orient(rank, pairs)
    kept = _greedy_keep(len(b), rank, u, v)
    take = kept[u] & ~kept[v]
    owner_of, member = u[take], v[take]
    if member.size:
        # Each suppressed box belongs to the best kept box that conflicts with it: the first to take it.
        first = np.lexsort((rank[owner_of], member))
        owner_of, member = owner_of[first], member[first]
        new = np.concatenate(([True], member[1:] != member[:-1]))
        owner_of, member = owner_of[new], member[new]
        # Members best first within each group.
        by_group = np.lexsort((rank[member], rank[owner_of]))
        owner_of, member = owner_of[by_group], member[by_group]
    merged = _grow_groups(b, owner_of, member, threshold, metric)
    keep = ordered[kept[ordered]]
    return keep, merged[keep]


def nmm_indices(
    boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike | None = None, threshold: float = 0.75,
    metric: str = "IOU", order: ArrayLike | None = None,
) -> tuple[IntArray, FloatArray]:
    """Non-maximum merging, transitive (SAHI's ``NMM``): ``(kept indices best first, their merged boxes)``.

    SAHI visits boxes by score; an unclaimed box starts a group, and every box visited (claimed or not)
    claims for its group the unclaimed lower boxes it matches (metric ``> threshold``), so a group follows
    chains of matches, which greedy NMM does not. A box is therefore claimed by its best-ranked better
    neighbour, and the group's keeper is the root of that parent chain: here the parents are found on the
    conflict graph at once and followed by pointer jumping. The keeper's box then grows to the union of its
    members (taken in claim order, with SAHI's re-check, see :func:`_grow_groups`); its score is kept.
    """
    b, _, ordered, rank, pairs, _ = _prepare(boxes, scores, labels, threshold, metric, order)
    u, v = _orient(rank, pairs)
    n = len(b)
    parent = np.arange(n, dtype=np.int64)
    if v.size:
        best = np.lexsort((rank[u], v))  # per claimed box v, its better neighbours best first
        first = np.concatenate(([True], v[best][1:] != v[best][:-1]))
        parent[v[best][first]] = u[best][first]
    root = parent.copy()
    while True:  # parents always rank better, so the chains end: O(log depth) rounds
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    kept = root == np.arange(n)
    member = np.flatnonzero(~kept)
    owner_of = root[member]
    # Claim order: by the claiming box's rank (SAHI's visiting order), then the member's rank.
    by_claim = np.lexsort((rank[member], rank[parent[member]], rank[owner_of]))
    owner_of, member = owner_of[by_claim], member[by_claim]
    merged = _grow_groups(b, owner_of, member, threshold, metric)
    keep = ordered[kept[ordered]]
    return keep, merged[keep]


# Edge-truncated detections ------------------------------------------------------------------------------

EDGE_MATCH = 0.5
"""A truncated detection is a partial view of another detection when more than this share of its own area lies
inside that detection's box."""


def truncated_at_edges(
    boxes: ArrayLike, window: Sequence[float], others: ArrayLike, margin: float,
) -> NDArray[np.bool_]:
    """Which boxes of one tile (or region) are cut by one of its *interior* edges.

    A box is truncated when one of its sides lies within ``margin`` pixels of the same side of its own
    ``window`` (minx, miny, maxx, maxy) and another window in ``others`` ((k, 4)) continues the image
    beyond that edge along the box: there a neighbour saw more of the object. Sides on the image's own border
    never count: nothing lies beyond them.
    """
    b = _as_boxes(boxes)
    o = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    out = np.zeros(len(b), dtype=bool)
    if not len(b) or not len(o):
        return out
    wx1, wy1, wx2, wy2 = (float(v) for v in window)
    x1, y1, x2, y2 = (b[:, k, None] for k in range(4))
    ox1, oy1, ox2, oy2 = (o[None, :, k] for k in range(4))
    along_y = (oy1 < y2) & (oy2 > y1)
    along_x = (ox1 < x2) & (ox2 > x1)
    out |= (b[:, 0] <= wx1 + margin) & ((ox1 < wx1) & (ox2 > wx1) & along_y).any(axis=1)
    out |= (b[:, 2] >= wx2 - margin) & ((ox2 > wx2) & (ox1 < wx2) & along_y).any(axis=1)
    out |= (b[:, 1] <= wy1 + margin) & ((oy1 < wy1) & (oy2 > wy1) & along_x).any(axis=1)
    out |= (b[:, 3] >= wy2 - margin) & ((oy2 > wy2) & (oy1 < wy2) & along_x).any(axis=1)
    return out


def connected_components(n: int, src: IntArray, dst: IntArray) -> IntArray:
    """Connected components of an undirected graph of ``n`` nodes and the edges ``src[k] -- dst[k]``: each
    node's label is its component's smallest node (partial views of one object here, touching shapes of one
    class in :func:`~.distill.distill`). Label propagation with pointer jumping, in numpy."""
    label = np.arange(n, dtype=np.int64)
    if not src.size:
        return label
    while True:
        low = np.minimum(label[src], label[dst])
        before = label.copy()
        np.minimum.at(label, src, low)
        np.minimum.at(label, dst, low)
        label = label[label]
        if np.array_equal(label, before):
            return label


def resolve_truncated(
    boxes: ArrayLike, truncated: ArrayLike, rank: ArrayLike, mode: str, labels: ArrayLike | None = None,
) -> tuple[NDArray[np.bool_], FloatArray]:
    """Partial views at tile edges: ``(which boxes stay, their boxes)``, before the merge algorithm runs.

    A truncated box (see :func:`truncated_at_edges`) points at its best *partner*: a box of the same label
    (any label with ``labels`` None) holding more than :data:`EDGE_MATCH` of its area, preferring a box
    that is not truncated itself (a whole view), then the larger share, then the better ``rank``. A partial
    view and what it points at are views of one object, so each connected group of them becomes one box:
    the group's whole view if it has one (it can have at most one: only truncated boxes point), otherwise
    its best-ranked partial. ``mode`` ``SUPPRESS`` keeps that box as it is and drops the partials;
    ``MERGE`` also grows it to the union of the group, which rebuilds an object that no tile saw whole (one
    larger than the overlap) from its pieces. A truncated box without a partner stays as it is.
    """
    if mode not in ("SUPPRESS", "MERGE"):
        raise ValueError(f"mode must be SUPPRESS or MERGE, got {mode!r}")
    b = _as_boxes(boxes)
    cut = np.asarray(truncated, dtype=bool).reshape(-1)
    ranks = np.asarray(rank, dtype=np.int64).reshape(-1)
    if cut.size != len(b) or ranks.size != len(b):
        raise ValueError(f"{len(b)} boxes but {cut.size} truncated flags and {ranks.size} ranks")
    n = len(b)
    stay = np.ones(n, dtype=bool)
    if not cut.any():
        return stay, b.copy()
    i, j, _ = overlapping_pairs(b, EDGE_MATCH, "IOS", labels)
    src, dst = np.concatenate((i, j)), np.concatenate((j, i))
    inter = (np.maximum(0.0, np.minimum(b[src, 2], b[dst, 2]) - np.maximum(b[src, 0], b[dst, 0]))
             * np.maximum(0.0, np.minimum(b[src, 3], b[dst, 3]) - np.maximum(b[src, 1], b[dst, 1])))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = inter / ((b[src, 2] - b[src, 0]) * (b[src, 3] - b[src, 1]))
    use = cut[src] & (share > EDGE_MATCH)
    src, dst, share = src[use], dst[use], share[use]
    if not src.size:
        return stay, b.copy()
    best = np.lexsort((ranks[dst], -share, cut[dst], src))
    first = np.concatenate(([True], src[best][1:] != src[best][:-1]))
    src, dst = src[best][first], dst[best][first]
    group = connected_components(n, src, dst)
    # The group's representative: its whole view, else its best-ranked member.
    by = np.lexsort((ranks, cut, group))
    lead = np.concatenate(([True], group[by][1:] != group[by][:-1]))
    representative = np.empty(n, dtype=np.int64)
    representative[group[by][lead]] = by[lead]
    rep = representative[group]
    stay = rep == np.arange(n)
    out = b.copy()
    if mode == "MERGE":
        lo_x, lo_y = out[:, 0].copy(), out[:, 1].copy()
        hi_x, hi_y = out[:, 2].copy(), out[:, 3].copy()
        np.minimum.at(lo_x, rep, b[:, 0])
        np.minimum.at(lo_y, rep, b[:, 1])
        np.maximum.at(hi_x, rep, b[:, 2])
        np.maximum.at(hi_y, rep, b[:, 3])
        out = np.stack((lo_x, lo_y, hi_x, hi_y), axis=1)
    return stay, out

