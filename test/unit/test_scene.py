"""Tests of the synthetic scene generator: determinism, pixels vs ground truth, georeferencing, NITF, RPC."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from modelrunner.local.scene import Scene, format_rpc00b, linear_rpc, main, make_scene

gdal.UseExceptions()


def digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def world_points(path: str, width: int, height: int) -> np.ndarray:
    """Pixel -> EPSG:4326 through GDAL's default transformer (geotransform, or RPC when there is none)."""
    transformer = gdal.Transformer(gdal.Open(path), None, ["DST_SRS=EPSG:4326"])
    pixels = [(x, y) for x in np.linspace(0, width, 9) for y in np.linspace(0, height, 7)]
    pixels += [(0.5, 0.5), (width - 0.5, height - 0.5), (123.25, 456.75)]
    out = []
    for x, y in pixels:
        ok, point = transformer.TransformPoint(0, float(x), float(y))
        assert ok
        out.append(point[:2])
    return np.array(out)


# ---------- determinism, pixels


@pytest.mark.parametrize("driver", ["GTiff", "NITF"])
def test_same_seed_same_bytes(tmp_path: Path, driver: str) -> None:
    first = make_scene(tmp_path / "a", 700, 600, seed=4, driver=driver)
    second = make_scene(tmp_path / "b", 700, 600, seed=4, driver=driver)
    third = make_scene(tmp_path / "c", 700, 600, seed=5, driver=driver)
    assert digest(first.path) == digest(second.path)
    assert first.objects == second.objects
    assert digest(first.path) != digest(third.path)
    assert first.objects != third.objects


def test_objects_are_bright_rectangles_on_a_dark_background(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "s.tif", 1030, 770, seed=2)
    assert len(scene.objects) == round(1030 * 770 / 65536)
    luminance = gdal.Open(scene.path).ReadAsArray().mean(axis=0)
    mask = np.zeros(luminance.shape, dtype=bool)
    for minx, miny, maxx, maxy in scene.objects:
        assert 0 <= minx < maxx <= scene.width and 0 <= miny < maxy <= scene.height
        assert 20 <= maxx - minx <= 60 and 20 <= maxy - miny <= 60
        x0, y0, x1, y1 = int(minx), int(miny), int(maxx), int(maxy)
        assert luminance[y0:y1, x0:x1].min() >= 140
        mask[y0:y1, x0:x1] = True
    assert luminance[~mask].max() < 80
    # Objects never touch: at least 16 px apart, so a detector sees one blob per object.
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1 :]:
            gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
            assert gap >= 16


def test_object_layout_options(tmp_path: Path) -> None:
    """Larger objects in larger cells, and packed objects 2 px apart that the objects model still tells apart."""
    large = make_scene(tmp_path / "l.tif", 1000, 1000, seed=3, object_sides=(80, 200), object_cell=250)
    sides = np.array([(b[2] - b[0], b[3] - b[1]) for b in large.objects])
    assert len(large.objects) == round(1000 * 1000 / 65536) and sides.min() >= 80 and sides.max() <= 200
    packed = make_scene(tmp_path / "p.tif", 480, 480, seed=4, object_sides=(46, 46), object_cell=48,
                        object_margin=1, object_count=30)
    gaps = [max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
            for i, a in enumerate(packed.objects) for b in packed.objects[i + 1:]]
    assert min(gaps) == 2
    luminance = gdal.Open(packed.path).ReadAsArray().mean(axis=0)
    for x0, y0, x1, y1 in packed.objects:
        assert luminance[int(y0):int(y1), int(x0):int(x1)].min() >= 140
    default = make_scene(tmp_path / "d.tif", 700, 600, seed=4)
    explicit = make_scene(tmp_path / "e.tif", 700, 600, seed=4, object_sides=(20, 60), object_cell=96,
                          object_margin=8)
    assert digest(default.path) == digest(explicit.path), "the defaults are the layout every test relies on"


