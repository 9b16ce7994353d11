"""The feature table: the job's raw (pre-merge) features, and each region's merged result.

Raw features are written in the reference's layout, because other tools count them: items under
``hash_key = <image_id>-<n>`` (n in 1..50), each a ``features`` list of GeoJSON Feature strings, chunked
well under DynamoDB's 400 KB. Our keys are deterministic (derived from the region, tile and chunk), so a
redelivered region overwrites its own items instead of adding duplicates.

Region results are stored compactly: the region's merged features as their columns (pixel boxes, scores,
labels) followed by their GeoJSON texts, zlib-compressed and cut into binary chunks under
``hash_key = <image_id>-regions``, ``range_key = <region_id>#<chunk>``. Reading a whole job back is one
paginated Query; the boxes let the completion find the few features near region seams without parsing the
others, whose texts go to the outputs as they are.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..features.seams import FeatureSet, PackedFeatureSet
from . import ddb

SALTS = 50
ITEM_BYTES = 200_000  # a chunk of texts per item, well under DynamoDB's 400 KB
CHUNK_BYTES = 350_000


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

    def raw_items(self, image_id: str, region_id: str, tile_id: str, texts: Sequence[str]) -> list[dict[str, Any]]:
        """A tile's raw features (GeoJSON texts) as feature-table items, cut well under 400 KB each.

        Keys derive from (region, tile, chunk): a redelivered region overwrites its own items.
        """
        expire = int(time.time()) + self.ttl_seconds
        texts = list(texts)
        lengths = list(map(len, texts))  # characters; DynamoDB counts UTF-8 bytes
        if sum(lengths) <= ITEM_BYTES and "".join(texts).isascii():  # a tile's features fit in one item
            chunks = [texts]
        else:
            chunks = [[]]
            size = 0
            for text, length in zip(texts, lengths, strict=True):
                if not text.isascii():
                    length = len(text.encode())
                if chunks[-1] and size + length > ITEM_BYTES:
                    chunks.append([])
                    size = 0
                chunks[-1].append(text)
                size += length
        salt = int(_hex(region_id, tile_id), 16) % SALTS + 1
        return [{"hash_key": f"{image_id}-{salt}", "range_key": _hex(region_id, tile_id, n), "tile_id": tile_id,
                 "features": chunk, "expire_time": expire}
                for n, chunk in enumerate(chunks) if chunk]

    def put_items(self, items: Sequence[dict[str, Any]]) -> None:
        """Write raw items (from :meth:`raw_items`), marshalled here directly: their attribute types are
        known, and the generic serializer would inspect every feature text of every item."""
        ddb.batch_put(self.client, self.table, [
            {"hash_key": {"S": item["hash_key"]}, "range_key": {"S": item["range_key"]},
             "tile_id": {"S": item["tile_id"]}, "features": {"L": [{"S": text} for text in item["features"]]},
             "expire_time": {"N": str(item["expire_time"])}}
            for item in items], marshalled=True)

    def raw_features(self, image_id: str) -> list[dict[str, Any]]:
        """Every raw feature of a job (50 queries), for audits and tests."""
        out: list[dict[str, Any]] = []
        for salt in range(1, SALTS + 1):
            for item in self._query(f"{image_id}-{salt}"):
                out.extend(json.loads(text) for text in item.get("features", []))
        return out

    def put_region_result(self, image_id: str, region_id: str, attempt: str, features: FeatureSet) -> int:
        """Store a region's merged features under this attempt; returns the chunk count.

        Keys carry the attempt (worker and start time), and the region row records the attempt that
        finished it: a duplicate delivery that loses the race can never mix its chunks into the result.
        """
        chunks = PackedFeatureSet.pack(features, CHUNK_BYTES).chunks
        expire = int(time.time()) + self.result_ttl_seconds
        ddb.batch_put(self.client, self.table, [
            {"hash_key": f"{image_id}-regions", "range_key": f"{region_id}#{attempt}#{i:05d}",
             "region_id": region_id, "attempt": attempt, "chunk": i, "chunks": len(chunks), "blob": part,
             "expire_time": expire}
            for i, part in enumerate(chunks)])
        return len(chunks)

    def region_results(self, image_id: str, finished: dict[str, tuple[str, int]]) -> dict[str, PackedFeatureSet]:
        """Every region's stored result, keyed by region id: the (attempt, chunk count) each row recorded.
        Texts stay compressed until they are iterated."""
        parts: dict[str, dict[int, bytes]] = {}
        for item in self._query(f"{image_id}-regions", raw=True):
            region_id = item["region_id"]["S"]
            attempt, count = finished.get(region_id, ("", 0))
            chunk = int(item["chunk"]["N"])
            if item.get("attempt", {}).get("S") == attempt and chunk < count:
                parts.setdefault(region_id, {})[chunk] = item["blob"]["B"]
        results: dict[str, PackedFeatureSet] = {}
        for region_id, (_, count) in finished.items():
            got = parts.get(region_id, {})
            if len(got) != count:
                raise RuntimeError(f"region {region_id}: {len(got)} of {count} result chunks found")
            results[region_id] = PackedFeatureSet([got[i] for i in range(count)])
        return results

    def _query(self, hash_key: str, raw: bool = False) -> Iterable[dict[str, Any]]:
        kwargs: dict[str, Any] = {"TableName": self.table, "KeyConditionExpression": "hash_key = :h",
                                  "ExpressionAttributeValues": ddb.values({":h": hash_key}), "ConsistentRead": True}
        while True:
            answer = self.client.query(**kwargs)
            for item in answer.get("Items", []):
                yield item if raw else ddb.unmarshal(item)
            if "LastEvaluatedKey" not in answer:
                return
            kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
