"""Where a tile is cut and encoded: pixels -> the bytes the model receives (GTIFF, NITF, PNG, JPEG).

GDAL writes every format: a MEM dataset holds the chip (with the chip's own georeferencing), and
CreateCopy writes it to ``/vsimem/``. Options per format and compression follow the reference (section 8
of the interface notes). Each call uses a unique in-memory path, so threads can encode in parallel.
"""

from __future__ import annotations

import contextlib
import uuid

import numpy as np
from osgeo import gdal, gdal_array

from ..errors import TileEncodingError
from .geolocate import Georeference

DRIVERS = {"GTIFF": "GTiff", "NITF": "NITF", "PNG": "PNG", "JPEG": "JPEG"}
_EXT = {"GTIFF": "tif", "NITF": "ntf", "PNG": "png", "JPEG": "jpg"}
_GTIFF = {"NONE": ["COMPRESS=NONE"], "LZW": ["COMPRESS=LZW"], "JPEG": ["COMPRESS=JPEG"], "J2K": ["COMPRESS=LZW"]}
_NITF = {"NONE": ["IC=NC"], "JPEG": ["IC=C3"], "J2K": ["IC=C8"], "LZW": ["IC=C8"]}


def creation_options(tile_format: str, compression: str, data_type: int) -> list[str]:
    if tile_format == "GTIFF":
        return list(_GTIFF[compression])
    if tile_format == "NITF":
        if data_type in (gdal.GDT_Float32, gdal.GDT_Float64):
            return ["IC=NC"]
        return list(_NITF[compression])
    return []


def encode_tile(pixels: np.ndarray, tile_format: str, compression: str,
                georef: Georeference | None = None) -> bytes:
    """Encode a (bands, h, w) array as one tile file; ``georef`` is the chip's own georeferencing."""
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    bands, height, width = pixels.shape
    data_type = gdal_array.NumericTypeCodeToGDALTypeCode(pixels.dtype)
    mem = gdal.GetDriverByName("MEM").Create("", width, height, bands, data_type)
    for i in range(bands):
        mem.GetRasterBand(i + 1).WriteArray(pixels[i])
    if georef is not None:
        if georef.geotransform is not None:
            mem.SetGeoTransform(georef.geotransform)
            if georef.projection:
                mem.SetProjection(georef.projection)
        if georef.rpc:
            mem.SetMetadata(georef.rpc, "RPC")
    path = f"/vsimem/tile-{uuid.uuid4().hex}.{_EXT[tile_format]}"
    try:
        driver = gdal.GetDriverByName(DRIVERS[tile_format])
        out = driver.CreateCopy(path, mem, strict=0, options=creation_options(tile_format, compression, data_type))
        if out is None:
            raise TileEncodingError(f"GDAL could not write a {tile_format}/{compression} tile")
        out = None  # flush
        handle = gdal.VSIFOpenL(path, "rb")
        try:
            gdal.VSIFSeekL(handle, 0, 2)
            size = gdal.VSIFTellL(handle)
            gdal.VSIFSeekL(handle, 0, 0)
            return bytes(gdal.VSIFReadL(1, size, handle))
        finally:
            gdal.VSIFCloseL(handle)
    except RuntimeError as err:
        raise TileEncodingError(f"GDAL could not write a {tile_format}/{compression} tile: {err}") from None
    finally:
        for leftover in (path, path + ".aux.xml"):
            with contextlib.suppress(RuntimeError):
                gdal.Unlink(leftover)
