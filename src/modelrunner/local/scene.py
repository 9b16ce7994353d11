"""Deterministic synthetic georeferenced scenes: a dark noisy background with bright rectangles.

Tests, the demo and the benchmarks need big georeferenced images with known content and no downloads;
:func:`make_scene` writes one (GeoTIFF or NITF) and returns its ground truth, the objects' pixel boxes,
which the ``objects`` model of :mod:`modelrunner.local.models` detects. The same arguments always give
the same bytes: every 512 x 512 block draws its noise from its own generator seeded with
``(seed, block row, block column)``, so the image is generated and written block by block, in any size,
without ever holding it whole in memory: each block row is flushed to disk (GDAL's block cache would
otherwise keep the whole image); 13000 x 12500 x 3 uint8 takes about 1 s, 120 MB resident.

Georeferencing is north-up: ``geotransform = (x0, pixel_size, 0, y0, 0, -pixel_size)`` in ``epsg``
(EPSG:4326 by default: degrees, origin at the upper-left corner of the upper-left pixel; for a projected
EPSG such as 32618, metres around a UTM-like default origin).

RPC scenes (``rpc=True``, EPSG:4326 only) carry no geotransform, only an RPC model that is an exact linear
model of that same geotransform, so a NITF+RPC scene and a GeoTIFF scene of the same seed have the same
pixels and the same pixel -> world mapping through ``gdal.Transformer(ds, None, ["DST_SRS=EPSG:4326"])``
(agreement about 1e-12 degrees in practice; the tests require 1e-7). Facts this relies on (GDAL 3.6):

* GDAL's RPC convention puts the centre of the first pixel at (0, 0), so the model maps
  ``sample = (lon - x0) / pixel_size - 0.5``; a model with ``SAMP_OFF = width / 2`` would be half a pixel
  off. No ``RPC_PIXEL_ERROR_THRESHOLD`` or other transformer option is needed: the pixel -> world
  direction inverts the RPC iteratively, and for a linear model the first iteration is exact.
* NITF stores RPCs in the fixed-width RPC00B TRE: LINE_OFF / SAMP_OFF / ``*_SCALE`` in whole pixels,
  LAT/LONG offsets and scales with 4 decimals, coefficients with 7 significant digits; GDAL rounds the
  rest away (with a warning). So the model here is built in that precision: offsets near the scene centre
  rounded to representable values, scales near the half extent chosen so that the linear coefficients are
  exactly +1 / -1 whenever the pixel size allows it, and the half-pixel and rounding residues in the
  constant terms (``SAMP_NUM_COEFF[0]``, ``LINE_NUM_COEFF[0]``). The same numbers go into the GeoTIFF's
  RPC tag, so both files hold the identical model.
* In NITF Create() mode GDAL does not write RPC00B from the RPC metadata domain (only CreateCopy does),
  so the TRE is formatted here and passed as ``TRE=RPC00B=...``.
* A NITF with IGEOLO gets a geotransform derived from IGEOLO, and GDAL's default transformer then prefers
  that geotransform over the RPC. IGEOLO holds at best whole arc-seconds (~30 m), so NITF+RPC scenes are
  written without IGEOLO (ICORDS blank); the RPC is their only georeferencing, as the brief asks.
* NITF scenes without RPC get IGEOLO (ICORDS G for EPSG:4326, N/S for UTM), with the corner *pixel
  centres*, which is how GDAL reads IGEOLO back. For EPSG:4326 a GEOLOB TRE is added whenever
  360 / pixel_size is a whole number: GDAL then reads back the exact geotransform instead of the
  arc-second-rounded IGEOLO one. UTM NITFs are only as exact as IGEOLO's whole metres.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal, osr

from ..imagery.encode import igeolo_dms
from ..imagery.rpc import GROUND_DECIMALS, LINE_LIMIT, SAMP_LIMIT, format_rpc00b, rpc00b_number

# Exceptions rather than None returns: a failed write must not pass silently.
gdal.UseExceptions()

GeoTransform = tuple[float, float, float, float, float, float]
Box = tuple[float, float, float, float]

#: Default upper-left corner (lon, lat) of EPSG:4326 scenes, and the point UTM defaults are built around.
DEFAULT_LONLAT = (-77.05, 38.9)
#: Default pixel size: degrees for geographic CRSs (about 1.1 m x 0.9 m here), CRS units (metres) otherwise.
DEFAULT_DEGREES_PER_PIXEL = 1e-5
DEFAULT_METRES_PER_PIXEL = 1.0
#: Fixed NITF date-times (file and image): the same arguments must give the same bytes.
SCENE_DATETIME = "20240601120000"

#: Objects: one per grid cell at most, sides 20..60 px, at least 2 * _MARGIN px apart.
_CELL = 96
_MARGIN = 8
_MIN_SIDE, _MAX_SIDE = 20, 60
#: Default object density: one object per this many pixels of image area.
_PIXELS_PER_OBJECT = 256 * 256
#: Radiometry, in 8-bit levels: background base + uniform noise in [0, 31]; objects 140..220 + the same noise.
_NOISE_MASK = 31
_OBJECT_LEVELS = (140, 220)

_DTYPES: dict[str, int] = {"uint8": gdal.GDT_Byte, "uint16": gdal.GDT_UInt16, "float32": gdal.GDT_Float32}
_DTYPE_ALIASES = {"byte": "uint8", "float": "float32"}
_DRIVERS = {"gtiff": "GTiff", "nitf": "NITF"}


@dataclass(frozen=True)
class Scene:
    """A synthetic scene on disk and its ground truth.

    ``objects`` are the bright rectangles as ``(minx, miny, maxx, maxy)`` in full-image pixel coordinates,
    ``maxx`` / ``maxy`` exclusive (pixel edges), i.e. the object covers pixels ``minx <= x < maxx``.
    ``geotransform`` is the north-up pixel -> world mapping of the scene, also for RPC scenes, whose files
    hold the equivalent ``rpc`` model instead. ``levels`` are the objects' per-band brightness in 8-bit
    levels (scaled to the data type like the rest of the image), before noise.
    """

    path: str
    width: int
    height: int
    objects: list[Box]
    bands: int = 3
    dtype: str = "uint8"
    driver: str = "GTiff"
    epsg: int = 4326
    geotransform: GeoTransform = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    rpc: dict[str, str] | None = None
    seed: int = 0
    levels: list[tuple[int, ...]] = field(default_factory=list, repr=False)

    def pixel_to_world(self, x: float, y: float) -> tuple[float, float]:
        """World ``(x, y)`` (lon, lat for EPSG:4326) of a pixel-space point (corner of pixel 0 is (0, 0))."""
        gt = self.geotransform
        return gt[0] + x * gt[1] + y * gt[2], gt[3] + x * gt[4] + y * gt[5]


def _spatial_reference(epsg: int) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)  # (lon, lat) / (easting, northing)
    return srs


def _utm_zone(epsg: int) -> tuple[int, bool] | None:
    """``(zone, north)`` for WGS 84 / UTM EPSG codes (326zz north, 327zz south), else None."""
    if 32601 <= epsg <= 32660:
        return epsg - 32600, True
    if 32701 <= epsg <= 32760:
        return epsg - 32700, False
    return None


def scene_geotransform(
    epsg: int,
    width: int,
    height: int,
    origin: tuple[float, float] | None = None,
    pixel_size: float | None = None,
) -> GeoTransform:
    """The north-up geotransform of a scene: explicit ``origin`` (upper-left corner) or a sensible default.

    Geographic CRSs default to :data:`DEFAULT_LONLAT` and 1e-5 degree pixels. UTM zones default to 1 m
    pixels and a scene centred on the zone's central meridian at latitude 38.9 N (or 33.9 S), with the
    origin on whole metres. Other projected CRSs default to :data:`DEFAULT_LONLAT` projected and rounded.
    """
    srs = _spatial_reference(epsg)
    geographic = bool(srs.IsGeographic())
    size = (
        pixel_size
        if pixel_size is not None
        else (DEFAULT_DEGREES_PER_PIXEL if geographic else DEFAULT_METRES_PER_PIXEL)
    )
    if not size > 0:
        raise ValueError(f"pixel_size must be > 0, got {pixel_size}")
    if origin is None:
        if geographic:
            origin = DEFAULT_LONLAT
        else:
            wgs84 = _spatial_reference(4326)
            to_crs = osr.CoordinateTransformation(wgs84, srs)
            zone = _utm_zone(epsg)
            if zone is not None:
                central_meridian = -183.0 + 6.0 * zone[0]
                latitude = DEFAULT_LONLAT[1] if zone[1] else -33.9
                cx, cy, _ = to_crs.TransformPoint(central_meridian, latitude)
                origin = (round(cx - width * size / 2.0), round(cy + height * size / 2.0))
            else:
                px, py, _ = to_crs.TransformPoint(*DEFAULT_LONLAT)
                origin = (round(px), round(py))
    return (float(origin[0]), float(size), 0.0, float(origin[1]), 0.0, -float(size))


# ---------------------------------------------------------------------------------------------------------
# RPC: a linear model of a north-up geotransform, in RPC00B precision
# ---------------------------------------------------------------------------------------------------------


def _rpc_scale(step: float, size: int, limit: int) -> tuple[int, float]:
    """Pick ``(pixel_scale, world_scale)`` near the half extent with world_scale = pixel_scale * step exactly.

    RPC00B holds pixel scales as integers and world scales with 4 decimals; when some whole number of pixels
    spans a whole number of 1e-4 units, a multiple of it close to half the extent makes the linear
    coefficient exactly 1. Otherwise the closest representable pair is used (the coefficient absorbs it).
    """
    per_unit = 10**GROUND_DECIMALS  # world scale units per degree
    half = max(1, size // 2)
    for multiple in range(1, 10001):
        units = multiple * step * per_unit
        if abs(units - round(units)) < 1e-6 and round(units) >= 1:
            pixel_scale = min(max(1, round(half / multiple)) * multiple, (limit // multiple) * multiple)
            return pixel_scale, round(pixel_scale * step, GROUND_DECIMALS)
    pixel_scale = min(half, limit)
    return pixel_scale, max(round(pixel_scale * step, GROUND_DECIMALS), 1 / per_unit)


def linear_rpc(geotransform: GeoTransform, width: int, height: int) -> dict[str, str]:
    """An RPC (GDAL RPC metadata domain) that reproduces a north-up EPSG:4326 geotransform exactly.

    Terms (RPC00B order 1, L, P, H, ...): ``SAMP_NUM_COEFF = [c0, c1, 0...]`` and
    ``LINE_NUM_COEFF = [r0, 0, r2, 0...]`` with denominators 1, HEIGHT_OFF 0 and HEIGHT_SCALE 1 (the model
    ignores height). ``c1`` / ``r2`` are +1 / -1 whenever the pixel size allows (see :func:`_rpc_scale`);
    ``c0`` / ``r0`` hold the half-pixel convention shift and the rounding of the offsets to RPC00B fields.
    Every number is representable in RPC00B as is, so a NITF and a GeoTIFF get the identical model.
    """
    x0, dx, rx, y0, ry, neg_dy = geotransform
    if rx != 0 or ry != 0 or dx <= 0 or neg_dy >= 0:
        raise ValueError(f"need a north-up geotransform, got {geotransform}")
    dy = -neg_dy
    samp_off, line_off = width // 2, height // 2
    samp_scale, long_scale = _rpc_scale(dx, width, SAMP_LIMIT)
    line_scale, lat_scale = _rpc_scale(dy, height, LINE_LIMIT)
    # GDAL RPC convention: the centre of the first pixel is (0, 0), hence the 0.5.
    long_off = round(x0 + (samp_off + 0.5) * dx, GROUND_DECIMALS)
    lat_off = round(y0 - (line_off + 0.5) * dy, GROUND_DECIMALS)
    samp = [0.0] * 20
    samp[0] = rpc00b_number(((long_off - x0) / dx - 0.5 - samp_off) / samp_scale)
    samp[1] = rpc00b_number(long_scale / (dx * samp_scale))
    line = [0.0] * 20
    line[0] = rpc00b_number(((y0 - lat_off) / dy - 0.5 - line_off) / line_scale)
    line[2] = rpc00b_number(-lat_scale / (dy * line_scale))
    den = [1.0] + [0.0] * 19

    def coefficients(values: list[float]) -> str:
        return " ".join(repr(v) for v in values)

    return {
        "ERR_BIAS": "0",
        "ERR_RAND": "0",
        "LINE_OFF": str(line_off),
        "SAMP_OFF": str(samp_off),
        "LAT_OFF": repr(lat_off),
        "LONG_OFF": repr(long_off),
        "HEIGHT_OFF": "0",
        "LINE_SCALE": str(line_scale),
        "SAMP_SCALE": str(samp_scale),
        "LAT_SCALE": repr(lat_scale),
        "LONG_SCALE": repr(long_scale),
        "HEIGHT_SCALE": "1",
        "LINE_NUM_COEFF": coefficients(line),
        "LINE_DEN_COEFF": coefficients(den),
        "SAMP_NUM_COEFF": coefficients(samp),
        "SAMP_DEN_COEFF": coefficients(den),
    }


def _corner_centres(gt: GeoTransform, width: int, height: int) -> list[tuple[float, float]]:
    """World coordinates of the centres of the UL, UR, LR, LL pixels (IGEOLO order)."""
    pixels = [(0.5, 0.5), (width - 0.5, 0.5), (width - 0.5, height - 0.5), (0.5, height - 0.5)]
    return [(gt[0] + x * gt[1], gt[3] + y * gt[5]) for x, y in pixels]


def _nitf_georeferencing(epsg: int, gt: GeoTransform, width: int, height: int) -> list[str]:
    """ICORDS / IGEOLO (and GEOLOB when exact) creation options of a scene without RPC."""
    corners = _corner_centres(gt, width, height)
    if epsg == 4326:
        igeolo = "".join(igeolo_dms(lat, 2, "NS") + igeolo_dms(lon, 3, "EW") for lon, lat in corners)
        options = ["ICORDS=G", f"IGEOLO={igeolo}"]
        arv, brv = 360.0 / gt[1], 360.0 / -gt[5]
        if all(abs(v - round(v)) < 1e-6 and 1 <= round(v) <= 999_999_999 for v in (arv, brv)):
            geolob = f"{round(arv):09d}{round(brv):09d}{gt[0]:+015.10f}{gt[3]:+015.11f}"
            options.append(f"TRE=GEOLOB={geolob}")
        return options
    zone = _utm_zone(epsg)
    if zone is None:
        raise ValueError(f"NITF scenes need EPSG:4326 or a WGS 84 / UTM zone (326xx, 327xx), got EPSG:{epsg}")
    number, north = zone
    if not all(0 <= round(x) < 1_000_000 and 0 <= round(y) < 10_000_000 for x, y in corners):
        raise ValueError("scene corners fall outside the UTM easting / northing ranges IGEOLO can hold")
    igeolo = "".join(f"{number:02d}{round(x):06d}{round(y):07d}" for x, y in corners)
    return [f"ICORDS={'N' if north else 'S'}", f"IGEOLO={igeolo}"]


def _nitf_options(
    bands: int, dtype: str, seed: int, width: int, height: int, block: int, georeferencing: list[str]
) -> list[str]:
    if bands == 1:
        representation, category, band_reps = "MONO", "VIS", ["M"]
    elif bands == 3:
        representation, category, band_reps = "RGB", "VIS", ["R", "G", "B"]
    else:
        representation, category = "MULTI", "MS"
        band_reps = (["R", "G", "B"] + [" "] * bands)[:bands] if bands > 3 else ["M"] * bands
    title = f"modelrunner synthetic scene seed={seed} {width}x{height}x{bands} {dtype}"
    return [
        f"BLOCKXSIZE={block}",
        f"BLOCKYSIZE={block}",
        f"FDT={SCENE_DATETIME}",
        f"IDATIM={SCENE_DATETIME}",
        f"FTITLE={title[:80]}",
        "IID1=SYNTHETIC",
        f"IID2={title[:80]}",
        "ISORCE=modelrunner.local.scene",
        f"ICAT={category}",
        f"IREP={representation}",
        f"IREPBAND={','.join(band_reps)}",
        *georeferencing,
    ]


# ---------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------


def _layout_objects(
    width: int, height: int, bands: int, seed: int, count: int | None,
    sides: tuple[int, int] = (_MIN_SIDE, _MAX_SIDE), cell: int = _CELL, margin: int = _MARGIN,
) -> tuple[list[Box], np.ndarray]:
    """Object boxes (sorted by row then column) and their per-band 8-bit levels, from the seed alone.

    Each object sits in its own ``cell`` x ``cell`` grid cell, at least ``margin`` px inside it, so two
    objects are at least ``2 * margin`` px apart (margin 1 with sides filling the cell: neighbours touch but
    for a 2 px gap, the closest two objects can be and still be two blobs for the ``objects`` model).
    """
    min_side, max_side = sides
    if not 1 <= min_side <= max_side or margin < 0 or max_side + 2 * margin > cell:
        raise ValueError(f"object sides {sides} with margin {margin} do not fit a {cell} px cell")
    columns, rows = width // cell, height // cell
    cells = columns * rows
    if count is None:
        count = min(cells, round(width * height / _PIXELS_PER_OBJECT))
    elif count < 0:
        raise ValueError(f"object_count must be >= 0, got {count}")
    elif count > cells:
        raise ValueError(f"object_count {count} exceeds the {cells} object slots of a {width}x{height} scene")
    rng = np.random.default_rng([seed, 0x0B1EC7])
    chosen = np.sort(rng.choice(cells, size=count, replace=False)) if count else np.zeros(0, np.int64)
    side = rng.integers(min_side, max_side + 1, size=(count, 2))
    slack = cell - 2 * margin - side
    offsets = (rng.random((count, 2)) * (slack + 1)).astype(np.int64)
    level = rng.integers(_OBJECT_LEVELS[0] + 10, _OBJECT_LEVELS[1] - 10 + 1, size=(count, 1))
    levels = np.clip(level + rng.integers(-10, 11, size=(count, bands)), *_OBJECT_LEVELS).astype(np.uint8)
    boxes: list[Box] = []
    for index, slot in enumerate(chosen.tolist()):
        x0 = (slot % columns) * cell + margin + int(offsets[index, 0])
        y0 = (slot // columns) * cell + margin + int(offsets[index, 1])
        boxes.append((float(x0), float(y0), float(x0 + side[index, 0]), float(y0 + side[index, 1])))
    return boxes, levels


def _background_levels(bands: int) -> np.ndarray:
    """Per-band 8-bit background base levels (dark, slightly different per band)."""
    return np.array([24 + 6 * (band % 4) for band in range(bands)], dtype=np.uint8)


def _blocks_index(objects: Sequence[Box], block: int) -> dict[tuple[int, int], list[int]]:
    """Which objects touch which (block row, block column)."""
    index: dict[tuple[int, int], list[int]] = {}
    for number, (x0, y0, x1, y1) in enumerate(objects):
        for row in range(int(y0) // block, (int(y1) - 1) // block + 1):
            for column in range(int(x0) // block, (int(x1) - 1) // block + 1):
                index.setdefault((row, column), []).append(number)
    return index


def _render_block(
    seed: int,
    x: int,
    y: int,
    width: int,
    height: int,
    bands: int,
    objects: Sequence[Box],
    deltas: np.ndarray,
    block_row: int,
    block_column: int,
) -> np.ndarray:
    """8-bit pixels of one block, shaped ``(height, width, bands)`` (pixel interleaved, as written).

    Noise comes from a generator seeded with ``(seed, block_row, block_column)``: the block's content does
    not depend on which other blocks exist or in which order they are made. ``deltas`` are the objects'
    levels above the background, per band.
    """
    count = width * height * bands
    generator = np.random.PCG64(np.random.SeedSequence([seed, block_row, block_column, 0xB10C]))
    # Raw 64-bit draws viewed as bytes: the cheapest uniform noise numpy offers (~0.3 ns per pixel).
    rows_of_values = (
        generator.random_raw((count + 7) // 8).view(np.uint8)[:count].reshape(height, width * bands)
    )
    rows_of_values &= np.uint8(_NOISE_MASK)
    rows_of_values += np.tile(_background_levels(bands), width)  # one long row pattern: fast broadcasting
    pixels = rows_of_values.reshape(height, width, bands)
    for number, (x0, y0, x1, y1) in enumerate(objects):
        cols = slice(max(int(x0) - x, 0), min(int(x1) - x, width))
        rows = slice(max(int(y0) - y, 0), min(int(y1) - y, height))
        pixels[rows, cols, :] += deltas[number]
    return pixels


def _convert(pixels: np.ndarray, dtype: str) -> np.ndarray:
    """8-bit levels to the scene's data type, keeping the full-scale proportions."""
    if dtype == "uint8":
        return pixels
    if dtype == "uint16":
        return pixels.astype(np.uint16) * np.uint16(257)  # 255 -> 65535
    return pixels.astype(np.float32) * np.float32(1.0 / 255.0)