def test_tiled_geotiff_layout_and_georeferencing(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "s.tif", 1300, 1100)
    dataset = gdal.Open(scene.path)
    assert (dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount) == (1300, 1100, 3)
    assert dataset.GetRasterBand(1).GetBlockSize() == [512, 512]
    assert dataset.GetMetadataItem("INTERLEAVE", "IMAGE_STRUCTURE") == "PIXEL"
    assert dataset.GetGeoTransform() == pytest.approx(scene.geotransform, abs=1e-12)
    assert scene.geotransform == (-77.05, 1e-5, 0.0, 38.9, 0.0, -1e-5)
    assert dataset.GetSpatialRef().GetAuthorityCode(None) == "4326"
    assert scene.pixel_to_world(1300, 1100) == pytest.approx((-77.05 + 0.013, 38.9 - 0.011))


def test_projected_utm_scene(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "utm.tif", 1000, 800, epsg=32618)
    x0, size, _, y0, _, neg = scene.geotransform
    assert size == 1.0 and neg == -1.0
    assert x0 == 500000 - 500  # centred on the zone's central meridian, whole metres
    assert 4_300_000 < y0 < 4_320_000  # about 38.9 N
    dataset = gdal.Open(scene.path)
    assert dataset.GetSpatialRef().GetAuthorityCode(None) == "32618"
    assert dataset.GetGeoTransform() == pytest.approx(scene.geotransform)


@pytest.mark.parametrize("driver", ["GTiff", "NITF"])
def test_sixteen_bit_four_band_scene(tmp_path: Path, driver: str) -> None:
    eight = make_scene(tmp_path / "eight", 600, 500, seed=9, bands=4, driver=driver)
    sixteen = make_scene(tmp_path / "sixteen", 600, 500, seed=9, bands=4, dtype="uint16", driver=driver)
    dataset = gdal.Open(sixteen.path)
    assert dataset.RasterCount == 4
    assert dataset.GetRasterBand(1).DataType == gdal.GDT_UInt16
    pixels = dataset.ReadAsArray()
    np.testing.assert_array_equal(pixels, gdal.Open(eight.path).ReadAsArray().astype(np.uint16) * 257)
    assert sixteen.objects == eight.objects
    if driver == "NITF":
        assert dataset.GetMetadataItem("NITF_ABPP") == "16"
        assert dataset.GetMetadataItem("NITF_IREP") == "MULTI"
        assert dataset.GetMetadataItem("NITF_ICAT") == "MS"


def test_float_and_single_band_scene(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "f.tif", 300, 300, bands=1, dtype="float32", object_count=3)
    pixels = gdal.Open(scene.path).ReadAsArray()
    assert pixels.dtype == np.float32 and pixels.shape == (300, 300)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert len(scene.objects) == 3


# ---------- NITF and RPC


def test_nitf_rpc_scene_matches_the_geotiff_world_coordinates(tmp_path: Path) -> None:
    geotiff = make_scene(tmp_path / "g.tif", 1234, 987, seed=3)
    nitf = make_scene(tmp_path / "n.ntf", 1234, 987, seed=3, driver="NITF", rpc=True)
    dataset = gdal.Open(nitf.path)
    assert dataset.GetGeoTransform(can_return_null=True) is None
    assert dataset.GetMetadataItem("NITF_ICORDS") in ("", None)  # no IGEOLO: the RPC is the georeferencing
    assert "RPC00B" in (dataset.GetMetadata("TRE") or {})
    assert dataset.GetMetadataItem("NITF_FTITLE").startswith("modelrunner synthetic scene")
    assert dataset.GetMetadataItem("NITF_IDATIM") == "20240601120000"
    assert dataset.GetMetadataItem("NITF_ICAT") == "VIS"
    np.testing.assert_array_equal(dataset.ReadAsArray(), gdal.Open(geotiff.path).ReadAsArray())
    assert nitf.objects == geotiff.objects and nitf.geotransform == geotiff.geotransform
    difference = np.abs(world_points(nitf.path, 1234, 987) - world_points(geotiff.path, 1234, 987))
    assert difference.max() < 1e-7


