"""Feature distillation: merge the duplicate detections that overlapping tiles produce.

A big image is cut into tiles that overlap, so an object in an overlap is detected once per tile that sees
it, and a mask or a road that crosses a seam comes back in pieces. :func:`distill` turns those back into one
feature per object, the way the request's ``FEATURE_DISTILLATION`` step
(:class:`~modelrunner.requests.DistillationOption`) asks:

* box features (a Point, an axis-aligned rectangular Polygon, or only an ``imageBBox``) go through NMS,
  soft-NMS, NMM or greedy NMM on their pixel boxes (the array algorithms of :mod:`~modelrunner.features.nms`),
  per class unless ``class_agnostic``, optionally after partial views cut by tile edges were resolved
  (``edge_truncation``, :func:`~.nms.resolve_truncated`);
* any other geometry (masks, roads: non-rectangular Polygons, MultiPolygons, LineStrings, ...) is never
  suppressed as a box: pieces of one class that touch or overlap are joined into one geometry (shapely
  union), keeping the best-scored piece's properties.

This module is the GeoJSON side: features are parsed into columns once (:func:`box_columns` gives them to
callers that keep features serialised), shapes are joined, rescored or regrown features are copies, and the
output is put in order.

Determinism: the result depends on the *set* of features, never on their order. Every choice between equal
scores is made by a canonical key (score descending, then the box ``minx, miny, maxx, maxy``, the label and,
for features equal on all of those, their JSON serialisation with sorted keys: :func:`~.nms.canonical_order`),
and the output is sorted by final score with the same key. Features are never collapsed because their boxes
are equal; only the algorithm decides what survives.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from ..requests import ALGORITHMS, DistillationOption
from .convert import Relocate, box_polygon
from .nms import (
    POINT_PAD,
    FloatArray,
    IntArray,
    canonical_order,
    check_metric,
    connected_components,
    float_key,
    greedy_nmm_indices,
    nmm_indices,
    nms_indices,
    radix_argsort,
    rank_of,
    resolve_truncated,
    soft_nms_indices,
)

__all__ = ["POINT_PAD", "box_columns", "distill"]

# Parsing features ------------------------------------------------------------------------------------

_BOX, _SHAPE, _OTHER = 0, 1, 2
_NUMBER = (int, float)


@dataclass
class _Parsed:
    """Per-feature columns extracted from the feature dicts (one pass over the Python objects)."""

    kind: NDArray[np.int8]
    x1: FloatArray
    y1: FloatArray
    x2: FloatArray
    y2: FloatArray
    score: FloatArray
    label: IntArray  # codes in sorted-label order
    best_class: list[int]  # index of the top entry in featureClasses (-1: none)
    shapes: dict[int, BaseGeometry] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)  # label code -> label


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _top_class(props: dict[str, Any]) -> tuple[float, str, int]:
    """(score, label, index) of the highest-scored featureClasses entry; (-1, "", -1) without one.

    The first entry wins among equal scores (the order inside a feature is part of the feature); an entry
    with a missing or non-numeric score counts as -1.
    """
    classes = props.get("featureClasses")
    best: tuple[float, str, int] = (-1.0, "", -1)
    if not isinstance(classes, list):
        return best
    for index, entry in enumerate(classes):
        if not isinstance(entry, dict):
            continue
        score = _number(entry.get("score"))
        score = -1.0 if score is None else score
        if best[2] < 0 or score > best[0]:
            iri = entry.get("iri")
            best = (score, "" if iri is None else str(iri), index)
    return best


def _rectangle(ring: Any) -> tuple[float, float, float, float] | None:
    """Bounds of a closed ring that is an axis-aligned rectangle (any start corner or direction)."""
    if not isinstance(ring, list | tuple) or len(ring) != 5:
        return None
    try:
        pts = [(float(p[0]), float(p[1])) for p in ring]
    except (TypeError, ValueError, IndexError):
        return None
    if pts[0] != pts[4]:
        return None
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
    for (ax, ay), (bx, by) in zip(pts, pts[1:], strict=False):
        if ax not in (lo_x, hi_x) or ay not in (lo_y, hi_y) or (ax != bx and ay != by):
            return None
    if len(set(pts[:4])) != 4 and not (lo_x == hi_x or lo_y == hi_y):
        return None
    return lo_x, lo_y, hi_x, hi_y


def _classify(props: dict[str, Any]) -> tuple[int, tuple[float, float, float, float], BaseGeometry | None]:
    """Kind, box and (for shapes) the shapely geometry of a feature, for anything off the fast path."""
    geometry = props.get("imageGeometry")
    nan = (math.nan, math.nan, math.nan, math.nan)
    if isinstance(geometry, dict) and geometry.get("type"):
        kind = geometry.get("type")
        coords = geometry.get("coordinates")
        if kind == "Polygon" and isinstance(coords, list | tuple) and len(coords) == 1:
            rect = _rectangle(coords[0])
            if rect is not None:
                return _BOX, rect, None
        try:
            geom = shape(geometry)
        except (shapely.errors.ShapelyError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            return _OTHER, nan, None  # malformed GeoJSON: the feature passes through untouched
        if geom.is_empty:
            return _OTHER, nan, None
        minx, miny, maxx, maxy = (float(v) for v in geom.bounds)
        if int(shapely.get_dimensions(geom)) == 0:  # Point, MultiPoint, points only: the box around them
            return _BOX, (minx, miny, maxx, maxy), None
        return _SHAPE, (minx, miny, maxx, maxy), geom
    bbox = props.get("imageBBox")
    if isinstance(bbox, list | tuple) and len(bbox) == 4:
        numbers = [v for v in map(_number, bbox) if v is not None]
        if len(numbers) == 4:
            x1, y1, x2, y2 = numbers
            return _BOX, (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), None
    return _OTHER, nan, None


def _floats(values: list[Any]) -> FloatArray:
    """Coordinates as float64; anything that is not a number becomes NaN (and its feature passes through)."""
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([math.nan if (v := _number(x)) is None else v for x in values], dtype=np.float64)


def _parse(features: Sequence[dict[str, Any]]) -> _Parsed:
    """Extract box, score and label of every feature.

    This loop touches 100,000 dicts and dominates :func:`distill`'s time, so the common case (a single
    featureClasses entry and a rectangular Polygon given as five points) is inlined and anything else
    goes through :func:`_classify` / :func:`_top_class`.
    """
    n = len(features)
    x1s: list[Any] = [0.0] * n
    y1s: list[Any] = [0.0] * n
    x2s: list[Any] = [0.0] * n
    y2s: list[Any] = [0.0] * n
    scores: list[float] = [-1.0] * n
    label_codes: list[int] = [0] * n
    best_class: list[int] = [0] * n
    kinds = bytearray(n)  # _BOX == 0
    codes: dict[str, int] = {"": 0}
    shapes: dict[int, BaseGeometry] = {}
    for k, feature in enumerate(features):
        try:  # the fast path: plain indexing, any surprise raises and falls through to the careful one
            props = feature["properties"]
            geometry = props.get("imageGeometry")
            if geometry is None:  # imageBBox only
                ax, ay, cx, cy = props["imageBBox"]
                ok = True
            elif geometry["type"] == "Polygon":
                (p0, p1, p2, p3, p4), = geometry["coordinates"]
                ax, ay, cx, cy = p0[0], p0[1], p2[0], p2[1]
                ok = p4[0] == ax and p4[1] == ay and (
                    (p1[0] == ax and p1[1] == cy and p3[0] == cx and p3[1] == ay)
                    or (p1[1] == ay and p1[0] == cx and p3[1] == cy and p3[0] == ax))
            elif geometry["type"] == "Point":
                position = geometry["coordinates"]
                ax = cx = position[0]
                ay = cy = position[1]
                ok = True
            else:
                ok = False
            if ok:
                (entry,) = props["featureClasses"]
                score = entry["score"]
                iri = entry["iri"]
                if type(score) is float and score == score and type(iri) is str:
                    if ax <= cx:
                        x1s[k], x2s[k] = ax, cx
                    else:
                        x1s[k], x2s[k] = cx, ax
                    if ay <= cy:
                        y1s[k], y2s[k] = ay, cy
                    else:
                        y1s[k], y2s[k] = cy, ay
                    scores[k] = score
                    code = codes.get(iri)
                    if code is None:
                        code = codes[iri] = len(codes)
                    label_codes[k] = code
                    continue
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            pass
        props = feature.get("properties") if isinstance(feature, dict) else None
        if not isinstance(props, dict):
            props = {}
        kind, box, geom = _classify(props)
        kinds[k] = kind
        x1s[k], y1s[k], x2s[k], y2s[k] = box
        if geom is not None:
            shapes[k] = geom
        score, iri, best = _top_class(props)
        scores[k] = score
        code = codes.get(iri)
        if code is None:
            code = codes[iri] = len(codes)
        label_codes[k] = code
        best_class[k] = best
    # Codes were handed out in input order; renumber them in label order so ties never see input order.
    names = list(codes)
    sorted_code = np.empty(len(names), dtype=np.int64)
    sorted_code[np.argsort(np.array(names, dtype=object))] = np.arange(len(names), dtype=np.int64)
    x1, y1, x2, y2 = _floats(x1s), _floats(y1s), _floats(x2s), _floats(y2s)
    kind_arr = np.frombuffer(bytes(kinds), dtype=np.int8).copy()
    bad = ~(np.isfinite(x1) & np.isfinite(y1) & np.isfinite(x2) & np.isfinite(y2))
    if bad.any():
        kind_arr[bad] = _OTHER
        x1[bad] = y1[bad] = x2[bad] = y2[bad] = np.inf
        for k in np.flatnonzero(bad).tolist():
            shapes.pop(k, None)
    boxes = kind_arr == _BOX
    x2 = np.where(boxes & (x2 == x1), x1 + POINT_PAD, x2)
    y2 = np.where(boxes & (y2 == y1), y1 + POINT_PAD, y2)
    return _Parsed(kind_arr, x1, y1, x2, y2, np.array(scores, dtype=np.float64),
                   sorted_code[np.array(label_codes, dtype=np.int64)], best_class, shapes, sorted(names))


def box_columns(features: Sequence[dict[str, Any]]) -> tuple[FloatArray, FloatArray, list[str], NDArray[np.bool_]]:
    """What the box algorithms read from features: boxes (n, 4, Points padded), scores, labels, and which
    features are boxes at all (the rest are joined as shapes by :func:`distill`). Lets callers keep
    features serialised and still run :func:`~.nms.nms_indices` exactly as :func:`distill` would."""
    if not features:
        return np.zeros((0, 4)), np.zeros(0), [], np.zeros(0, dtype=bool)
    parsed = _parse(features)
    boxes = np.stack((parsed.x1, parsed.y1, parsed.x2, parsed.y2), axis=1)
    labels = [parsed.label_names[c] for c in parsed.label.tolist()]
    return boxes, parsed.score, labels, parsed.kind == _BOX


def _stable_text(feature: Any) -> str:
    return json.dumps(feature, sort_keys=True, default=str, separators=(",", ":"))


def _lists(value: Any) -> Any:
    """GeoJSON coordinates as nested lists (shapely's mapping gives tuples)."""
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _with_properties(feature: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``feature`` with a copied ``properties`` updated: the input dicts are never mutated.

    Plain dicts are copied with literals (the fastest copy in CPython: soft-NMS copies every kept
    feature); other mappings (e.g. ``geojson.Feature``) with :func:`copy.copy` so they keep their type.
    """
    props = feature.get("properties") or {}
    if type(props) is dict:
        new_props = {**props, **changes}
    else:
        new_props = copy.copy(props)
        new_props.update(changes)
    if type(feature) is dict:
        return {**feature, "properties": new_props}
    out = copy.copy(feature)
    out["properties"] = new_props
    return out


def _join(geoms: list[BaseGeometry], polygonal: bool) -> BaseGeometry:
    """Union of touching pieces, cleaned to one geometry family (lines merged end to end)."""
    try:
        union = shapely.union_all(geoms)
    except shapely.errors.GEOSException:
        union = shapely.union_all(shapely.make_valid(np.array(geoms, dtype=object)))
    want = 2 if polygonal else 1
    parts = [p for p in shapely.get_parts(union) if int(shapely.get_dimensions(p)) == want and not p.is_empty]
    if not parts:
        return union
    if polygonal:
        return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    lines = shapely.MultiLineString([q for p in parts for q in shapely.get_parts(p)])
    return shapely.line_merge(lines) if len(lines.geoms) > 1 else lines.geoms[0]


def _join_shapes(
    parsed: _Parsed, members: IntArray, rank: IntArray, class_agnostic: bool,
) -> list[tuple[int, BaseGeometry | None]]:
    """Connected components of touching/overlapping shapes of one class and geometry family.

    Returns ``(best member, joined geometry or None when it stands alone)`` per component. Pairs come
    from a shapely STRtree (``intersects``); invalid pieces are made valid first so GEOS can compare them.
    """
    geoms = np.array([parsed.shapes[k] for k in members.tolist()], dtype=object)
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    family = (shapely.get_dimensions(geoms) >= 2).astype(np.int64)
    group = family if class_agnostic else family * (int(parsed.label.max()) + 1) + parsed.label[members]
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    same = (left < right) & (group[left] == group[right])
    label = connected_components(len(members), left[same].astype(np.int64), right[same].astype(np.int64))
    # Components by their smallest piece, each piece in order (a stable sort keeps the pieces' order).
    by_component = np.argsort(label, kind="stable")
    first = np.flatnonzero(np.concatenate(([True], label[by_component][1:] != label[by_component][:-1])))
    out: list[tuple[int, BaseGeometry | None]] = []
    for component in np.split(by_component, first[1:]):
        pieces = component.tolist()
        best = min(pieces, key=lambda p: rank[members[p]])
        if len(pieces) == 1:
            out.append((int(members[best]), None))
        else:
            out.append((int(members[best]), _join([geoms[p] for p in pieces], bool(family[best]))))
    return out


def distill(
    features: Sequence[dict[str, Any]], option: DistillationOption, relocate: Relocate | None = None,
    *, truncated: ArrayLike | None = None,
) -> list[dict[str, Any]]:
    """Merge duplicate detections (the FEATURE_DISTILLATION step); returns new list, inputs untouched.

    * Box features (Point, axis-aligned rectangular Polygon, or ``imageBBox`` only; a zero width or height
      gets :data:`POINT_PAD`) go through ``option.algorithm_type``:

      - ``NMS``: :func:`~.nms.nms_indices`; kept features are returned as they are.
      - ``SOFT_NMS``: :func:`~.nms.soft_nms_indices`; each kept feature is a copy whose top featureClasses entry
        has the decayed ``score`` and the original one as ``rawScore``. Features without featureClasses
        score -1 and so fall under ``skip_box_threshold``.
      - ``NMM`` / ``GREEDYNMM``: :func:`~.nms.nmm_indices` / :func:`~.nms.greedy_nmm_indices`; a kept feature whose
        group grew its box is a copy with that box as its ``imageGeometry`` Polygon (and ``imageBBox`` when
        it had one).

      With ``option.edge_truncation`` SUPPRESS or MERGE and ``truncated`` (one flag per feature: cut by an
      interior tile edge, see :func:`~.nms.truncated_at_edges`), partial views are first resolved by
      :func:`~.nms.resolve_truncated`; a box MERGE grew is output like an NMM one.

    * Other geometries of one class (and of one family: polygons with polygons, lines with lines) that
      touch or overlap are joined (shapely union, lines merged end to end) into a copy of the best-scored
      piece. Note this joins any touching pieces, so two different same-class roads that cross become one.
    * Features without a usable pixel geometry are passed through.

    ``relocate`` is called on every feature whose ``imageGeometry`` was replaced (NMM, joins), so the caller
    can recompute its world geometry; its return value is what is output. The output is ordered by final
    score descending, ties by the canonical key (see the module docstring), whatever the input order.
    """
    if option.algorithm_type not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {option.algorithm_type!r}")
    check_metric(option.match_metric)
    features = list(features)
    if not features:
        return []
    parsed = _parse(features)
    all_boxes = np.stack((parsed.x1, parsed.y1, parsed.x2, parsed.y2), axis=1)
    order = canonical_order(all_boxes, parsed.score, parsed.label,
                            lambda members: [_stable_text(features[k]) for k in members.tolist()])
    picks = _Picks(features, parsed, rank_of(order), max(16, len(features).bit_length()))
    box_idx = np.flatnonzero(parsed.kind == _BOX)
    if box_idx.size:
        boxes = all_boxes if box_idx.size == len(features) else all_boxes[box_idx]
        picks.boxes(box_idx, boxes, option, truncated)
    shape_idx = np.flatnonzero(parsed.kind == _SHAPE)
    if shape_idx.size:
        picks.shapes(shape_idx, option)
    other = np.flatnonzero(parsed.kind == _OTHER)
    picks.add(other, parsed.score[other])
    return picks.output(option.algorithm_type == "SOFT_NMS", relocate)


class _Picks:
    """What :func:`distill` keeps, source by source (boxes, joined shapes, the rest): the indices that
    survive with their final scores, the copies output instead of some features, and which copies' pixel
    geometry changed (to relocate)."""

    def __init__(self, features: list[dict[str, Any]], parsed: _Parsed, rank: IntArray, rank_bits: int) -> None:
        self.features, self.parsed, self.rank, self.rank_bits = features, parsed, rank, rank_bits
        self.picked: list[IntArray] = []
        self.picked_score: list[FloatArray] = []
        self.replaced: dict[int, dict[str, Any]] = {}  # index -> the copy that is output instead
        self.moved: set[int] = set()  # indices whose imageGeometry was replaced (relocate them)

    def add(self, indices: IntArray, scores: FloatArray) -> None:
        self.picked.append(indices)
        self.picked_score.append(scores)

    def replace(self, k: int, changes: dict[str, Any], bbox: list[float]) -> None:
        """Output a copy of feature ``k`` with new pixel geometry (``imageBBox`` too when it had one)."""
        if "imageBBox" in (self.features[k].get("properties") or {}):
            changes["imageBBox"] = bbox
        self.replaced[k] = _with_properties(self.replaced.get(k, self.features[k]), changes)
        self.moved.add(k)

    def boxes(self, box_idx: IntArray, boxes: FloatArray, option: DistillationOption,
              truncated: ArrayLike | None) -> None:
        """The box features through the option's algorithm (after resolving edge-cut views if asked)."""
        parsed, features = self.parsed, self.features
        original = boxes
        labels = None if option.class_agnostic else parsed.label[box_idx]
        if option.edge_truncation != "NONE" and truncated is not None:
            cut = np.asarray(truncated, dtype=bool).reshape(-1)
            if cut.size != len(features):
                raise ValueError(f"{len(features)} features but {cut.size} truncated flags")
            stay, boxes = resolve_truncated(boxes, cut[box_idx], self.rank[box_idx], option.edge_truncation, labels)
            box_idx, boxes, original = box_idx[stay], boxes[stay], original[stay]
            labels = None if labels is None else labels[stay]
        scores = parsed.score[box_idx]
        sub_order = radix_argsort([self.rank[box_idx].astype(np.uint64)], self.rank_bits)
        kind, t, metric = option.algorithm_type, option.iou_threshold, option.match_metric
        if kind == "NMS":
            keep = nms_indices(boxes, scores, labels, t, metric, sub_order)
            final_boxes, final_scores = boxes[keep], parsed.score[box_idx[keep]]
        elif kind == "SOFT_NMS":
            keep, final_scores = soft_nms_indices(boxes, scores, labels, t, option.sigma, option.skip_box_threshold,
                                                  metric, sub_order)
            final_boxes = boxes[keep]
            for k, s in zip(box_idx[keep].tolist(), final_scores.tolist(), strict=True):
                self.replaced[k] = _rescored(features[k], parsed.best_class[k], s, float(parsed.score[k]))
        else:
            merge = nmm_indices if kind == "NMM" else greedy_nmm_indices
            keep, final_boxes = merge(boxes, scores, labels, t, metric, sub_order)
            final_scores = parsed.score[box_idx[keep]]
        kept = box_idx[keep]
        self.add(kept, final_scores)
        grown = np.flatnonzero(np.any(final_boxes != original[keep], axis=1))
        for k, box in zip(kept[grown].tolist(), final_boxes[grown].tolist(), strict=True):
            self.replace(k, {"imageGeometry": box_polygon(*box)}, list(box))

    def shapes(self, shape_idx: IntArray, option: DistillationOption) -> None:
        """Touching or overlapping shapes of one class joined into a copy of the best-scored piece."""
        components = _join_shapes(self.parsed, shape_idx, self.rank, option.class_agnostic)
        best = np.array([k for k, _ in components], dtype=np.int64)
        self.add(best, self.parsed.score[best])
        for k, joined in components:
            if joined is not None:
                self.replace(k, {"imageGeometry": _lists(mapping(joined))}, [float(v) for v in joined.bounds])

    def output(self, rescored: bool, relocate: Relocate | None) -> list[dict[str, Any]]:
        """The kept features (or their copies) by final score, ties by canonical rank; moved ones relocated."""
        chosen = np.concatenate(self.picked)
        if rescored:  # decayed scores can reorder features
            by = radix_argsort([float_key(np.concatenate(self.picked_score), descending=True),
                                self.rank[chosen].astype(np.uint64)])
        else:  # final score = original score, so the canonical rank is the output order
            by = radix_argsort([self.rank[chosen].astype(np.uint64)], self.rank_bits)
        out_idx = chosen[by]
        features = self.features
        if not self.replaced:
            return list(map(features.__getitem__, out_idx.tolist()))
        get = self.replaced.get
        result = [get(k) or features[k] for k in out_idx.tolist()]
        if self.moved and relocate is not None:
            position = np.empty(len(features), dtype=np.int64)
            position[out_idx] = np.arange(out_idx.size, dtype=np.int64)
            for p in sorted(position[list(self.moved)].tolist()):  # in output order
                result[p] = relocate(result[p])
        return result



def _rescored(feature: dict[str, Any], best: int, score: float, raw: float) -> dict[str, Any]:
    """Copy with the decayed score (and the original as ``rawScore``) in the top featureClasses entry.

    Soft-NMS rewrites nearly every kept feature, so plain dicts are copied with literals inline.
    """
    props = feature.get("properties")
    classes = props.get("featureClasses") if isinstance(props, dict) else None
    if best < 0 or not isinstance(classes, list):
        return feature
    top = classes[best]
    entry = {**top, "score": score, "rawScore": raw} if type(top) is dict else dict(top, score=score, rawScore=raw)
    if len(classes) == 1:
        classes = [entry]
    else:
        classes = classes[:]
        classes[best] = entry
    if type(props) is dict and type(feature) is dict:
        return {**feature, "properties": {**props, "featureClasses": classes}}
    return _with_properties(feature, {"featureClasses": classes})
