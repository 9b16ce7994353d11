"""modelrunner.policy: what a request may make the worker read or call."""

from __future__ import annotations

import os

import numpy as np
import pytest
from osgeo import gdal

from modelrunner.errors import ImageError, RequestError
from modelrunner.imagery.source import ImageSource
from modelrunner.policy import AccessPolicy

S3_ONLY = AccessPolicy()


@pytest.mark.parametrize("url, reason", [
    ("http://example.com/a.tif", "http:// scheme is not accepted"),
    ("https://example.com/a.tif", "https:// scheme is not accepted"),
    ("file:///etc/passwd", "file:// scheme is not accepted"),
    ("ftp://example.com/a.tif", "ftp:// scheme is not accepted"),
    ("vrt:///data/a.tif?bands=1", "vrt:// scheme is not accepted"),
    ("/vsicurl/http://example.com/a.tif", "/vsi"),
    ("/vsicurl?url=http://evil/&header_file=/etc/passwd", "/vsi"),
    ("/VSICURL_STREAMING/http://example.com/a.tif", "/vsi"),
    ("/vsizip//vsis3/b/a.zip/a.tif", "/vsi"),
    ("/vsimem/secret.tif", "/vsi"),
    ("/vsistdin/", "/vsi"),
    ("MEM:::DATAPOINTER=0x1,PIXELS=10,LINES=10", "driver prefixes"),
    ("NITF_IM:0:/data/a.ntf", "driver prefixes"),
    ("GTIFF_DIR:1:/data/a.tif", "driver prefixes"),
    ("PG:dbname=x", "driver prefixes"),
    ("WMS:http://example.com", "driver prefixes"),
    ("/data/a.tif", "MR_LOCAL_IMAGE_ROOT is unset"),
    ("s3://b/a.tif", "valid S3 bucket name"),
    ("s3://Bucket/a.tif", "valid S3 bucket name"),
    ("s3://bucket", "must name an object"),
    ("s3://bucket/", "must name an object"),
    ("s3://bucket/a/../../other/secret.tif", "'..' path segments"),
    ("s3://bucket//a.tif", "empty"),
    ("s3://bucket/a.tif?x=1", "'?'"),
    ("s3://bucket/a\\b.tif", "or '\\'"),
    ("s3://bucket/a\nb.tif", "control characters"),
    ("s3://bucket/" + "k" * 1025, "longer than 1024 bytes"),
])
def test_image_urls_refused(url, reason):
    with pytest.raises(RequestError) as err:
        S3_ONLY.image_path(url)
    assert err.value.field == "imageUrls[0]"
    assert reason in err.value.reason


def test_s3_urls_become_vsis3_paths():
    assert S3_ONLY.image_path("s3://my-bucket/scenes/a b+c.tif") == "/vsis3/my-bucket/scenes/a b+c.tif"


