"""Pure model functions over one encoded image tile, for the bundled model container.

Each model takes the tile exactly as the runner sends it to an endpoint (GTiff, NITF, PNG or JPEG bytes)
and returns a GeoJSON ``FeatureCollection`` dict in the shape the OversightML sample models produce:
every feature has ``geometry: null`` and carries its pixel geometry, in TILE coordinates, in
``properties.imageGeometry`` (a Polygon) and ``properties.imageBBox`` ``[minx, miny, maxx, maxy]``, with
``properties.featureClasses`` ``[{"iri": ..., "score": ...}]``. The runner is what turns tile coordinates
into image and world coordinates, so a model must never do it.

Everything here is deterministic in the tile bytes (ids included), so a test can compare two runs, a
retried tile gives the same answer, and a benchmark measures the runner rather than the model's noise.

* ``centerpoint``: one box at the tile centre, 20% of the tile's width and height, like the OversightML
  demo model; it only needs the tile's size, so it is the cheapest model (throughput benchmarks).
* ``flood``: ``count`` pseudo-random boxes per tile, seeded from ``(seed, crc32(tile bytes))`` (load tests
  of feature handling and merging).
* ``objects``: a real (if simple) detector for the bright rectangles of :mod:`modelrunner.local.scene`:
  threshold the band mean above a robust background estimate, then one detection per connected blob
  (accuracy tests: recall against the scene's ground truth, duplicate merging across tile overlaps).
"""

from __future__ import annotations

import hashlib
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from osgeo import gdal
from scipy import ndimage

# Exceptions rather than None returns and printed errors: a bad tile must surface as one catchable error
# (the model server turns it into a 400). This is process-wide and the default from GDAL 4 on.
gdal.UseExceptions()

FeatureCollection = dict[str, Any]
Feature = dict[str, Any]
BBox = tuple[float, float, float, float]
TileBytes = bytes | bytearray | memoryview
ModelFunction = Callable[..., FeatureCollection]

#: Version reported in ``properties.modelMetadata`` of every feature.
MODEL_VERSION = "1.0.0"


class TileDecodeError(ValueError):
    """The tile bytes are not an image GDAL can read (empty, truncated, unknown format)."""


@contextmanager
def open_tile(tile_bytes: TileBytes) -> Iterator[gdal.Dataset]:
    """Open encoded tile bytes as a read-only GDAL dataset through a private ``/vsimem`` file.

    The in-memory file has a unique name per call (the server decodes tiles from many threads at once) and
    is always unlinked, even when opening fails, so a long-running server does not leak memory. GDAL
    recognises GTiff, NITF, PNG and JPEG by their content, so the name needs no extension.
    """
    data = tile_bytes if isinstance(tile_bytes, bytes) else bytes(tile_bytes)
    if not data:
        raise TileDecodeError("empty tile: no image bytes")
    name = f"/vsimem/modelrunner-tile-{uuid.uuid4().hex}"
    gdal.FileFromMemBuffer(name, data)
    dataset: gdal.Dataset | None = None
    try:
        try:
            dataset = gdal.OpenEx(name, gdal.OF_RASTER | gdal.OF_READONLY)
        except RuntimeError as err:
            raise TileDecodeError(f"not a readable image: {err}") from err
        if dataset is None or dataset.RasterCount < 1 or dataset.RasterXSize < 1 or dataset.RasterYSize < 1:
            raise TileDecodeError("not a readable image: no raster bands")
        yield dataset
    finally:
        dataset = None  # close before unlinking: GDAL may still read the file while the dataset lives
        gdal.Unlink(name)


def tile_size(tile_bytes: TileBytes) -> tuple[int, int]:
    """Return ``(width, height)`` of an encoded tile; reads the header only, not the pixels."""
    with open_tile(tile_bytes) as dataset:
        return dataset.RasterXSize, dataset.RasterYSize


def decode_tile(tile_bytes: TileBytes) -> np.ndarray:
    """Decode all pixels of an encoded tile into an array shaped ``(bands, height, width)``.

    The array keeps the tile's own data type (uint8, uint16, float32, ...); one-band tiles also get the
    leading band axis so callers need no special case.
    """
    with open_tile(tile_bytes) as dataset:
        try:
            pixels = dataset.ReadAsArray()
        except RuntimeError as err:
            raise TileDecodeError(f"cannot decode the tile's pixels: {err}") from err
    if pixels is None:
        raise TileDecodeError("cannot decode the tile's pixels")
    return np.asarray(pixels[np.newaxis] if pixels.ndim == 2 else pixels)


