"""Write one job's features to S3 as a single GeoJSON FeatureCollection, the reference's wire format.

The object is ``<prefix>/<last part of jobId>.geojson`` holding exactly what
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
whatever the size of the result; disk use is the size of the object.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from tempfile import SpooledTemporaryFile
from typing import IO, Any

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import SinkError
from ..requests import S3Output
from .base import SinkResult, feature_json, feature_label

MiB = 1024 * 1024
CONTENT_TYPE = "application/geo+json"
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


def result_key(prefix: str, job_id: str) -> str:
    """The reference's object key: ``os.path.join(prefix, job_id.split("/")[-1] + ".geojson")``.

    posixpath is os.path on the runner's platform; naming it keeps keys ``/``-separated everywhere.
    """
    return posixpath.join(prefix, job_id.split("/")[-1] + ".geojson")


def write_s3(
    s3_client: Any,
    output: S3Output,
    job_id: str,
    features: Iterable[dict[str, Any] | str],
    *,
    transfer_config: TransferConfig | None = None,
) -> SinkResult:
    """Write ``features`` to ``output`` as one FeatureCollection object and return where and how many.

    ``s3_client`` is a boto3 S3 client built by the caller (with the output's role assumed if it has one,
    ideally with :data:`~modelrunner.sinks.base.SINK_CLIENT_CONFIG`). S3 writes are all or nothing, so
    every failure is a :class:`SinkError`: the bucket missing or unreadable (checked with HeadBucket first,
    before any work), a feature that is not JSON-serialisable, or the upload failing after retries.
    """
    bucket = output.bucket
    _check_bucket(s3_client, bucket)
    key = result_key(output.prefix, job_id)
    uri = f"s3://{bucket}/{key}"
    config = transfer_config if transfer_config is not None else default_transfer_config()
    with SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES, mode="w+b") as spool:
        count = _spool_collection(features, spool)
        spool.seek(0)
        try:
            s3_client.upload_fileobj(
                spool, bucket, key, ExtraArgs={"ContentType": CONTENT_TYPE, "ACL": ACL}, Config=config
            )
        except (S3UploadFailedError, ClientError, BotoCoreError) as err:
            raise SinkError(f"writing {count} features to {uri} failed: {err}") from err
    return SinkResult(sink=uri, features_written=count)


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


def _spool_collection(features: Iterable[dict[str, Any] | str], spool: IO[bytes]) -> int:
    """Write the FeatureCollection to ``spool`` feature by feature; return how many features it holds.

    The frame is what ``json.dumps`` writes for the collection, so an empty iterable still yields a valid
    ``{"type": "FeatureCollection", "features": []}``; features given as text go in as they are (the
    runner's are compact UTF-8 JSON, see :func:`~modelrunner.features.seams.feature_text`), dicts as
    ``json.dumps`` writes them.
    """
    buffer = bytearray(_HEAD)
    count = 0
    for feature in features:
        try:
            text = feature_json(feature)
        except (TypeError, ValueError) as err:
            raise SinkError(
                f"feature {feature_label(feature, count)} cannot be serialised as JSON: {err}"
            ) from err
        if count:
            buffer += _SEPARATOR
        buffer += text.encode("utf-8")
        count += 1
        if len(buffer) >= _WRITE_CHUNK:
            spool.write(buffer)
            buffer.clear()
    buffer += _TAIL
    spool.write(buffer)
    return count