def _normalise(driver: str, dtype: str) -> tuple[str, str]:
    try:
        driver_name = _DRIVERS[driver.lower()]
    except KeyError:
        raise ValueError(f"driver must be GTiff or NITF, got {driver!r}") from None
    dtype_name = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    if dtype_name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return driver_name, dtype_name


def make_scene(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    seed: int = 0,
    bands: int = 3,
    dtype: str = "uint8",
    driver: str = "GTiff",
    epsg: int = 4326,
    rpc: bool = False,
    object_count: int | None = None,
    origin: tuple[float, float] | None = None,
    pixel_size: float | None = None,
    block_size: int = 512,
    compress: str | None = None,
    object_sides: tuple[int, int] = (_MIN_SIDE, _MAX_SIDE),
    object_cell: int = _CELL,
    object_margin: int = _MARGIN,
) -> Scene:
    """Write a synthetic scene to ``path`` and return it with its ground-truth object boxes.

    ``object_count`` defaults to one object per 256 x 256 pixels (objects sit in distinct 96 px grid
    cells, so a scene holds at most ``(width // 96) * (height // 96)``). ``rpc=True`` (EPSG:4326 only)
    writes an RPC model instead of a geotransform, see the module docstring. ``compress`` (GTiff only) is
    a GDAL COMPRESS value such as DEFLATE. Pixels depend only on ``seed``, ``width``, ``height``, ``bands``,
    ``dtype``, ``block_size`` and the object layout: the same scene as GeoTIFF and as NITF has the same pixels.
    The layout (``object_sides`` min/max in px, one object per ``object_cell`` px grid cell at least
    ``object_margin`` px inside it) lets benchmarks make objects larger than a tile overlap, or packed
    objects that nearly touch; the defaults give the scenes every test and the demo use.
    """
    driver_name, dtype_name = _normalise(driver, dtype)
    _check_scene(width, height, bands, seed, block_size, rpc, epsg, compress, driver_name)
    gt = scene_geotransform(epsg, width, height, origin, pixel_size)
    rpc_metadata = linear_rpc(gt, width, height) if rpc else None
    objects, levels = _layout_objects(width, height, bands, seed, object_count, object_sides, object_cell,
                                      object_margin)
    target = os.fspath(path)
    if driver_name == "GTiff":
        options = ["TILED=YES", f"BLOCKXSIZE={block_size}", f"BLOCKYSIZE={block_size}", "BIGTIFF=IF_SAFER",
                   *([f"COMPRESS={compress}"] if compress else [])]
    else:  # NITF georeferencing is written at creation: RPC00B TRE, or IGEOLO corners
        georeferencing = ([f"TRE=RPC00B={format_rpc00b(rpc_metadata)}"] if rpc_metadata
                          else _nitf_georeferencing(epsg, gt, width, height))
        options = _nitf_options(bands, dtype_name, seed, width, height, block_size, georeferencing)
    dataset = gdal.GetDriverByName(driver_name).Create(target, width, height, bands, _DTYPES[dtype_name],
                                                       options=options)
    try:
        if driver_name == "GTiff" and rpc_metadata:
            dataset.SetMetadata(rpc_metadata, "RPC")
        elif driver_name == "GTiff":
            dataset.SetGeoTransform(gt)
            dataset.SetSpatialRef(_spatial_reference(epsg))
        _write_blocks(dataset, seed, dtype_name, block_size, objects, levels - _background_levels(bands))
    finally:
        dataset = None  # closing writes the headers / TREs
    return Scene(path=target, width=width, height=height, objects=objects, bands=bands, dtype=dtype_name,
                 driver=driver_name, epsg=epsg, geotransform=gt, rpc=rpc_metadata, seed=seed,
                 levels=[tuple(int(v) for v in row) for row in levels])


