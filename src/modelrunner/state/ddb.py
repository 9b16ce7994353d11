"""Small helpers over the low-level DynamoDB client (thread-safe, unlike boto3 resources)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, cast

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from .. import limits
from ..errors import AwsLimitError

_ser = TypeSerializer()
_de = TypeDeserializer()


def _to_ddb(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, tuple | list):
        return [_to_ddb(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_ddb(v) for k, v in value.items()}
    return value


def _from_ddb(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_from_ddb(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_ddb(v) for k, v in value.items()}
    return value


def marshal(item: Mapping[str, Any]) -> dict[str, Any]:
    """Python values -> DynamoDB JSON; None values are left out (absent, as the reference writes them)."""
    return {k: _ser.serialize(_to_ddb(v)) for k, v in item.items() if v is not None}


def unmarshal(item: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: _from_ddb(_de.deserialize(v)) for k, v in (item or {}).items()}


def values(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Expression attribute values (``:name`` keys)."""
    return {k: _ser.serialize(_to_ddb(v)) for k, v in mapping.items()}


def update_expression(fields: Mapping[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``SET #a = :a, ...`` for the given fields (None values are skipped)."""
    names = {f"#{k}": k for k, v in fields.items() if v is not None}
    expr = "SET " + ", ".join(f"#{k} = :{k}" for k, v in fields.items() if v is not None)
    return expr, names, values({f":{k}": v for k, v in fields.items() if v is not None})


# Cancellation reasons of a transaction that may succeed if sent again: another transaction held one of its
# items, or a partition was throttled (boto3 retries neither: the cancellation is one error for the call).
_TRANSIENT_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded",
                                "RequestLimitExceeded"})
# Single-item writes that met an ongoing transaction on their item.
_TRANSIENT_CODES = frozenset({"TransactionConflictException", "TransactionInProgressException"})
CONFLICT_ATTEMPTS = 8
"""Attempts of a write that keeps meeting conflicts or throttling: at most about 5 s of back-off in all."""
CONFLICT_BACKOFF_S = 0.05
CONFLICT_BACKOFF_MAX_S = 2.0


def conditional(call: Callable[..., Any], **kwargs: Any) -> bool:
    """Make a conditional write; False when its condition did not hold (the state we guard against).

    A cancelled transaction is read by its ``CancellationReasons``: only ``ConditionalCheckFailed`` is the
    guarded state. A conflict with another transaction (two regions of one job ending at once count on the
    same job row) or throttling is retried with jittered exponential back-off, :data:`CONFLICT_ATTEMPTS`
    times, then raised as it is (transient: the message comes back). A refusal (``ValidationError``, an item
    too large, a key too long) raises :class:`~modelrunner.errors.AwsLimitError` with the reason.
    """
    delay = CONFLICT_BACKOFF_S
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            call(**kwargs)
            return True
        except ClientError as err:
            outcome = _outcome(err)
            if outcome == "guarded":
                return False
            if outcome == "permanent":
                raise _refusal(err, kwargs) from err
            if outcome != "transient" or attempt == CONFLICT_ATTEMPTS:
                raise
        time.sleep(random.uniform(0, delay))
        delay = min(CONFLICT_BACKOFF_MAX_S, delay * 2)
    raise AssertionError("unreachable: the last attempt returns or raises")


def checked(call: Callable[..., Any], **kwargs: Any) -> Any:
    """Make a DynamoDB call whose refusal (``ValidationException``: an item too large, a key too long) is
    permanent: raised as :class:`~modelrunner.errors.AwsLimitError` naming the table; other errors as they
    are."""
    try:
        return call(**kwargs)
    except ClientError as err:
        refusal = limits.refused(err, "dynamodb", _tables(kwargs))
        if refusal is not None:
            raise refusal from err
        raise


def item_bytes(item: Mapping[str, Any]) -> int:
    """An item's size (Python values, as :func:`marshal` takes them) as DynamoDB counts it against its
    400 KB: attribute names and values in UTF-8, numbers by significant digits, 3 bytes per list or map and
    1 per element. Computed on the values, without marshalling them (a region lists thousands of tiles)."""
    return sum(limits.utf8_bytes(name) + _value_bytes(value) for name, value in item.items() if value is not None)


