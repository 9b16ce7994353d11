"""The bad-request corpus (issue 14): every malformed, impossible or hostile ImageRequest against one worker
process (started as the container starts it), a moto server and the bundled model server on loopback.

Each case sends its bad request and then a valid one, and checks: exactly one FAILED image status for the
bad job, whose reason names the field (or the image, or the endpoint) and why; a FAILED job row, keyed by the
job id where it can be a key, else by ``unknown-<MessageId>``; the message gone from the image queue once
handled (not left to come back); and the valid request after it SUCCESS, by the same worker process. Cases
run back to back on one module-scoped worker, with small images (256 x 256, one tile) to keep it fast.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Statuses, wait_queue_empty
from osgeo import gdal

from modelrunner.local.scene import make_scene
from modelrunner.local.stack import (
    Process,
    Resources,
    create_resources,
    free_port,
    start_model,
    start_worker,
    stop_process,
)
from modelrunner.state.jobs import JobStore

pytestmark = pytest.mark.e2e

#: Scene placement (EPSG:4326): a 256 x 256 image at 1e-4 degrees per pixel, upper-left corner at 10 E 50 N.
ORIGIN, PIXEL, SIZE = (10.0, 50.0), 1e-4, 256
#: SQS's largest message body (256 KiB).
SQS_MAX_BODY = 262_144


# The module's stack, worker and files ------------------------------------------------------------------

@dataclass
class Corpus:
    """What every case needs: the stack, the worker, the images and the collected statuses."""

    res: Resources
    model_url: str
    worker: Any
    log_path: Path
    files: dict[str, str]
    statuses: Statuses
    timings: dict[str, float] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)

    def valid(self, job_id: str, **changes: Any) -> dict[str, Any]:
        """A request that succeeds, with ``changes`` applied (dotted keys reach into objects; DROP deletes)."""
        body: dict[str, Any] = {
            "jobId": job_id, "jobName": job_id, "imageUrls": [self.files["scene"]],
            "outputs": [{"type": "S3", "bucket": self.res.bucket, "prefix": "results/"}],
            "imageProcessor": {"name": "centerpoint", "type": "SM_ENDPOINT"},
            "imageProcessorTileSize": SIZE, "imageProcessorTileOverlap": 0,
            "imageProcessorTileFormat": "GTIFF", "imageProcessorTileCompression": "NONE",
        }
        for path, value in changes.items():
            *parents, leaf = path.split(".")
            target = body
            for key in parents:
                target = target[key]
            if value is DROP:
                target.pop(leaf, None)
            else:
                target[leaf] = value
        return body

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


DROP = object()


def _tiff_header(path: Path, width: int, height: int) -> None:
    """A minimal little-endian TIFF declaring ``width`` x ``height`` 8-bit grey pixels in one strip."""
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 3, 1, max(height, 1)), (279, 4, 1, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00")


def _make_files(root: Path, res: Resources) -> dict[str, str]:
    """The images the cases point at: a good scene and every kind of broken one, all under the worker's
    MR_LOCAL_IMAGE_ROOT (the temp dir), plus S3 objects and a link out of the root."""
    scene = make_scene(str(root / "scene.tif"), SIZE, SIZE, seed=7, origin=ORIGIN, pixel_size=PIXEL).path
    data = Path(scene).read_bytes()
    files = {"scene": scene}
    (root / "empty.tif").write_bytes(b"")
    files["empty"] = str(root / "empty.tif")
    (root / "text.tif").write_text("this is a text file, not an image\n" * 20)
    files["text"] = str(root / "text.tif")
    (root / "header-only.tif").write_bytes(data[:64])
    files["header_only"] = str(root / "header-only.tif")
    (root / "half.tif").write_bytes(data[: len(data) // 2])
    files["half"] = str(root / "half.tif")
    # GDAL itself cannot make a zero-pixel raster ("Attempt to create 0x0 dataset is illegal"); a file can
    # still declare one: a TIFF header with width and height 0.
    _tiff_header(root / "zero.tif", 0, 0)
    files["zero"] = str(root / "zero.tif")
    # A 46 KB sparse GeoTIFF declaring 10^6 x 10^6 pixels: its header promises a terapixel image.
    huge = gdal.GetDriverByName("GTiff").Create(str(root / "huge.tif"), 1_000_000, 1_000_000, 1, gdal.GDT_Byte,
                                                ["SPARSE_OK=YES", "TILED=YES", "BLOCKXSIZE=16384",
                                                 "BLOCKYSIZE=16384", "BIGTIFF=YES"])
    huge.SetGeoTransform((ORIGIN[0], PIXEL, 0, ORIGIN[1], 0, -PIXEL))
    huge = None
    files["huge"] = str(root / "huge.tif")
    # A VRT (a driver the worker does not allow) that would read /etc/passwd as raw pixels.
    (root / "passwd.vrt").write_text(
        '<VRTDataset rasterXSize="16" rasterYSize="16"><VRTRasterBand dataType="Byte" band="1" '
        'subClass="VRTRawRasterBand"><SourceFilename relativetoVRT="0">/etc/passwd</SourceFilename>'
        '</VRTRasterBand></VRTDataset>')
    files["vrt"] = str(root / "passwd.vrt")
    os.symlink("/etc/hostname", root / "link-out.tif")
    files["link_out"] = str(root / "link-out.tif")
    files["missing"] = str(root / "no-such-image.tif")
    s3 = res.client("s3")
    bucket = res.extra["image_bucket"]
    s3.upload_file(scene, bucket, "scenes/scene.tif")
    files["s3_scene"] = f"s3://{bucket}/scenes/scene.tif"
    files["s3_missing"] = f"s3://{bucket}/scenes/no-such-image.tif"
    files["s3_bucket"] = bucket
    return files


@pytest.fixture(scope="module")
def corpus(moto_server: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    started = time.monotonic()
    res = create_resources(moto_server.url, prefix=f"bad-{os.getpid()}")
    root = tmp_path_factory.mktemp("bad-requests")
    files = _make_files(root, res)
    model = start_model("centerpoint")
    log_path = root / "worker.log"
    worker = None
    try:
        # The SageMaker runtime path answers an endpoint name that names no model as "not found".
        control = urllib.request.Request(model.url + "/control", data=json.dumps({"strict_endpoints": True}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(control, timeout=5) as answer:
            assert json.loads(answer.read()) == {"ok": True}
        env = res.worker_env(model_url=model.url, workers=2, region_wait=0, visibility_timeout=30,
                             MR_MAX_TILE_ATTEMPTS="2", MR_TILE_RETRY_BASE_SECONDS="0.05",
                             MR_TILE_RETRY_MAX_SECONDS="0.1", MR_HTTP_TIMEOUT="5",
                             # A pattern that also matches the EC2 metadata service's name: still refused.
                             MR_HTTP_ENDPOINT_HOSTS="127.0.0.1,localhost,*.internal")
        worker = start_worker(env, log_path=str(log_path))
        corpus = Corpus(res=res, model_url=model.url, worker=worker, log_path=log_path, files=files,
                        statuses=Statuses(res))
        corpus.timings["setup"] = time.monotonic() - started
        yield corpus
        cases = {k: v for k, v in corpus.timings.items() if k != "setup"}
        print(f"\nbad-request corpus: {len(cases)} cases run; setup {corpus.timings['setup']:.1f} s, cases "
              f"{sum(cases.values()):.1f} s; slowest: " +
              ", ".join(f"{k} {v:.2f} s" for k, v in sorted(cases.items(), key=lambda kv: -kv[1])[:5]) +
              "; outcomes where either was allowed: " + ", ".join(f"{k} {v}" for k, v in corpus.outcomes.items()))
    finally:
        if worker is not None:
            stop_process(worker)
        model.stop()
        shutil.rmtree(root, ignore_errors=True)


# The cases ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """A message body sent as is (not JSON-encoded)."""

    text: str


Body = Callable[[Corpus, str], Any]


@dataclass(frozen=True)
class Case:
    """One bad request: how to build its body from the corpus and its job id, and what its FAILED status
    must say. ``keyed``: the job id can key the job row (else it is ``unknown-<MessageId>``)."""

    id: str
    body: Body
    says: tuple[str, ...]
    keyed: bool = True
    sends: int = 1
    outcomes: tuple[str, ...] = ("FAILED",)


def case(case_id: str, body: Body, *says: str, keyed: bool = True, sends: int = 1,
         outcomes: tuple[str, ...] = ("FAILED",)) -> Any:
    return pytest.param(Case(case_id, body, says, keyed, sends, outcomes), id=case_id)


def with_(**changes: Any) -> Body:
    """The valid request with ``changes`` (dotted keys reach into objects; a ``__`` stands for a dot)."""
    return lambda c, job: c.valid(job, **{k.replace("__", "."): v for k, v in changes.items()})


def url(build: Callable[[Corpus], str]) -> Body:
    """The valid request with ``imageUrls`` set to the one URL ``build`` makes."""
    return lambda c, job: c.valid(job, imageUrls=[build(c)])


IMAGE = "imageUrls[0]"
TMP = os.path.realpath("/tmp")

CASES = [
    # The body itself.
    case("body-not-json", lambda c, j: Raw('{"jobId": "x", imageUrls: nope'), "body", "is not valid JSON", keyed=False),
    case("body-whitespace", lambda c, j: Raw("   "), "body", "is not valid JSON", keyed=False),
    case("body-array", lambda c, j: [c.valid(j)], "body", "must be a JSON object", keyed=False),
    case("body-string", lambda c, j: "an image request", "body", "must be a JSON object", keyed=False),
    case("body-null", lambda c, j: None, "body", "must be a JSON object", keyed=False),
    case("body-empty-object", lambda c, j: {}, "jobId", "is required", keyed=False),
    # jobId.
    case("jobId-missing", with_(jobId=DROP), "jobId", "is required", keyed=False),
    case("jobId-number", with_(jobId=42), "jobId", "must be a string, got int", keyed=False),
    case("jobId-blank", with_(jobId="   "), "jobId", "is required", keyed=False),
    case("jobId-too-long-for-a-key", with_(jobId="j" * 300), "jobId", "at most 256 bytes", keyed=False),
    case("jobId-control-character", with_(jobId="bad\x01job"), "jobId", "control characters", keyed=False),
    case("jobId-newline", with_(jobId="bad\njob"), "jobId", "control characters", keyed=False),
    # imageUrls.
    case("imageUrls-missing", with_(imageUrls=DROP), "imageUrls", "must be a non-empty list"),
    case("imageUrls-empty", with_(imageUrls=[]), "imageUrls", "must be a non-empty list"),
    case("imageUrls-not-a-list", lambda c, j: c.valid(j, imageUrls=c.files["scene"]), "imageUrls",
         "must be a non-empty list"),
    case("imageUrls-item-not-a-string", with_(imageUrls=[42]), IMAGE, "must be a string, got int"),
    case("imageUrls-two-images", lambda c, j: c.valid(j, imageUrls=[c.files["scene"]] * 2), "imageUrls",
         "one image per request is supported, got 2"),
    # imageProcessor.
    case("imageProcessor-missing", with_(imageProcessor=DROP), "imageProcessor", "must be an object"),
    case("imageProcessor-not-an-object", with_(imageProcessor="centerpoint"), "imageProcessor", "must be an object"),
    case("imageProcessor.name-missing", with_(imageProcessor__name=DROP), "imageProcessor.name", "is required"),
    case("imageProcessor.name-number", with_(imageProcessor__name=7), "imageProcessor.name",
         "must be a string, got int"),
    case("imageProcessor.type-unknown", with_(imageProcessor__type="LAMBDA"), "imageProcessor.type",
         "must be one of SM_ENDPOINT, HTTP_ENDPOINT, got 'LAMBDA'"),
    case("imageProcessor.type-NONE", with_(imageProcessor__type="NONE"), "imageProcessor.type",
         "NONE has no model to invoke"),
    case("imageProcessor-http-name-not-a-url", with_(imageProcessor__type="HTTP_ENDPOINT"), "imageProcessor.name",
         "must be an http(s) URL for HTTP_ENDPOINT"),
    case("imageProcessorParameters-not-an-object", with_(imageProcessorParameters=[1, 2]),
         "imageProcessorParameters", "must be an object"),
    case("imageProcessor.assumedRole-not-an-arn", with_(imageProcessor__assumedRole="admin"),
         "imageProcessor.assumedRole", "must be an IAM role ARN"),
    case("imageReadRole-not-a-string", with_(imageReadRole=["arn"]), "imageReadRole", "must be a string, got list"),
    # Tile size and overlap.
    case("tile-size-zero", with_(imageProcessorTileSize=0), "imageProcessorTileSize", "must be >= 1, got 0"),
    case("tile-size-negative", with_(imageProcessorTileSize=-512), "imageProcessorTileSize",
         "must be >= 1, got -512"),
    case("tile-size-absurd", with_(imageProcessorTileSize=100_000), "imageProcessorTileSize",
         "must be <= 16384, got 100000"),
    case("tile-size-not-a-number", with_(imageProcessorTileSize="big"), "imageProcessorTileSize",
         "must be an integer, got 'big'"),
    case("tile-size-boolean", with_(imageProcessorTileSize=True), "imageProcessorTileSize",
         "must be an integer, got True"),
    case("tile-overlap-negative", with_(imageProcessorTileOverlap=-1), "imageProcessorTileOverlap",
         "must be >= 0, got -1"),
    case("tile-overlap-equals-size", with_(imageProcessorTileOverlap=SIZE), "imageProcessorTileOverlap",
         f"must be smaller than the tile size {SIZE}, got {SIZE}"),
    case("tile-overlap-above-size", with_(imageProcessorTileOverlap=5000), "imageProcessorTileOverlap",
         f"must be smaller than the tile size {SIZE}, got 5000"),
    # Tile format and compression.
    case("tile-format-unknown", with_(imageProcessorTileFormat="TIFF"), "imageProcessorTileFormat",
         "must be one of NITF, JPEG, PNG, GTIFF, got 'TIFF'"),
    case("tile-compression-unknown", with_(imageProcessorTileCompression="ZSTD"), "imageProcessorTileCompression",
         "must be one of NONE, JPEG, J2K, LZW, got 'ZSTD'"),
    case("tile-pair-PNG-JPEG", with_(imageProcessorTileFormat="PNG", imageProcessorTileCompression="JPEG"),
         "imageProcessorTileCompression", "tile format PNG cannot be written with compression JPEG"),
    case("tile-pair-GTIFF-J2K", with_(imageProcessorTileCompression="J2K"), "imageProcessorTileCompression",
         "tile format GTIFF cannot be written with compression J2K"),
    case("tile-pair-NITF-LZW", with_(imageProcessorTileFormat="NITF", imageProcessorTileCompression="LZW"),
         "imageProcessorTileCompression", "tile format NITF cannot be written with compression LZW"),
    case("tile-pair-JPEG-LZW", with_(imageProcessorTileFormat="JPEG", imageProcessorTileCompression="LZW"),
         "imageProcessorTileCompression", "tile format JPEG cannot be written with compression LZW"),
    # The image.
    case("image-missing-local", url(lambda c: c.files["missing"]), "cannot open image", "no-such-image.tif"),
    case("image-missing-s3", url(lambda c: c.files["s3_missing"]), "no-such-image.tif",
         "cannot be read from S3 (404)"),
    case("image-bucket-missing-s3", url(lambda c: "s3://no-such-image-bucket/scene.tif"), "no-such-image-bucket",
         "cannot be read from S3"),
    case("image-zero-bytes", url(lambda c: c.files["empty"]), "cannot open image", "empty.tif"),
    case("image-text-file", url(lambda c: c.files["text"]), "cannot open image", "text.tif"),
    case("image-truncated-tiff-header", url(lambda c: c.files["header_only"]), "cannot open image", "header-only.tif"),
    case("image-truncated-tiff-data", url(lambda c: c.files["half"]), "cannot read window", "half.tif",
         "IReadBlock failed"),
    case("image-zero-pixels", url(lambda c: c.files["zero"]), "cannot open image", "zero.tif"),
    case("image-absurdly-large", url(lambda c: c.files["huge"]), "huge.tif",
         "1000000 x 1000000 = 1,000,000,000,000 pixels", "MR_MAX_IMAGE_PIXELS"),
    case("image-driver-not-allowed-vrt", url(lambda c: c.files["vrt"]), "cannot open image", "passwd.vrt"),
    # Region of interest.
    case("roi-not-wkt", with_(regionOfInterest="the harbour, please"), "regionOfInterest", "is not valid WKT"),
    case("roi-empty", with_(regionOfInterest="POLYGON EMPTY"), "regionOfInterest",
         "must be a non-empty POLYGON or MULTIPOLYGON"),
    case("roi-a-point", with_(regionOfInterest="POINT (10.01 49.99)"), "regionOfInterest",
         "must be a non-empty POLYGON or MULTIPOLYGON, got Point"),
    case("roi-not-a-string", with_(regionOfInterest={"type": "Polygon"}), "regionOfInterest", "must be a WKT string"),
    case("roi-outside-the-image", with_(regionOfInterest="POLYGON ((120 -30, 121 -30, 121 -31, 120 -31, 120 -30))"),
         "regionOfInterest does not intersect the image"),
    case("roi-with-georegistration-none", with_(georegistration="NONE",
                                                regionOfInterest="POLYGON ((10 50, 10.01 50, 10.01 49.99, 10 50))"),
         "georegistration", "NONE cannot be combined with a regionOfInterest"),
    # Outputs.
    case("outputs-missing", with_(outputs=DROP), "outputs", "at least one S3 or Kinesis output is required"),
    case("outputs-empty", with_(outputs=[]), "outputs", "at least one S3 or Kinesis output is required"),
    case("outputs-not-a-list", lambda c, j: c.valid(j, outputs={"type": "S3", "bucket": c.res.bucket}), "outputs",
         "must be a list"),
    case("outputs-item-not-an-object", with_(outputs=["s3://bucket"]), "outputs[0]", "must be an object"),
    case("outputs-unknown-type", with_(outputs=[{"type": "SNS", "topic": "results"}]), "outputs[0].type",
         "must be S3 or Kinesis, got 'SNS'"),
    case("outputs-s3-without-bucket", with_(outputs=[{"type": "S3", "prefix": "x/"}]), "outputs[0].bucket",
         "is required"),
    case("outputs-bucket-missing", with_(outputs=[{"type": "S3", "bucket": "no-such-results-bucket"}]),
         "outputs[0].bucket", "bucket no-such-results-bucket does not exist"),
    case("outputs-stream-missing", with_(outputs=[{"type": "Kinesis", "stream": "no-such-stream"}]),
         "outputs[0].stream", "stream no-such-stream does not exist"),
    case("outputs-stream-name-invalid", with_(outputs=[{"type": "Kinesis", "stream": "no such stream!"}]),
         "outputs[0].stream", "is not a valid Kinesis stream name"),
    case("outputs-batch-size-zero", lambda c, j: c.valid(j, outputs=[{"type": "Kinesis", "stream": c.res.stream,
                                                                      "batchSize": 0}]),
         "outputs[0].batchSize", "must be >= 1, got 0"),
    case("outputs-s3-key-too-long", lambda c, j: c.valid(j, outputs=[{"type": "S3", "bucket": c.res.bucket,
                                                                      "prefix": "p/" * 520}]),
         "outputs[0].prefix", "longer than 1024 bytes"),
    # postProcessing.
    case("postProcessing-not-a-list", with_(postProcessing={"step": "FEATURE_DISTILLATION"}), "postProcessing",
         "must be a list of steps"),
    case("postProcessing-unknown-step", with_(postProcessing=[{"step": "SHARPEN"}]), "postProcessing[0].step",
         "must be FEATURE_DISTILLATION, got 'SHARPEN'"),
    case("postProcessing-unknown-algorithm", with_(postProcessing=[{"step": "FEATURE_DISTILLATION",
                                                                    "algorithm": {"algorithmType": "MAGIC"}}]),
         "postProcessing[0].algorithm.algorithmType", "must be one of NMS, SOFT_NMS, NMM, GREEDYNMM, got 'MAGIC'"),
    case("postProcessing-iou-out-of-range", with_(postProcessing=[{"step": "FEATURE_DISTILLATION", "algorithm": {
        "algorithmType": "NMS", "iouThreshold": 2}}]), "postProcessing[0].algorithm.iouThreshold",
         "must be between 0 and 1, got 2.0"),
    case("postProcessing-sigma-for-nms", with_(postProcessing=[{"step": "FEATURE_DISTILLATION", "algorithm": {
        "algorithmType": "NMS", "sigma": 0.3}}]), "postProcessing[0].algorithm.sigma", "only applies to SOFT_NMS"),
    # Endpoints.
    case("endpoint-sagemaker-does-not-exist", with_(imageProcessor__name="no-such-endpoint"), "no-such-endpoint",
         "ValidationError", "Endpoint no-such-endpoint of account 123456789012 not found"),
    case("endpoint-sagemaker-name-invalid", with_(imageProcessor__name="bad_name!"), "imageProcessor.name",
         "must be a SageMaker endpoint name"),
    case("endpoint-http-path-not-found", lambda c, j: c.valid(j, imageProcessor={
        "type": "HTTP_ENDPOINT", "name": c.model_url + "/no-such-model"}), "HTTP endpoint", "/no-such-model",
         "answered 404"),
    case("endpoint-http-connection-refused", lambda c, j: c.valid(j, imageProcessor={
        "type": "HTTP_ENDPOINT", "name": f"http://127.0.0.1:{free_port()}/invocations"}), "1 of 1 tiles failed",
         "Failed to establish a new connection", "(after 2 attempts)"),
    case("endpoint-http-host-not-allowed", with_(imageProcessor={"type": "HTTP_ENDPOINT",
                                                                 "name": "http://models.example.com/invocations"}),
         "imageProcessor.name", "host models.example.com:80 is not an allowed model endpoint host"),
    case("endpoint-http-metadata-address", with_(imageProcessor={
        "type": "HTTP_ENDPOINT", "name": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}),
         "imageProcessor.name", "host 169.254.169.254:80 is not an allowed model endpoint host"),
    case("endpoint-http-metadata-name-matching-an-allowed-pattern", with_(imageProcessor={
        "type": "HTTP_ENDPOINT", "name": "http://instance-data.ec2.internal/latest/meta-data/"}),
         "imageProcessor.name", "host instance-data.ec2.internal is a link-local or metadata address"),
    case("endpoint-http-with-credentials", lambda c, j: c.valid(j, imageProcessor={
        "type": "HTTP_ENDPOINT", "name": c.model_url.replace("http://", "http://user:secret@") + "/invocations"}),
         "imageProcessor.name", "must not carry credentials"),
    # Size and delivery.
    case("body-near-sqs-size-limit", lambda c, j: padded(c.valid(j)), "featureProperties",
         outcomes=("SUCCESS", "FAILED")),
    case("duplicate-delivery-of-a-bad-request", with_(imageProcessorTileSize=0), "imageProcessorTileSize",
         "must be >= 1, got 0", sends=2),
    case("duplicate-delivery-of-a-valid-request", lambda c, j: c.valid(j), sends=2, outcomes=("SUCCESS",)),
    # Image URLs the worker must never open (security).
    case("url-http", url(lambda c: "http://127.0.0.1:9/scene.tif"), IMAGE, "the http:// scheme is not accepted"),
    case("url-https", url(lambda c: "https://example.com/scene.tif"), IMAGE, "the https:// scheme is not accepted"),
    case("url-file", url(lambda c: "file:///etc/passwd"), IMAGE, "the file:// scheme is not accepted"),
    case("url-vsicurl", url(lambda c: "/vsicurl/http://127.0.0.1:9/scene.tif"), IMAGE,
         "GDAL virtual file systems (/vsi...) are not accepted"),
    case("url-vsicurl-header-file", url(lambda c: "/vsicurl?url=http://127.0.0.1:9/x.tif&header_file=/etc/passwd"),
         IMAGE, "GDAL virtual file systems (/vsi...) are not accepted"),
    case("url-vsizip", url(lambda c: f"/vsizip/{TMP}/images.zip/scene.tif"), IMAGE,
         "GDAL virtual file systems (/vsi...) are not accepted"),
    case("url-vsis3-upper-case", url(lambda c: f"/VSIS3/{c.files['s3_bucket']}/scenes/scene.tif"), IMAGE,
         "GDAL virtual file systems (/vsi...) are not accepted"),
    case("url-driver-prefix-mem", url(lambda c: "MEM:::DATAPOINTER=0,PIXELS=100,LINES=100"), IMAGE,
         "GDAL driver prefixes and connection strings are not accepted"),
    case("url-driver-prefix-nitf", url(lambda c: f"NITF_IM:0:{c.files['scene']}"), IMAGE,
         "GDAL driver prefixes and connection strings are not accepted"),
    case("url-local-outside-root", url(lambda c: "/etc/passwd"), IMAGE, "local image paths must lie under"),
    case("url-local-dotdot-traversal", url(lambda c: f"{TMP}/../etc/passwd"), IMAGE,
         "local image paths must lie under"),
    case("url-local-symlink-out", url(lambda c: c.files["link_out"]), IMAGE, "local image paths must lie under"),
    case("url-local-relative", url(lambda c: "scene.tif"), IMAGE, "a local image path must be absolute"),
    case("url-s3-key-dotdot", url(lambda c: f"s3://{c.files['s3_bucket']}/scenes/../../other-bucket/secret.tif"),
         IMAGE, "the S3 key must not contain empty, '.' or '..' path segments"),
    case("url-s3-key-query", url(lambda c: f"{c.files['s3_scene']}?response-content-type=x"), IMAGE,
         "the S3 key must not contain '?'"),
    case("url-s3-bucket-invalid", url(lambda c: "s3://Not_A_Bucket/scene.tif"), IMAGE,
         "is not a valid S3 bucket name"),
    case("url-control-character", url(lambda c: c.files["scene"] + "\x00.tif"), IMAGE,
         "must not contain control characters"),
]


def padded(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with featureProperties padding that brings it to about 250 KB, near SQS's 256 KiB limit."""
    room = 250_000 - len(json.dumps(body))
    body["featureProperties"] = [{"padding": "x" * room}]
    return body


