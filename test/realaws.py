"""Real AWS's limits and errors, enforced around boto3 clients (moto's, in tests).

moto is lenient where real AWS is not: it stores S3 keys over 1,024 bytes, SNS messages and SQS messages
over 256 KiB, reports an oversized item in a DynamoDB transaction as a plain ``ValidationException`` instead
of a cancellation, and never cancels a transaction for a conflict or throttling. Code tested only against
moto can therefore break on its first day on AWS. :class:`RealAws` puts the rules back:

>>> aws = RealAws()
>>> ddb = aws.wrap(boto3.client("dynamodb"))      # the same client, now with AWS's rules
>>> aws.inject("TransactWriteItems", "TransactionConflict", times=2)

It hooks the client's botocore events (``before-parameter-build``, ``after-call``), so every call is
checked, including those boto3 makes on its own (``upload_fileobj``'s ``PutObject``), and a refusal is the
exception class botocore raises for that code, with the response shape AWS sends (a cancelled transaction
carries ``CancellationReasons``). Enforced, with AWS's codes and messages:

* DynamoDB: items of 400 KB as AWS counts them (attribute names and values, numbers by significant digits,
  3 bytes per list or map and 1 per element), on PutItem, BatchWriteItem, TransactWriteItems, and on
  UpdateItem and transaction updates by the item the update would leave (the update is replayed on a
  scratch copy of the item first); partition keys of 2,048 bytes and sort keys of 1,024; at most 25
  items a BatchWriteItem and 100 actions a TransactWriteItems; a transaction meeting another transaction
  on one of its items is cancelled with ``TransactionConflict`` (``hold_s`` keeps a transaction's items
  held that much longer, so that tests can make two meet), and a single write to such an item gets
  ``TransactionConflictException``;
* SNS Publish: body and attributes within 256 KiB;
* SQS SendMessage / SendMessageBatch: a body within 256 KiB, a batch within 256 KiB and 10 entries;
* S3: object keys within 1,024 bytes (PutObject, CreateMultipartUpload, CopyObject).

Injected faults (:meth:`RealAws.inject`) answer the next matching calls with an error instead of sending
them: for TransactWriteItems a cancellation with the given reason (``TransactionConflict``,
``ThrottlingError``, ``ValidationError``, ``ConditionalCheckFailed``), for other operations a plain error
code (``Throttling``, ``InternalError``...). Both come before botocore's retry layer would see them, so an
injected error is the call's final answer, as if boto3's retries were spent (botocore never retries a
cancelled transaction anyway).
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

KiB = 1024
ITEM_BYTES = 400 * KiB
PARTITION_KEY_BYTES = 2048
SORT_KEY_BYTES = 1024
SNS_BYTES = 256 * KiB
SQS_BYTES = 256 * KiB
SQS_BATCH_ENTRIES = 10
S3_KEY_BYTES = 1024
BATCH_WRITE_ITEMS = 25
TRANSACT_ITEMS = 100
TRANSACT_REQUEST_BYTES = 4 * 1024 * KiB
SCRATCH = "realaws-scratch-"

ITEM_TOO_LARGE = "Item size has exceeded the maximum allowed size"
UPDATE_TOO_LARGE = "Item size to update has exceeded the maximum allowed size"
HASH_KEY_TOO_LONG = ("One or more parameter values were invalid: Size of hashkey has exceeded the maximum size "
                     "limit of2048 bytes")  # sic: AWS's text
RANGE_KEY_TOO_LONG = ("One or more parameter values were invalid: Aggregated size of all range keys has exceeded "
                      "the size limit of 1024 bytes")
REASON_MESSAGES = {
    "TransactionConflict": "Transaction is ongoing for the item",
    "ThrottlingError": "Throughput exceeds the current capacity of your table or index.",
    "ValidationError": UPDATE_TOO_LARGE,
    "ConditionalCheckFailed": "The conditional request failed",
}


def utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def number_size(text: str) -> int:
    """A number's size as DynamoDB counts it: 1 byte per two significant digits, plus 1."""
    digits = Decimal(text).normalize().as_tuple().digits
    return math.ceil(len(digits) / 2) + 1