def tile_digest(tile_bytes: TileBytes) -> str:
    """A short stable hex digest of the tile bytes, the root of the feature ids of that tile."""
    return hashlib.sha1(tile_bytes, usedforsecurity=False).hexdigest()[:16]


def make_feature(bbox: BBox, *, score: float, iri: str, feature_id: str, model_name: str) -> Feature:
    """Build one detection feature in the OversightML model output shape.

    ``imageGeometry`` is the box as a closed Polygon with the vertex order of the OversightML sample models:
    (maxx, miny), (maxx, maxy), (minx, maxy), (minx, miny), (maxx, miny).
    """
    minx, miny, maxx, maxy = (float(v) for v in bbox)
    ring = [[maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny], [maxx, miny]]
    return {
        "type": "Feature",
        "id": feature_id,
        "geometry": None,
        "properties": {
            "imageGeometry": {"type": "Polygon", "coordinates": [ring]},
            "imageBBox": [minx, miny, maxx, maxy],
            "featureClasses": [{"iri": iri, "score": float(score)}],
            "modelMetadata": {
                "modelName": model_name,
                "ontologyName": model_name,
                "ontologyVersion": MODEL_VERSION,
            },
        },
    }


def feature_collection(features: list[Feature]) -> FeatureCollection:
    """Wrap features in a GeoJSON FeatureCollection dict."""
    return {"type": "FeatureCollection", "features": features}


def centerpoint(tile_bytes: TileBytes, *, size_fraction: float = 0.2) -> FeatureCollection:
    """One ``sample_object`` detection centred on the tile, ``size_fraction`` of its width and height.

    Same geometry as the OversightML ``centerpoint`` demo model (its BBOX_PERCENTAGE 0.1 is a half size),
    so outputs of this runner and of the original can be compared feature for feature.
    """
    if not 0.0 < size_fraction <= 1.0:
        raise ValueError(f"size_fraction must be in (0, 1], got {size_fraction}")
    width, height = tile_size(tile_bytes)
    half_w, half_h = width * size_fraction / 2.0, height * size_fraction / 2.0
    cx, cy = width / 2.0, height / 2.0
    bbox = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    feature_id = f"{tile_digest(tile_bytes)}-0"
    return feature_collection(
        [make_feature(bbox, score=1.0, iri="sample_object", feature_id=feature_id, model_name="centerpoint")]
    )


