"""Write one job's features to S3: by default a single GeoJSON FeatureCollection, the reference's wire format;
on request also (or instead) GeoParquet and FlatGeobuf files and a STAC Item (``formats``, ``stacItem``).

Keys: ``<prefix>/<last part of jobId>`` + ``.geojson`` / ``.parquet`` / ``.fgb`` / ``.stac-item.json``; the
other formats are described in :mod:`~modelrunner.sinks.formats`, the Item in :mod:`~modelrunner.sinks.stac`.

The GeoJSON object is ``<prefix>/<last part of jobId>.geojson`` holding exactly what
``json.dumps({"type": "FeatureCollection", "features": features})`` would produce (default separators),
with ``ContentType: application/geo+json`` and the ``bucket-owner-full-control`` canned ACL, so existing
consumers keep working. Unlike the reference, the collection is never built as one string in memory:

* features are serialised one at a time into a :class:`tempfile.SpooledTemporaryFile`, which stays in
  memory up to :data:`SPOOL_MAX_BYTES` and rolls over to a temporary file on disk beyond that;
* the spooled file is handed to boto3's managed transfer (``upload_fileobj``), which switches to a
  multipart upload above ``multipart_threshold`` and keeps at most ``max_in_memory_upload_chunks`` parts
  in memory at once.

A spool (rather than a streaming reader feeding s3transfer directly) was chosen because the features are
then consumed on the caller's thread, a feature that cannot be serialised fails the job before anything
is sent to S3, the feature count is known before the upload starts, and s3transfer can re-read any part
it has to retry. Peak memory is about ``SPOOL_MAX_BYTES + max_in_memory_upload_chunks * part size``
whatever the size of the result; disk use is the size of the object. GeoParquet and FlatGeobuf are
written to files in a temporary directory (one row group, resp. one feature, in memory at a time) and
uploaded the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from tempfile import SpooledTemporaryFile, TemporaryDirectory
from typing import IO, Any

import orjson
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from .. import limits
from ..errors import SinkError
from ..requests import S3Output, result_key
from .base import SinkResult, feature_json, feature_label
from .formats import FlatGeobufWriter, GeoParquetWriter, parse_feature, top_class
from .stac import MAX_CLASSES, Asset, JobDescription, build_item

MiB = 1024 * 1024
CONTENT_TYPE = "application/geo+json"
#: Media types of the other formats (S3 ContentType and the STAC assets' ``type``).
CONTENT_TYPES = {"GeoJSON": CONTENT_TYPE, "GeoParquet": "application/vnd.apache.parquet",
                 "FlatGeobuf": "application/vnd.flatgeobuf"}
_EXTENSIONS = {"GeoJSON": ".geojson", "GeoParquet": ".parquet", "FlatGeobuf": ".fgb"}
STAC_EXTENSION = ".stac-item.json"
ACL = "bucket-owner-full-control"
# Results up to this size never touch the disk.
SPOOL_MAX_BYTES = 8 * MiB
# Serialised features are gathered into writes of about this size (fewer, larger writes to the spool).
_WRITE_CHUNK = 1 * MiB

# The exact bytes json.dumps puts around and between the features of {"type": ..., "features": [...]}.
_HEAD = b'{"type": "FeatureCollection", "features": ['
_SEPARATOR = b", "
_TAIL = b"]}"


def default_transfer_config() -> TransferConfig:
    """The managed-transfer settings for result objects: single PUT up to 64 MiB, 8 MiB parts above.

    ``classic`` pins the pure-Python s3transfer manager so behaviour (and botocore event hooks) do not
    change when awscrt happens to be installed; in-memory parts are capped at the concurrency, so at most
    ``4 * 8 MiB`` of part data is held at once (objects up to 80 GB within S3's 10,000 parts). A new object
    each call: TransferConfig is mutable.
    """
    config = TransferConfig(
        multipart_threshold=64 * MiB,
        multipart_chunksize=8 * MiB,
        max_concurrency=4,
        preferred_transfer_client="classic",
    )
    config.max_in_memory_upload_chunks = 4
    return config


def write_s3(
    s3_client: Any,
    output: S3Output,
    job_id: str,
    features: Iterable[dict[str, Any] | str],
    *,
    transfer_config: TransferConfig | None = None,
    job: JobDescription | None = None,
) -> SinkResult:
    """Write ``features`` to ``output`` in each of its formats (and its STAC Item if asked); return where
    and how many.

    ``s3_client`` is a boto3 S3 client built by the caller (with the output's role assumed if it has one,
    built by ``aws.AwsClients``: standard retry mode). S3 writes are all or nothing, so
    every failure is a :class:`SinkError`: the bucket missing or unreadable (checked with HeadBucket first,
    before any work), a feature that is not JSON-serialisable, or an upload failing after retries.

    The features are read once, whatever the formats: each format's writer takes them one by one (the
    GeoJSON into a spool, GeoParquet and FlatGeobuf into files of a temporary directory), then the files are
    uploaded, the STAC Item last (it points at them). ``job`` describes the job for the STAC Item and says
    whether the geometries are WGS84 (GeoParquet and FlatGeobuf then say so); without it they are taken
    to be, and the Item has no footprint. The result's ``sink`` is the GeoJSON object's URI when GeoJSON is
    among the formats (else the first format's); ``locations`` lists every object written.
    """
    _check_keys(output, job_id)
    _check_bucket(s3_client, output.bucket)
    description = job if job is not None else JobDescription(job_id=job_id)
    config = transfer_config if transfer_config is not None else default_transfer_config()
    with TemporaryDirectory(prefix="modelrunner-out-") as folder, \
            SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES, mode="w+b") as spool:
        files = _open_files(output, job_id, folder, spool, description.georeferenced)
        count, classes = _write_features(features, files, output.stac_item)
        locations: list[str] = []
        assets: list[Asset] = []
        for upload in files.uploads:
            uri = f"s3://{output.bucket}/{upload.key}"
            _upload(s3_client, upload.source, output.bucket, upload.key, upload.content_type, config,
                    f"writing {count} features to {uri}")
            locations.append(uri)
            assets.append(Asset(upload.fmt.lower(), uri, upload.content_type, f"{count} features as {upload.fmt}"))
        if output.stac_item:
            item = build_item(description, assets, count, sorted(classes))
            locations.append(_upload_item(s3_client, output, job_id, item, config))
    return SinkResult(sink=locations[0], features_written=count, locations=locations)


def _check_keys(output: S3Output, job_id: str) -> None:
    """Every key the job will write fits S3's key limit, checked before any work so the job fails at once."""
    extensions = [*(_EXTENSIONS[fmt] for fmt in output.formats), *([STAC_EXTENSION] if output.stac_item else [])]
    for extension in extensions:
        key = object_key(output.prefix, job_id, extension)
        limits.check_size("S3 object key (the output prefix and job id)", limits.utf8_bytes(key), limits.S3_KEY_BYTES,
                          f"bucket {output.bucket}")


@dataclass(frozen=True)
class _Upload:
    """One object to upload once the features are written: its format, key, spool or file path, media type."""

    fmt: str
    key: str
    source: IO[bytes] | str
    content_type: str


@dataclass
class _OutputFiles:
    """The writers the features go through (GeoJSON spool, GeoParquet / FlatGeobuf files) and the uploads
    they become, in the order of the request's ``formats`` (the first is the result's ``sink``)."""

    geojson: _GeoJSONSpool | None
    writers: list[GeoParquetWriter | FlatGeobufWriter]
    uploads: list[_Upload]


def _open_files(output: S3Output, job_id: str, folder: str, spool: IO[bytes], georeferenced: bool) -> _OutputFiles:
    """A writer per requested format: the GeoJSON into ``spool``, the others into files of ``folder``."""
    files = _OutputFiles(_GeoJSONSpool(spool) if "GeoJSON" in output.formats else None, [], [])
    for fmt in output.formats:
        key = object_key(output.prefix, job_id, _EXTENSIONS[fmt])
        if fmt == "GeoJSON":
            files.uploads.append(_Upload(fmt, key, spool, CONTENT_TYPE))
            continue
        path = str(Path(folder) / ("result" + _EXTENSIONS[fmt]))
        writer: GeoParquetWriter | FlatGeobufWriter = (
            GeoParquetWriter(path, georeferenced=georeferenced) if fmt == "GeoParquet"
            else FlatGeobufWriter(path, georeferenced=georeferenced))
        files.writers.append(writer)
        files.uploads.append(_Upload(fmt, key, path, CONTENT_TYPES[fmt]))
    return files


def _write_features(features: Iterable[dict[str, Any] | str], files: _OutputFiles,
                    want_classes: bool) -> tuple[int, set[str]]:
    """Send each feature to every writer in one pass, then close them; return the count and, for the STAC
    Item (``want_classes``), up to :data:`MAX_CLASSES` class names seen.

    A feature is parsed into a dict only when a writer other than GeoJSON or the class list needs it: the
    GeoJSON spool takes the runner's text as it is.
    """
    parse = bool(files.writers) or want_classes
    classes: set[str] = set()
    count = 0
    for feature in features:
        if files.geojson is not None:
            files.geojson.add(feature, count)
        if parse:
            parsed = _parsed(feature, count)
            for writer in files.writers:
                writer.add(parsed)
            if want_classes and len(classes) < MAX_CLASSES:
                label = top_class(parsed.get("properties") or {})[1]
                if label is not None:
                    classes.add(label)
        count += 1
    if files.geojson is not None:
        files.geojson.finish()
    for writer in files.writers:
        writer.close()
    return count, classes


def _upload_item(s3_client: Any, output: S3Output, job_id: str, item: dict[str, Any],
                 config: TransferConfig) -> str:
    """Upload the STAC Item (indented JSON) last, once the objects it points at exist; return its URI."""
    key = object_key(output.prefix, job_id, STAC_EXTENSION)
    uri = f"s3://{output.bucket}/{key}"
    body = BytesIO(orjson.dumps(item, option=orjson.OPT_INDENT_2))
    _upload(s3_client, body, output.bucket, key, CONTENT_TYPE, config, f"writing the STAC Item to {uri}")
    return uri


def object_key(prefix: str, job_id: str, extension: str) -> str:
    """The key of one of the job's objects: :func:`result_key`'s, with ``extension`` for ``.geojson``."""
    return result_key(prefix, job_id).removesuffix(".geojson") + extension


def _upload(s3_client: Any, source: IO[bytes] | str, bucket: str, key: str, content_type: str,
            config: TransferConfig, what: str) -> None:
    """One object through the managed transfer (multipart above its threshold); a SinkError if it fails."""
    extra = {"ContentType": content_type, "ACL": ACL}
    try:
        if isinstance(source, str):
            s3_client.upload_file(source, bucket, key, ExtraArgs=extra, Config=config)
        else:
            source.seek(0)
            s3_client.upload_fileobj(source, bucket, key, ExtraArgs=extra, Config=config)
    except (S3UploadFailedError, ClientError, BotoCoreError) as err:
        cause = err if isinstance(err, ClientError) else err.__cause__ or err.__context__
        refusal = limits.refused(cause, "s3", f"s3://{bucket}/{key}") if isinstance(cause, ClientError) else None
        if refusal is not None:  # S3 refuses the request as it is: permanent
            raise refusal from err
        raise SinkError(f"{what} failed: {err}") from err


def _parsed(feature: dict[str, Any] | str, index: int) -> dict[str, Any]:
    try:
        return parse_feature(feature)
    except (TypeError, ValueError) as err:
        raise SinkError(f"feature {feature_label(feature, index)} is not a JSON object: {err}") from err


def _check_bucket(s3_client: Any, bucket: str) -> None:
    """HeadBucket, so a missing or forbidden bucket fails fast with its name instead of mid-upload."""
    try:
        s3_client.head_bucket(Bucket=bucket)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise SinkError(f"output bucket {bucket!r} does not exist") from err
        if code in ("403", "AccessDenied", "Forbidden"):
            raise SinkError(f"access to output bucket {bucket!r} is denied") from err
        raise SinkError(f"output bucket {bucket!r} cannot be checked: {err}") from err
    except BotoCoreError as err:
        raise SinkError(f"output bucket {bucket!r} cannot be checked: {err}") from err


class _GeoJSONSpool:
    """Writes the FeatureCollection to a spool feature by feature, in the reference's exact bytes.

    The frame is what ``json.dumps`` writes for the collection, so no features still give a valid
    ``{"type": "FeatureCollection", "features": []}``; features given as text go in as they are (the
    runner's are compact UTF-8 JSON, see :func:`~modelrunner.features.featureset.feature_text`), dicts as
    ``json.dumps`` writes them.
    """

    def __init__(self, spool: IO[bytes]) -> None:
        self.spool = spool
        self.buffer = bytearray(_HEAD)
        self.count = 0

    def add(self, feature: dict[str, Any] | str, index: int) -> None:
        try:
            text = feature_json(feature)
        except (TypeError, ValueError) as err:
            raise SinkError(f"feature {feature_label(feature, index)} cannot be serialised as JSON: {err}") from err
        if self.count:
            self.buffer += _SEPARATOR
        self.buffer += text.encode("utf-8")
        self.count += 1
        if len(self.buffer) >= _WRITE_CHUNK:
            self.spool.write(self.buffer)
            self.buffer.clear()

    def finish(self) -> None:
        self.buffer += _TAIL
        self.spool.write(self.buffer)
        self.buffer.clear()
