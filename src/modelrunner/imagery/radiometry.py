"""Image pixels -> tile pixels, for tile encodings that cannot hold the image as it is.

Two adjustments, both decided once per image and the same for every tile, so that tiles of one image are
consistent with each other (a per-tile stretch would make the same object brighter or darker depending on
its neighbours, and make overlapping tiles disagree):

* **Band choice.** JPEG files and NITF IC=C3 hold 1 (grey) or 3 (RGB) bands. A 2-band image sends its
  first band. An image of 4 or more bands sends its red, green and blue bands when GDAL's colour
  interpretation names all three (e.g. NITF IREPBAND R,G,B), else its first three bands.
* **Dynamic-range stretch.** 8-bit encodings (JPEG files, JPEG compression in GeoTIFF and NITF; PNG for
  pixel types other than Byte and UInt16) get a linear stretch of the image's 2nd..98th percentile to
  0..255, clipped, rounded to nearest. Percentiles are joint over the sent bands (a per-band stretch would
  shift colours) and ignore nodata and non-finite values. They come from one decimated read of the image:
  ``ReadAsArray(buf_xsize=..)`` of the whole image at most 512 pixels on a side, which GDAL serves from
  the overviews when the image has them; an image larger than 2048 x 2048 without overviews is sampled
  with 8 x 8 windows of 64 x 64 full-resolution pixels instead (each inside one block, the block cache
  emptied after each row of windows), so that a huge image costs 64 block reads and a few MB, rather
  than a read of every block. 16-bit PNG and GeoTIFF/NITF (NONE, LZW, J2K) keep the
  pixel type; so does NITF J2K for integer types (float images are written uncompressed, IC=NC, as
  JPEG 2000 has no floating-point samples).

The parameters are small and JSON-able (:meth:`TileRadiometry.to_json`): the runner stores them in the job
row, so every region of an image uses the very same numbers, whichever worker processes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from osgeo import gdal

from .formats import EIGHT_BIT, ONE_OR_THREE_BANDS

LOW_PERCENTILE = 2.0
HIGH_PERCENTILE = 98.0
#: Longest side of the decimated read the percentiles come from.
SAMPLE_SIDE = 512
#: Without overviews, images above this many pixels are sampled with windows instead of one decimated read.
WHOLE_READ_LIMIT = 2048 * 2048
WINDOWS_PER_AXIS = 8
WINDOW_SIDE = 64


@dataclass(frozen=True)
class TileRadiometry:
    """Band choice and stretch for one image and tile encoding; identity when both are None."""

    bands: tuple[int, ...] | None = None
    """0-based band indices sent, in order; None sends every band."""
    stretch: tuple[float, float] | None = None
    """(low, high) image values mapped linearly to 0..255 (uint8); None keeps the pixel type."""

    @property
    def identity(self) -> bool:
        return self.bands is None and self.stretch is None

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(bands, h, w) image pixels -> the tile's pixels (a new array unless identity)."""
        if pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        if self.bands is not None:
            pixels = pixels[list(self.bands)]
        if self.stretch is None:
            return pixels
        low, high = self.stretch
        scaled = pixels.astype(np.float32)
        scaled -= np.float32(low)
        scaled *= np.float32(255.0 / (high - low))
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(scaled, 0.0, 255.0, out=scaled)
        return np.rint(scaled).astype(np.uint8)

    def to_json(self) -> str:
        return json.dumps({"bands": list(self.bands) if self.bands is not None else None,
                           "stretch": list(self.stretch) if self.stretch is not None else None,
                           "percentiles": [LOW_PERCENTILE, HIGH_PERCENTILE]})

    @classmethod
    def from_json(cls, text: str) -> TileRadiometry:
        raw: dict[str, Any] = json.loads(text)
        bands = raw.get("bands")
        stretch = raw.get("stretch")
        return cls(bands=tuple(int(b) for b in bands) if bands is not None else None,
                   stretch=(float(stretch[0]), float(stretch[1])) if stretch is not None else None)


def needs_stretch(tile_format: str, compression: str, data_type: str) -> bool:
    """Whether tiles of this encoding cannot hold ``data_type`` (a GDAL type name) and need the stretch."""
    if data_type == "Byte":
        return False
    if (tile_format, compression) in EIGHT_BIT:
        return True
    return tile_format == "PNG" and data_type != "UInt16"