def flood(
    tile_bytes: TileBytes,
    *,
    count: int = 10,
    seed: int = 0,
    min_size_fraction: float = 0.02,
    max_size_fraction: float = 0.2,
) -> FeatureCollection:
    """``count`` pseudo-random ``sample_object`` boxes inside the tile, each with a score in (0, 1].

    The generator is seeded from ``(seed, crc32(tile bytes))``: the same tile always yields the same boxes
    (a retried tile is not a new answer), while different tiles, or another ``seed``, yield different ones.
    Box sides are drawn between ``min_size_fraction`` and ``max_size_fraction`` of the tile's sides.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0.0 < min_size_fraction <= max_size_fraction <= 1.0:
        raise ValueError("need 0 < min_size_fraction <= max_size_fraction <= 1")
    width, height = tile_size(tile_bytes)
    rng = np.random.default_rng([seed, zlib.crc32(tile_bytes)])
    box_w = np.maximum(rng.uniform(min_size_fraction, max_size_fraction, count) * width, 1.0)
    box_h = np.maximum(rng.uniform(min_size_fraction, max_size_fraction, count) * height, 1.0)
    box_w, box_h = np.minimum(box_w, width), np.minimum(box_h, height)
    x0 = rng.uniform(0.0, 1.0, count) * (width - box_w)
    y0 = rng.uniform(0.0, 1.0, count) * (height - box_h)
    scores = 1.0 - rng.uniform(0.0, 1.0, count)  # uniform on (0, 1]: a zero score would be no detection
    digest = tile_digest(tile_bytes)
    features = [
        make_feature(
            (
                round(float(x0[i]), 3),
                round(float(y0[i]), 3),
                round(float(x0[i] + box_w[i]), 3),
                round(float(y0[i] + box_h[i]), 3),
            ),
            score=round(float(scores[i]), 6) or 1e-6,
            iri="sample_object",
            feature_id=f"{digest}-{i}",
            model_name="flood",
        )
        for i in range(count)
    ]
    return feature_collection(features)


def _background(luminance: np.ndarray) -> tuple[float, float]:
    """Robust background level and noise of a tile: median and 1.4826 * MAD of the band mean.

    A strided sample of ~16k pixels is enough for both and keeps this cheap on big tiles; median
    statistics ignore the few bright objects, which a mean and standard deviation would not.
    """
    step = max(1, int(np.sqrt(luminance.size / 16384.0)))
    sample = luminance[::step, ::step]
    level = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - level)))
    return level, noise


def objects(tile_bytes: TileBytes, *, k_sigma: float = 6.0, min_area: int = 4) -> FeatureCollection:
    """Detect the bright objects of a synthetic scene: one ``bright_object`` per connected bright blob.

    Pixels whose band mean exceeds ``background + k_sigma * noise`` (robust estimates, see
    :func:`_background`) are grouped into 4-connected blobs; each blob of at least ``min_area`` pixels is
    a detection whose box is the blob's pixel bounds (``maxx``/``maxy`` exclusive, i.e. pixel edges). The
    score is the blob's Michelson contrast against the background, ``(mean - bg) / (mean + bg)``, which
    does not depend on the data type's scale (uint8, uint16 or float tiles give the same scores). Blobs cut
    by the tile edge are still reported, with the visible part's box: the runner merges such duplicates
    across overlapping tiles. The background estimate assumes objects cover well under half the tile.
    """
    if k_sigma <= 0:
        raise ValueError(f"k_sigma must be > 0, got {k_sigma}")
    pixels = decode_tile(tile_bytes)
    luminance = pixels.sum(axis=0, dtype=np.float32)
    if pixels.shape[0] > 1:
        luminance /= np.float32(pixels.shape[0])
    finite = np.isfinite(luminance)
    if not finite.all():  # float tiles with NaN / inf nodata: treat it as background
        if not finite.any():
            return feature_collection([])
        luminance = np.where(finite, luminance, np.float32(np.median(luminance[finite])))
    level, noise = _background(luminance)
    # A perfectly flat background has zero MAD; a tiny floor keeps "strictly brighter" meaningful.
    threshold = level + k_sigma * max(noise, 1e-6 * max(abs(level), 1.0))
    mask = luminance > threshold
    if not mask.any():
        return feature_collection([])
    labels, count = ndimage.label(mask)
    blob_ids = labels[mask]  # only the bright pixels: a few percent of the tile
    areas = np.bincount(blob_ids, minlength=count + 1)
    sums = np.bincount(blob_ids, weights=luminance[mask], minlength=count + 1)
    digest = tile_digest(tile_bytes)
    features: list[Feature] = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None or areas[index] < min_area:
            continue
        rows, cols = found
        mean = sums[index] / areas[index]
        contrast = (mean - level) / max(abs(mean) + abs(level), 1e-12)
        score = float(min(1.0, max(1e-3, round(contrast, 6))))
        features.append(
            make_feature(
                (float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)),
                score=score,
                iri="bright_object",
                feature_id=f"{digest}-{len(features)}",
                model_name="objects",
            )
        )
    return feature_collection(features)


#: The models by name: what ``--model`` and a runtime endpoint name select.
MODELS: dict[str, ModelFunction] = {"centerpoint": centerpoint, "flood": flood, "objects": objects}


def run_model(name: str, tile_bytes: TileBytes, **options: Any) -> FeatureCollection:
    """Run the model called ``name`` on one encoded tile, passing ``options`` as its keyword arguments.

    Raises ``KeyError`` for an unknown model, :class:`TileDecodeError` (a ``ValueError``) for bytes that
    are not a readable image, and ``TypeError`` for an option the model does not take (a typo should fail,
    not be ignored).
    """
    try:
        model = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return model(tile_bytes, **options)