def test_geotiff_rpc_scene_matches_too(tmp_path: Path) -> None:
    geotiff = make_scene(tmp_path / "g.tif", 800, 640, seed=1)
    rpc = make_scene(tmp_path / "r.tif", 800, 640, seed=1, rpc=True)
    dataset = gdal.Open(rpc.path)
    assert dataset.GetGeoTransform(can_return_null=True) is None
    assert dataset.GetMetadata("RPC")["SAMP_NUM_COEFF"].split()[1] == "1"
    difference = np.abs(world_points(rpc.path, 800, 640) - world_points(geotiff.path, 800, 640))
    assert difference.max() < 1e-7


def test_linear_rpc_is_rpc00b_exact() -> None:
    rpc = linear_rpc((-77.05, 1e-5, 0.0, 38.9, 0.0, -1e-5), 13000, 12500)
    assert float(rpc["SAMP_NUM_COEFF"].split()[1]) == 1.0
    assert float(rpc["LINE_NUM_COEFF"].split()[2]) == -1.0
    assert rpc["HEIGHT_OFF"] == "0" and rpc["HEIGHT_SCALE"] == "1"
    assert rpc["LINE_DEN_COEFF"].split()[0] == rpc["SAMP_DEN_COEFF"].split()[0] == "1.0"
    tre = format_rpc00b(rpc)
    assert len(tre) == 1041
    assert tre[15:26] == "00625006500"  # LINE_OFF, SAMP_OFF: whole pixels
    assert tre[26:43] == "+38.8375-076.9850"  # LAT_OFF, LONG_OFF: the scene centre, 4 decimals


def test_nitf_without_rpc_gets_igeolo_and_an_exact_geotransform(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "n.ntf", 1000, 700, driver="NITF", bands=1)
    dataset = gdal.Open(scene.path)
    assert dataset.GetMetadataItem("NITF_ICORDS") == "G"
    assert (
        dataset.GetMetadataItem("NITF_IGEOLO")
        == "385400N0770300W385400N0770224W385335N0770224W385335N0770300W"
    )
    assert dataset.GetMetadataItem("NITF_IREP") == "MONO"
    assert dataset.GetGeoTransform() == pytest.approx(scene.geotransform, abs=1e-12)  # from GEOLOB


def test_nitf_utm_scene_has_utm_igeolo(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "u.ntf", 500, 400, driver="NITF", epsg=32618)
    dataset = gdal.Open(scene.path)
    assert dataset.GetMetadataItem("NITF_ICORDS") == "N"
    assert dataset.GetMetadataItem("NITF_IGEOLO").startswith("18")
    assert dataset.GetGeoTransform()[0] == pytest.approx(scene.geotransform[0], abs=1.0)


# ---------- errors, CLI


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rpc": True, "epsg": 32618},
        {"driver": "JPEG"},
        {"dtype": "int64"},
        {"driver": "NITF", "epsg": 3857},
        {"object_count": 10_000},
        {"compress": "DEFLATE", "driver": "NITF"},
        {"bands": 0},
        {"object_sides": (50, 90)},  # 90 + 2 * 8 does not fit a 96 px cell
        {"object_sides": (0, 10)},
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_scene(tmp_path / "bad", 300, 300, **kwargs)  # type: ignore[arg-type]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, truth = tmp_path / "cli.ntf", tmp_path / "truth.json"
    assert (
        main([str(out), "--width", "640", "--height", "480", "--seed", "3", "--rpc", "--truth", str(truth)])
        == 0
    )
    assert "NITF (RPC)" in capsys.readouterr().out
    described = json.loads(truth.read_text())
    expected: Scene = make_scene(tmp_path / "same.ntf", 640, 480, seed=3, driver="NITF", rpc=True)
    assert described["objects"] == [list(box) for box in expected.objects]
    assert digest(out) == digest(expected.path)
    assert main([str(tmp_path / "x.tif"), "--width", "64", "--height", "64", "--rpc", "--epsg", "32618"]) == 2