def _check_scene(width: int, height: int, bands: int, seed: int, block_size: int, rpc: bool, epsg: int,
                 compress: str | None, driver_name: str) -> None:
    """ValueError, naming the argument, for a scene :func:`make_scene` cannot write."""
    if width < 1 or height < 1 or bands < 1:
        raise ValueError(f"need width, height, bands >= 1, got {width}x{height}x{bands}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if block_size < 16 or block_size % 16:
        raise ValueError(f"block_size must be a positive multiple of 16, got {block_size}")
    if rpc and epsg != 4326:
        raise ValueError("rpc=True needs epsg=4326: an RPC maps to WGS 84 longitude / latitude")
    if compress and driver_name != "GTiff":
        raise ValueError("compress applies to GTiff scenes only")


def _write_blocks(dataset: gdal.Dataset, seed: int, dtype_name: str, block_size: int, objects: list[Box],
                  deltas: np.ndarray) -> None:
    """Render and write the scene block by block (``deltas``: each object's levels above the background),
    flushing each block row: memory stays at one block row, not the image."""
    width, height, bands = dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount
    gdal_type, item = _DTYPES[dtype_name], np.dtype(dtype_name).itemsize
    by_block = _blocks_index(objects, block_size)
    for block_row, y in enumerate(range(0, height, block_size)):
        block_height = min(block_size, height - y)
        for block_column, x in enumerate(range(0, width, block_size)):
            block_width = min(block_size, width - x)
            numbers = by_block.get((block_row, block_column), [])
            pixels = _render_block(seed, x, y, block_width, block_height, bands, [objects[n] for n in numbers],
                                   deltas[numbers], block_row, block_column)
            dataset.WriteRaster(x, y, block_width, block_height, _convert(pixels, dtype_name), block_width,
                                block_height, gdal_type, list(range(1, bands + 1)), buf_pixel_space=bands * item,
                                buf_line_space=block_width * bands * item, buf_band_space=item)
        dataset.FlushCache()


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (also documents the options)."""
    parser = argparse.ArgumentParser(
        prog="python -m modelrunner.local.scene",
        description="Write a deterministic synthetic georeferenced scene (GeoTIFF or NITF).",
    )
    parser.add_argument("output", help="file to write (.ntf / .nitf default to NITF, anything else to GTiff)")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--driver", choices=["GTiff", "NITF"], help="default: from the output's extension")
    parser.add_argument("--rpc", action="store_true", help="RPC model instead of a geotransform (EPSG:4326)")
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="uint8")
    parser.add_argument("--epsg", type=int, default=4326)
    parser.add_argument("--objects", type=int, help="object count (default: one per 256 x 256 pixels)")
    parser.add_argument("--origin", type=float, nargs=2, metavar=("X", "Y"), help="upper-left corner")
    parser.add_argument("--pixel-size", type=float, help="pixel size in CRS units")
    parser.add_argument("--compress", help="GTiff COMPRESS value, e.g. DEFLATE")
    parser.add_argument(
        "--truth", help="also write the ground truth (scene description + boxes) as JSON here"
    )
    return parser


def scene_summary(scene: Scene) -> dict[str, Any]:
    """A JSON-able description of a scene (what ``--truth`` writes)."""
    return {
        "path": scene.path,
        "width": scene.width,
        "height": scene.height,
        "bands": scene.bands,
        "dtype": scene.dtype,
        "driver": scene.driver,
        "epsg": scene.epsg,
        "seed": scene.seed,
        "geotransform": list(scene.geotransform),
        "rpc": scene.rpc,
        "objects": [list(box) for box in scene.objects],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write a scene and print one summary line."""
    args = build_parser().parse_args(argv)
    driver = args.driver or ("NITF" if Path(args.output).suffix.lower() in (".ntf", ".nitf") else "GTiff")
    start = time.perf_counter()
    try:
        scene = make_scene(
            args.output,
            args.width,
            args.height,
            seed=args.seed,
            bands=args.bands,
            dtype=args.dtype,
            driver=driver,
            epsg=args.epsg,
            rpc=args.rpc,
            object_count=args.objects,
            origin=tuple(args.origin) if args.origin else None,
            pixel_size=args.pixel_size,
            compress=args.compress,
        )
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    if args.truth:
        Path(args.truth).write_text(json.dumps(scene_summary(scene), indent=1))
    georef = "RPC" if scene.rpc else f"EPSG:{scene.epsg}"
    print(
        f"wrote {scene.path}: {scene.width}x{scene.height}x{scene.bands} {scene.dtype} {scene.driver} "
        f"({georef}), {len(scene.objects)} objects, {elapsed:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
