"""``python -m modelrunner.local.motofast``: the moto server with costs and a race that real AWS does not have removed.

The benchmark and the demo time the runner against moto; moto's own costs must not be what they measure.
Each fix changes how an answer is computed, never the answer: status, headers and body stay byte for byte
what stock moto 5.2 sends (``test/unit/test_motofast.py`` compares them call by call).

1. **Kinesis PutRecord(s)**: a shard builds a list of every record key on each put to find the first/last
   sequence number (O(n^2) over a stream's life: about a minute for 100k records). The ordered dict's
   first and last keys give the same values in O(1).
2. **S3 ranged GetObject**: ``FakeKey.value`` reads the whole object out of its (spooled, on-disk above
   ~5 MB) buffer and the range is sliced from that copy, so every ``Range: bytes=a-b`` request costs the
   object's size: GDAL's ``/vsis3/`` reads a 480 MB scene in hundreds of ranged GETs, i.e. tens of GB of
   copying. Here a ranged GetObject gets a view of the key (:class:`_KeyView`) that reads only the range,
   under the key's lock, from the same buffer. Anything the range logic does not slice (multi-range,
   unparsable or ignored ranges, ``partNumber``) is materialised to the whole value as before.
3. **DynamoDB item results**: every ``AttributeValue`` of an answer (items, keys, ``Attributes``) went
   through the generic shape-driven serializer, attribute by attribute (about half of moto's CPU under
   per-tile UpdateItem/Query load). moto's results are already DynamoDB-JSON dicts, so an AttributeValue
   whose types are the ones the serializer would emit unchanged (``S``/``N`` str, ``BOOL``/``NULL`` bool,
   string sets, nested ``M``/``L`` of the same) is placed as is, and ``json.dumps`` renders it; blobs get
   the serializer's base64; anything else takes the generic path. The structure around the attribute
   values (key order from the output shape, ``ConsumedCapacity`` ...) is still the serializer's.

4. **Kinesis shard race**: a shard's put reads its last sequence number, adds one and stores the record
   under that number without a lock, so two PutRecord(s) calls served at once on one shard can take the
   same number and the second record overwrites the first (about one record in 20,000 in a plain test
   of two concurrent PutRecords): counts read back were short although every put answered success,
   which real Kinesis never does. Each shard's put (and its GetRecords walk, which would
   otherwise see the dict change under it) runs under a lock of that shard; answers are stock moto's
   whenever puts do not overlap.

The PutRecords answer is also rendered as plain JSON (:func:`_kinesis_put_records`). :func:`patch` applies
all of these (idempotent); :func:`unpatch` restores stock moto (tests compare both).

Its module-level state (the saved originals, the per-thread range, the serializer cache) stays module
state on purpose: it patches moto's classes in this process, which are process-wide, and
:func:`unpatch` must find what :func:`patch` replaced whoever calls it.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from typing import Any, cast

_originals: dict[tuple[type, str], Any] = {}
_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------------------
# 1. Kinesis: first / last sequence number in O(1)
# ---------------------------------------------------------------------------------------------------------


def _first_sequence_number(self: Any) -> int:
    return next(iter(self.records)) if self.records else 0


def _last_sequence_number(self: Any) -> int:
    return next(reversed(self.records)) if self.records else 0


# ---------------------------------------------------------------------------------------------------------
# 2. S3: ranged GetObject reads only the range
# ---------------------------------------------------------------------------------------------------------

#: Set (per server thread) while a GetObject that carries a Range header runs, so that ``FakeKey.value``
#: returns a :class:`_KeyView` there and only there.
_ranged = threading.local()


class _KeyView:
    """The value of a ``FakeKey`` as far as moto's range handling uses it: ``len``, truthiness, one slice.

    A slice reads just those bytes from the key's buffer under ``key.lock`` (the lock the stock ``value``
    getter takes: the buffer's file position is shared state). ``bytes(view)`` is the stock full copy.
    """

    __slots__ = ("_key",)

    def __init__(self, key: Any) -> None:
        self._key = key

    def __len__(self) -> int:
        return int(self._key.size)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __bytes__(self) -> bytes:
        return bytes(_original("s3_value").fget(self._key))

    def __getitem__(self, item: slice) -> bytes:
        if not isinstance(item, slice) or item.step not in (None, 1):
            return bytes(self)[item]
        start, stop, _ = item.indices(len(self))
        if stop <= start:
            return b""
        key = self._key
        with key.lock:
            buffer = key._value_buffer
            buffer.seek(start)
            return bytes(buffer.read(stop - start))


def _value_getter(self: Any) -> Any:
    if getattr(_ranged, "active", False):
        return _KeyView(self)
    return _original("s3_value").fget(self)


def _is_ranged(headers: Any) -> bool:
    # The same test moto's key_response applies before it slices the body.
    return "range" in headers and headers["range"] != ""


def _get_object(self: Any) -> Any:
    if not _is_ranged(self.headers):
        return _original("s3_get_object")(self)
    _ranged.active = True
    try:
        return _original("s3_get_object")(self)
    finally:
        _ranged.active = False


def _key_response(self: Any, request: Any, full_url: str, headers: Any) -> Any:
    status, response_headers, body = _original("s3_key_response")(self, request, full_url, headers)
    if isinstance(body, _KeyView):  # a range moto did not apply: the whole object, as stock moto sends it
        body = bytes(body)
    return status, response_headers, body


# ---------------------------------------------------------------------------------------------------------
# 3. DynamoDB: attribute values rendered as they are
# ---------------------------------------------------------------------------------------------------------

_NOT_PLAIN = object()
_STRING_TAGS = frozenset(("S", "N"))
_BOOL_TAGS = frozenset(("BOOL", "NULL"))
_STRING_SET_TAGS = frozenset(("SS", "NS"))


def _blob(value: Any) -> Any:
    """What the serializer's ``_base64`` makes of a blob; ``_NOT_PLAIN`` for what it would not take."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    elif not isinstance(value, bytes):
        return _NOT_PLAIN
    return base64.b64encode(value).strip().decode("utf-8")


