"""AWS's hard limits on what the worker sends, and which AWS errors are permanent.

moto accepts what real AWS refuses (long S3 keys, SNS and SQS messages over 256 KiB, oversized items in a
DynamoDB transaction), so the worker checks each limit itself before the call, and fails with a reason that
names the limit, the value and the resource. AWS's own answers are classified here too: a refused request
(``ValidationException``, ``InvalidParameter``, ``KeyTooLongError``...) comes back the same however often
it is sent, so it becomes an :class:`~modelrunner.errors.AwsLimitError` (the job fails with the reason)
instead of an exception that makes the message come back until a dead-letter queue takes it. Transient
errors (throttling, 5xx) are not classified here: boto3's retry modes handle them first.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from .errors import AwsLimitError

KiB = 1024

DYNAMODB_ITEM_BYTES = 400 * KiB
"""An item's attribute names and values, as DynamoDB counts them."""
DYNAMODB_PARTITION_KEY_BYTES = 2048
DYNAMODB_SORT_KEY_BYTES = 1024
SNS_MESSAGE_BYTES = 256 * KiB
"""Body and message attributes (names, data types and values) together."""
SQS_MESSAGE_BYTES = 256 * KiB
"""One message body and, for SendMessageBatch, every body of the batch together. SQS raised its ceiling to
1 MiB in 2025, but a queue's ``MaximumMessageSize`` may still be 256 KiB (the old default): the worker keeps
to the size every queue accepts."""
SQS_BATCH_ENTRIES = 10
S3_KEY_BYTES = 1024

# Error codes AWS answers for a request it will refuse again, per service. SQS's query-compatible codes
# may carry an "AWS.SimpleQueueService." prefix, removed before the lookup.
_PERMANENT: dict[str, frozenset[str]] = {
    "dynamodb": frozenset({"ValidationException", "SerializationException"}),
    "sns": frozenset({"InvalidParameter", "InvalidParameterValue", "ValidationError"}),
    "sqs": frozenset({"InvalidParameterValue", "InvalidMessageContents", "MessageTooLong", "BatchRequestTooLong",
                      "InvalidBatchEntryId", "BatchEntryIdsNotDistinct", "TooManyEntriesInBatchRequest",
                      "EmptyBatchRequest", "InvalidAttributeValue"}),
    "s3": frozenset({"KeyTooLongError", "InvalidArgument", "InvalidRequest", "EntityTooLarge", "MetadataTooLarge",
                     "InvalidBucketName"}),
}


def utf8_bytes(text: str) -> int:
    """Length as AWS counts it (UTF-8 bytes), without encoding an ASCII text."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def error_code(err: ClientError) -> str:
    code = str(err.response.get("Error", {}).get("Code", ""))
    return code.removeprefix("AWS.SimpleQueueService.")


def is_permanent(service: str, code: str) -> bool:
    """Whether ``code`` from ``service`` means the request is refused as it is (retrying cannot help)."""
    return code.removeprefix("AWS.SimpleQueueService.") in _PERMANENT.get(service, frozenset())


def refused(err: ClientError, service: str, resource: str) -> AwsLimitError | None:
    """The permanent error for an AWS refusal, naming the call and the resource; None when ``err`` may be
    transient (the caller re-raises it)."""
    code = error_code(err)
    if not is_permanent(service, code):
        return None
    message = err.response.get("Error", {}).get("Message", "") or str(err)
    return AwsLimitError(f"{service} refused {err.operation_name} on {resource}: {code}: {message}")


def check_size(what: str, size: int, limit: int, resource: str) -> None:
    """Raise :class:`AwsLimitError` when ``size`` bytes are over ``limit``, before the call that AWS
    would refuse."""
    if size > limit:
        raise AwsLimitError(f"{what} is {size:,} bytes, over the AWS limit of {limit:,} bytes ({resource})")
