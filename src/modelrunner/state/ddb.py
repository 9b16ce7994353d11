"""Small helpers over the low-level DynamoDB client (thread-safe, unlike boto3 resources)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

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


def conditional(call: Callable[..., Any], **kwargs: Any) -> bool:
    """Make a conditional write; False when its condition did not hold (the state we guard against),
    anything else raises."""
    try:
        call(**kwargs)
    except ClientError as err:
        if err.response["Error"]["Code"] in ("ConditionalCheckFailedException", "TransactionCanceledException"):
            return False
        raise
    return True


def batch_put(client: Any, table: str, items: Sequence[Mapping[str, Any]], max_wait: float = 8.0, *,
              marshalled: bool = False) -> None:
    """BatchWriteItem in chunks of 25, retrying UnprocessedItems with jittered exponential back-off.
    ``marshalled``: the items are DynamoDB JSON already."""
    for start in range(0, len(items), 25):
        pending = [{"PutRequest": {"Item": item if marshalled else marshal(item)}} for item in items[start:start + 25]]
        delay = 0.05
        while pending:
            answer = client.batch_write_item(RequestItems={table: pending})
            pending = answer.get("UnprocessedItems", {}).get(table, [])
            if pending:
                time.sleep(random.uniform(0, delay))
                delay = min(max_wait, delay * 2)


def now_ms() -> int:
    return int(time.time() * 1000)
