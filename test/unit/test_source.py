"""imagery/source.py: GDAL's process-wide options, where the operator's environment wins."""

from __future__ import annotations

from osgeo import gdal


def test_gdal_options_in_the_environment_win_over_ours(monkeypatch):
    import modelrunner.imagery.source as source

    monkeypatch.setattr(source.GDAL_CONFIG, "done", False)
    monkeypatch.setenv("GDAL_CACHEMAX", "77")
    before = gdal.GetConfigOption("GDAL_CACHEMAX")
    gdal.SetConfigOption("GDAL_CACHEMAX", None)
    try:
        source.configure_gdal()
        assert gdal.GetConfigOption("GDAL_CACHEMAX") == "77"
        assert gdal.GetConfigOption("CPL_VSIL_CURL_CACHE_SIZE") == source.GDAL_OPTIONS["CPL_VSIL_CURL_CACHE_SIZE"]
    finally:
        gdal.SetConfigOption("GDAL_CACHEMAX", before)
