"""How good a result is against a synthetic scene's ground truth: precision and recall at an IoU threshold.

Recall alone cannot see duplicates: a result with every object twice (a whole box and a sliver cut by a tile
edge) still has recall 1.0. Precision counts them: each detection may match one ground-truth object and each
object one detection, so every duplicate is a false positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .overlay import feature_boxes

MIN_IOU = 0.5


@dataclass(frozen=True)
class Accuracy:
    """One-to-one matches between detections and ground-truth objects."""

    matched: int
    detections: int
    objects: int
    iou_sum: float = 0.0  # of the matched pairs

    @property
    def mean_iou(self) -> float:
        """How well the matched detections fit their objects (1.0: exactly; 0.0 when none matched)."""
        return self.iou_sum / self.matched if self.matched else 0.0

    @property
    def precision(self) -> float:
        """Share of detections that matched an object (1.0 when there are none)."""
        return self.matched / self.detections if self.detections else 1.0

    @property
    def recall(self) -> float:
        """Share of objects that a detection matched (1.0 when there are none)."""
        return self.matched / self.objects if self.objects else 1.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0

    def line(self) -> str:
        """The demo's summary: precision beside recall, and the counts behind them."""
        return (f"precision {self.precision:.3f}  recall {self.recall:.3f}  (IoU >= {MIN_IOU}: {self.matched} of "
                f"{self.detections} features match one of {self.objects} ground-truth objects)")


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.asarray(inter / np.maximum(union, 1e-12))


def match_boxes(truth: ArrayLike, found: ArrayLike, min_iou: float = MIN_IOU) -> Accuracy:
    """Match pixel boxes ``(n, 4)`` one to one, best IoU first, counting pairs with IoU >= ``min_iou``.

    Only nearby pairs are compared (boxes sorted by x, a window as wide as the largest box), so a scene of
    thousands of objects scores in milliseconds.
    """
    t = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
    f = np.asarray(found, dtype=np.float64).reshape(-1, 4)
    if not len(t) or not len(f):
        return Accuracy(0, len(f), len(t))
    rows, cols, values = [], [], []
    reach = float(max((t[:, 2] - t[:, 0]).max(), (f[:, 2] - f[:, 0]).max()))
    order = np.argsort(f[:, 0], kind="stable")
    starts = f[order, 0]
    lo = np.searchsorted(starts, t[:, 0] - reach, "left")
    hi = np.searchsorted(starts, t[:, 2], "right")
    for i in range(len(t)):
        near = order[lo[i]:hi[i]]
        if near.size:
            iou = _iou_matrix(t[i:i + 1], f[near])[0]
            hit = iou >= min_iou
            rows.extend([i] * int(hit.sum()))
            cols.extend(near[hit].tolist())
            values.extend(iou[hit].tolist())
    used_t, used_f = set(), set()
    iou_sum = 0.0
    for k in np.argsort(-np.asarray(values), kind="stable").tolist():
        if rows[k] not in used_t and cols[k] not in used_f:
            used_t.add(rows[k])
            used_f.add(cols[k])
            iou_sum += values[k]
    return Accuracy(len(used_t), len(f), len(t), iou_sum)


def score_features(truth: Sequence[tuple[float, float, float, float]], features: Sequence[dict[str, Any]],
                   min_iou: float = MIN_IOU) -> Accuracy:
    """:func:`match_boxes` on features' pixel boxes (``imageGeometry`` or ``imageBBox``)."""
    return match_boxes(truth, feature_boxes(features), min_iou)