def _encode(body: Any) -> str:
    return body.text if isinstance(body, Raw) else json.dumps(body)


def _expected_image_id(body: Any, job_id: str, message_id: str, keyed: bool) -> str:
    """The job row's key: ``<jobId>:<imageUrls[0]>``, or ``unknown-<MessageId>:`` when the id cannot be one."""
    if not keyed:
        return f"unknown-{message_id}:"
    urls = body.get("imageUrls") if isinstance(body, dict) else None
    image = urls[0] if isinstance(urls, list) and urls and isinstance(urls[0], str) else ""
    return f"{job_id}:{image}"


def test_corpus_is_large_enough() -> None:
    ids = [p.values[0].id for p in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.mark.parametrize("bad", CASES)
def test_bad_request(corpus: Corpus, bad: Case) -> None:
    res, statuses = corpus.res, corpus.statuses
    started = time.monotonic()
    job_id = f"bad-{bad.id}"
    body = bad.body(corpus, job_id)
    text = _encode(body)
    assert len(text.encode()) <= SQS_MAX_BODY
    sqs = res.client("sqs")
    message_ids = [sqs.send_message(QueueUrl=res.image_queue, MessageBody=text)["MessageId"]
                   for _ in range(bad.sends)]
    # The next request is a valid one: the same worker must go straight on to it.
    after = f"ok-after-{bad.id}"
    sqs.send_message(QueueUrl=res.image_queue, MessageBody=json.dumps(corpus.valid(after)))

    status_job = job_id if bad.keyed else f"unknown-{message_ids[0]}"
    try:
        final = statuses.final(status_job)
        after_final = statuses.final(after)
    except TimeoutError as err:
        raise AssertionError(f"{err}\nworker log:\n{corpus.log_tail()}") from None
    # Handled means deleted: nothing left on the image queue, visible or in flight.
    assert wait_queue_empty(res, res.image_queue) == 0, "a message was kept on the image queue"
    statuses.drain()

    assert corpus.worker.poll() is None, f"the worker died:\n{corpus.log_tail()}"
    outcome = final["attributes"]["status"]
    assert outcome in bad.outcomes, f"{bad.id}: {outcome}: {final['message']}"
    if len(bad.outcomes) > 1:
        corpus.outcomes[bad.id] = outcome
    finals = statuses.final_statuses(status_job)
    assert len(finals) == 1, f"{bad.id}: {len(finals)} final statuses: {[s['message'] for s in finals]}"
    message = final["message"]
    assert message.startswith(f"StatusMonitor update: RequestStatus.{outcome} {status_job}: ")
    if outcome == "FAILED":
        for text_part in bad.says:
            assert text_part in message, f"{bad.id}: {text_part!r} not in the reason: {message}"

    image_id = _expected_image_id(body, job_id, message_ids[0], bad.keyed)
    assert final["attributes"]["image_id"] == image_id
    job = JobStore(res.client("dynamodb"), res.job_table).get(image_id)
    assert job, f"no job row {image_id!r}"
    assert job.job_status == outcome
    assert message.endswith(": " + str(job.status_reason))
    assert job.status_published is not False

    after_status = after_final["attributes"]["status"]
    assert after_status == "SUCCESS", f"the request after {bad.id}: {after_final['message']}"
    assert statuses.names(after).count("SUCCESS") == 1
    corpus.timings[bad.id] = time.monotonic() - started
