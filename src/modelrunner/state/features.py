"""The feature table: the job's raw (pre-merge) features, and each region's merged result.

Raw features are written in the reference's layout, because other tools count them: items under
``hash_key = <image_id>-<n>`` (n in 1..50), each a ``features`` list of GeoJSON Feature strings, chunked
well under DynamoDB's 400 KB. Our keys are deterministic (derived from the region, tile and chunk), so a
redelivered region overwrites its own items instead of adding duplicates. A single feature too large for
one item (a mask of tens of thousands of vertices) is the exception: its text is zlib-compressed and cut
into ``feature_part`` binary parts, one item each (``feature_key``, ``part``, ``parts``, no ``features``
list), joined again on read (:meth:`FeatureStore.raw_features`), so no feature ever fails its region.

Region results are stored compactly: the region's merged features as their columns (pixel boxes, scores,
labels) followed by their GeoJSON texts, zlib-compressed and cut into binary chunks under
``hash_key = <image_id>-regions``, ``range_key = <region_id>#<attempt>#<chunk>``. A region's result is
read back with one Query on its key prefix; the boxes let the completion find the few features near region
seams without parsing the others, whose texts go to the outputs as they are. The worker keeps the results it
stored last in memory (:class:`OwnResults`), so that when it completes the job itself it does not read its
own regions back.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..features.featureset import FeatureSet, PackedFeatureSet
from . import ddb

SALTS = 50
ITEM_BYTES = 200_000  # a chunk of texts per item, well under DynamoDB's 400 KB
CHUNK_BYTES = 350_000
OWN_RESULTS_BYTES = 64 << 20  # compressed region results kept in memory (case 3 of the benchmark: 17 MB)
READ_THREADS = 8  # regions read back at once at completion


class OwnResults:
    """The region results this worker stored, newest last, up to ``max_bytes`` of compressed chunks.

    Keyed by (image, region, attempt): the completion uses an entry only when the region row names that
    attempt as the one that finished the region, i.e. when the table holds exactly these chunks. A job's
    entries are dropped when it completes; a job completed by another worker ages out.
    """

    def __init__(self, max_bytes: int = OWN_RESULTS_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, str], PackedFeatureSet] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, image_id: str, region_id: str, attempt: str, result: PackedFeatureSet) -> None:
        size = result.nbytes
        with self._lock:
            replaced = self._entries.pop((image_id, region_id, attempt), None)
            if replaced is not None:
                self._bytes -= replaced.nbytes
            if size > self.max_bytes:
                return
            self._entries[(image_id, region_id, attempt)] = result
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes

    def get(self, image_id: str, region_id: str, attempt: str) -> PackedFeatureSet | None:
        with self._lock:
            return self._entries.get((image_id, region_id, attempt))

    def forget(self, image_id: str) -> None:
        with self._lock:
            for key in [key for key in self._entries if key[0] == image_id]:
                self._bytes -= self._entries.pop(key).nbytes


def _hex(*parts: object) -> str:
    return hashlib.md5("|".join(map(str, parts)).encode()).hexdigest()


@dataclass
class FeatureStore:
    client: Any
    table: str
    ttl_seconds: int = 7200
    """Raw features live 2 h, as the reference's."""
    result_ttl_seconds: int = 86400
    """Region results must outlive the job (its TTL), however long the job takes."""
    own: OwnResults = field(default_factory=OwnResults)

    def raw_items(self, image_id: str, region_id: str, tile_id: str, texts: Sequence[str]) -> list[dict[str, Any]]:
        """A tile's raw features (GeoJSON texts) as feature-table items, cut well under 400 KB each.

        Keys derive from (region, tile, chunk): a redelivered region overwrites its own items.
        """
        expire = int(time.time()) + self.ttl_seconds
        salt = int(_hex(region_id, tile_id), 16) % SALTS + 1
        hash_key = f"{image_id}-{salt}"
        ddb.check_key(self.table, "hash_key", hash_key)
        texts = list(texts)
        lengths = list(map(len, texts))  # characters; DynamoDB counts UTF-8 bytes
        parts: list[dict[str, Any]] = []
        if sum(lengths) <= ITEM_BYTES and all(map(str.isascii, texts)):  # a tile's features fit in one item
            chunks = [texts]
        else:
            chunks = [[]]
            size = 0
            for index, (text, length) in enumerate(zip(texts, lengths, strict=True)):
                if not text.isascii():
                    length = len(text.encode())
                if length > ITEM_BYTES:  # too large for an item of its own: stored in parts
                    parts.extend(self._part_items(hash_key, region_id, tile_id, index, text, expire))
                    continue
                if chunks[-1] and size + length > ITEM_BYTES:
                    chunks.append([])
                    size = 0
                chunks[-1].append(text)
                size += length
        return [{"hash_key": hash_key, "range_key": _hex(region_id, tile_id, n), "tile_id": tile_id,
                 "features": chunk, "expire_time": expire}
                for n, chunk in enumerate(chunks) if chunk] + parts

    @staticmethod
    def _part_items(hash_key: str, region_id: str, tile_id: str, index: int, text: str,
                    expire: int) -> list[dict[str, Any]]:
        """One feature text too large for an item, compressed and cut into items of ``ITEM_BYTES`` at most.
        Keys derive from (region, tile, the feature's index in the tile, part): a redelivery overwrites."""
        data = zlib.compress(text.encode(), 6)
        pieces = [data[start:start + ITEM_BYTES] for start in range(0, len(data), ITEM_BYTES)]
        feature_key = _hex(region_id, tile_id, "feature", index)
        return [{"hash_key": hash_key, "range_key": _hex(feature_key, n), "tile_id": tile_id,
                 "feature_key": feature_key, "part": n, "parts": len(pieces), "feature_part": piece,
                 "expire_time": expire}
                for n, piece in enumerate(pieces)]

    def put_items(self, items: Sequence[dict[str, Any]]) -> None:
        """Write raw items (from :meth:`raw_items`), marshalled here directly: their attribute types are
        known, and the generic serializer would inspect every feature text of every item."""
        ddb.batch_put(self.client, self.table, [_marshal_raw(item) for item in items], marshalled=True)

    def raw_features(self, image_id: str) -> list[dict[str, Any]]:
        """Every raw feature of a job (50 queries), for audits and tests; features stored in parts are
        joined (a part missing raises)."""
        out: list[dict[str, Any]] = []
        for salt in range(1, SALTS + 1):
            parts: dict[str, dict[int, bytes]] = {}
            counts: dict[str, int] = {}
            for item in self._query(f"{image_id}-{salt}"):
                if "feature_part" in item:
                    parts.setdefault(item["feature_key"], {})[item["part"]] = bytes(item["feature_part"])
                    counts[item["feature_key"]] = item["parts"]
                out.extend(json.loads(text) for text in item.get("features", []))
            for feature_key, got in parts.items():
                if sorted(got) != list(range(counts[feature_key])):
                    raise RuntimeError(f"raw feature {feature_key}: {len(got)} of {counts[feature_key]} parts found")
                out.append(json.loads(zlib.decompress(b"".join(got[n] for n in range(len(got))))))
        return out

    def put_region_result(self, image_id: str, region_id: str, attempt: str, features: FeatureSet) -> int:
        """Store a region's merged features under this attempt; returns the chunk count.

        Keys carry the attempt (worker and start time), and the region row records the attempt that
        finished it: a duplicate delivery that loses the race can never mix its chunks into the result.
        """
        ddb.check_key(self.table, "hash_key", f"{image_id}-regions")
        ddb.check_key(self.table, "range_key", f"{region_id}#{attempt}#00000", sort=True)
        packed = PackedFeatureSet.pack(features, CHUNK_BYTES)
        chunks = packed.chunks
        expire = int(time.time()) + self.result_ttl_seconds
        ddb.batch_put(self.client, self.table, [
            {"hash_key": f"{image_id}-regions", "range_key": f"{region_id}#{attempt}#{i:05d}",
             "region_id": region_id, "attempt": attempt, "chunk": i, "chunks": len(chunks), "blob": part,
             "expire_time": expire}
            for i, part in enumerate(chunks)])
        self.own.put(image_id, region_id, attempt, packed)
        return len(chunks)

    def put_blob(self, image_id: str, name: str, data: bytes) -> None:
        """Keep ``data`` for the job under ``name`` (compressed, in chunks under the item limit)."""
        packed = zlib.compress(data, 6)
        chunks = [packed[i:i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)] or [b""]
        expire = int(time.time()) + self.result_ttl_seconds
        ddb.batch_put(self.client, self.table, [
            {"hash_key": f"{image_id}-blobs", "range_key": f"{name}#{i:05d}", "chunks": len(chunks), "blob": part,
             "expire_time": expire} for i, part in enumerate(chunks)])

    def get_blob(self, image_id: str, name: str) -> bytes | None:
        """What :meth:`put_blob` kept under ``name`` (None when nothing, or not all of it, is there)."""
        items = sorted(self._query(f"{image_id}-blobs", prefix=f"{name}#"), key=lambda item: item["range_key"])
        if not items or len(items) != int(items[0]["chunks"]):
            return None
        return zlib.decompress(b"".join(bytes(item["blob"]) for item in items))

    def region_results(self, image_id: str, finished: dict[str, tuple[str, int]]) -> dict[str, PackedFeatureSet]:
        """Every region's stored result, keyed by region id: the (attempt, chunk count) each row recorded.
        Results this worker stored itself come from memory; the others are read, a query per region (only
        the recorded attempt's chunks). Texts stay compressed until they are iterated."""
        results: dict[str, PackedFeatureSet] = {}
        missing: list[tuple[str, str, int]] = []
        for region_id, (attempt, count) in finished.items():
            own = self.own.get(image_id, region_id, attempt)
            if own is not None and len(own.chunks) == count:
                results[region_id] = own
            else:
                missing.append((region_id, attempt, count))
        if missing:
            with ThreadPoolExecutor(min(READ_THREADS, len(missing)), thread_name_prefix="read-result") as pool:
                read = pool.map(lambda entry: self._read_result(image_id, *entry), missing)
                results.update(zip((region_id for region_id, _, _ in missing), read, strict=True))
        return results

    def forget(self, image_id: str) -> None:
        """Drop the job's results from memory (it has completed)."""
        self.own.forget(image_id)

    def _read_result(self, image_id: str, region_id: str, attempt: str, count: int) -> PackedFeatureSet:
        got: dict[int, bytes] = {}
        for item in self._query(f"{image_id}-regions", raw=True, prefix=f"{region_id}#{attempt}#"):
            chunk = int(item["chunk"]["N"])
            ours = item["region_id"]["S"] == region_id and item["attempt"]["S"] == attempt
            if ours and chunk < count:  # a job id holding "#" could make a prefix match another region's keys
                got[chunk] = item["blob"]["B"]
        if len(got) != count:
            raise RuntimeError(f"region {region_id}: {len(got)} of {count} result chunks found")
        return PackedFeatureSet([got[i] for i in range(count)])

    def _query(self, hash_key: str, raw: bool = False, prefix: str = "") -> Iterable[dict[str, Any]]:
        condition, values = "hash_key = :h", {":h": hash_key}
        if prefix:
            condition += " AND begins_with(range_key, :p)"
            values[":p"] = prefix
        kwargs: dict[str, Any] = {"TableName": self.table, "KeyConditionExpression": condition,
                                  "ExpressionAttributeValues": ddb.values(values), "ConsistentRead": True}
        while True:
            answer = self.client.query(**kwargs)
            for item in answer.get("Items", []):
                yield item if raw else ddb.unmarshal(item)
            if "LastEvaluatedKey" not in answer:
                return
            kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def _marshal_raw(item: dict[str, Any]) -> dict[str, Any]:
    """A raw item (from :meth:`FeatureStore.raw_items`) as DynamoDB JSON, written here directly: the
    attribute types are known, and the generic serializer would inspect every feature text of every item."""
    marshalled: dict[str, Any] = {"hash_key": {"S": item["hash_key"]}, "range_key": {"S": item["range_key"]},
                                  "tile_id": {"S": item["tile_id"]}, "expire_time": {"N": str(item["expire_time"])}}
    if "feature_part" in item:
        marshalled.update({"feature_key": {"S": item["feature_key"]}, "part": {"N": str(item["part"])},
                           "parts": {"N": str(item["parts"])}, "feature_part": {"B": item["feature_part"]}})
    else:
        marshalled["features"] = {"L": [{"S": text} for text in item["features"]]}
    return marshalled
