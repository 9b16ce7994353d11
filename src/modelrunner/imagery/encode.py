"""Where a tile is cut and encoded: pixels -> the bytes the model receives (GTIFF, NITF, PNG, JPEG).

GDAL writes every format: a MEM dataset holds the chip (with the chip's own georeferencing), and
CreateCopy writes it to ``/vsimem/``. Each call uses a unique in-memory path, so threads can encode in
parallel. Which format / compression pairs exist, and what they do, is :mod:`~modelrunner.imagery.formats` (and
``doc/tile-formats.md``); pixels must already suit the pair (:mod:`.radiometry` makes them so), because
GDAL would otherwise quietly mangle them (16-bit data clipped to 12-bit JPEG, float truncated to Byte PNG).

Georeferencing carried by the chip, so a model that geolocates by itself sees the right place:

* GTIFF: the chip's geotransform and SRS, or its RPC (offsets moved to the chip, full double precision).
* NITF: ``ICORDS=G`` with the chip's corner-pixel centres in ``IGEOLO`` (what the reference writes,
  whole arc-seconds, computed by GDAL's transformer for any SRS or RPC, so EPSG:3857 images also get
  NITF tiles), plus, for RPC images, an RPC00B TRE re-expressed for the chip (:mod:`.rpc`).
* PNG and JPEG carry none (the reference's tiles carry none either).
"""

from __future__ import annotations

import contextlib
import itertools
import os

import numpy as np
from osgeo import gdal, gdal_array

from ..errors import TileEncodingError
from .formats import EIGHT_BIT, ONE_OR_THREE_BANDS, unsupported_reason
from .geolocate import Georeference
from .rpc import chip_rpc00b

DRIVERS = {"GTIFF": "GTiff", "NITF": "NITF", "PNG": "PNG", "JPEG": "JPEG"}
_EXT = {"GTIFF": "tif", "NITF": "ntf", "PNG": "png", "JPEG": "jpg"}
_GTIFF = {"NONE": ["COMPRESS=NONE"], "LZW": ["COMPRESS=LZW"], "JPEG": ["COMPRESS=JPEG"]}
_NITF = {"NONE": ["IC=NC"], "JPEG": ["IC=C3"], "J2K": ["IC=C8"]}
_FLOATS = (gdal.GDT_Float32, gdal.GDT_Float64)


_names = itertools.count()  # unique /vsimem/ names (next() on a count is atomic), cheaper than uuid4's urandom


def read_vsimem(path: str) -> bytes:
    """The bytes of a GDAL ``/vsimem/`` file: one copy out of GDAL's own buffer (``VSIFReadL`` would hand
    back a bytearray, i.e. a second copy of a whole tile, made while holding the GIL)."""
    view = gdal.VSIGetMemFileBuffer_unsafe(path)
    if view is None:
        raise TileEncodingError(f"GDAL wrote no file at {path}")
    return bytes(view)


def creation_options(tile_format: str, compression: str, data_type: int) -> list[str]:
    """GDAL creation options of a supported pair. NITF float tiles are uncompressed (as the reference's):
    JPEG 2000 has no floating-point samples, and exact pixels beat a silently quantised image."""
    if tile_format == "GTIFF":
        return list(_GTIFF[compression])
    if tile_format == "NITF":
        if data_type in _FLOATS:
            return ["IC=NC"]
        return list(_NITF[compression])
    return []


def check_pixels(pixels: np.ndarray, tile_format: str, compression: str) -> None:
    """Refuse pixels the pair cannot hold (apply the image's TileRadiometry first)."""
    pair = (tile_format, compression)
    bands = pixels.shape[0]
    if pair in EIGHT_BIT and pixels.dtype != np.uint8:
        raise TileEncodingError(f"{tile_format}/{compression} tiles hold 8-bit samples, got {pixels.dtype} "
                                "(the image's dynamic-range stretch was not applied)")
    if tile_format == "PNG" and pixels.dtype not in (np.uint8, np.uint16):
        raise TileEncodingError(f"PNG tiles hold uint8 or uint16 samples, got {pixels.dtype}")
    if pair in ONE_OR_THREE_BANDS and bands not in (1, 3):
        raise TileEncodingError(f"{tile_format}/{compression} tiles hold 1 or 3 bands, got {bands}")