def test_local_paths_only_under_the_root_after_resolving(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.tif").write_bytes(b"x")
    outside = tmp_path / "secret.tif"
    outside.write_bytes(b"x")
    (root / "link.tif").symlink_to(outside)
    (root / "sub").mkdir()
    policy = AccessPolicy(local_image_root=str(root))
    assert policy.image_path(str(root / "a.tif")) == os.path.realpath(root / "a.tif")
    assert policy.image_path(str(root / "sub" / ".." / "a.tif")) == os.path.realpath(root / "a.tif")
    for bad in (str(outside), str(root / ".." / "secret.tif"), str(root / "link.tif"), "/etc/passwd"):
        with pytest.raises(RequestError, match="must lie under"):
            policy.image_path(bad)
    with pytest.raises(RequestError, match="absolute"):
        policy.image_path("images/a.tif")
    # A root that is a prefix of a sibling's name does not admit the sibling.
    (tmp_path / "images2").mkdir()
    with pytest.raises(RequestError, match="must lie under"):
        policy.image_path(str(tmp_path / "images2" / "a.tif"))


def _resolver(table):
    return lambda host: table.get(host, [])


@pytest.mark.parametrize("hosts, url, ok", [
    ((), "http://127.0.0.1:8080/invocations", False),
    (("127.0.0.1",), "http://127.0.0.1:8080/invocations", True),
    (("127.0.0.1:9090",), "http://127.0.0.1:8080/invocations", False),
    (("127.0.0.1:8080",), "http://127.0.0.1:8080/invocations", True),
    (("models.internal",), "https://models.internal/x", True),
    (("MODELS.internal",), "https://models.Internal/x", True),
    (("*.models.internal",), "https://a.models.internal/x", True),
    (("*.models.internal",), "https://models.internal.evil.com/x", False),
    (("models.internal",), "https://user:pw@models.internal/x", False),
    (("models.internal",), "ftp://models.internal/x", False),
    (("*",), "http://169.254.169.254/latest/meta-data/", False),
    (("*",), "http://[fe80::1]/x", False),
    (("*",), "http://[fd00:ec2::254]/x", False),
    (("*",), "http://metadata.google.internal/x", False),
    (("*",), "http://sneaky.example/x", False),  # resolves to the metadata service
    (("169.254.169.254",), "http://169.254.169.254/latest/meta-data/", True),  # listed literally
])
def test_http_endpoint_hosts(hosts, url, ok):
    policy = AccessPolicy(http_endpoint_hosts=hosts, resolver=_resolver({"sneaky.example": ["169.254.169.254"]}))
    if ok:
        policy.check_model("HTTP_ENDPOINT", url)
    else:
        with pytest.raises(RequestError) as err:
            policy.check_model("HTTP_ENDPOINT", url)
        assert err.value.field == "imageProcessor.name"


@pytest.mark.parametrize("name, ok", [
    ("my-endpoint", True), ("a", True), ("A1-b2", True), ("x" * 63, True), ("x" * 64, False),
    ("-leading", False), ("has space", False), ("../x", False), ("arn:aws:sagemaker:x", False), ("", False),
])
def test_sagemaker_endpoint_names(name, ok):
    if ok:
        S3_ONLY.check_model("SM_ENDPOINT", name)
    else:
        with pytest.raises(RequestError, match="SageMaker endpoint name"):
            S3_ONLY.check_model("SM_ENDPOINT", name)


def test_only_allowed_drivers_open_images(tmp_path):
    """A VRT (which can point at any file) and the MEM driver's pointer syntax never open, and never crash."""
    tif = tmp_path / "a.tif"
    driver = gdal.GetDriverByName("GTiff")
    dataset = driver.Create(str(tif), 8, 8, 1, gdal.GDT_Byte)
    dataset.GetRasterBand(1).WriteArray(np.ones((8, 8), np.uint8))
    dataset = None
    vrt = tmp_path / "a.vrt"
    gdal.Translate(str(vrt), str(tif), format="VRT")
    with ImageSource.open(str(tif)) as source:
        assert source.info.width == 8
    with pytest.raises(ImageError, match="cannot open image"):
        ImageSource.open(str(vrt))
    with pytest.raises(ImageError, match="cannot open image"):
        ImageSource.open("MEM:::DATAPOINTER=0x10,PIXELS=100,LINES=100,BANDS=1,DATATYPE=Byte")
    with pytest.raises(ImageError):
        ImageSource.open(str(tif), drivers=("PNG",))


def test_read_credentials_last_only_while_the_image_is_open(monkeypatch):
    """An imageReadRole's credentials are GDAL's for that bucket only while its image is open: a later
    request for the same bucket without the role does not read with them."""
    opened = []

    def fake_open(path, flags, allowed_drivers):
        opened.append(gdal.GetPathSpecificOption("/vsis3/bucket/a.tif", "AWS_SECRET_ACCESS_KEY", None))
        return gdal.GetDriverByName("MEM").Create("", 4, 4, 1)

    monkeypatch.setattr(gdal, "OpenEx", fake_open)
    creds = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok"}
    with ImageSource.open("s3://bucket/a.tif", credentials=creds):
        with ImageSource.open("s3://bucket/a.tif", credentials=creds):
            pass
        assert gdal.GetPathSpecificOption("/vsis3/bucket/a.tif", "AWS_SECRET_ACCESS_KEY", None) == "s3cr3t"
    assert opened == ["s3cr3t", "s3cr3t"]
    # Cleared: GDAL falls back to the process-wide value (the worker's own credentials, or none).
    assert gdal.GetPathSpecificOption("/vsis3/bucket/a.tif", "AWS_SECRET_ACCESS_KEY", None) != "s3cr3t"
    with ImageSource.open("s3://bucket/a.tif"):
        pass
    assert opened[-1] != "s3cr3t"