def _render(value: Any) -> Any:
    """``value`` as the generic JSON serializer would emit this AttributeValue, or ``_NOT_PLAIN``.

    The serializer keeps ``str`` strings and ``bool`` booleans, keeps map and list order, base64-encodes
    blobs and reorders an AttributeValue's keys by the shape, so one-key dicts of those types come out
    unchanged (the same object, no copy) and blobs re-encoded; anything else is left to the serializer.
    """
    if type(value) is not dict or len(value) != 1:
        return _NOT_PLAIN
    ((tag, inner),) = value.items()
    if tag in _STRING_TAGS:
        return value if type(inner) is str else _NOT_PLAIN
    if tag in _BOOL_TAGS:
        return value if type(inner) is bool else _NOT_PLAIN
    if tag in _STRING_SET_TAGS:
        return value if type(inner) is list and all(type(s) is str for s in inner) else _NOT_PLAIN
    if tag == "M":
        if type(inner) is not dict:
            return _NOT_PLAIN
        changed: dict[str, Any] | None = None
        for name, member in inner.items():
            rendered = _render(member)
            if rendered is _NOT_PLAIN or type(name) is not str:
                return _NOT_PLAIN
            if rendered is not member:
                changed = changed if changed is not None else dict(inner)
                changed[name] = rendered
        return value if changed is None else {"M": changed}
    if tag == "L":
        if type(inner) is not list:
            return _NOT_PLAIN
        items = [_render(member) for member in inner]
        if any(rendered is _NOT_PLAIN for rendered in items):
            return _NOT_PLAIN
        return value if all(a is b for a, b in zip(items, inner, strict=True)) else {"L": items}
    if tag == "B":
        encoded = _blob(inner)
        return _NOT_PLAIN if encoded is _NOT_PLAIN else {"B": encoded}
    if tag == "BS":
        if type(inner) is not list:
            return _NOT_PLAIN
        blobs = [_blob(member) for member in inner]
        return _NOT_PLAIN if any(b is _NOT_PLAIN for b in blobs) else {"BS": blobs}
    return _NOT_PLAIN


_fast_serializers: dict[type, type] = {}


def _fast_serializer(base: type) -> type:
    """``base`` (moto's JSON serializer class) with AttributeValues placed as rendered by :func:`_render`."""
    cls = _fast_serializers.get(base)
    if cls is None:

        class FastAttributeValueSerializer(base):  # type: ignore[misc]
            def _serialize(self, serialized: Any, value: Any, shape: Any, key: str) -> None:
                if key and shape.name == "AttributeValue":
                    rendered = _render(value)
                    if rendered is not _NOT_PLAIN:
                        serialized[shape.serialization.get("name", key)] = rendered
                        return
                super()._serialize(serialized, value, shape, key)

        cls = _fast_serializers[base] = FastAttributeValueSerializer
    return cls


def _dynamo_execute_result(self: Any, context: Any) -> Any:
    from moto.core.responses import ActionContext

    # Response transformers act on key paths inside attribute values too; none exist for DynamoDB, but if
    # one ever does, the generic path is the one that honours it.
    if getattr(context.response, "RESPONSE_KEY_PATH_TO_TRANSFORMER", None):
        return _original("ddb_execute_result")(self, context)
    fast = ActionContext(context.service_model, context.operation_model,
                         _fast_serializer(context.serializer_class), context.response)
    return _original("ddb_execute_result")(self, fast)