def encode_tile(pixels: np.ndarray, tile_format: str, compression: str,
                georef: Georeference | None = None) -> bytes:
    """Encode a (bands, h, w) array as one tile file; ``georef`` is the chip's own georeferencing."""
    reason = unsupported_reason(tile_format, compression)
    if reason is not None:
        raise TileEncodingError(reason)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    check_pixels(pixels, tile_format, compression)
    bands, height, width = pixels.shape
    data_type = gdal_array.NumericTypeCodeToGDALTypeCode(pixels.dtype)
    options = creation_options(tile_format, compression, data_type)
    georef = georef if georef is not None and georef.kind != "NONE" else None
    path = f"/vsimem/tile-{os.getpid()}-{next(_names)}.{_EXT[tile_format]}"
    try:
        if tile_format == "GTIFF":  # GTiff writes as it is given pixels: no in-memory copy to translate
            # RGB for three 8-bit bands (what a translated RGB image says); never GDAL's default of a fourth
            # 8-bit band as alpha: a near-infrared band is not transparency.
            rgb = bands == 3 and pixels.dtype == np.uint8
            options += ["PHOTOMETRIC=RGB" if rgb else "PHOTOMETRIC=MINISBLACK"]
            out = gdal.GetDriverByName("GTiff").Create(path, width, height, bands, data_type, options=options)
            if out is None:
                raise TileEncodingError(f"GDAL could not write a {tile_format}/{compression} tile")
            if georef is not None:
                _set_georeference(out, georef)
            write_pixels(out, pixels)
        else:  # these drivers only write by copying a whole dataset
            mem = gdal.GetDriverByName("MEM").Create("", width, height, bands, data_type)
            write_pixels(mem, pixels)
            if georef is not None and tile_format == "NITF":
                options += _nitf_georeference(mem, georef, width, height)
            out = gdal.GetDriverByName(DRIVERS[tile_format]).CreateCopy(path, mem, strict=0, options=options)
            if out is None:
                raise TileEncodingError(f"GDAL could not write a {tile_format}/{compression} tile")
        out = None  # flush
        return read_vsimem(path)
    except RuntimeError as err:
        raise TileEncodingError(f"GDAL could not write a {tile_format}/{compression} tile: {err}") from None
    finally:
        for leftover in (path, path + ".aux.xml"):
            with contextlib.suppress(RuntimeError):
                gdal.Unlink(leftover)


def write_pixels(dataset: gdal.Dataset, pixels: np.ndarray) -> None:
    """Write (bands, h, w) pixels in one call, band-sequential or band-interleaved-by-pixel in memory
    (either goes to GDAL as it lies; anything else is copied band-sequential first)."""
    bands, height, width = pixels.shape
    data_type = gdal_array.NumericTypeCodeToGDALTypeCode(pixels.dtype)
    item = pixels.itemsize
    by_pixel = pixels.transpose(1, 2, 0)
    if by_pixel.flags.c_contiguous:
        buffer, spacing = by_pixel, (bands * item, width * bands * item, item)
    else:
        buffer = np.ascontiguousarray(pixels)
        spacing = (item, width * item, width * height * item)
    dataset.WriteRaster(0, 0, width, height, buffer.data.cast("B"), buf_xsize=width, buf_ysize=height,
                        buf_type=data_type, band_list=list(range(1, bands + 1)), buf_pixel_space=spacing[0],
                        buf_line_space=spacing[1], buf_band_space=spacing[2])


def _set_georeference(dataset: gdal.Dataset, georef: Georeference) -> None:
    if georef.kind == "RPC":
        dataset.SetMetadata(dict(georef.rpc), "RPC")
    elif georef.geotransform is not None:
        dataset.SetGeoTransform(georef.geotransform)
        if georef.projection:
            dataset.SetProjection(georef.projection)


def _nitf_georeference(mem: gdal.Dataset, georef: Georeference, width: int, height: int) -> list[str]:
    """NITF creation options (ICORDS/IGEOLO) for the chip; RPC00B goes into ``mem``'s RPC metadata."""
    corners_of = gdal.GetDriverByName("MEM").Create("", width, height, 0)
    if georef.kind == "RPC":
        rpc = chip_rpc00b(georef.rpc, 0, 0, width, height)
        mem.SetMetadata(rpc, "RPC")
        corners_of.SetMetadata(rpc, "RPC")
        method = ["METHOD=RPC"]
    else:
        _set_georeference(corners_of, georef)
        method = []
    try:
        transformer = gdal.Transformer(corners_of, None, ["DST_SRS=EPSG:4326", *method])
        centres = [(0.5, 0.5), (width - 0.5, 0.5), (width - 0.5, height - 0.5), (0.5, height - 0.5)]
        points, ok = transformer.TransformPoints(0, centres)
    except RuntimeError as err:
        raise TileEncodingError(f"cannot compute the NITF tile's corner coordinates: {err}") from None
    if not all(ok):
        raise TileEncodingError("cannot compute the NITF tile's corner coordinates")
    igeolo = "".join(igeolo_dms(lat, 2, "NS") + igeolo_dms(_wrap(lon), 3, "EW") for lon, lat, *_ in points)
    return ["ICORDS=G", f"IGEOLO={igeolo}"]


def _wrap(lon: float) -> float:
    return (lon + 180.0) % 360.0 - 180.0 if not -180.0 <= lon <= 180.0 else lon


def igeolo_dms(value: float, degree_digits: int, hemispheres: str) -> str:
    """``ddmmssH`` / ``dddmmssH`` (IGEOLO's G form), whole arc-seconds."""
    total = round(abs(value) * 3600.0)
    degrees, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{degrees:0{degree_digits}d}{minutes:02d}{seconds:02d}{hemispheres[value < 0]}"
