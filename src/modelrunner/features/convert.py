"""Model output -> output features: tile pixels -> full-image pixels -> world coordinates.

Accepts what models send (the reference's contract, section 6 of the interface notes): ``imageGeometry``,
``imageBBox`` and the deprecated ``geom_imcoords`` / ``detection`` / ``bounds_imcoords`` forms, with
classes as ``featureClasses`` or ``feature_types``. A feature we cannot place is an error for its tile,
never a silent drop.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, cast

import numpy as np
import shapely.errors
import shapely.geometry

from ..errors import FeatureError
from .nms import POINT_PAD

Feature = dict[str, Any]
ToWorld = Callable[[np.ndarray], np.ndarray]
Relocate = Callable[[Feature], Feature]
"""Gives a feature whose pixel geometry a merge changed its world geometry again (see :func:`relocator`)."""

# Model properties the output never carries (the reference removes them).
_DROPPED = frozenset({"inferenceTime", "bounds_imcoords", "geom_imcoords", "detection_score", "feature_types",
                      "image_id", "adjusted_feature_types"})
_GEOMETRY_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"}


def box_polygon(minx: float, miny: float, maxx: float, maxy: float) -> dict[str, Any]:
    """A box as a GeoJSON Polygon in the reference's vertex order."""
    return {"type": "Polygon", "coordinates": [[[maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny],
                                                [maxx, miny]]]}


def _shift(coords: Any, dx: float, dy: float) -> Any:
    if coords and isinstance(coords[0], int | float):
        return [float(coords[0]) + dx, float(coords[1]) + dy, *coords[2:]]
    return [_shift(c, dx, dy) for c in coords]


def _check_geometry(geometry: Any, where: str) -> None:
    kind = geometry.get("type") if isinstance(geometry, Mapping) else None
    if not isinstance(kind, str) or kind not in _GEOMETRY_TYPES:
        raise FeatureError(f"{where}: imageGeometry must be a GeoJSON geometry, got {geometry!r:.80}")
    try:
        _positions(geometry["coordinates"])
        _check_nesting(geometry["coordinates"], _NESTING[kind])
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        raise FeatureError(f"{where}: imageGeometry has malformed coordinates") from None


# How many arrays deep a geometry's positions sit (a Polygon: rings of positions).
_NESTING = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2, "MultiPolygon": 3}


def _check_nesting(coords: Any, depth: int) -> None:
    """Raise ValueError unless every position (2+ numbers) sits exactly ``depth`` non-empty arrays deep."""
    if not isinstance(coords, list | tuple) or not coords:
        raise ValueError("not a non-empty array")
    if depth == 0:
        if len(coords) < 2 or not all(isinstance(v, int | float) for v in coords):
            raise ValueError("not a position")
        return
    for c in coords:
        _check_nesting(c, depth - 1)


