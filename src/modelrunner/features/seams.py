"""Merging across seams, level by level: tiles into a region, regions into a job.

Features travel between levels as a :class:`~.featureset.FeatureSet` (pixel boxes + GeoJSON texts), so the many features
that no seam touches are never parsed or re-serialised. Each level's parts were already merged inside
themselves, so a feature whose box reaches into no other part's window has no duplicate left among the
parts' results: only the features that do are parsed and merged (:func:`~.distill.distill`). The result is
exactly what merging the union of the parts' results would select.

SOFT_NMS is the exception: its decay is not idempotent, so lower levels pass features through unmerged and
the job level merges everything once.

Edge truncation (``option.edge_truncation``) needs the windows, so it is decided here: a seam feature whose box
an interior edge of its own part's window cuts (another part's window continues beyond that edge) is flagged
for :func:`~.nms.resolve_truncated`. Inside one tile nothing is cut, so the tile level never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from ..requests import DistillationOption
from .convert import Relocate
from .distill import distill
from .featureset import FeatureSet, JobFeatures, PackedFeatureSet, feature_text
from .nms import canonical_order, nms_indices, truncated_at_edges

Window = tuple[float, float, float, float]  # minx, miny, maxx, maxy in full-image pixels


def _reaching(boxes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Which boxes overlap (with positive area) at least one of the windows (also: which windows overlap
    one box, given as the only "window")."""
    if len(windows) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), dtype=bool)
    return np.asarray(((boxes[:, None, 0] < windows[None, :, 2]) & (boxes[:, None, 2] > windows[None, :, 0])
                       & (boxes[:, None, 1] < windows[None, :, 3]) & (boxes[:, None, 3] > windows[None, :, 1]))
                      .any(axis=1))


def merge_seams(parts: Sequence[tuple[Window, FeatureSet]], option: DistillationOption,
                relocate: Relocate | None = None, *, final: bool = True) -> FeatureSet:
    """Merge parts (each already merged inside itself) across the seams between their windows.

    ``final`` False (a lower level) with SOFT_NMS only concatenates: the job level decays once. With NMS
    and only boxes near the seams, the merge runs on the stored columns and no feature is parsed.
    """
    parts = _by_window(parts)
    if option.algorithm_type == "SOFT_NMS" and not final:
        return FeatureSet.concat([part for _, part in parts])
    near, merged = _merge_near(parts, option, relocate)
    return FeatureSet.concat([*(part.take(~mask) for (_, part), mask in zip(parts, near, strict=True)), merged])


def merge_packed(parts: Sequence[tuple[Window, PackedFeatureSet]], option: DistillationOption,
                 relocate: Relocate | None = None) -> JobFeatures:
    """:func:`merge_seams` (final) over stored region results: the same features, in the same order, with
    only the texts near the seams decompressed here; the rest stream to the outputs."""
    parts = _by_window(parts)
    near, merged = _merge_near(parts, option, relocate)
    return JobFeatures([(part, ~mask) for (_, part), mask in zip(parts, near, strict=True)], merged)


PartT = TypeVar("PartT", FeatureSet, PackedFeatureSet)


def _by_window(parts: Sequence[tuple[Window, PartT]]) -> list[tuple[Window, PartT]]:
    """Row-major by window, whatever order the parts finished in: the output order is deterministic too."""
    return sorted(parts, key=lambda part: (part[0][1], part[0][0], part[0][3], part[0][2]))


def _merge_near(parts: Sequence[tuple[Window, FeatureSet | PackedFeatureSet]], option: DistillationOption,
                relocate: Relocate | None) -> tuple[list[np.ndarray], FeatureSet]:
    """Which features of each part reach into another part's window, and those features merged."""
    windows = np.array([window for window, _ in parts], dtype=float).reshape(-1, 4)
    near_masks: list[np.ndarray] = []
    seam: list[FeatureSet] = []
    cut: list[np.ndarray] = []  # per seam part: which of its near features an interior edge of its window cuts
    edges = option.edge_truncation != "NONE"
    for i, (_, part) in enumerate(parts):
        if option.algorithm_type == "SOFT_NMS":
            near = np.ones(len(part), dtype=bool)
        elif not len(part):
            near = np.zeros(0, dtype=bool)
        else:
            finite = np.isfinite(part.boxes).all(axis=1)
            bounds = part.boxes[finite]
            close = np.zeros(len(windows), dtype=bool)
            if len(bounds):  # the windows that overlap the box around the part's features
                around = np.array([[bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max()]])
                close = _reaching(windows, around)
            close[i] = False
            near = _reaching(part.boxes, windows[close]) & finite
        near_masks.append(near)
        if near.any():
            taken = part.take(near)
            seam.append(taken)
            if edges:  # a window that continues this one beyond one of its edges overlaps this one
                own = windows[i]
                overlapping = _reaching(windows, own[None])
                overlapping[i] = False
                cut.append(truncated_at_edges(taken.boxes, own, windows[overlapping], option.edge_margin)
                           & taken.is_box)
    truncated = np.concatenate(cut) if edges and cut else None
    return near_masks, merge_set(FeatureSet.concat(seam), option, relocate, truncated=truncated)