def band_choice(tile_format: str, compression: str, color_interpretations: list[int]) -> tuple[int, ...] | None:
    """The bands a tile of this encoding sends (see the module docstring), None for all of them."""
    count = len(color_interpretations)
    if (tile_format, compression) not in ONE_OR_THREE_BANDS or count in (1, 3):
        return None
    if count == 2:
        return (0,)
    wanted = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)
    if all(c in color_interpretations for c in wanted):
        return tuple(color_interpretations.index(c) for c in wanted)
    return (0, 1, 2)


def plan_radiometry(dataset: gdal.Dataset, tile_format: str, compression: str) -> TileRadiometry:
    """Decide the band choice and, where needed, measure the stretch of an image (one sample read)."""
    interpretations = [dataset.GetRasterBand(i + 1).GetColorInterpretation() for i in range(dataset.RasterCount)]
    bands = band_choice(tile_format, compression, interpretations)
    data_type = gdal.GetDataTypeName(dataset.GetRasterBand(1).DataType)
    if not needs_stretch(tile_format, compression, data_type):
        return TileRadiometry(bands=bands)
    indices = list(bands) if bands is not None else list(range(dataset.RasterCount))
    return TileRadiometry(bands=bands, stretch=stretch_range(dataset, indices))


def stretch_range(dataset: gdal.Dataset, band_indices: list[int]) -> tuple[float, float]:
    """(2nd, 98th) percentile of the image's valid values in those bands, from one decimated sample."""
    values = _valid_values(dataset, band_indices)
    if values.size == 0:  # nothing but nodata: map the type's natural range
        data_type = dataset.GetRasterBand(band_indices[0] + 1).DataType
        return (0.0, 65535.0) if data_type == gdal.GDT_UInt16 else (0.0, 1.0)
    low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    low, high = float(low), float(high)
    if not high > low:  # a flat image: anything above it is white, it is black
        high = low + 1.0
    return low, high


def _valid_values(dataset: gdal.Dataset, band_indices: list[int]) -> np.ndarray:
    sample = sample_pixels(dataset, band_indices).astype(np.float64)
    keep = np.isfinite(sample)
    for position, index in enumerate(band_indices):
        nodata = dataset.GetRasterBand(index + 1).GetNoDataValue()
        if nodata is not None:
            keep[position] &= sample[position] != nodata
    return sample[keep]


def sample_pixels(dataset: gdal.Dataset, band_indices: list[int]) -> np.ndarray:
    """A deterministic decimated sample of the image's bands, shaped (bands, n, m)."""
    width, height = dataset.RasterXSize, dataset.RasterYSize
    band_list = [i + 1 for i in band_indices]
    has_overviews = dataset.GetRasterBand(band_list[0]).GetOverviewCount() > 0
    if has_overviews or width * height <= WHOLE_READ_LIMIT:
        factor = max(1.0, max(width, height) / SAMPLE_SIDE)
        buf_x, buf_y = max(1, round(width / factor)), max(1, round(height / factor))
        array = dataset.ReadAsArray(0, 0, width, height, buf_xsize=buf_x, buf_ysize=buf_y, band_list=band_list,
                                    resample_alg=gdal.GRIORA_NearestNeighbour)
        return np.asarray(array).reshape(len(band_list), buf_y, buf_x)
    block_x, block_y = dataset.GetRasterBand(band_list[0]).GetBlockSize()
    side_x, side_y = min(WINDOW_SIDE, width), min(WINDOW_SIDE, height)
    xs = _window_origins(width, side_x, block_x)
    ys = _window_origins(height, side_y, block_y)
    rows = []
    for y in ys:
        row = [np.asarray(dataset.ReadAsArray(x, y, side_x, side_y, band_list=band_list))
               .reshape(len(band_list), side_y, side_x) for x in xs]
        rows.append(np.concatenate(row, axis=2))
        dataset.FlushCache()  # the sampled blocks are not needed again: keep the block cache for the tiles
    return np.concatenate(rows, axis=1)


def _window_origins(length: int, side: int, block: int) -> list[int]:
    """Evenly spread window origins, moved back to the start of their block when a window fits in one."""
    origins = np.linspace(0, length - side, WINDOWS_PER_AXIS).round().astype(np.int64)
    if side <= block:
        origins = np.minimum(origins // block * block, length - side)
    return [int(v) for v in origins]
