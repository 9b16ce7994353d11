"""Output sinks: where a job's merged features go (one S3 object, or one Kinesis record per feature).

Each sink takes a boto3 client built by the caller (roles, regions and endpoints are the caller's
business), writes what it can and returns a :class:`SinkResult`; the worker decides SUCCESS / PARTIAL /
FAILED from it. :class:`~modelrunner.errors.SinkError` means nothing could be written at all.
"""

from ..requests import result_key
from .base import SinkResult
from .kinesis import write_kinesis
from .s3 import default_transfer_config, write_s3

__all__ = [
    "SinkResult",
    "default_transfer_config",
    "result_key",
    "write_kinesis",
    "write_s3",
]
