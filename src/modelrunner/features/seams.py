"""Merging across seams, level by level: tiles into a region, regions into a job.

Features travel between levels as a :class:`FeatureSet` (pixel boxes + GeoJSON texts), so the many features
that no seam touches are never parsed or re-serialised. Each level's parts were already merged inside
themselves, so a feature whose box reaches into no other part's window has no duplicate left among the
parts' results: only the features that do are parsed and merged (:func:`~.merge.distill`). The result is
exactly what merging the union of the parts' results would select.

SOFT_NMS is the exception: its decay is not idempotent, so lower levels pass features through unmerged and
the job level merges everything once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..requests import DistillationOption
from .merge import Relocate, box_columns, distill, nms_indices

Window = tuple[float, float, float, float]  # minx, miny, maxx, maxy in full-image pixels


@dataclass(frozen=True)
class FeatureSet:
    """Features kept serialised: their GeoJSON texts and the columns a merge reads (pixel boxes (n, 4),
    scores, labels, and which are boxes rather than shapes; see :func:`~.merge.box_columns`)."""

    texts: list[str]
    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]
    is_box: np.ndarray

    @classmethod
    def of(cls, features: Sequence[dict[str, Any]], texts: Sequence[str] | None = None) -> FeatureSet:
        boxes, scores, labels, is_box = box_columns(features)
        return cls(list(texts) if texts is not None else [feature_text(f) for f in features],
                   boxes, scores, labels, is_box)

    @classmethod
    def empty(cls) -> FeatureSet:
        return cls([], np.zeros((0, 4)), np.zeros(0), [], np.zeros(0, dtype=bool))

    @classmethod
    def concat(cls, sets: Sequence[FeatureSet]) -> FeatureSet:
        sets = [s for s in sets if len(s)]
        if not sets:
            return cls.empty()
        return cls([t for s in sets for t in s.texts], np.concatenate([s.boxes for s in sets]),
                   np.concatenate([s.scores for s in sets]), [lb for s in sets for lb in s.labels],
                   np.concatenate([s.is_box for s in sets]))

    def take(self, mask_or_index: np.ndarray) -> FeatureSet:
        index = np.flatnonzero(mask_or_index) if mask_or_index.dtype == bool else mask_or_index
        picks = index.tolist()
        return FeatureSet([self.texts[i] for i in picks], self.boxes[index], self.scores[index],
                          [self.labels[i] for i in picks], self.is_box[index])

    def __len__(self) -> int:
        return len(self.texts)

    def features(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.texts]

    def to_bytes(self) -> bytes:
        # GeoJSON text from json.dumps never holds a raw newline, so newlines separate the features.
        names = sorted(set(self.labels))
        code = {name: i for i, name in enumerate(names)}
        n = len(self.texts)
        return b"".join([
            n.to_bytes(8, "little"), self.boxes.astype("<f8").tobytes(), self.scores.astype("<f8").tobytes(),
            self.is_box.astype(np.uint8).tobytes(), np.array([code[lb] for lb in self.labels], dtype="<u4").tobytes(),
            json.dumps(names).encode(), b"\n", "\n".join(self.texts).encode()])

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureSet:
        n = int.from_bytes(data[:8], "little")
        at = 8
        boxes = np.frombuffer(data, dtype="<f8", count=4 * n, offset=at).reshape(n, 4)
        at += 32 * n
        scores = np.frombuffer(data, dtype="<f8", count=n, offset=at)
        at += 8 * n
        is_box = np.frombuffer(data, dtype=np.uint8, count=n, offset=at).astype(bool)
        at += n
        codes = np.frombuffer(data, dtype="<u4", count=n, offset=at)
        at += 4 * n
        end = data.index(b"\n", at)
        names = json.loads(data[at:end])
        texts = data[end + 1:].decode().split("\n") if n else []
        return cls(texts, boxes, scores, [names[c] for c in codes.tolist()], is_box)


def feature_text(feature: dict[str, Any]) -> str:
    """A feature's GeoJSON text: exactly ``json.dumps``, a third faster without its cycle check (features
    are trees: parsed JSON or built by us)."""
    return json.dumps(feature, check_circular=False)


def _reaching(boxes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Which boxes overlap (with positive area) at least one of the windows."""
    if len(windows) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), dtype=bool)
    return ((boxes[:, None, 0] < windows[None, :, 2]) & (boxes[:, None, 2] > windows[None, :, 0])
            & (boxes[:, None, 1] < windows[None, :, 3]) & (boxes[:, None, 3] > windows[None, :, 1])).any(axis=1)


def merge_seams(parts: Sequence[tuple[Window, FeatureSet]], option: DistillationOption,
                relocate: Relocate | None = None, *, final: bool = True) -> FeatureSet:
    """Merge parts (each already merged inside itself) across the seams between their windows.

    ``final`` False (a lower level) with SOFT_NMS only concatenates: the job level decays once. With NMS
    and only boxes near the seams, the merge runs on the stored columns and no feature is parsed.
    """
    # Row-major by window, whatever order the parts finished in: the output order is deterministic too.
    parts = sorted(parts, key=lambda part: (part[0][1], part[0][0], part[0][3], part[0][2]))
    if option.algorithm_type == "SOFT_NMS" and not final:
        return FeatureSet.concat([part for _, part in parts])
    windows = np.array([window for window, _ in parts], dtype=float).reshape(-1, 4)
    untouched: list[FeatureSet] = []
    seam: list[FeatureSet] = []
    for i, (_, part) in enumerate(parts):
        if not len(part):
            continue
        if option.algorithm_type == "SOFT_NMS":
            near = np.ones(len(part), dtype=bool)
        else:
            finite = np.isfinite(part.boxes).all(axis=1)
            bounds = part.boxes[finite]
            close = np.zeros(len(windows), dtype=bool)
            if len(bounds):
                x0, y0 = bounds[:, 0].min(), bounds[:, 1].min()
                x1, y1 = bounds[:, 2].max(), bounds[:, 3].max()
                close = (windows[:, 0] < x1) & (windows[:, 2] > x0) & (windows[:, 1] < y1) & (windows[:, 3] > y0)
            close[i] = False
            near = _reaching(part.boxes, windows[close]) & finite
        untouched.append(part.take(~near))
        seam.append(part.take(near))
    candidates = FeatureSet.concat(seam)
    if not len(candidates):
        return FeatureSet.concat(untouched)
    if option.algorithm_type == "NMS" and candidates.is_box.all():
        # Ties beyond score, box and label are broken by the text, never by arrival order.
        by_text = np.argsort(np.array(candidates.texts, dtype=object), kind="stable")
        ordered = candidates.take(by_text)
        labels = None if option.class_agnostic else np.unique(ordered.labels, return_inverse=True)[1]
        kept = nms_indices(ordered.boxes, ordered.scores, labels, option.iou_threshold, option.match_metric)
        return FeatureSet.concat([*untouched, ordered.take(np.sort(kept))])
    return FeatureSet.concat([*untouched, FeatureSet.of(distill(candidates.features(), option, relocate))])
