"""imagery/encode.py: GTiff tiles written without a translation copy keep their pixels, georeference and band
meanings whatever the memory layout."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal

from modelrunner.imagery.encode import encode_tile
from modelrunner.imagery.geolocate import Georeference


@pytest.mark.parametrize("layout", ["band-sequential", "pixel-interleaved", "strided"])
def test_gtiff_tiles_keep_pixels_and_georeference_whatever_the_memory_layout(layout):
    rng = np.random.default_rng(1)
    by_pixel = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    pixels = {"band-sequential": np.ascontiguousarray(by_pixel.transpose(2, 0, 1)),
              "pixel-interleaved": by_pixel.transpose(2, 0, 1),
              "strided": np.ascontiguousarray(by_pixel.transpose(2, 0, 1))[:, ::2, ::2]}[layout]
    georef = Georeference(geotransform=(10.0, 0.5, 0.0, 20.0, 0.0, -0.5), projection=_wgs84())
    data = encode_tile(pixels, "GTIFF", "NONE", georef.for_chip(4, 6))
    gdal.FileFromMemBuffer("/vsimem/layout.tif", data)
    try:
        tile = gdal.Open("/vsimem/layout.tif")
        assert np.array_equal(tile.ReadAsArray(), pixels)
        assert tile.GetGeoTransform() == pytest.approx((12.0, 0.5, 0.0, 17.0, 0.0, -0.5))
        assert [tile.GetRasterBand(i).GetColorInterpretation() for i in (1, 2, 3)] == \
            [gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand]
        tile = None
    finally:
        gdal.Unlink("/vsimem/layout.tif")


def _wgs84() -> str:
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    return srs.ExportToWkt()


@pytest.mark.parametrize(("bands", "dtype", "interpretation"), [
    (3, np.uint8, [gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand]),
    (4, np.uint8, [gdal.GCI_GrayIndex, gdal.GCI_Undefined, gdal.GCI_Undefined, gdal.GCI_Undefined]),
    (3, np.uint16, [gdal.GCI_GrayIndex, gdal.GCI_Undefined, gdal.GCI_Undefined]),
])
def test_gtiff_tiles_never_call_a_fourth_band_alpha(bands, dtype, interpretation):
    pixels = np.arange(bands * 32 * 32, dtype=dtype).reshape(bands, 32, 32)
    gdal.FileFromMemBuffer("/vsimem/bands.tif", encode_tile(pixels, "GTIFF", "NONE"))
    try:
        tile = gdal.Open("/vsimem/bands.tif")
        assert [tile.GetRasterBand(i + 1).GetColorInterpretation() for i in range(bands)] == interpretation
        assert all(tile.GetRasterBand(i + 1).GetMaskFlags() == gdal.GMF_ALL_VALID for i in range(bands))
        assert np.array_equal(tile.ReadAsArray(), pixels)
        tile = None
    finally:
        gdal.Unlink("/vsimem/bands.tif")
