"""imagery/context.py: one open image with its geolocator, closed together on every path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from modelrunner.errors import ImageError
from modelrunner.imagery.context import ImageContext
from modelrunner.local.scene import make_scene

gdal.UseExceptions()

SECRET = ("/vsis3/bucket/a.tif", "AWS_SECRET_ACCESS_KEY")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok"}


def _serve(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """``s3://bucket/a.tif`` opens the local ``path`` (GDAL's own OpenEx, called with a local path)."""
    open_ex = gdal.OpenEx
    monkeypatch.setattr(gdal, "OpenEx", lambda _path, flags, allowed_drivers: open_ex(path, flags,
                                                                                     allowed_drivers=allowed_drivers))


def test_the_context_holds_the_image_its_georeference_and_geolocator(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "a.tif", 300, 200, seed=1)
    with ImageContext.open(scene.path) as image:
        assert image.source.info.width == 300 and image.georef.kind == "AFFINE"
        assert image.geolocator is not None and not image.geolocator.uses_dem
        lon, lat, _ = image.geolocator.to_world([(0.0, 0.0)])[0]
        assert (lon, lat) == pytest.approx(scene.geotransform[0::3], abs=1e-9)
    assert image.source.dataset is None
    with pytest.raises(ImageError, match="closed"):
        image.geolocator.to_world([(0.0, 0.0)])


def test_an_image_without_georeferencing_has_no_geolocator(tmp_path: Path) -> None:
    path = str(tmp_path / "plain.tif")
    dataset = gdal.GetDriverByName("GTiff").Create(path, 16, 16, 1)
    dataset.WriteArray(np.zeros((16, 16), np.uint8))
    dataset = None
    with ImageContext.open(path) as image:
        assert image.geolocator is None and image.georef.kind == "NONE"


def test_read_credentials_last_until_the_context_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, make_scene(tmp_path / "a.tif", 64, 64, seed=2).path)
    with ImageContext.open("s3://bucket/a.tif", credentials=CREDENTIALS) as image:
        assert image.geolocator is not None
        assert gdal.GetPathSpecificOption(*SECRET, None) == "s3cr3t"
    assert gdal.GetPathSpecificOption(*SECRET, None) != "s3cr3t"


def test_an_unusable_dem_closes_the_image_and_releases_its_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, make_scene(tmp_path / "r.tif", 64, 64, seed=3, rpc=True).path)
    with pytest.raises(ImageError, match="does not exist"):
        ImageContext.open("s3://bucket/a.tif", credentials=CREDENTIALS, dem_location=str(tmp_path / "no-dem"))
    assert gdal.GetPathSpecificOption(*SECRET, None) != "s3cr3t"


def test_an_rpc_image_with_a_dem_says_so_and_its_heights_are_the_dems(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "r.tif", 64, 64, seed=4, rpc=True)
    dem = str(tmp_path / "dem.tif")
    dataset = gdal.GetDriverByName("GTiff").Create(dem, 20, 20, 1, gdal.GDT_Float32)
    dataset.SetGeoTransform((-77.06, 0.001, 0.0, 38.91, 0.0, -0.001))
    dataset.SetProjection("EPSG:4326")
    dataset.GetRasterBand(1).WriteArray(np.full((20, 20), 125.0, np.float32))
    del dataset  # closing writes the file
    with ImageContext.open(scene.path, dem_location=dem) as image:
        assert image.geolocator is not None and image.geolocator.uses_dem
        assert image.geolocator.to_world([(10.0, 10.0)])[0, 2] == pytest.approx(125.0)
    with ImageContext.open(scene.path) as image:
        assert image.geolocator is not None and not image.geolocator.uses_dem
