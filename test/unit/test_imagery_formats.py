"""Every tile format / compression pair: what GDAL 3.6 writes, what a model decodes, what is refused.

The "model" here is in-process: it decodes the tile bytes with GDAL (as the bundled models do) and checks
the pixels against what the image holds, exactly for lossless pairs, approximately for lossy ones.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal, osr

from modelrunner.errors import RequestError, TileEncodingError
from modelrunner.imagery.encode import encode_tile
from modelrunner.imagery.formats import LOSSY, SUPPORTED, jpeg2000_writer, unsupported_reason
from modelrunner.imagery.geolocate import Geolocator, Georeference
from modelrunner.imagery.radiometry import TileRadiometry, plan_radiometry
from modelrunner.local.models import open_tile
from modelrunner.local.scene import linear_rpc
from modelrunner.requests import TILE_COMPRESSIONS, TILE_FORMATS, ImageRequest

gdal.UseExceptions()

SUPPORTED_PAIRS = [(f, c) for f, cs in SUPPORTED.items() for c in cs]
REJECTED_PAIRS = [(f, c) for f in TILE_FORMATS for c in TILE_COMPRESSIONS if c not in SUPPORTED[f]]
_GDAL_TYPES = {"uint8": gdal.GDT_Byte, "uint16": gdal.GDT_UInt16, "float32": gdal.GDT_Float32}


def smooth_image(bands: int, dtype: str, size: int = 64) -> np.ndarray:
    """Gradients plus mild noise: realistic enough that lossy codecs stay close, deterministic."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    rng = np.random.default_rng(bands)
    planes = [40 + 150 * (xx * (b + 1) + yy) / (size * (b + 2)) + rng.normal(0, 2, (size, size)) for b in range(bands)]
    levels = np.clip(np.stack(planes), 0, 255)
    if dtype == "uint8":
        return levels.round().astype(np.uint8)
    if dtype == "uint16":
        return (levels * 200).round().astype(np.uint16)  # 0..51000: a 16-bit sensor's range
    return (levels / 255.0).astype(np.float32)


def mem_dataset(pixels: np.ndarray) -> gdal.Dataset:
    bands, height, width = pixels.shape
    ds = gdal.GetDriverByName("MEM").Create("", width, height, bands, _GDAL_TYPES[str(pixels.dtype)])
    for i in range(bands):
        ds.GetRasterBand(i + 1).WriteArray(pixels[i])
    return ds


def decode(tile: bytes) -> tuple[np.ndarray, dict[str, str | None]]:
    with open_tile(tile) as ds:
        pixels = ds.ReadAsArray()
        pixels = pixels[np.newaxis] if pixels.ndim == 2 else pixels
        info = {"driver": ds.GetDriver().ShortName, "compression": ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE"),
                "ic": ds.GetMetadataItem("NITF_IC"), "type": gdal.GetDataTypeName(ds.GetRasterBand(1).DataType)}
    return pixels, info


def request(tile_format: str, compression: str) -> dict[str, object]:
    return {"jobId": "j", "imageUrls": ["s3://b/k.tif"], "imageProcessor": {"name": "ep"},
            "outputs": [{"type": "S3", "bucket": "b", "prefix": ""}],
            "imageProcessorTileFormat": tile_format, "imageProcessorTileCompression": compression}


_EXPECTED_CODEC = {("GTIFF", "NONE"): None, ("GTIFF", "LZW"): "LZW", ("GTIFF", "JPEG"): "JPEG",
                   ("NITF", "NONE"): "NC", ("NITF", "JPEG"): "C3", ("NITF", "J2K"): "C8"}


