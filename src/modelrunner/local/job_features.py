"""Synthetic merged job features, shaped as the runner writes them, for output tests and benchmarks.

Each feature is what a ``flood`` model box becomes after geolocation on a north-up GeoTIFF (section 7 of
the interface notes): a 3-D WGS84 ``geometry`` polygon rounded to 6 decimals, the feature's ``bbox``,
``imageGeometry`` / ``imageBBox`` in full-image pixels, ``featureClasses``, the centre, ``modelMetadata`` and
``inferenceMetadata``. Features come region by region (row-major), as
:class:`~modelrunner.features.featureset.JobFeatures` streams them, as compact JSON texts. Deterministic for a
seed, so a benchmark writes the same bytes every run.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson

#: A pixel's size in degrees, and the image's top-left corner (lon, lat): roughly 0.5 m pixels.
PIXEL_DEGREES = 5e-6
ORIGIN = (5.0, 50.2)
CLASSES = ("sample_object", "building", "vehicle", "vessel")


def job_feature_texts(count: int, *, seed: int = 0, image_size: int = 33_000, region_size: int = 8192,
                      tile_stride: int = 462, job_id: str = "bench-job") -> Iterator[str]:
    """``count`` features spread over a square image of ``image_size`` pixels, region by region, and within
    a region tile by tile (``tile_stride``: tile size minus overlap, 512 - 50 by default)."""
    rng = np.random.default_rng(seed)
    per_side = -(-image_size // region_size)
    regions = per_side * per_side
    made = 0
    for region in range(regions):
        n = count // regions + (1 if region < count % regions else 0)
        row0, col0 = (region // per_side) * region_size, (region % per_side) * region_size
        size = min(region_size, image_size - row0), min(region_size, image_size - col0)
        w = rng.uniform(10, 100, n)
        h = rng.uniform(10, 100, n)
        x0 = col0 + rng.uniform(0, 1, n) * np.maximum(size[1] - w, 1)
        y0 = row0 + rng.uniform(0, 1, n) * np.maximum(size[0] - h, 1)
        scores = 1.0 - rng.uniform(0, 1, n)
        labels = rng.integers(0, len(CLASSES), n)
        # A region's result lists its tiles' features tile by tile, row-major (the seam merge keeps that order).
        order = np.lexsort((x0 // tile_stride, y0 // tile_stride))
        for i in order.tolist():
            yield orjson.dumps(_feature(made, float(x0[i]), float(y0[i]), float(x0[i] + w[i]), float(y0[i] + h[i]),
                                        float(scores[i]), CLASSES[int(labels[i])], job_id)).decode()
            made += 1


def _lonlat(x: float, y: float) -> tuple[float, float]:
    return round(ORIGIN[0] + x * PIXEL_DEGREES, 6), round(ORIGIN[1] - y * PIXEL_DEGREES, 6)


def _feature(index: int, x0: float, y0: float, x1: float, y1: float, score: float, label: str,
             job_id: str) -> dict[str, object]:
    ring = [[x1, y0], [x1, y1], [x0, y1], [x0, y0], [x1, y0]]
    world = [[*_lonlat(x, y), 0.0] for x, y in ring]
    lons = [p[0] for p in world]
    lats = [p[1] for p in world]
    return {
        "type": "Feature",
        "id": f"{index:08x}-flood",
        "geometry": {"type": "Polygon", "coordinates": [world]},
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": {
            "imageGeometry": {"type": "Polygon", "coordinates": [ring]},
            "imageBBox": [x0, y0, x1, y1],
            "featureClasses": [{"iri": label, "score": score}],
            "modelMetadata": {"modelName": "flood", "ontologyName": "flood", "ontologyVersion": "1.0.0"},
            "center_longitude": (min(lons) + max(lons)) / 2,
            "center_latitude": (min(lats) + max(lats)) / 2,
            "inferenceMetadata": {"jobId": job_id, "inferenceDT": "2026-12-06T09:00:00Z"},
        },
    }