def _positions(coords: Any) -> list[tuple[float, float]]:
    if not isinstance(coords, list | tuple):  # a string would otherwise nest forever
        raise ValueError("not an array")
    if coords and isinstance(coords[0], int | float):
        x, y = float(coords[0]), float(coords[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError("not finite")
        return [(x, y)]
    out: list[tuple[float, float]] = []
    for c in coords:
        out.extend(_positions(c))
    if not out:
        raise ValueError("empty")
    return out


def to_image_features(collection: Any, col: int, row: int) -> list[Feature]:
    """Features of one tile's model answer, moved into full-image pixel coordinates.

    Raises FeatureError (the tile fails) for an answer that is not a FeatureCollection-like object or a
    feature without any image geometry. An object without ``features`` means no detections.
    """
    if not isinstance(collection, Mapping):
        raise FeatureError(f"model answer must be a GeoJSON object, got {type(collection).__name__}")
    raw = collection.get("features") or []
    if not isinstance(raw, list):
        raise FeatureError("model answer 'features' must be a list")
    out: list[Feature] = []
    for i, source in enumerate(raw):
        where = f"feature {i}"
        if not isinstance(source, Mapping):
            raise FeatureError(f"{where}: must be a GeoJSON Feature object")
        # Shallow copies: every value we change is replaced, never mutated, so the model's answer stays intact.
        feature = dict(source)
        feature.setdefault("type", "Feature")
        props = feature.get("properties")
        if props is None:
            props = {}
        if not isinstance(props, dict):
            raise FeatureError(f"{where}: properties must be an object")
        props = feature["properties"] = dict(props)
        placed = False
        if "imageGeometry" in props:
            _check_geometry(props["imageGeometry"], where)
            props["imageGeometry"] = dict(props["imageGeometry"],
                                          coordinates=_shift(props["imageGeometry"]["coordinates"], col, row))
            placed = True
        if "imageBBox" in props:
            bbox = props["imageBBox"]
            if not isinstance(bbox, list | tuple) or len(bbox) != 4:
                raise FeatureError(f"{where}: imageBBox must be [minx, miny, maxx, maxy]")
            try:
                x0, y0, x1, y1 = (float(v) for v in bbox)
            except (TypeError, ValueError, OverflowError):
                raise FeatureError(f"{where}: imageBBox must be four numbers, got {bbox!r:.80}") from None
            props["imageBBox"] = [x0 + col, y0 + row, x1 + col, y1 + row]
            placed = True
        if not placed:
            geometry = _deprecated_geometry(props, where)
            if geometry is None:
                raise FeatureError(f"{where}: has no image geometry (imageGeometry, imageBBox, "
                                   "geom_imcoords, detection or bounds_imcoords)")
            props["imageGeometry"] = dict(geometry, coordinates=_shift(geometry["coordinates"], col, row))
        _classes(props, where)
        out.append(feature)
    return out


def _deprecated_geometry(props: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    try:
        if props.get("geom_imcoords"):
            ring = [[float(x), float(y)] for x, y, *_ in props["geom_imcoords"]]
            if ring[0] != ring[-1]:
                ring.append(ring[0])
            return {"type": "Polygon", "coordinates": [ring]}
        detection = props.get("detection")
        if isinstance(detection, Mapping) and detection.get("pixelCoordinates") is not None:
            geometry = {"type": detection.get("type", "Polygon"), "coordinates": detection["pixelCoordinates"]}
            _check_geometry(geometry, where)
            return geometry
        if props.get("bounds_imcoords"):
            x0, y0, x1, y1 = (float(v) for v in props["bounds_imcoords"])
            return box_polygon(x0, y0, x1, y1)
    except (TypeError, ValueError, IndexError):
        raise FeatureError(f"{where}: malformed deprecated image geometry") from None
    return None


def _classes(props: dict[str, Any], where: str) -> None:
    if "featureClasses" not in props and isinstance(props.get("feature_types"), Mapping):
        props["featureClasses"] = [{"iri": k, "score": v} for k, v in props["feature_types"].items()]
    classes = props.get("featureClasses")
    if classes is None:
        return
    if not isinstance(classes, list) or not all(isinstance(c, Mapping) and "iri" in c for c in classes):
        raise FeatureError(f"{where}: featureClasses must be a list of {{iri, score}} objects")


def image_bounds(props: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a feature's pixel geometry (imageGeometry, else imageBBox)."""
    if "imageGeometry" in props:
        xs, ys = zip(*_positions(props["imageGeometry"]["coordinates"]), strict=True)
        return min(xs), min(ys), max(xs), max(ys)
    x0, y0, x1, y1 = (float(v) for v in props["imageBBox"])
    return x0, y0, x1, y1


def image_shape(props: Mapping[str, Any]) -> Any:
    """The feature's pixel geometry as a shapely object (imageGeometry, else the imageBBox box)."""
    if "imageGeometry" in props:
        try:
            return shapely.geometry.shape(props["imageGeometry"])
        except (shapely.errors.ShapelyError, ValueError, TypeError, IndexError) as err:
            # e.g. a LineString of one position, a ring of fewer than four, rings mixing 2-D and 3-D
            raise FeatureError(f"imageGeometry is not a valid {props['imageGeometry'].get('type')}: {err}") from None
    x0, y0, x1, y1 = props["imageBBox"]
    return shapely.geometry.box(x0, y0, x1, y1)


def _round(coords: Any) -> Any:
    if coords and isinstance(coords[0], int | float):
        return [round(float(v), 6) for v in coords]
    return [_round(c) for c in coords]


def _replace_positions(coords: Any, table: dict[tuple[float, float], list[float]]) -> Any:
    if coords and isinstance(coords[0], int | float):
        return list(table[(float(coords[0]), float(coords[1]))])
    return [_replace_positions(c, table) for c in coords]


def geolocate(features: Sequence[Feature], to_world: ToWorld | None) -> None:
    """Fill ``geometry``, ``bbox`` and the centre lon/lat of each feature in place (one transform call).

    Without a sensor model (``to_world`` None) features keep their image coordinates only, as the
    reference does. Image geometries are rounded to 6 decimals like every GeoJSON geometry we write.
    """
    boxes = [f for f in features if _is_ring5(f["properties"])]
    if boxes:
        _geolocate_rings(boxes, to_world)
        if len(boxes) == len(features):
            return
        done = {id(f) for f in boxes}
        features = [f for f in features if id(f) not in done]
    for feature in features:
        props = feature["properties"]
        if "imageGeometry" in props:
            geometry = props["imageGeometry"]
            props["imageGeometry"] = dict(geometry, coordinates=_round(geometry["coordinates"]))
    if to_world is None or not features:
        return
    # One transform call per tile; each distinct pixel position is transformed once (a box polygon repeats
    # its first vertex, and its imageBBox corners are its vertices again).
    index: dict[tuple[float, float], int] = {}
    spans: list[tuple[list[tuple[float, float]], list[tuple[float, float]], tuple[float, float]]] = []
    for feature in features:
        props = feature["properties"]
        vertices = _positions(props["imageGeometry"]["coordinates"]) if "imageGeometry" in props else []
        corners: list[tuple[float, float]] = []
        if "imageBBox" in props:
            x0, y0, x1, y1 = props["imageBBox"]
            corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        centre = _centroid(props)
        for point in (*vertices, *corners, centre):
            index.setdefault(point, len(index))
        spans.append((vertices, corners, centre))
    world = to_world(np.asarray(list(index), dtype=np.float64))
    rounded = [[round(v, 6) for v in point] for point in world.tolist()]  # as GeoJSON writers round
    for feature, (vertices, corners, centre) in zip(features, spans, strict=True):
        props = feature["properties"]
        if vertices:
            table = {p: rounded[index[p]] for p in vertices}
            feature["geometry"] = {"type": props["imageGeometry"]["type"],
                                   "coordinates": _replace_positions(props["imageGeometry"]["coordinates"], table)}
        if corners:
            at = [index[c] for c in corners]
            lon, lat = world[at, 0], world[at, 1]
            feature["bbox"] = [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]
        lon_c, lat_c = world[index[centre], :2]
        props["center_longitude"] = float(lon_c)
        props["center_latitude"] = float(lat_c)


def _is_ring5(props: Mapping[str, Any]) -> bool:
    """A polygon of one 5-position 2-D ring (what box detectors send), with a 4-number imageBBox if any."""
    geometry = props.get("imageGeometry")
    if not geometry or geometry.get("type") != "Polygon":
        return False
    rings = geometry["coordinates"]
    if len(rings) != 1 or len(rings[0]) != 5 or any(len(p) != 2 for p in rings[0]):
        return False
    bbox = props.get("imageBBox")
    return bbox is None or len(bbox) == 4


def _geolocate_rings(features: Sequence[Feature], to_world: ToWorld | None) -> None:
    """:func:`geolocate` for single-ring 5-position polygons, vectorised over the features (the hot path:
    box detectors return hundreds per tile). Same results as the general path: vertices rounded to 6
    decimals first, area centroid, bbox from the imageBBox corners."""
    rings = np.array([f["properties"]["imageGeometry"]["coordinates"][0] for f in features], dtype=np.float64)
    has_bbox = [("imageBBox" in f["properties"]) for f in features]
    bboxes = np.array([f["properties"].get("imageBBox") or (0, 0, 0, 0) for f in features], dtype=np.float64)
    _place_rings(features, rings, bboxes, has_bbox, to_world)


def _place_rings(features: Sequence[Feature], rings: np.ndarray, bboxes: np.ndarray, has_bbox: Sequence[bool],
                 to_world: ToWorld | None) -> np.ndarray:
    """Round the (n, 5, 2) full-image rings into each feature's ``imageGeometry`` and, with a sensor model,
    fill ``geometry``, ``bbox`` (from the (n, 4) ``bboxes`` where ``has_bbox``) and the centre lon/lat.
    Returns the rounded rings (what the features now hold)."""
    rings = np.round(rings, 6)
    pixel_rings = rings.tolist()
    if to_world is None:
        for feature, ring in zip(features, pixel_rings, strict=True):
            props = feature["properties"]
            props["imageGeometry"] = dict(props["imageGeometry"], coordinates=[ring])
        return rings
    n = len(features)
    x, y = rings[:, :, 0], rings[:, :, 1]
    cross = x[:, :-1] * y[:, 1:] - x[:, 1:] * y[:, :-1]
    area = cross.sum(axis=1) / 2
    flat = area == 0
    safe = np.where(flat, 1.0, 6 * area)
    cx = np.where(flat, (x.min(axis=1) + x.max(axis=1)) / 2, ((x[:, :-1] + x[:, 1:]) * cross).sum(axis=1) / safe)
    cy = np.where(flat, (y.min(axis=1) + y.max(axis=1)) / 2, ((y[:, :-1] + y[:, 1:]) * cross).sum(axis=1) / safe)
    corners = bboxes[:, _CORNERS].reshape(n, 4, 2)
    # Each feature's ten positions go to GDAL as they are: sending each distinct position once (a box's ring
    # closes on its first vertex, its imageBBox corners are its vertices) saved a third of the transform
    # call and cost as much again in the numpy work of finding them.
    world = to_world(np.concatenate([rings.reshape(-1, 2), corners.reshape(-1, 2), np.stack([cx, cy], axis=1)]))
    world_rings = np.round(world[:5 * n], 6).reshape(n, 5, 3).tolist()
    world_corners = world[5 * n:9 * n].reshape(n, 4, 3)
    lon_min, lat_min = world_corners[:, :, 0].min(axis=1).tolist(), world_corners[:, :, 1].min(axis=1).tolist()
    lon_max, lat_max = world_corners[:, :, 0].max(axis=1).tolist(), world_corners[:, :, 1].max(axis=1).tolist()
    centres = world[9 * n:, :2].tolist()
    for i, feature in enumerate(features):  # one pass: pixel and world geometry
        props = feature["properties"]
        props["imageGeometry"] = dict(props["imageGeometry"], coordinates=[pixel_rings[i]])
        feature["geometry"] = {"type": "Polygon", "coordinates": [world_rings[i]]}
        if has_bbox[i]:
            feature["bbox"] = [lon_min[i], lat_min[i], lon_max[i], lat_max[i]]
        props["center_longitude"], props["center_latitude"] = centres[i]
    return rings


_CORNERS = [0, 1, 2, 1, 2, 3, 0, 3]  # imageBBox -> its corners (x0, y0), (x1, y0), (x1, y1), (x0, y1)


@dataclass(frozen=True)
class BoxColumns:
    """What the box merges read from a tile's features (pixel boxes, scores, labels; all of them boxes),
    taken from the arrays the features were placed from: the same values
    :func:`~.distill.box_columns` would parse out of the placed features again, without that second pass."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]


def place_features(collection: Any, col: int, row: int, to_world: ToWorld | None) -> list[Feature]:
    """:func:`to_image_features` then :func:`geolocate`, with the same results (see :func:`place_tile`)."""
    return place_tile(collection, col, row, to_world)[0]


def place_tile(collection: Any, col: int, row: int,
               to_world: ToWorld | None) -> tuple[list[Feature], BoxColumns | None]:
    """A tile's features placed in the image and geolocated (:func:`to_image_features` then :func:`geolocate`,
    with the same results), and their :class:`BoxColumns` when every feature is a plain box.

    What box detectors send (a 5-position 2-D ring in ``imageGeometry``, an optional 4-number ``imageBBox``)
    is moved, checked and geolocated as arrays; any other answer takes the general path (and gets no
    columns). The checks run as C-level passes over all features at once (``map`` over types, one array
    per kind of value): this is per-feature work on every tile, while the model is being waited on for others.
    """
    if not isinstance(collection, Mapping) or not isinstance(collection.get("features") or [], list):
        return _place_slowly(collection, col, row, to_world), None
    raw = collection.get("features") or []
    if not raw:
        return [], None
    try:
        if not _only(raw, dict):
            return _place_slowly(collection, col, row, to_world), None
        all_props = [source["properties"] for source in raw]
        if not _only(all_props, dict):
            return _place_slowly(collection, col, row, to_world), None
        geometries = [props["imageGeometry"] for props in all_props]
        if not _only(geometries, dict) or {g["type"] for g in geometries} != {"Polygon"}:
            return _place_slowly(collection, col, row, to_world), None
        bboxes = [props.get("imageBBox", _NO_BBOX) for props in all_props]
        ring_array = _number_array([geometry["coordinates"] for geometry in geometries], (1, 5, 2))
        bbox_array = _number_array(bboxes, (4,))
    except (KeyError, TypeError, ValueError, OverflowError):  # a key missing, ints > 1e308
        return _place_slowly(collection, col, row, to_world), None
    if (ring_array is None or bbox_array is None or not np.isfinite(ring_array).all()
            or not _plain_classes(all_props)):
        return _place_slowly(collection, col, row, to_world), None
    ring_array = ring_array[:, 0] + (col, row)
    bbox_array += (col, row, col, row)
    shifted_bboxes = bbox_array.tolist()
    has_bbox = [bbox is not _NO_BBOX for bbox in bboxes]
    out: list[Feature] = []
    for source, props, placed, shifted in zip(raw, all_props, has_bbox, shifted_bboxes, strict=True):
        feature = dict(source)
        feature.setdefault("type", "Feature")
        props = feature["properties"] = dict(props)
        if placed:
            props["imageBBox"] = shifted
        out.append(feature)
    rings = _place_rings(out, ring_array, bbox_array, has_bbox, to_world)
    return out, _box_columns(rings, all_props)


def _box_columns(rings: np.ndarray, all_props: list[dict[str, Any]]) -> BoxColumns | None:
    """:class:`BoxColumns` of placed features from their rounded (n, 5, 2) rings, or None unless every
    feature is what :func:`~.distill.box_columns` reads as a plain box: an axis-aligned rectangle (closed,
    either winding, from any corner) with one ``featureClasses`` entry of a float score and a string iri."""
    classes = [props["featureClasses"] for props in all_props]
    if set(map(len, classes)) != {1}:
        return None
    entries = [entry[0] for entry in classes]
    scores, iris = [entry.get("score") for entry in entries], [entry["iri"] for entry in entries]
    if not _only(scores, float) or not _only(iris, str):
        return None
    x, y = rings[:, :, 0].T, rings[:, :, 1].T  # x[k], y[k]: vertex k of every ring
    closed = (x[4] == x[0]) & (y[4] == y[0])
    one_way = (x[1] == x[0]) & (y[1] == y[2]) & (x[3] == x[2]) & (y[3] == y[0])
    other_way = (y[1] == y[0]) & (x[1] == x[2]) & (y[3] == y[2]) & (x[3] == x[0])
    score_array = np.array(scores, dtype=np.float64)
    if not (closed & (one_way | other_way)).all() or np.isnan(score_array).any():
        return None
    corners = rings[:, [0, 2]]
    low, high = corners.min(axis=1), corners.max(axis=1)
    high = np.where(high == low, low + POINT_PAD, high)
    return BoxColumns(np.concatenate([low, high], axis=1), score_array, iris)


_NO_BBOX = (0.0, 0.0, 0.0, 0.0)  # stands in for a missing imageBBox (never one a model sent: a fresh tuple)


def _only(values: Iterable[Any], *types: type) -> bool:
    """Every value is exactly of one of ``types`` (one C-level pass)."""
    return set(map(type, values)) <= set(types)


def _number_array(values: list[Any], shape: tuple[int, ...]) -> np.ndarray | None:
    """``values`` as a float array of shape ``(len(values), *shape)`` when they nest lists (or tuples) of
    exactly those lengths down to ints and floats only; else None (booleans, strings and nulls, which numpy
    would turn into numbers or NaN, and ragged or deeper nesting send a tile to the general path).

    One level at a time over all features (a type pass, a length pass, a flatten), then one array from the
    flat numbers: about half of what checking the nesting and then letting numpy discover it again costs."""
    for size in shape:
        if not _only(values, list, tuple) or not set(map(len, values)) <= {size}:
            return None
        values = list(chain.from_iterable(values))
    if not _only(values, int, float):
        return None
    return np.array(values, dtype=np.float64).reshape(-1, *shape)


def _plain_classes(all_props: list[dict[str, Any]]) -> bool:
    """Every feature has ``featureClasses`` as a list of dicts with an ``iri`` (what :func:`_classes`
    accepts as is); anything else (absent, ``feature_types``, malformed) goes the general way."""
    classes = [props.get("featureClasses") for props in all_props]
    if not _only(classes, list):
        return False
    entries = list(chain.from_iterable(cast(list[list[Any]], classes)))
    return _only(entries, dict) and all(map(operator.contains, entries, repeat("iri")))


def _place_slowly(collection: Any, col: int, row: int, to_world: ToWorld | None) -> list[Feature]:
    features = to_image_features(collection, col, row)
    geolocate(features, to_world)
    return features


def _centroid(props: Mapping[str, Any]) -> tuple[float, float]:
    """Centre of the pixel geometry: the centroid (shoelace for a simple polygon, shapely otherwise), or the
    middle of the bounds where the centroid is undefined (zero area and length)."""
    geometry = props.get("imageGeometry")
    if geometry is None:
        x0, y0, x1, y1 = (float(v) for v in props["imageBBox"])
        return (x0 + x1) / 2, (y0 + y1) / 2
    kind, coords = geometry["type"], geometry["coordinates"]
    if kind == "Point":
        return float(coords[0]), float(coords[1])
    if kind == "Polygon" and len(coords) == 1:
        ring = np.asarray([p[:2] for p in coords[0]], dtype=np.float64)
        x, y = ring[:, 0], ring[:, 1]
        cross = x[:-1] * y[1:] - x[1:] * y[:-1]
        area = cross.sum() / 2
        if area != 0:
            return (float(((x[:-1] + x[1:]) * cross).sum() / (6 * area)),
                    float(((y[:-1] + y[1:]) * cross).sum() / (6 * area)))
    else:
        centre = image_shape(props).centroid
        if not centre.is_empty:
            return centre.x, centre.y
    x0, y0, x1, y1 = image_bounds(props)
    return (x0 + x1) / 2, (y0 + y1) / 2


def finish(features: Iterable[Feature], *, job_id: str, inference_dt: str,
           feature_properties: Sequence[Mapping[str, Any]] = (),
           source_metadata: list[dict[str, Any]] | None = None) -> list[Feature]:
    """Add the runner's properties and drop the model's deprecated ones (order as the reference)."""
    out = []
    for feature in features:
        props = feature["properties"]
        props["inferenceMetadata"] = {"jobId": job_id, "inferenceDT": inference_dt}
        for extra in feature_properties:
            props.update(copy.deepcopy(dict(extra)))
        if source_metadata:
            props["sourceMetadata"] = copy.deepcopy(source_metadata)
        for key in _DROPPED.intersection(props):  # a C-level pass: most features carry none of them
            if props[key]:
                del props[key]
        out.append(feature)
    return out


def relocator(to_world: ToWorld | None) -> Relocate:
    """A ``relocate`` for the merges: fresh world geometry for a feature whose pixels changed."""

    def relocate(feature: Feature) -> Feature:
        geolocate([feature], to_world)
        return feature

    return relocate
