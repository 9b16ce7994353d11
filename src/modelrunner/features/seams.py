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
from .convert import image_bounds
from .merge import Relocate, distill

Window = tuple[float, float, float, float]  # minx, miny, maxx, maxy in full-image pixels


@dataclass(frozen=True)
class FeatureSet:
    """Features as pixel boxes (n, 4: minx, miny, maxx, maxy) and their GeoJSON texts."""

    boxes: np.ndarray
    texts: list[str]

    @classmethod
    def of(cls, features: Sequence[dict[str, Any]], texts: Sequence[str] | None = None) -> FeatureSet:
        boxes = np.array([image_bounds(f["properties"]) for f in features], dtype="<f8").reshape(-1, 4)
        return cls(boxes, list(texts) if texts is not None else [json.dumps(f) for f in features])

    @classmethod
    def concat(cls, sets: Sequence[FeatureSet]) -> FeatureSet:
        if not sets:
            return cls(np.zeros((0, 4)), [])
        return cls(np.concatenate([s.boxes for s in sets]), [t for s in sets for t in s.texts])

    def __len__(self) -> int:
        return len(self.texts)

    def features(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.texts]

    def to_bytes(self) -> bytes:
        # GeoJSON text from json.dumps never holds a raw newline, so newlines separate the features.
        head = len(self.texts).to_bytes(8, "little")
        return head + self.boxes.astype("<f8").tobytes() + "\n".join(self.texts).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureSet:
        count = int.from_bytes(data[:8], "little")
        end = 8 + 32 * count
        boxes = np.frombuffer(data[8:end], dtype="<f8").reshape(count, 4)
        texts = data[end:].decode().split("\n") if count else []
        return cls(boxes, texts)


def _reaching(boxes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Which boxes overlap (with positive area) at least one of the windows."""
    if len(windows) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), dtype=bool)
    return ((boxes[:, None, 0] < windows[None, :, 2]) & (boxes[:, None, 2] > windows[None, :, 0])
            & (boxes[:, None, 1] < windows[None, :, 3]) & (boxes[:, None, 3] > windows[None, :, 1])).any(axis=1)


def merge_seams(parts: Sequence[tuple[Window, FeatureSet]], option: DistillationOption,
                relocate: Relocate | None = None, *, final: bool = True) -> FeatureSet:
    """Merge parts (each already merged inside itself) across the seams between their windows.

    ``final`` False (a lower level) with SOFT_NMS only concatenates: the job level decays once.
    """
    if option.algorithm_type == "SOFT_NMS" and not final:
        return FeatureSet.concat([part for _, part in parts])
    windows = np.array([window for window, _ in parts], dtype=float).reshape(-1, 4)
    keep_boxes: list[np.ndarray] = []
    keep_texts: list[str] = []
    seam: list[dict[str, Any]] = []
    for i, (_, part) in enumerate(parts):
        if not len(part):
            continue
        if option.algorithm_type == "SOFT_NMS":
            near = np.ones(len(part), dtype=bool)
        else:
            x0, y0 = part.boxes[:, 0].min(), part.boxes[:, 1].min()
            x1, y1 = part.boxes[:, 2].max(), part.boxes[:, 3].max()
            close = ((windows[:, 0] < x1) & (windows[:, 2] > x0) & (windows[:, 1] < y1) & (windows[:, 3] > y0))
            close[i] = False
            near = _reaching(part.boxes, windows[close])
        keep_boxes.append(part.boxes[~near])
        keep_texts.extend(t for t, n in zip(part.texts, near.tolist(), strict=True) if not n)
        seam.extend(json.loads(t) for t, n in zip(part.texts, near.tolist(), strict=True) if n)
    merged = FeatureSet.of(distill(seam, option, relocate)) if seam else FeatureSet.concat([])
    return FeatureSet.concat([FeatureSet(np.concatenate(keep_boxes) if keep_boxes else np.zeros((0, 4)),
                                         keep_texts), merged])
