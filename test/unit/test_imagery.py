"""Input imagery breadth: formats, bands, pixel types, geolocation (geotransform, RPC, DEM), ROI planning,
georegistration and worker memory on a huge image."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import shapely
from osgeo import gdal, osr

from modelrunner.config import Settings
from modelrunner.errors import ImageError, RequestError
from modelrunner.imagery import elevation
from modelrunner.imagery.elevation import resolve_dem
from modelrunner.imagery.formats import jpeg2000_writer
from modelrunner.imagery.geolocate import Geolocator, Georeference
from modelrunner.imagery.source import ImageSource, nitf_source_metadata
from modelrunner.local.scene import linear_rpc, make_scene
from modelrunner.requests import ImageRequest
from modelrunner.runner.plan import plan_image

gdal.UseExceptions()

W, H = 700, 600


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """One scene (same seed, same pixels) in every input form."""
    root = tmp_path_factory.mktemp("inputs")
    tif = make_scene(str(root / "scene.tif"), W, H, seed=5, compress="DEFLATE")
    out = {"gtiff": tif.path}
    out["nitf_rpc"] = make_scene(str(root / "rpc.ntf"), W, H, seed=5, driver="NITF", rpc=True).path
    out["gtiff_rpc"] = make_scene(str(root / "rpc.tif"), W, H, seed=5, rpc=True).path
    out["nitf_igeolo"] = make_scene(str(root / "igeolo.ntf"), W, H, seed=5, driver="NITF").path
    gdal.Translate(str(root / "cog.tif"), tif.path, format="COG",
                   creationOptions=["BLOCKSIZE=256", "COMPRESS=LZW", "OVERVIEWS=AUTO"])
    out["cog"] = str(root / "cog.tif")
    gdal.Translate(str(root / "jpeg.ntf"), out["nitf_rpc"], format="NITF",
                   creationOptions=["IC=C3", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "QUALITY=95"])
    out["nitf_jpeg"] = str(root / "jpeg.ntf")
    if jpeg2000_writer() == "JP2OpenJPEG":
        gdal.Translate(str(root / "scene.jp2"), tif.path, format="JP2OpenJPEG",
                       creationOptions=["REVERSIBLE=YES", "QUALITY=100", "BLOCKXSIZE=256", "BLOCKYSIZE=256"])
        out["jp2"] = str(root / "scene.jp2")
    return tif, out


@pytest.mark.parametrize(("name", "kind", "lossless"), [
    ("gtiff", "AFFINE", True), ("cog", "AFFINE", True), ("nitf_igeolo", "AFFINE", True),
    ("nitf_rpc", "RPC", True), ("gtiff_rpc", "RPC", True), ("nitf_jpeg", "RPC", False), ("jp2", "AFFINE", True)])
def test_every_input_form_opens_reads_and_geolocates(scenes, name, kind, lossless):
    scene, paths = scenes
    if name not in paths:
        pytest.skip("no JPEG 2000 driver in this GDAL")
    truth = gdal.Open(scene.path).ReadAsArray(300, 200, 128, 96)
    with ImageSource.open(paths[name]) as source:
        assert (source.info.width, source.info.height, source.info.band_count) == (W, H, 3)
        window = source.read(300, 200, 128, 96)
        if lossless:
            assert np.array_equal(window, truth)
        else:
            assert np.abs(window.astype(int) - truth).mean() < 8  # JPEG (quality 95) of pure noise
        georef = Georeference.of(source.dataset)
        assert georef.kind == kind
        geolocator = Geolocator.for_dataset(source.dataset)
        points = np.array([(0.0, 0.0), (123.25, 456.5), (W, H)])
        got = geolocator.to_world(points)
        # GDAL's own transformer of the same file and pixels (default options).
        expected, _ = gdal.Transformer(source.dataset, None, ["DST_SRS=EPSG:4326"]).TransformPoints(0, points)
        assert np.abs(got[:, :2] - np.array(expected)[:, :2]).max() < 1e-7
        assert np.all(got[:, 2] == 0.0)
        if name in ("gtiff", "cog", "nitf_rpc", "gtiff_rpc", "jp2"):  # exact georeferencing: the scene's own
            lonlat = [scene.pixel_to_world(x, y) for x, y in points]
            assert np.abs(got[:, :2] - np.array(lonlat)).max() < 1e-7


def test_geotiff_and_nitf_rpc_of_one_scene_geolocate_the_same(scenes):
    _, paths = scenes
    grid = np.array([(x, y) for x in np.linspace(0, W, 9) for y in np.linspace(0, H, 7)]) + 0.37
    with ImageSource.open(paths["gtiff"]) as a, ImageSource.open(paths["nitf_rpc"]) as b:
        world_a = Geolocator.for_dataset(a.dataset).to_world(grid)
        world_b = Geolocator.for_dataset(b.dataset).to_world(grid)
        assert np.abs(world_a - world_b).max() < 1e-7
        # and back: the ROI direction
        assert np.abs(Geolocator.for_dataset(b.dataset).to_pixel(world_b[:, :2]) - grid).max() < 1e-3


@pytest.mark.parametrize("bands", [1, 3, 4])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_bands_and_pixel_types(tmp_path, bands, dtype):
    scene = make_scene(str(tmp_path / "s.tif"), 300, 200, seed=1, bands=bands, dtype=dtype)
    with ImageSource.open(scene.path) as source:
        assert source.info.band_count == bands
        assert source.info.data_type == {"uint8": "Byte", "uint16": "UInt16", "float32": "Float32"}[dtype]
        window = source.read(10, 20, 50, 40)
        assert window.shape == (bands, 40, 50) and str(window.dtype) == dtype


@pytest.mark.parametrize("epsg", [4326, 32618, 3857])
def test_the_geotransform_shortcut_gives_gdal_s_numbers_or_is_not_taken(tmp_path, epsg):
    """A WGS84 geotransform is applied without GDAL's bindings, bit for bit what GDAL's transformer gives (at
    pixels it was not probed with, fractions and outside the image included); a projected image keeps GDAL's
    transformer (it reprojects)."""
    scene = make_scene(str(tmp_path / "s.tif"), 500, 400, seed=3, epsg=epsg)
    with ImageSource.open(scene.path) as source:
        geolocator = Geolocator.for_dataset(source.dataset)
        assert geolocator is not None and (geolocator._affine is not None) == (epsg == 4326)
        pixels = np.random.default_rng(11).uniform(-100, 600, (5000, 2)).round(3)
        expected, _ = gdal.Transformer(source.dataset, None, ["DST_SRS=EPSG:4326"]).TransformPoints(0, pixels.tolist())
        got = geolocator.to_world(pixels)
        assert np.array_equal(got[:, :2], np.array(expected)[:, :2]) and np.all(got[:, 2] == 0.0)
        geolocator.close()
        with pytest.raises(ImageError, match="closed"):
            geolocator.to_world(pixels[:1])


def test_utm_input_is_reprojected_to_wgs84(tmp_path):
    scene = make_scene(str(tmp_path / "utm.tif"), 400, 300, seed=2, epsg=32618)
    with ImageSource.open(scene.path) as source:
        got = Geolocator.for_dataset(source.dataset).to_world(np.array([(0.0, 0.0), (399.5, 299.5)]))
    utm, wgs = osr.SpatialReference(), osr.SpatialReference()
    utm.ImportFromEPSG(32618)
    wgs.ImportFromEPSG(4326)
    wgs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_wgs = osr.CoordinateTransformation(utm, wgs)
    for (x, y), (lon, lat, _) in zip([(0.0, 0.0), (399.5, 299.5)], got, strict=True):
        expected = to_wgs.TransformPoint(*scene.pixel_to_world(x, y))
        assert abs(lon - expected[0]) < 1e-9 and abs(lat - expected[1]) < 1e-9
    assert -75.1 < got[0, 0] < -74.9 and 38.8 < got[0, 1] < 39.0  # zone 18 N central meridian, 38.9 N


def test_unusable_georeferencing_means_pixels_only_not_a_failed_job(caplog):
    ds = gdal.GetDriverByName("MEM").Create("", 100, 100, 1)
    ds.SetMetadata({"LINE_OFF": "1", "SAMP_OFF": "nonsense"}, "RPC")
    assert Georeference.of(ds).kind == "RPC"
    assert Geolocator.for_dataset(ds) is None
    assert "not usable" in caplog.text
    assert Geolocator.for_dataset(gdal.GetDriverByName("MEM").Create("", 10, 10, 1)) is None


def test_nitf_source_metadata(scenes):
    _, paths = scenes
    with ImageSource.open(paths["nitf_rpc"]) as source:
        (meta,) = nitf_source_metadata(source)
    assert meta == {"location": paths["nitf_rpc"], "format": "NITF", "category": "VIS",
                    "sourceId": f"modelrunner synthetic scene seed=5 {W}x{H}x3 uint8",
                    "sourceDT": "2024-06-01T12:00:00Z"}
    with ImageSource.open(paths["gtiff"]) as source:
        assert nitf_source_metadata(source) is None


# Elevation ---------------------------------------------------------------------------------------------


def height_dependent_rpc_image(tmp_path) -> gdal.Dataset:
    """A GeoTIFF whose RPC moves the ground point with height (a look angle), so a DEM changes lon/lat."""
    rpc = linear_rpc((-77.05, 1e-5, 0.0, 38.9, 0.0, -1e-5), 1000, 800)
    samp = [float(v) for v in rpc["SAMP_NUM_COEFF"].split()]
    line = [float(v) for v in rpc["LINE_NUM_COEFF"].split()]
    samp[3], line[3] = 0.02, -0.01  # H term: 500 m of height moves the image point by ~10 px
    rpc.update(SAMP_NUM_COEFF=" ".join(map(repr, samp)), LINE_NUM_COEFF=" ".join(map(repr, line)),
               HEIGHT_OFF="0", HEIGHT_SCALE="500")
    path = str(tmp_path / "rpc-h.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 1000, 800, 1)
    ds.SetMetadata(rpc, "RPC")
    ds = None
    return gdal.Open(path)


def write_dem(path: str, origin: tuple[float, float], size: tuple[int, int], step: float, height) -> None:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    ds = gdal.GetDriverByName("GTiff").Create(path, size[0], size[1], 1, gdal.GDT_Float32)
    ds.SetGeoTransform((origin[0], step, 0.0, origin[1], 0.0, -step))
    ds.SetProjection(srs.ExportToWkt())
    cols, rows = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    lon = origin[0] + (cols + 0.5) * step
    ds.GetRasterBand(1).WriteArray(height(lon).astype(np.float32))
    ds = None


def slope(lon: np.ndarray) -> np.ndarray:
    return 200.0 + (lon + 77.05) * 20000.0  # 200 m at the image's west edge, rising 0.2 m per 1e-5 degree


@pytest.fixture
def dem_folder(tmp_path):
    """The same slope as one file and as a folder of 2 x 2 tiles (plus a file that is not a tile)."""
    single = str(tmp_path / "dem.tif")
    write_dem(single, (-77.06, 38.91), (60, 60), 0.0005, slope)
    folder = tmp_path / "srtm" / "N38"
    folder.mkdir(parents=True)
    for i, (x, y) in enumerate([(-77.06, 38.91), (-77.045, 38.91), (-77.06, 38.895), (-77.045, 38.895)]):
        write_dem(str(folder / f"tile{i}.dt.tif"), (x, y), (30, 30), 0.0005, slope)
    (folder / "README.txt").write_text("not a tile")
    return single, str(tmp_path / "srtm")


def test_dem_file_and_tile_folder_give_gdal_rpc_dem_results(tmp_path, dem_folder):
    single, folder = dem_folder
    ds = height_dependent_rpc_image(tmp_path)
    pixels = np.array([(10.0, 10.0), (500.5, 400.25), (990.0, 790.0)])
    reference = gdal.Transformer(ds, None, ["DST_SRS=EPSG:4326", "METHOD=RPC", f"RPC_DEM={single}",
                                            "RPC_DEMINTERPOLATION=bilinear", "RPC_PIXEL_ERROR_THRESHOLD=0.000001"])
    expected = np.array(reference.TransformPoints(0, pixels)[0])
    flat = Geolocator.for_dataset(ds).to_world(pixels)
    assert np.abs(flat[:, :2] - expected[:, :2]).max() > 1e-5, "the DEM matters for this RPC"
    for location, extension in ((single, None), (folder, ".tif"), (folder, "tif")):
        world = Geolocator.for_dataset(ds, location, extension).to_world(pixels)
        assert np.abs(world[:, :2] - expected[:, :2]).max() < 1e-7
        assert world[:, 2] == pytest.approx(slope(world[:, 0]), abs=1e-3), "elevation is the DEM's height"
    assert resolve_dem(folder, ".tif") == resolve_dem(folder, "tif"), "the mosaic is built once per process"
    assert resolve_dem(folder, ".tif").startswith("/vsimem/")
    assert len(gdal.Open(resolve_dem(folder, ".tif")).GetFileList()) == 5  # the VRT and its 4 tiles
    # Affine images ignore the DEM (their mapping does not depend on height).
    mem = gdal.GetDriverByName("MEM").Create("", 10, 10, 1)
    mem.SetGeoTransform((-77.05, 1e-5, 0, 38.9, 0, -1e-5))
    mem.SetProjection(osr.SRS_WKT_WGS84_LAT_LONG)
    assert Geolocator.for_dataset(mem, single).to_world(np.array([(1.0, 1.0)]))[0, 2] == 0.0


def test_points_outside_the_dem_use_height_zero(tmp_path):
    ds = height_dependent_rpc_image(tmp_path)
    small = str(tmp_path / "small.tif")
    write_dem(small, (-77.0500, 38.9000), (4, 4), 0.0005, slope)  # covers only the image's north-west corner
    world = Geolocator.for_dataset(ds, small).to_world(np.array([(990.0, 790.0)]))
    flat = Geolocator.for_dataset(ds).to_world(np.array([(990.0, 790.0)]))
    assert np.abs(world - flat).max() < 1e-9


def test_bad_elevation_locations_are_errors(tmp_path):
    ds = height_dependent_rpc_image(tmp_path)
    with pytest.raises(ImageError, match="does not exist"):
        Geolocator.for_dataset(ds, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match=r"no \*\.hgt elevation tiles"):
        Geolocator.for_dataset(ds, str(tmp_path / "empty"), ".hgt")


def test_elevation_settings(monkeypatch):
    base = {"AWS_DEFAULT_REGION": "r", "JOB_TABLE": "j", "REGION_REQUEST_TABLE": "r", "FEATURE_TABLE": "f",
            "IMAGE_QUEUE": "i", "REGION_QUEUE": "q", "WORKERS": "2"}
    settings = Settings.from_env({**base, "ELEVATION_DATA_LOCATION": "s3://dem/srtm",
                                  "ELEVATION_DATA_EXTENSION": "hgt"})
    assert (settings.elevation_data_location, settings.elevation_data_extension) == ("s3://dem/srtm", ".hgt")
    assert Settings.from_env(base).elevation_data_extension == ".tif"
    monkeypatch.setenv("ELEVATION_DATA_EXTENSION", "dt2")
    assert elevation.normalise_extension(None) == ".tif", "only config.Settings reads the environment"
    assert elevation.normalise_extension("dt2") == elevation.normalise_extension(".dt2") == ".dt2"


# georegistration ---------------------------------------------------------------------------------------


def image_request(**extra):
    raw = {"jobId": "j", "imageUrls": ["s3://b/k.tif"], "imageProcessor": {"name": "ep"},
           "outputs": [{"type": "S3", "bucket": "b", "prefix": ""}], **extra}
    return ImageRequest.from_dict(raw)


def test_georegistration_option():
    assert image_request().georegistration == "AUTO"
    assert "georegistration" not in image_request().to_dict(), "the reference's wire form is unchanged"
    none = image_request(georegistration="NONE")
    assert none.georegistration == "NONE"
    assert ImageRequest.from_dict(json.loads(json.dumps(none.to_dict()))) == none
    with pytest.raises(RequestError, match="georegistration: must be one of AUTO, NONE"):
        image_request(georegistration="OFF")
    with pytest.raises(RequestError, match="georegistration: NONE cannot be combined with a regionOfInterest"):
        image_request(georegistration="NONE", regionOfInterest="POLYGON((0 0, 1 0, 1 1, 0 0))")


# Region of interest ------------------------------------------------------------------------------------


def roi_box(scene, x0, y0, x1, y1) -> str:
    (lon0, lat0), (lon1, lat1) = scene.pixel_to_world(x0, y0), scene.pixel_to_world(x1, y1)
    return shapely.box(lon0, lat1, lon1, lat0).wkt


@pytest.mark.parametrize("name", ["gtiff", "nitf_rpc"])
def test_roi_selects_regions_and_tiles(scenes, name):
    scene, paths = scenes
    with ImageSource.open(paths[name]) as source:
        geolocator = Geolocator.for_dataset(source.dataset)
        whole = plan_image(W, H, 256, 32, (500, 500), None, geolocator)
        inside = plan_image(W, H, 256, 32, (500, 500), roi_box(scene, 250, 250, 300, 300), geolocator)
        crossing = plan_image(W, H, 256, 32, (500, 500), roi_box(scene, 600, -100, 900, 100), geolocator)
        with pytest.raises(ImageError, match="regionOfInterest does not intersect the image"):
            plan_image(W, H, 256, 32, (500, 500), roi_box(scene, 800, 700, 900, 800), geolocator)
    assert len(whole.regions) == 4 and len(whole.grid) == 9
    kept = [t for r in inside.regions for t in inside.kept_tiles(r.cols, r.rows)]
    assert {(t.col, t.row) for t in kept} == {(t.col, t.row) for t in whole.grid.tiles() if inside.keeps(t)}
    assert all(t.col < 300 and t.col + t.width > 250 and t.row < 300 and t.row + t.height > 250 for t in kept)
    assert len(kept) == 4 and len(inside.regions) == 1
    crossing_tiles = [t for r in crossing.regions for t in crossing.kept_tiles(r.cols, r.rows)]
    assert {(t.col, t.row) for t in crossing_tiles} == {(444, 0)}
    assert [r.index for r in crossing.regions] == list(range(len(crossing.regions)))
    assert crossing.keeps_feature(shapely.box(650, 10, 660, 20))
    assert not crossing.keeps_feature(shapely.box(10, 10, 20, 20))


def test_roi_needs_a_sensor_model():
    with pytest.raises(ImageError, match="needs a georeferenced image"):
        plan_image(100, 100, 50, 10, (100, 100), "POLYGON((0 0, 1 0, 1 1, 0 0))", None)


def test_roi_planning_of_a_huge_grid_is_vectorised():
    ds = gdal.GetDriverByName("MEM").Create("", 1, 1, 1)
    ds.SetGeoTransform((0.0, 1e-5, 0.0, 0.0, 0.0, -1e-5))
    ds.SetProjection(osr.SRS_WKT_WGS84_LAT_LONG)
    geolocator = Geolocator.for_dataset(ds)
    roi = "POLYGON((0.1 -0.1, 1.9 -0.1, 1.9 -1.9, 0.1 -0.1))"  # a triangle over most of the image
    plan = plan_image(200_000, 200_000, 512, 32, (10240, 10240), roi, geolocator)
    assert 150 < len(plan.regions) < 400  # of 400: the regions wholly outside the triangle are not planned


# Memory on a huge image --------------------------------------------------------------------------------

_FIRST_TILES = textwrap.dedent("""
    import json, sys
    from modelrunner.imagery.encode import encode_tile
    from modelrunner.imagery.geolocate import Georeference, Geolocator
    from modelrunner.imagery.radiometry import plan_radiometry
    from modelrunner.imagery.source import ImageSource
    from modelrunner.features.convert import finish, geolocate, to_image_features
    from modelrunner.local.models import centerpoint
    from modelrunner.runner.plan import plan_image
    from modelrunner.runner.region import _strips

    path, tiles = sys.argv[1], int(sys.argv[2])
    with ImageSource.open(path) as source:
        info = source.info
        georef = Georeference.of(source.dataset)
        geolocator = Geolocator.for_dataset(source.dataset)
        plan = plan_image(info.width, info.height, 512, 32, (10240, 10240), None, geolocator)
        radiometry = plan_radiometry(source.dataset, "JPEG", "JPEG")
        region = plan.regions[0]
        rows = [plan.kept_tiles(region.cols, range(iy, iy + 1)) for iy in region.rows]
        done = 0
        for work in _strips(source, rows):
            tile = work.tile
            payload = encode_tile(radiometry.apply(work.pixels), "JPEG", "JPEG")
            features = to_image_features(centerpoint(payload), tile.col, tile.row)
            geolocate(features, geolocator.to_world)
            finish(features, job_id="j", inference_dt="2026-01-01T00:00:00Z")
            done += 1
            if done == tiles:
                break
    status = open("/proc/self/status").read()
    peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    print(json.dumps({"regions": len(plan.regions), "tiles": len(plan.grid), "done": done, "peak_kib": peak_kib,
                      "stretch": radiometry.stretch}))