def value_size(value: Mapping[str, Any]) -> int:
    """The size of one attribute value in DynamoDB JSON (the client's shape: ``B`` is bytes)."""
    ((kind, v),) = value.items()
    if kind == "S":
        return utf8(v)
    if kind == "N":
        return number_size(v)
    if kind == "B":
        return len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(map(utf8, v))
    if kind == "NS":
        return sum(map(number_size, v))
    if kind == "BS":
        return sum(map(len, v))
    if kind == "L":
        return 3 + sum(1 + value_size(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + utf8(k) + value_size(e) for k, e in v.items())
    raise ValueError(f"unknown DynamoDB type {kind}")


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    """An item's size as DynamoDB counts it against 400 KB: every attribute's name and value."""
    return sum(utf8(name) + value_size(value) for name, value in item.items())


_SET = re.compile(r"^\s*(#?\w+)\s*=\s*(:\w+)\s*$")
_ADD = re.compile(r"^\s*(#?\w+)\s+(:\w+)\s*$")


def _apply_simple(item: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any] | None:
    """The item an update of plain ``SET path = :value``, ``ADD path :number`` and ``REMOVE path`` clauses
    leaves (what moto would make of it, without moto's cost on large lists); None for anything else
    (functions, nested paths), which is replayed through the client instead."""
    names = update.get("ExpressionAttributeNames", {})
    values = update.get("ExpressionAttributeValues", {})
    parts = re.split(r"\b(SET|ADD|REMOVE|DELETE)\b", update["UpdateExpression"], flags=re.IGNORECASE)
    if parts[0].strip():
        return None
    out = dict(item)
    for action, body in zip(parts[1::2], parts[2::2], strict=True):
        for clause in body.split(","):
            action = action.upper()
            match = (_SET if action == "SET" else _ADD).match(clause)
            if action == "REMOVE" and re.fullmatch(r"\s*#?\w+\s*", clause):
                out.pop(names.get(clause.strip(), clause.strip()), None)
            elif action == "SET" and match:
                out[names.get(match[1], match[1])] = values[match[2]]
            elif action == "ADD" and match and "N" in values[match[2]]:
                name = names.get(match[1], match[1])
                total = Decimal(out.get(name, {"N": "0"})["N"]) + Decimal(values[match[2]]["N"])
                out[name] = {"N": str(total)}
            else:
                return None
    return out


@dataclass
class Fault:
    operation: str
    code: str
    times: int
    index: int
    when: Callable[[dict[str, Any]], bool] | None


class RealAws:
    """Real AWS's rules and injected faults, installed on any number of boto3 clients (see module doc)."""

    def __init__(self, *, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.calls: Counter[str] = Counter()
        """Calls made per operation, refused ones included."""
        self.refusals: list[tuple[str, str]] = []
        """(operation, error code) of every call refused or faulted."""
        self._faults: list[Fault] = []
        self._schemas: dict[str, dict[str, str]] = {}
        self._held: dict[tuple[str, str], str] = {}  # (table, key) -> the transaction holding the item
        self._lock = threading.Lock()
        self._scratch_lock = threading.Lock()
        self._replaying = threading.local()
        self._checks: dict[str, Callable[[Any, str, dict[str, Any], dict[str, Any]], None]] = {
            "PutItem": self._check_put_item, "UpdateItem": self._check_update_item,
            "DeleteItem": self._check_delete_item, "GetItem": self._check_get_item,
            "BatchWriteItem": self._check_batch_write_item, "TransactWriteItems": self._check_transact_write_items,
            "Publish": self._check_publish, "SendMessage": self._check_send_message,
            "SendMessageBatch": self._check_send_message_batch, "PutObject": self._check_s3_key,
            "CreateMultipartUpload": self._check_s3_key, "CopyObject": self._check_s3_key,
        }

    def wrap(self, client: Any) -> Any:
        """Install the rules on ``client`` (its own event hooks; nothing global) and return it."""
        service = client.meta.service_model.service_id.hyphenize()
        events = client.meta.events
        events.register(f"before-parameter-build.{service}", self._before(client))
        events.register(f"after-call.{service}", self._after(client))
        events.register(f"after-call-error.{service}", self._after(client))
        return client

    def inject(self, operation: str, code: str, *, times: int = 1, index: int = 0,
               when: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """Answer the next ``times`` calls of ``operation`` (whose parameters satisfy ``when``) with ``code``;
        for TransactWriteItems ``code`` is the cancellation reason of action ``index``."""
        with self._lock:
            self._faults.append(Fault(operation, code, times, index, when))

    def held_items(self) -> int:
        """Items held by transactions in flight (for tests that make a write meet one)."""
        with self._lock:
            return len(self._held)

    # -- hooks -------------------------------------------------------------------------------------------

    def _before(self, client: Any) -> Callable[..., None]:
        def handler(params: dict[str, Any], model: Any, context: dict[str, Any] | None = None, **_: Any) -> None:
            operation = model.name
            if getattr(self._replaying, "active", False):  # our own calls, replaying an update
                return
            with self._lock:
                self.calls[operation] += 1
            check = self._checks.get(operation)
            if check is not None:
                check(client, operation, params, context if context is not None else {})
            fault = self._take_fault(operation, params)
            if fault is not None:
                self._release(context)
                if operation == "TransactWriteItems":
                    reasons = [{"Code": "None"}] * len(params.get("TransactItems", []))
                    reasons[fault.index] = {"Code": fault.code, "Message": REASON_MESSAGES.get(fault.code, fault.code)}
                    raise self._cancelled(client, reasons)
                raise self._error(client, operation, fault.code, f"injected {fault.code}")

        return handler

    def _after(self, client: Any) -> Callable[..., None]:
        def handler(context: dict[str, Any] | None = None, **_: Any) -> None:
            if context and context.get("realaws_held") and self.hold_s:
                time.sleep(self.hold_s)
            self._release(context)

        return handler

    def _take_fault(self, operation: str, params: dict[str, Any]) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.operation == operation and fault.times > 0 and (fault.when is None or fault.when(params)):
                    fault.times -= 1
                    return fault
        return None

    # -- errors --------------------------------------------------------------------------------------------

    def _error(self, client: Any, operation: str, code: str, message: str, **extra: Any) -> ClientError:
        with self._lock:
            self.refusals.append((operation, code))
        response = {"Error": {"Code": code, "Message": message}, "Message": message,
                    "ResponseMetadata": {"HTTPStatusCode": 400, "RequestId": str(uuid.uuid4())}, **extra}
        return client.exceptions.from_code(code)(response, operation)

    def _cancelled(self, client: Any, reasons: list[dict[str, str]]) -> ClientError:
        codes = ", ".join(r["Code"] for r in reasons)
        return self._error(client, "TransactWriteItems", "TransactionCanceledException",
                           f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
                           CancellationReasons=reasons)

    # -- DynamoDB ------------------------------------------------------------------------------------------

    def _schema(self, client: Any, table: str) -> dict[str, str]:
        """{"HASH": name, "RANGE": name} of a table (described once, through the inner client)."""
        if table not in self._schemas:
            described = client.describe_table(TableName=table)["Table"]
            self._schemas[table] = {k["KeyType"]: k["AttributeName"] for k in described["KeySchema"]}
        return self._schemas[table]

    def _key_problem(self, client: Any, table: str, key_or_item: Mapping[str, Any]) -> str | None:
        schema = self._schema(client, table)
        hash_value = key_or_item.get(schema["HASH"])
        if hash_value is not None and value_size(hash_value) > PARTITION_KEY_BYTES:
            return HASH_KEY_TOO_LONG
        range_value = key_or_item.get(schema.get("RANGE", ""))
        if range_value is not None and value_size(range_value) > SORT_KEY_BYTES:
            return RANGE_KEY_TOO_LONG
        return None

    def _key_of(self, client: Any, table: str, key_or_item: Mapping[str, Any]) -> dict[str, Any]:
        return {name: key_or_item[name] for name in self._schema(client, table).values() if name in key_or_item}

    def _held_key(self, client: Any, table: str, key_or_item: Mapping[str, Any]) -> tuple[str, str]:
        key = self._key_of(client, table, key_or_item)
        return table, repr(sorted((k, sorted(v.items())) for k, v in key.items()))

    def _refuse_keys(self, client: Any, operation: str, table: str, key_or_item: Mapping[str, Any]) -> None:
        problem = self._key_problem(client, table, key_or_item)
        if problem:
            raise self._error(client, operation, "ValidationException", problem)

    def _refuse_held(self, client: Any, operation: str, table: str, key_or_item: Mapping[str, Any]) -> None:
        with self._lock:
            held = self._held_key(client, table, key_or_item) in self._held
        if held:
            raise self._error(client, operation, "TransactionConflictException",
                              f"Transaction is ongoing for the item in table {table}")

    def _updated_size(self, client: Any, table: str, update: Mapping[str, Any]) -> int:
        """The size of the item ``update`` would leave: the update replayed on a scratch copy of the item,
        in a scratch table of the same key schema (through the client, so moto applies it as it would)."""
        with self._scratch_lock:
            self._replaying.active = True
            try:
                return self._replay(client, table, update)
            finally:
                self._replaying.active = False

    def _replay(self, client: Any, table: str, update: Mapping[str, Any]) -> int:
        current = client.get_item(TableName=table, Key=update["Key"], ConsistentRead=True).get("Item")
        applied = _apply_simple(current or dict(update["Key"]), update)
        if applied is not None:
            return item_size(applied)
        scratch = self._scratch_table(client, table)
        if current:
            client.put_item(TableName=scratch, Item=current)
        else:
            client.delete_item(TableName=scratch, Key=update["Key"])
        expression = update["UpdateExpression"]
        kwargs: dict[str, Any] = {"UpdateExpression": expression}
        # Only what the update uses: DynamoDB refuses names and values an expression does not use, and the
        # condition (not replayed) may use some.
        values = {k: v for k, v in update.get("ExpressionAttributeValues", {}).items()
                  if k in set(re.findall(r":\w+", expression))}
        names = {k: v for k, v in update.get("ExpressionAttributeNames", {}).items()
                 if k in set(re.findall(r"#\w+", expression))}
        if values:
            kwargs["ExpressionAttributeValues"] = values
        if names:
            kwargs["ExpressionAttributeNames"] = names
        try:
            after = client.update_item(TableName=scratch, Key=update["Key"], ReturnValues="ALL_NEW", **kwargs)
        except ClientError as err:
            if "size" in str(err).lower():  # moto refused it as too large itself
                return ITEM_BYTES + 1
            raise
        client.delete_item(TableName=scratch, Key=update["Key"])
        return item_size(after.get("Attributes", {}))

    def _scratch_table(self, client: Any, table: str) -> str:
        """A table with ``table``'s key schema for replays (created once; called under the scratch lock)."""
        name = f"{SCRATCH}{table}"
        if name not in self._schemas:
            described = client.describe_table(TableName=table)["Table"]
            keys = {k["AttributeName"] for k in described["KeySchema"]}
            client.create_table(
                TableName=name, KeySchema=described["KeySchema"], BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[a for a in described["AttributeDefinitions"] if a["AttributeName"] in keys])
            self._schemas[name] = self._schema(client, table)
        return name

    def _check_put_item(self, client: Any, operation: str, params: dict[str, Any], context: dict[str, Any]) -> None:
        table, item = params["TableName"], params["Item"]
        self._refuse_keys(client, operation, table, item)
        if item_size(item) > ITEM_BYTES:
            raise self._error(client, operation, "ValidationException", ITEM_TOO_LARGE)
        self._refuse_held(client, operation, table, item)

    def _check_update_item(self, client: Any, operation: str, params: dict[str, Any],
                          context: dict[str, Any]) -> None:
        table = params["TableName"]
        self._refuse_keys(client, operation, table, params["Key"])
        self._refuse_held(client, operation, table, params["Key"])
        if self._updated_size(client, table, params) > ITEM_BYTES:
            raise self._error(client, operation, "ValidationException", UPDATE_TOO_LARGE)

    def _check_delete_item(self, client: Any, operation: str, params: dict[str, Any],
                          context: dict[str, Any]) -> None:
        self._refuse_keys(client, operation, params["TableName"], params["Key"])
        self._refuse_held(client, operation, params["TableName"], params["Key"])

    def _check_get_item(self, client: Any, operation: str, params: dict[str, Any], context: dict[str, Any]) -> None:
        self._refuse_keys(client, operation, params["TableName"], params["Key"])

    def _check_batch_write_item(self, client: Any, operation: str, params: dict[str, Any],
                              context: dict[str, Any]) -> None:
        requests = [(table, r) for table, rs in params["RequestItems"].items() for r in rs]
        if len(requests) > BATCH_WRITE_ITEMS:
            raise self._error(client, operation, "ValidationException",
                              "Too many items requested for the BatchWriteItem call")
        for table, request in requests:
            item = request.get("PutRequest", {}).get("Item") or request.get("DeleteRequest", {}).get("Key", {})
            self._refuse_keys(client, operation, table, item)
            if item_size(item) > ITEM_BYTES:
                raise self._error(client, operation, "ValidationException", ITEM_TOO_LARGE)

    def _check_transact_write_items(self, client: Any, operation: str, params: dict[str, Any],
                                  context: dict[str, Any]) -> None:
        actions = params["TransactItems"]
        if len(actions) > TRANSACT_ITEMS:
            raise self._error(client, operation, "ValidationException",
                              f"1 validation error detected: Value at 'transactItems' failed to satisfy constraint: "
                              f"Member must have length less than or equal to {TRANSACT_ITEMS}")
        size = sum(item_size(a.get("Item", {})) + item_size(a.get("ExpressionAttributeValues", {}))
                   for action in actions for a in action.values())
        if size > TRANSACT_REQUEST_BYTES:
            raise self._error(client, operation, "ValidationException",
                              "Transaction request cannot be larger than 4 MB")
        reasons = [{"Code": "None"} for _ in actions]
        for index, action in enumerate(actions):
            ((kind, body),) = action.items()
            key = body.get("Key") or body.get("Item")
            problem = self._key_problem(client, body["TableName"], key)
            if problem:  # request validation: not a cancellation
                raise self._error(client, operation, "ValidationException", problem)
            if kind == "Put" and item_size(body["Item"]) > ITEM_BYTES:
                reasons[index] = {"Code": "ValidationError", "Message": ITEM_TOO_LARGE}
            elif kind == "Update" and self._updated_size(client, body["TableName"], body) > ITEM_BYTES:
                reasons[index] = {"Code": "ValidationError", "Message": UPDATE_TOO_LARGE}
        if any(r["Code"] != "None" for r in reasons):
            raise self._cancelled(client, reasons)
        transaction = str(uuid.uuid4())
        keys = [self._held_key(client, next(iter(a.values()))["TableName"],
                               next(iter(a.values())).get("Key") or next(iter(a.values())).get("Item"))
                for a in actions]
        with self._lock:
            conflicts = [i for i, key in enumerate(keys) if key in self._held]
            if not conflicts:
                for key in keys:
                    self._held[key] = transaction
        if conflicts:
            for index in conflicts:
                reasons[index] = {"Code": "TransactionConflict", "Message": REASON_MESSAGES["TransactionConflict"]}
            raise self._cancelled(client, reasons)
        context["realaws_held"] = transaction

    def _release(self, context: dict[str, Any] | None) -> None:
        transaction = (context or {}).pop("realaws_held", None)
        if transaction is None:
            return
        with self._lock:
            for key in [k for k, t in self._held.items() if t == transaction]:
                del self._held[key]

    # -- SNS, SQS, S3 --------------------------------------------------------------------------------------

    def _check_publish(self, client: Any, operation: str, params: dict[str, Any], context: dict[str, Any]) -> None:
        size = utf8(params.get("Message", "")) + sum(
            utf8(name) + utf8(value.get("DataType", "")) + (utf8(value["StringValue"]) if "StringValue" in value
                                                             else len(value.get("BinaryValue", b"")))
            for name, value in params.get("MessageAttributes", {}).items())
        if size > SNS_BYTES:
            raise self._error(client, operation, "InvalidParameter", "Invalid parameter: Message too long")

    @staticmethod
    def _sqs_size(entry: Mapping[str, Any]) -> int:
        return utf8(entry.get("MessageBody", "")) + sum(
            utf8(name) + utf8(value.get("DataType", "")) + (utf8(value["StringValue"]) if "StringValue" in value
                                                             else len(value.get("BinaryValue", b"")))
            for name, value in entry.get("MessageAttributes", {}).items())

    def _check_send_message(self, client: Any, operation: str, params: dict[str, Any],
                           context: dict[str, Any]) -> None:
        if self._sqs_size(params) > SQS_BYTES:
            raise self._error(client, operation, "InvalidParameterValue",
                              f"One or more parameters are invalid. Reason: Message must be shorter than {SQS_BYTES} "
                              "bytes.")

    def _check_send_message_batch(self, client: Any, operation: str, params: dict[str, Any],
                                context: dict[str, Any]) -> None:
        entries = params.get("Entries", [])
        if len(entries) > SQS_BATCH_ENTRIES:
            raise self._error(client, operation, "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
                              f"Maximum number of entries per request are {SQS_BATCH_ENTRIES}. You have sent "
                              f"{len(entries)}.")
        size = sum(map(self._sqs_size, entries))
        if size > SQS_BYTES:
            raise self._error(client, operation, "AWS.SimpleQueueService.BatchRequestTooLong",
                              f"Batch requests cannot be longer than {SQS_BYTES} bytes. You have sent {size} bytes.")

    def _check_s3_key(self, client: Any, operation: str, params: dict[str, Any], context: dict[str, Any]) -> None:
        if utf8(params.get("Key", "")) > S3_KEY_BYTES:
            raise self._error(client, operation, "KeyTooLongError", "Your key is too long")
