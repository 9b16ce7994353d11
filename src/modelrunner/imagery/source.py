"""Open an image lazily with GDAL and read pixel windows from it.

Local paths and ``s3://`` URLs (read through ``/vsis3/`` with HTTP range requests, never downloaded
whole). GDAL dataset handles are not thread-safe: one :class:`ImageSource` belongs to one thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from osgeo import gdal

from ..config import DEFAULT_IMAGE_DRIVERS
from ..errors import ImageError

# Bounded caches: worker memory must depend on region size, not image size (the reference's 10 GB
# VSI cache and 75 % block cache grow with the image).
GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_CACHEMAX": "32",  # MB: two block rows of a 10240-pixel region of 8-bit RGB
    "GDAL_NUM_THREADS": "1",
    "GDAL_GCPS_TO_GEOTRANSFORM_APPROX_OK": "YES",
    "GDAL_MAX_DATASET_POOL_SIZE": "1000",
    "VSI_CACHE": "NO",  # /vsis3/ keeps its own cache (CPL_VSIL_CURL_CACHE_SIZE): one layer is enough
    "VSI_CACHE_SIZE": str(32 * 1024 * 1024),
    "CPL_VSIL_CURL_CHUNK_SIZE": str(2 * 1024 * 1024),
    "CPL_VSIL_CURL_CACHE_SIZE": str(16 * 1024 * 1024),
    "USE_TILE_AS_BLOCK": "YES",
    "BIGTIFF_OVERVIEW": "YES",
    "GDAL_PAM_ENABLED": "NO",
    "CPL_DEBUG": "OFF",
}

class GdalConfig:
    """Sets GDAL's options once (exceptions on, bounded caches); later calls add ``extra``.

    Process-wide (:data:`GDAL_CONFIG`), deliberately: GDAL's config options and exception mode belong to
    the process, so the record of whether they were set must too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = False

    def configure(self, extra: Mapping[str, str] | None = None) -> None:
        """Set the defaults once; an option already in the environment is the operator's choice and is left
        to GDAL (a config option set here would override it)."""
        with self._lock:
            if not self.done:
                gdal.UseExceptions()
                for key, value in GDAL_OPTIONS.items():
                    if key not in os.environ:
                        gdal.SetConfigOption(key, value)
                self.done = True
            for key, value in (extra or {}).items():
                gdal.SetConfigOption(key, value)


#: GDAL's process-wide options (see :class:`GdalConfig`).
GDAL_CONFIG = GdalConfig()
configure_gdal = GDAL_CONFIG.configure


def gdal_path(url: str) -> str:
    """``s3://bucket/key`` -> ``/vsis3/bucket/key``; anything else goes to GDAL unchanged."""
    if url.startswith("s3://"):
        return "/vsis3/" + url[len("s3://"):]
    return url


def split_s3_url(url: str) -> tuple[str, str] | None:
    if not url.startswith("s3://"):
        return None
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


class _ReadCredentials:
    """GDAL options holding an assumed ``imageReadRole``'s credentials, set for one bucket's ``/vsis3/``
    prefix only while an image that needs them is open, and cleared when the last such image closes: a
    later request for the same bucket without the role must not read with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}

    def acquire(self, prefix: str, credentials: Mapping[str, str]) -> None:
        with self._lock:
            for key, value in credentials.items():  # fresh credentials replace older ones of the prefix
                gdal.SetPathSpecificOption(prefix, key, value or None)
            self._users[prefix] = self._users.get(prefix, 0) + 1

    def release(self, prefix: str) -> None:
        with self._lock:
            left = self._users.get(prefix, 1) - 1
            if left > 0:
                self._users[prefix] = left
                return
            self._users.pop(prefix, None)
            gdal.ClearPathSpecificOptions(prefix)


#: Process-wide, like the GDAL path-specific options it counts users of: two images of one bucket opened
#: by different threads share the bucket's options, which must outlive both.
_read_credentials = _ReadCredentials()


_EXTENSIONS = {"GTIFF": "TIFF", "COG": "TIFF", "NITF": "NITF", "JPEG": "JPEG", "PNG": "PNG", "JP2OPENJPEG": "JP2"}


@dataclass(frozen=True)
class ImageInfo:
    """What the planner and the features need to know about an image (no GDAL objects)."""

    width: int
    height: int
    band_count: int
    data_type: str
    driver: str

    @property
    def extension(self) -> str:
        """The reference's ``image_extension``: informational only."""
        return _EXTENSIONS.get(self.driver, self.driver)