""")


def sparse_image(path: str, size: int) -> None:
    """A sparse tiled GeoTIFF (blocks never written read as 0) with one written block, 512 x 512 blocks."""
    ds = gdal.GetDriverByName("GTiff").Create(path, size, size, 3, gdal.GDT_UInt16,
                                              ["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "SPARSE_OK=TRUE",
                                               "BIGTIFF=YES"])
    ds.SetGeoTransform((-77.0, 1e-6, 0.0, 39.0, 0.0, -1e-6))
    ds.SetProjection(osr.SRS_WKT_WGS84_LAT_LONG)
    ds.GetRasterBand(1).WriteArray(np.full((512, 512), 900, np.uint16), 0, 0)
    ds = None


def first_tiles(path: str, tiles: int) -> dict[str, int]:
    answer = subprocess.run([sys.executable, "-c", _FIRST_TILES, path, str(tiles)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert answer.returncode == 0, answer.stderr[-2000:]
    return json.loads(answer.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_huge_image_is_planned_and_processed_in_bounded_memory(tmp_path):
    huge, small = str(tmp_path / "huge.tif"), str(tmp_path / "small.tif")
    sparse_image(huge, 200_000)
    sparse_image(small, 20_000)
    big = first_tiles(huge, 42)
    ref = first_tiles(small, 42)
    assert (big["tiles"], big["regions"], big["done"]) == (417 * 417, 400, 42)
    assert (ref["regions"], ref["done"]) == (4, 42)
    # 100 x the pixels, the same memory: the peak depends on the region's strip and the bounded caches. The
    # one thing that scales is libtiff's tile index (16 bytes per block, 2.4 MB here), loaded on first read.
    # The margin allows for allocator noise on a loaded machine (seen up to ~8 MB); growth with the image
    # would be hundreds of MB.
    assert big["peak_kib"] - ref["peak_kib"] < 24 * 1024, (big, ref)
    assert big["peak_kib"] < 320 * 1024, big


# The stretch is stored once per job ----------------------------------------------------------------------


def test_the_first_region_stores_the_stretch_and_every_other_region_uses_it(moto_aws, tmp_path):
    import boto3

    from modelrunner.imagery.radiometry import TileRadiometry
    from modelrunner.requests import RegionRequest
    from modelrunner.runner.region import RADIOMETRY_KEY, _tile_radiometry
    from modelrunner.state.jobs import JobStore
    from modelrunner.state.records import JobRecord

    client = boto3.client("dynamodb")
    client.create_table(TableName="jobs", KeySchema=[{"AttributeName": "image_id", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "image_id", "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST")
    jobs = JobStore(client, "jobs")
    region = RegionRequest(job_id="j", image_url="s3://b/k.tif", model_name="m", region_bounds=((0, 0), (10, 10)),
                           tile_format="JPEG", tile_compression="JPEG")
    client.put_item(TableName="jobs", Item={"image_id": {"S": region.image_id}})
    services = type("S", (), {"jobs": jobs})()
    first = make_scene(str(tmp_path / "a.tif"), 300, 200, seed=1, dtype="uint16")
    other = make_scene(str(tmp_path / "b.tif"), 300, 200, seed=2, dtype="uint16", bands=1)
    with ImageSource.open(first.path) as a, ImageSource.open(other.path) as b:
        unread = JobRecord(image_id=region.image_id)  # the job row as a region read it before any stretch
        stored = _tile_radiometry(services, region, unread, a)
        assert stored.stretch is not None
        assert jobs.get(region.image_id).tile_radiometry == stored.to_json()
        # A region that read the job row before the first one stored it measures its own, and uses the stored.
        assert _tile_radiometry(services, region, unread, b) == stored
        assert _tile_radiometry(services, region, JobRecord(image_id=region.image_id,
                                                            tile_radiometry=stored.to_json()), b) == stored
    # A Byte image needs no stretch: nothing is stored.
    byte = make_scene(str(tmp_path / "c.tif"), 100, 100, seed=3)
    client.put_item(TableName="jobs", Item={"image_id": {"S": "other:x"}})
    with ImageSource.open(byte.path) as c:
        assert _tile_radiometry(services, RegionRequest(job_id="other", image_url="x", model_name="m",
                                                        region_bounds=((0, 0), (1, 1)), tile_format="JPEG",
                                                        tile_compression="JPEG"), JobRecord(image_id="other:x"),
                                 c) == TileRadiometry()
    assert jobs.get("other:x").tile_radiometry is None
    assert RADIOMETRY_KEY == "tile_radiometry", "the attribute set_once writes is the record's field"