def on_columns(features: FeatureSet, option: DistillationOption) -> bool:
    """Whether :func:`merge_set` merges ``features`` on their columns alone (NMS, boxes only; no edge cuts),
    so that :func:`merge_tiles` can merge it together with other sets."""
    return option.algorithm_type == "NMS" and bool(features.is_box.all())


def merge_tiles(sets: Sequence[FeatureSet], option: DistillationOption) -> list[FeatureSet]:
    """Each set merged inside itself, exactly as :func:`merge_set` merges it on its own, in one NMS over all
    of them: a region's tiles, after their last tile came back.

    One call over the region's boxes instead of one per tile: the NMS's fixed cost (its sorts, its grid, a
    few dozen numpy calls) is paid once instead of a thousand times, a quarter of the per-tile cost at a
    hundred boxes a tile. Boxes of different sets are never compared (each set's labels are groups of their
    own); within a set, boxes are visited in :func:`merge_set`'s order (score, box, label, then the text) and
    the kept ones come out in its order (by text). Sets that :func:`on_columns` rejects are merged on their own.
    """
    out = list(sets)
    batch = []
    for i, features in enumerate(sets):
        if len(features) and on_columns(features, option):
            batch.append(i)
        elif len(features):
            out[i] = merge_set(features, option)
    if not batch:
        return out
    union = FeatureSet.concat([sets[i] for i in batch])
    sizes = [len(sets[i]) for i in batch]
    group = np.repeat(np.arange(len(batch), dtype=np.int64), sizes)
    if not option.class_agnostic:
        names, codes = _label_codes(union.labels)
        group = group * names + codes
    texts = union.texts
    order = canonical_order(union.boxes, union.scores, group, lambda members: [texts[k] for k in members.tolist()])
    kept = np.zeros(len(union), dtype=bool)
    kept[nms_indices(union.boxes, union.scores, group, option.iou_threshold, option.match_metric, order)] = True
    start = 0
    for i, size in zip(batch, sizes, strict=True):
        picks = np.flatnonzero(kept[start:start + size]).tolist()
        tile_texts = sets[i].texts
        out[i] = sets[i].take(np.array(sorted(picks, key=tile_texts.__getitem__), dtype=np.int64))
        start += size
    return out


def _label_codes(labels: list[str]) -> tuple[int, np.ndarray]:
    """How many distinct labels, and each label's code in name order (what ``np.unique(labels,
    return_inverse=True)`` gives, from a dict of the distinct names rather than a sort of every label)."""
    rank = {name: code for code, name in enumerate(sorted(dict.fromkeys(labels)))}
    return len(rank), np.fromiter(map(rank.__getitem__, labels), np.int64, len(labels))


def merge_set(candidates: FeatureSet, option: DistillationOption, relocate: Relocate | None = None,
              features: Sequence[dict[str, Any]] | None = None, *, truncated: np.ndarray | None = None) -> FeatureSet:
    """Merge every feature of one set with every other (:func:`~.distill.distill`'s selection).

    With NMS and boxes only, the merge runs on the stored columns and nothing is parsed; otherwise the
    features (``features`` when the caller has them, else parsed from the texts) go through ``distill``.
    ``truncated`` flags the features an interior tile edge cuts (``option.edge_truncation``).
    """
    if not len(candidates):
        return candidates
    edge_cases = truncated is not None and bool(truncated.any()) and option.edge_truncation != "NONE"
    if on_columns(candidates, option) and not edge_cases:
        # Ties beyond score, box and label are broken by the text, never by arrival order.
        by_text = np.argsort(np.array(candidates.texts, dtype=object), kind="stable")
        ordered = candidates.take(by_text)
        labels = None if option.class_agnostic else _label_codes(ordered.labels)[1]
        kept = nms_indices(ordered.boxes, ordered.scores, labels, option.iou_threshold, option.match_metric)
        return ordered.take(np.sort(kept))
    if features is None:
        return FeatureSet.of(distill(candidates.features(), option, relocate, truncated=truncated))
    text_of = {id(f): t for f, t in zip(features, candidates.texts, strict=True)}
    distilled = distill(features, option, relocate, truncated=truncated)
    return FeatureSet.of(distilled, [text_of.get(id(f)) or feature_text(f) for f in distilled])
