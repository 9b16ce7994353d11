"""The elevation model (``ELEVATION_DATA_LOCATION``) used with RPC images: a DEM file, or a folder of tiles.

The reference points ``ELEVATION_DATA_LOCATION`` at the root of an SRTM tile set. GDAL's RPC transformer
takes one raster (``RPC_DEM``), so a folder (local or ``s3://``) becomes one VRT mosaic of its tiles whose
names end in ``ELEVATION_DATA_EXTENSION`` (searched recursively), built with ``gdal.BuildVRT`` once per
process and kept in ``/vsimem/``; a file is used as it is. A location that does not exist, or a folder
without tiles, is an error (never a silent fall-back to height 0).

Heights are used as GDAL reads them: SRTM heights are above the EGM96 geoid while RPC heights are above
the WGS 84 ellipsoid; GDAL applies that shift only when the DEM declares a vertical SRS
(``RPC_DEM_APPLY_VDATUM_SHIFT``), which SRTM tiles do not, the same as the reference.
"""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
from osgeo import gdal

from ..errors import ImageError
from .source import configure_gdal, gdal_path

DEFAULT_EXTENSION = ".tif"
#: Above this many DEM pixels, heights are read per point (2 x 2 windows) instead of one window.
_WINDOW_LIMIT = 1024 * 1024

def normalise_extension(extension: str | None) -> str:
    """``tif`` / ``.tif`` / None -> ``.tif`` (the setting is read from the environment once, by
    ``config.Settings``; nothing here reads the environment)."""
    value = (extension or "").strip()
    value = value or DEFAULT_EXTENSION
    return value if value.startswith(".") else "." + value


class DemMosaics:
    """The GDAL path of each elevation location, with the folders' VRT mosaics built once.

    Process-wide (:data:`DEM_MOSAICS`), deliberately: a mosaic lives in GDAL's ``/vsimem/``, which is
    process-wide, and every thread's RPC transformer reads the same one; an owner per worker object could
    only rebuild what the process already holds.
    """

    def __init__(self) -> None:
        self._resolved: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def resolve(self, location: str, extension: str | None = None) -> str:
        """The GDAL path of the DEM at ``location``: the file, or the VRT mosaic of the folder's tiles."""
        configure_gdal()
        suffix = normalise_extension(extension)
        key = (location, suffix)
        with self._lock:
            if key in self._resolved:
                return self._resolved[key]
            path = gdal_path(location)
            if "://" not in location and not path.startswith("/vsi"):
                path = os.path.abspath(path)
            stat = gdal.VSIStatL(path)
            if stat is None:
                raise ImageError(f"ELEVATION_DATA_LOCATION {location} does not exist")
            if not stat.IsDirectory():
                self._resolved[key] = path
                return path
            names = gdal.ReadDirRecursive(path) or []
            tiles = sorted(f"{path.rstrip('/')}/{name}" for name in names
                           if name.lower().endswith(suffix.lower()))
            if not tiles:
                raise ImageError(f"ELEVATION_DATA_LOCATION {location} holds no *{suffix} elevation tiles")
            vrt = f"/vsimem/modelrunner-dem-{hashlib.sha1(repr(key).encode()).hexdigest()[:16]}.vrt"
            try:
                mosaic = gdal.BuildVRT(vrt, tiles)
            except RuntimeError as err:
                raise ImageError(f"cannot mosaic the elevation tiles of {location}: {err}") from None
            if mosaic is None:
                raise ImageError(f"cannot mosaic the elevation tiles of {location}")
            mosaic = None  # written to /vsimem/ on close
            self._resolved[key] = vrt
            return vrt


#: The process's mosaics (see :class:`DemMosaics` for why one per process).
DEM_MOSAICS = DemMosaics()
resolve_dem = DEM_MOSAICS.resolve


class ElevationSampler:
    """Heights of the DEM at lon/lat points (bilinear between pixel centres; 0 outside it or on nodata).

    The RPC transformer intersects the line of sight with the DEM but reports height 0; this fills the
    elevation of output coordinates with the DEM height GDAL used. Not thread-safe (one GDAL dataset):
    the Geolocator calls it under its lock.
    """

    def __init__(self, dem_path: str) -> None:
        try:
            self._dataset = gdal.Open(dem_path)
            self._to_dem = gdal.Transformer(self._dataset, None, ["DST_SRS=EPSG:4326"])
        except RuntimeError as err:
            raise ImageError(f"cannot open the elevation model {dem_path}: {err}") from None
        self._band = self._dataset.GetRasterBand(1)
        self._nodata = self._band.GetNoDataValue()

    def heights(self, lonlat: np.ndarray) -> np.ndarray:
        points = np.asarray(lonlat, dtype=np.float64).reshape(-1, 2)
        if len(points) == 0:
            return np.zeros(0)
        pixels, ok = self._to_dem.TransformPoints(1, [(float(x), float(y), 0.0) for x, y in points])
        xy = np.asarray(pixels, dtype=np.float64)[:, :2] - 0.5  # continuous index of pixel centres
        good = np.asarray(ok, dtype=bool) & np.isfinite(xy).all(axis=1)
        out = np.zeros(len(points))
        if not good.any():
            return out
        width, height = self._dataset.RasterXSize, self._dataset.RasterYSize
        x = np.clip(xy[good, 0], 0, width - 1)
        y = np.clip(xy[good, 1], 0, height - 1)
        inside = (xy[good, 0] >= -0.5) & (xy[good, 0] <= width - 0.5) & (xy[good, 1] >= -0.5) & \
                 (xy[good, 1] <= height - 0.5)
        x0 = np.minimum(np.floor(x).astype(np.int64), max(width - 2, 0))
        y0 = np.minimum(np.floor(y).astype(np.int64), max(height - 2, 0))
        c0, r0 = int(x0.min()), int(y0.min())
        c1, r1 = min(int(x0.max()) + 2, width), min(int(y0.max()) + 2, height)
        if (c1 - c0) * (r1 - r0) <= _WINDOW_LIMIT:
            values = _bilinear(self._read(c0, r0, c1 - c0, r1 - r0), x - c0, y - r0)
        else:  # points far apart (e.g. the corners of a huge image): a 2 x 2 read each
            values = np.empty(len(x))
            for i, (a, b) in enumerate(zip(x0.tolist(), y0.tolist(), strict=True)):
                window = self._read(a, b, min(2, width - a), min(2, height - b))
                values[i] = _bilinear(window, x[i:i + 1] - a, y[i:i + 1] - b)[0]
        out[np.flatnonzero(good)] = np.where(inside, values, 0.0)
        return out

    def _read(self, col: int, row: int, width: int, height: int) -> np.ndarray:
        window: np.ndarray = self._band.ReadAsArray(col, row, width, height).astype(np.float64)
        invalid = ~np.isfinite(window)
        if self._nodata is not None:
            invalid |= window == self._nodata
        window[invalid] = 0.0
        return window


def _bilinear(window: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation in ``window`` at continuous indices (x, y) of its pixel centres."""
    h, w = window.shape
    x0 = np.clip(np.floor(x).astype(np.int64), 0, w - 1)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, h - 1)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = np.clip(x - x0, 0.0, 1.0), np.clip(y - y0, 0.0, 1.0)
    top = window[y0, x0] * (1 - fx) + window[y0, x1] * fx
    bottom = window[y1, x0] * (1 - fx) + window[y1, x1] * fx
    value: np.ndarray = top * (1 - fy) + bottom * fy
    return value