class ImageSource:
    """An open image: metadata and window reads. Owned by one thread."""

    def __init__(self, url: str, dataset: gdal.Dataset, credential_prefix: str | None = None) -> None:
        self.url = url
        self.dataset = dataset
        self._credential_prefix = credential_prefix
        band = dataset.GetRasterBand(1) if dataset.RasterCount else None
        self.info = ImageInfo(
            width=dataset.RasterXSize,
            height=dataset.RasterYSize,
            band_count=dataset.RasterCount,
            data_type=gdal.GetDataTypeName(band.DataType) if band else "Byte",
            driver=dataset.GetDriver().ShortName.upper(),
        )

    @classmethod
    def open(cls, url: str, *, drivers: Sequence[str] = DEFAULT_IMAGE_DRIVERS,
             credentials: Mapping[str, str] | None = None) -> ImageSource:
        """Open ``url`` (``s3://`` or a local path, already checked by :mod:`modelrunner.policy`) with only
        the raster ``drivers`` allowed; ``credentials`` (an assumed role's, for ``s3://``) are GDAL's for
        that bucket until the image is closed."""
        configure_gdal()
        path = gdal_path(url)
        parts = split_s3_url(url)
        prefix = f"/vsis3/{parts[0]}" if parts is not None and credentials else None
        if prefix is not None and credentials:
            _read_credentials.acquire(prefix, credentials)
        try:
            try:
                dataset = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY, allowed_drivers=list(drivers))
            except RuntimeError as err:
                raise ImageError(f"cannot open image {url}: {err}") from None
            if dataset is None:
                raise ImageError(f"cannot open image {url}: not a raster GDAL can read with the allowed drivers "
                                 f"({', '.join(drivers)})")
            if dataset.RasterCount == 0 or dataset.RasterXSize == 0 or dataset.RasterYSize == 0:
                raise ImageError(f"image {url} has no raster data ({dataset.RasterXSize} x {dataset.RasterYSize} "
                                 f"pixels, {dataset.RasterCount} bands)")
        except BaseException:
            if prefix is not None:
                _read_credentials.release(prefix)
            raise
        return cls(url, dataset, prefix)

    def read(self, col: int, row: int, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
        """Pixels of a window as (bands, height, width), the image's own data type; into ``out`` (an array of
        that shape and type, reused by the caller) when given."""
        try:
            if out is not None:
                array = self.dataset.ReadAsArray(col, row, width, height, buf_obj=out)
            else:
                array = self.dataset.ReadAsArray(col, row, width, height)
        except RuntimeError as err:
            raise ImageError(f"cannot read window col={col} row={row} {width}x{height} of {self.url}: {err}") from None
        if array is None:
            raise ImageError(f"cannot read window col={col} row={row} {width}x{height} of {self.url}")
        return np.asarray(array).reshape((self.info.band_count, height, width))

    def metadata(self, domain: str = "") -> dict[str, Any]:
        return dict(self.dataset.GetMetadata_Dict(domain) or {})

    def close(self) -> None:
        self.dataset = None
        if self._credential_prefix is not None:
            _read_credentials.release(self._credential_prefix)
            self._credential_prefix = None

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def nitf_source_metadata(source: ImageSource) -> list[dict[str, Any]] | None:
    """The reference's ``sourceMetadata`` for NITF images (None for other formats)."""
    if source.info.driver != "NITF":
        return None
    meta = source.metadata()
    idatim = (meta.get("NITF_IDATIM") or "").strip()
    source_dt = None
    if len(idatim) >= 14 and idatim[:14].isdigit():
        source_dt = f"{idatim[0:4]}-{idatim[4:6]}-{idatim[6:8]}T{idatim[8:10]}:{idatim[10:12]}:{idatim[12:14]}Z"
    return [{"location": source.url, "format": "NITF", "category": (meta.get("NITF_ICAT") or "").strip(),
             "sourceId": (meta.get("NITF_FTITLE") or "").strip(), "sourceDT": source_dt}]
