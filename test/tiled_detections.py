"""Detections the way a tiled run produces them, for the duplicate-merge tests (test_nms, test_distill,
test_seams, test_featureset, test_complete).

Box sets (:func:`tiled_boxes`): objects are duplicated across synthetic tile and region seams, jittered and
cut at the seam, with exact duplicates and quantised scores with many ties. The image is 1024 px wide so
normalising to ensemble-boxes' [0, 1] divides by a power of two: every IoU it computes is then
bit-identical to ours and even boxes sitting exactly on the threshold must agree.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from modelrunner.features.convert import box_polygon

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


def box_feature(n: int, x: float, y: float, w: float, h: float, score: float, label: str) -> dict[str, Any]:
    """A model's box detection placed in the image: feature ``f<n>``, its box x..x+w, y..y+h."""
    return {"type": "Feature", "id": f"f{n}", "geometry": None,
            "properties": {"imageGeometry": box_polygon(x, y, x + w, y + h),
                           "featureClasses": [{"iri": label, "score": score}]}}