# ---------------------------------------------------------------------------------------------------------
# 4. Kinesis: one put at a time per shard
# ---------------------------------------------------------------------------------------------------------


def _shard_lock(shard: Any) -> threading.Lock:
    """The lock of one shard, created on first use (shards made before :func:`patch` included)."""
    lock = shard.__dict__.get("_motofast_lock")
    if lock is None:
        with _lock:
            lock = shard.__dict__.setdefault("_motofast_lock", threading.Lock())
    return cast(threading.Lock, lock)


def _locked_put_record(self: Any, *args: Any, **kwargs: Any) -> Any:
    """Stock ``Shard.put_record`` (next sequence number = last + 1, then store) as one step per shard."""
    with _shard_lock(self):
        return _original("kinesis_put")(self, *args, **kwargs)


def _locked_get_records(self: Any, *args: Any, **kwargs: Any) -> Any:
    """Stock ``Shard.get_records`` (iterates the shard's records) without a put changing them meanwhile."""
    with _shard_lock(self):
        return _original("kinesis_get")(self, *args, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# patch / unpatch
# ---------------------------------------------------------------------------------------------------------

_NAMES: dict[str, tuple[str, str, str]] = {
    # name: (module, class, attribute)
    "kinesis_min": ("moto.kinesis.models", "Shard", "get_min_sequence_number"),
    "kinesis_max": ("moto.kinesis.models", "Shard", "get_max_sequence_number"),
    "kinesis_put": ("moto.kinesis.models", "Shard", "put_record"),
    "kinesis_get": ("moto.kinesis.models", "Shard", "get_records"),
    "s3_value": ("moto.s3.models", "FakeKey", "value"),
    "s3_get_object": ("moto.s3.responses", "S3Response", "get_object"),
    "s3_key_response": ("moto.s3.responses", "S3Response", "key_response"),
    "ddb_execute_result": ("moto.dynamodb.responses", "DynamoResult", "execute_result"),
    "kinesis_put_records": ("moto.kinesis.responses", "KinesisResponse", "put_records"),
}
_stock: dict[str, Any] = {}


def _kinesis_put_records(self: Any) -> Any:
    """PutRecords answered as plain JSON: the generic serializer walks each of the 500 records' shapes,
    the largest part of moto's time under a Kinesis sink; the answer (strings and one count) is the same."""
    response = self.kinesis_backend.put_records(self._get_param("StreamARN"), self._get_param("StreamName"),
                                                self._get_param("Records"))
    return json.dumps(response), {"content-type": "application/x-amz-json-1.1"}


def _target(name: str) -> tuple[type, str]:
    import importlib

    module, cls, attribute = _NAMES[name]
    return getattr(importlib.import_module(module), cls), attribute


def _original(name: str) -> Any:
    return _stock[name]


def _replacements() -> dict[str, Any]:
    return {
        "kinesis_min": _first_sequence_number,
        "kinesis_max": _last_sequence_number,
        "kinesis_put": _locked_put_record,
        "kinesis_get": _locked_get_records,
        "s3_value": property(_value_getter, _stock["s3_value"].fset),
        "s3_get_object": _get_object,
        "s3_key_response": _key_response,
        # DynamoResult inherits execute_result from ActionResult: set it on DynamoResult only.
        "ddb_execute_result": _dynamo_execute_result,
        "kinesis_put_records": _kinesis_put_records,
    }


def patch() -> None:
    """Apply the fixes to the moto classes of this process (idempotent)."""
    with _lock:
        if _originals:
            return
        for name in _NAMES:
            cls, attribute = _target(name)
            # The attribute as looked up (inherited ones included), and whether the class had its own.
            _stock[name] = cls.__dict__[attribute] if attribute in cls.__dict__ else getattr(cls, attribute)
            _originals[(cls, attribute)] = cls.__dict__.get(attribute, _NOT_PLAIN)
        for name, replacement in _replacements().items():
            cls, attribute = _target(name)
            setattr(cls, attribute, replacement)


def unpatch() -> None:
    """Restore stock moto (for comparisons in tests)."""
    with _lock:
        for (cls, attribute), original in _originals.items():
            if original is _NOT_PLAIN:
                delattr(cls, attribute)
            else:
                setattr(cls, attribute, original)
        _originals.clear()


def patched() -> bool:
    """Whether :func:`patch` is in effect."""
    return bool(_originals)


def main() -> None:
    patch()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