@pytest.mark.parametrize("bands", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize(("tile_format", "compression"), SUPPORTED_PAIRS)
def test_supported_pairs_round_trip_to_the_right_pixels(tile_format, compression, dtype, bands):
    if compression == "J2K" and jpeg2000_writer() is None:
        pytest.skip("no JPEG 2000 writer in this GDAL")
    image = smooth_image(bands, dtype)
    radiometry = plan_radiometry(mem_dataset(image), tile_format, compression)
    sent = radiometry.apply(image)
    tile = encode_tile(sent, tile_format, compression)
    pixels, info = decode(tile)

    assert pixels.shape == sent.shape, "the model gets every band that was sent, at the tile's size"
    assert info["driver"] == {"GTIFF": "GTiff"}.get(tile_format, tile_format)
    if tile_format == "NITF":
        float_j2k = dtype == "float32" and compression == "J2K"  # JPEG 2000 has no float: uncompressed
        expected_ic = "NC" if float_j2k else _EXPECTED_CODEC[(tile_format, compression)]
        assert info["ic"] == expected_ic
    elif tile_format == "GTIFF":
        assert info["compression"] == _EXPECTED_CODEC[(tile_format, compression)]
    # Pixel type: kept wherever the pair can hold it, 8-bit (stretched) where it cannot.
    eight_bit_only = compression == "JPEG" or tile_format == "JPEG" or (tile_format == "PNG" and dtype == "float32")
    assert str(pixels.dtype) == ("uint8" if eight_bit_only else dtype)
    assert (radiometry.stretch is not None) == (eight_bit_only and dtype != "uint8")
    # Bands: 1 or 3 for JPEG files and NITF JPEG (2 -> first band, 4 -> first three), all bands elsewhere.
    one_or_three = (tile_format, compression) in {("JPEG", "NONE"), ("JPEG", "JPEG"), ("NITF", "JPEG")}
    assert pixels.shape[0] == ({2: 1, 4: 3}.get(bands, bands) if one_or_three else bands)

    lossy = (tile_format, compression) in LOSSY and not (dtype == "float32" and compression == "J2K")
    if not lossy:
        assert np.array_equal(pixels, sent), "lossless pairs decode to exactly the pixels sent"
        if radiometry.identity:
            assert np.array_equal(pixels, image), "and those are the image's own pixels"
    else:
        error = np.abs(pixels.astype(np.float64) - sent.astype(np.float64))
        full_scale = 255.0 if sent.dtype == np.uint8 else float(np.iinfo(sent.dtype).max)
        assert error.mean() < 0.03 * full_scale, f"lossy pair too far off: mean error {error.mean()}"
        assert error.max() < 0.35 * full_scale


@pytest.mark.parametrize(("tile_format", "compression"), REJECTED_PAIRS)
def test_pairs_gdal_cannot_write_are_rejected_naming_both(tile_format, compression):
    with pytest.raises(RequestError) as err:
        ImageRequest.from_dict(request(tile_format, compression))
    assert err.value.field == "imageProcessorTileCompression"
    message = str(err.value)
    assert f"tile format {tile_format}" in message and f"compression {compression}" in message
    with pytest.raises(TileEncodingError, match=f"{tile_format}.*{compression}"):
        encode_tile(np.zeros((1, 8, 8), np.uint8), tile_format, compression)


def test_the_matrix_is_what_the_docs_say():
    assert sorted(REJECTED_PAIRS) == sorted([("GTIFF", "J2K"), ("NITF", "LZW"), ("PNG", "JPEG"), ("PNG", "J2K"),
                                             ("PNG", "LZW"), ("JPEG", "J2K"), ("JPEG", "LZW")])
    for tile_format, compression in SUPPORTED_PAIRS:
        if compression != "J2K" or jpeg2000_writer():
            assert unsupported_reason(tile_format, compression) is None
            assert ImageRequest.from_dict(request(tile_format, compression)).tile_compression == compression


def test_pixels_a_pair_cannot_hold_are_refused_not_mangled():
    with pytest.raises(TileEncodingError, match="8-bit"):
        encode_tile(np.zeros((3, 8, 8), np.uint16), "JPEG", "NONE")
    with pytest.raises(TileEncodingError, match="8-bit"):
        encode_tile(np.zeros((3, 8, 8), np.uint16), "GTIFF", "JPEG")
    with pytest.raises(TileEncodingError, match="uint8 or uint16"):
        encode_tile(np.zeros((1, 8, 8), np.float32), "PNG", "NONE")
    with pytest.raises(TileEncodingError, match="1 or 3 bands"):
        encode_tile(np.zeros((4, 8, 8), np.uint8), "NITF", "JPEG")


# Radiometry --------------------------------------------------------------------------------------------


def test_stretch_is_one_per_image_and_the_same_for_every_tile():
    image = smooth_image(3, "uint16", size=256)
    radiometry = plan_radiometry(mem_dataset(image), "JPEG", "JPEG")
    low, high = radiometry.stretch
    valid = image.astype(np.float64).ravel()
    assert low == pytest.approx(np.percentile(valid, 2)) and high == pytest.approx(np.percentile(valid, 98))
    # Two tiles that share pixels map them to the same 8-bit values (a per-tile stretch would not).
    a = radiometry.apply(image[:, 0:128, 0:128])
    b = radiometry.apply(image[:, 64:192, 64:192])
    assert np.array_equal(a[:, 64:128, 64:128], b[:, 0:64, 0:64])
    assert a.dtype == np.uint8 and a.min() == 0 and radiometry.apply(image).max() == 255
    # The stored form gives back the very same numbers.
    assert TileRadiometry.from_json(radiometry.to_json()) == radiometry
    assert json.loads(radiometry.to_json())["percentiles"] == [2.0, 98.0]


def test_stretch_ignores_nodata_and_non_finite_values():
    image = smooth_image(1, "float32", size=128)
    image[0, :64] = -9999.0
    image[0, 64:70] = np.nan
    ds = mem_dataset(image)
    ds.GetRasterBand(1).SetNoDataValue(-9999.0)
    low, high = plan_radiometry(ds, "JPEG", "NONE").stretch
    valid = image[0, 70:].astype(np.float64).ravel()
    assert low == pytest.approx(np.percentile(valid, 2)) and high == pytest.approx(np.percentile(valid, 98))
    out = TileRadiometry(stretch=(low, high)).apply(image)
    assert out[0, 64:70].max() == 0, "NaN becomes 0, never garbage"


def test_stretch_reads_the_overviews_when_there_are_some(tmp_path):
    # Overviews built from zeros, then the full-resolution pixels written: only a read that really comes
    # from the overviews sees zeros.
    path = str(tmp_path / "ovr.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 4096, 4096, 1, gdal.GDT_UInt16, ["TILED=YES"])
    ds.BuildOverviews("NEAREST", [2, 4, 8])
    ds.GetRasterBand(1).Fill(1000)
    ds = None
    ds = gdal.Open(path)
    assert plan_radiometry(ds, "JPEG", "NONE").stretch == (0.0, 1.0)


def test_stretch_of_a_huge_image_without_overviews_reads_64_small_windows(tmp_path):
    path = str(tmp_path / "big.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 100_000, 100_000, 1, gdal.GDT_UInt16,
                                              ["TILED=YES", "SPARSE_OK=TRUE", "BIGTIFF=YES"])
    ds.GetRasterBand(1).WriteArray(np.full((64, 64), 7, np.uint16), 0, 0)  # the first window's pixels
    ds = None
    ds = gdal.Open(path)
    gdal.SetCacheMax(64 * 1024 * 1024)
    from modelrunner.imagery.radiometry import sample_pixels

    sample = sample_pixels(ds, [0])
    assert sample.shape == (1, 8 * 64, 8 * 64)
    assert (sample == 7).sum() == 64 * 64
    assert plan_radiometry(ds, "PNG", "NONE").stretch is None, "PNG holds 16-bit: no stretch"


@pytest.mark.parametrize(("bands", "interpretations", "expected"), [
    (2, None, (0,)),
    (4, None, (0, 1, 2)),
    (4, [gdal.GCI_Undefined, gdal.GCI_BlueBand, gdal.GCI_GreenBand, gdal.GCI_RedBand], (3, 2, 1)),
    (3, None, None),
    (1, None, None),
])
def test_jpeg_band_choice(bands, interpretations, expected):
    ds = mem_dataset(smooth_image(bands, "uint8", size=16))
    for i, interpretation in enumerate(interpretations or []):
        ds.GetRasterBand(i + 1).SetColorInterpretation(interpretation)
    assert plan_radiometry(ds, "JPEG", "JPEG").bands == expected
    assert plan_radiometry(ds, "NITF", "JPEG").bands == expected
    assert plan_radiometry(ds, "GTIFF", "JPEG").bands is None, "GeoTIFF JPEG takes any band count"
    assert plan_radiometry(ds, "PNG", "NONE").identity


# Georeferencing carried by chips -----------------------------------------------------------------------


def rpc_image(tmp_path) -> gdal.Dataset:
    """A GeoTIFF with a non-linear, height-dependent RPC whose offsets RPC00B cannot hold as they are."""
    rpc = linear_rpc((-77.05, 1e-5, 0.0, 38.9, 0.0, -1e-5), 1300, 1100)
    rng = np.random.default_rng(7)
    for key in ("LINE_NUM_COEFF", "SAMP_NUM_COEFF", "LINE_DEN_COEFF", "SAMP_DEN_COEFF"):
        values = np.array([float(v) for v in rpc[key].split()])
        values[3:] += rng.normal(0.0, 2e-3, 17)
        rpc[key] = " ".join(repr(float(v)) for v in values)
    rpc.update(LAT_OFF=repr(float(rpc["LAT_OFF"]) + 1.23456e-5), LONG_OFF=repr(float(rpc["LONG_OFF"]) - 7.7e-6),
               LINE_OFF="550.37", SAMP_OFF="649.8", HEIGHT_OFF="12.3", HEIGHT_SCALE="500.5")
    path = str(tmp_path / "rpc.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 1300, 1100, 1)
    ds.SetMetadata(rpc, "RPC")
    ds = None
    return gdal.Open(path)


@pytest.mark.parametrize(("col", "row"), [(0, 0), (700, 600), (1044, 844)])
def test_nitf_chips_carry_rpc00b_moved_to_the_chip_and_igeolo(tmp_path, col, row):
    ds = rpc_image(tmp_path)
    georef = Georeference.of(ds)
    tile = encode_tile(np.zeros((1, 256, 256), np.uint8), "NITF", "NONE", georef.for_chip(col, row))
    options = ["DST_SRS=EPSG:4326", "METHOD=RPC", "RPC_PIXEL_ERROR_THRESHOLD=0.000001"]
    full = gdal.Transformer(ds, None, options)
    with open_tile(tile) as chip:
        rpc = chip.GetMetadata_Dict("RPC")
        assert rpc, "the chip has an RPC00B TRE (the reference's shifted offsets could go negative: none)"
        assert (rpc["LINE_OFF"], rpc["SAMP_OFF"]) == ("128", "128")
        assert chip.GetMetadataItem("NITF_ICORDS") == "G" and len(chip.GetMetadataItem("NITF_IGEOLO")) == 60
        transformer = gdal.Transformer(chip, None, options)
        points = [(x, y) for x in (0.0, 100.25, 256.0) for y in (0.0, 77.5, 256.0)]
        got, _ = transformer.TransformPoints(0, points)
        expected, _ = full.TransformPoints(0, [(x + col, y + row) for x, y in points])
        assert np.abs(np.array(got)[:, :2] - np.array(expected)[:, :2]).max() < 1e-8
        # The height term survives too: ground -> pixel at 300 m agrees.
        high = [(lon, lat, 300.0) for lon, lat, _ in expected]
        chip_px, _ = transformer.TransformPoints(1, high)
        full_px, _ = full.TransformPoints(1, high)
        assert np.abs(np.array(chip_px)[:, :2] + [col, row] - np.array(full_px)[:, :2]).max() < 1e-3
        # IGEOLO holds the chip's corner-pixel centres to a whole arc-second.
        gt = chip.GetGeoTransform()
        (lon0, lat0, _), = full.TransformPoints(0, [(col + 0.5, row + 0.5)])[0]
        assert abs(gt[0] + gt[1] / 2 - lon0) < 1 / 3600 and abs(gt[3] + gt[5] / 2 - lat0) < 1 / 3600


def test_gtiff_chips_carry_the_rpc_at_full_precision(tmp_path):
    ds = rpc_image(tmp_path)
    tile = encode_tile(np.zeros((1, 64, 64), np.uint8), "GTIFF", "NONE", Georeference.of(ds).for_chip(900, 800))
    with open_tile(tile) as chip:
        assert float(chip.GetMetadataItem("LINE_OFF", "RPC")) == pytest.approx(550.37 - 800)
        assert float(chip.GetMetadataItem("SAMP_OFF", "RPC")) == pytest.approx(649.8 - 900)


@pytest.mark.parametrize("epsg", [4326, 32618, 3857])
def test_nitf_and_gtiff_chips_of_any_srs(epsg):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    origin = {4326: (-77.05, 38.9, 1e-5), 32618: (320000.0, 4310000.0, 0.5), 3857: (-8577000.0, 4705000.0, 0.6)}
    x0, y0, size = origin[epsg]
    ds = gdal.GetDriverByName("MEM").Create("", 1000, 1000, 1)
    ds.SetGeoTransform((x0, size, 0.0, y0, 0.0, -size))
    ds.SetProjection(srs.ExportToWkt())
    georef = Georeference.of(ds).for_chip(300, 400)
    full = Geolocator.for_dataset(ds)
    (lon, lat, _), = full.to_world(np.array([(300.5, 400.5)]))
    with open_tile(encode_tile(np.zeros((1, 100, 100), np.uint8), "NITF", "JPEG", georef)) as chip:
        gt = chip.GetGeoTransform()
        assert chip.GetMetadataItem("NITF_ICORDS") == "G"
        assert abs(gt[0] + gt[1] / 2 - lon) < 1 / 3600 and abs(gt[3] + gt[5] / 2 - lat) < 1 / 3600
    with open_tile(encode_tile(np.zeros((1, 100, 100), np.uint8), "GTIFF", "LZW", georef)) as chip:
        assert chip.GetGeoTransform() == pytest.approx(georef.geotransform)