def _value_bytes(value: Any) -> int:
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, str):
        return limits.utf8_bytes(value)
    if isinstance(value, int):  # a byte per two significant digits, plus one
        return -(-(len(str(abs(value)).strip("0")) or 1) // 2) + 1
    if isinstance(value, float | Decimal):
        return -(-len(Decimal(repr(value) if isinstance(value, float) else value).normalize().as_tuple().digits)
                 // 2) + 1
    if isinstance(value, bytes | bytearray | Binary):
        return len(bytes(cast(Any, value)))  # Binary converts itself (its stub does not say so)
    if isinstance(value, Mapping):
        return 3 + sum(1 + limits.utf8_bytes(k) + _value_bytes(v) for k, v in value.items())
    if isinstance(value, set | frozenset):
        return sum(map(_value_bytes, value))
    return 3 + sum(1 + _value_bytes(v) for v in value)  # a list or tuple


def check_item(table: str, item: Mapping[str, Any], what: str) -> None:
    """AwsLimitError, before the call, for an item (Python values) over DynamoDB's 400 KB."""
    limits.check_size(f"DynamoDB item ({what})", item_bytes(item), limits.DYNAMODB_ITEM_BYTES, f"table {table}")


def check_key(table: str, attribute: str, value: str, *, sort: bool = False) -> None:
    """Refuse a key longer than DynamoDB allows (2,048 bytes for a partition key, 1,024 for a sort key)
    before the call, naming the table and the attribute; the job id and the image URL are in our keys."""
    limit = limits.DYNAMODB_SORT_KEY_BYTES if sort else limits.DYNAMODB_PARTITION_KEY_BYTES
    kind = "sort" if sort else "partition"
    limits.check_size(f"DynamoDB {kind} key {attribute} (from the job id and image URL)", limits.utf8_bytes(value),
                      limit, f"table {table}")


def _outcome(err: ClientError) -> str:
    """guarded / transient / permanent / other, for a failed conditional write."""
    code = limits.error_code(err)
    if code == "ConditionalCheckFailedException":
        return "guarded"
    if code in _TRANSIENT_CODES:
        return "transient"
    if code == "TransactionCanceledException":
        reasons = {str(r.get("Code")) for r in err.response.get("CancellationReasons", [])} - {"None"}
        if reasons - _TRANSIENT_REASONS - {"ConditionalCheckFailed"}:
            return "permanent"  # ValidationError (an item too large), or a reason we do not know
        if reasons & _TRANSIENT_REASONS:
            return "transient"  # the conditions are evaluated again on the next attempt
        return "guarded" if reasons else "permanent"
    return "permanent" if limits.is_permanent("dynamodb", code) else "other"


def _refusal(err: ClientError, kwargs: Mapping[str, Any]) -> AwsLimitError:
    """The permanent error for a refused write: each cancellation reason with its item and table."""
    items = kwargs.get("TransactItems", [])
    details = []
    for index, reason in enumerate(err.response.get("CancellationReasons") or []):
        if reason.get("Code") in (None, "None"):
            continue
        table = next(iter(items[index].values())).get("TableName", "?") if index < len(items) else "?"
        message = f": {reason['Message']}" if reason.get("Message") else ""
        details.append(f"item {index} (table {table}): {reason['Code']}{message}")
    if details:
        return AwsLimitError(f"dynamodb cancelled {err.operation_name}: " + "; ".join(details))
    return limits.refused(err, "dynamodb", _tables(kwargs)) or AwsLimitError(
        f"dynamodb refused {err.operation_name} on {_tables(kwargs)}: {err}")


def _tables(kwargs: Mapping[str, Any]) -> str:
    """The table(s) a call names, for error messages."""
    if "TableName" in kwargs:
        return f"table {kwargs['TableName']}"
    names = list(kwargs.get("RequestItems", {}))
    names += [next(iter(item.values())).get("TableName", "?") for item in kwargs.get("TransactItems", [])]
    return "table " + ", ".join(dict.fromkeys(names)) if names else "DynamoDB"


def batch_put(client: Any, table: str, items: Sequence[Mapping[str, Any]], max_wait: float = 8.0, *,
              marshalled: bool = False) -> None:
    """BatchWriteItem in chunks of 25, retrying UnprocessedItems with jittered exponential back-off.
    ``marshalled``: the items are DynamoDB JSON already."""
    for start in range(0, len(items), 25):
        pending = [{"PutRequest": {"Item": item if marshalled else marshal(item)}} for item in items[start:start + 25]]
        delay = 0.05
        while pending:
            answer = checked(client.batch_write_item, RequestItems={table: pending})
            pending = answer.get("UnprocessedItems", {}).get(table, [])
            if pending:
                time.sleep(random.uniform(0, delay))
                delay = min(max_wait, delay * 2)


def now_ms() -> int:
    return int(time.time() * 1000)
