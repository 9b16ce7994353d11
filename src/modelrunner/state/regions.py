"""Region rows: one per region, queryable by ``image_id``, ending SUCCESS / PARTIAL / FAILED."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import limits
from ..requests import RegionRequest
from ..status import FINAL, Status
from . import ddb
from .jobs import JobStore
from .records import RegionRecord

_FINAL_VALUES = ddb.values({":s": Status.SUCCESS, ":p": Status.PARTIAL, ":f": Status.FAILED})
# Every write of a region row but the first is conditional on this: a finished region is never reopened.
_NOT_FINAL = "NOT (#region_status IN (:s, :p, :f))"
# Room for a region's final fields in its row (400 KB); the row's other attributes (keys of up to 3 KB,
# bounds, tile size and format) take the rest.
FINAL_FIELDS_BYTES = limits.DYNAMODB_ITEM_BYTES - 16 * 1024


@dataclass
class RegionStore:
    client: Any
    table: str
    ttl_seconds: int = 86400

    def key(self, image_id: str, region_id: str) -> dict[str, Any]:
        self.check_key(image_id, region_id)
        return ddb.marshal({"image_id": image_id, "region_id": region_id})

    def check_key(self, image_id: str, region_id: str) -> None:
        """AwsLimitError for a key DynamoDB would refuse: the image id holds the job id and image URL, the
        region id (a 1,024-byte sort key) the job id."""
        ddb.check_key(self.table, "image_id", image_id)
        ddb.check_key(self.table, "region_id", region_id, sort=True)

    def get(self, image_id: str, region_id: str) -> RegionRecord | None:
        """The region row (a consistent read), or None when there is none."""
        answer = self.client.get_item(TableName=self.table, Key=self.key(image_id, region_id), ConsistentRead=True)
        item = answer.get("Item")
        return RegionRecord.from_item(ddb.unmarshal(item)) if item else None

    def all(self, image_id: str) -> list[RegionRecord]:
        """Every region row of the job, in key order (callers sort by :attr:`RegionRecord.index`)."""
        items: list[RegionRecord] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "KeyConditionExpression": "image_id = :i",
                                  "ExpressionAttributeValues": ddb.values({":i": image_id}), "ConsistentRead": True}
        while True:
            answer = self.client.query(**kwargs)
            items.extend(RegionRecord.from_item(ddb.unmarshal(i)) for i in answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                return items
            kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def first(self, image_id: str) -> RegionRecord | None:
        """The row of the job's first region (the one its image message processes), or None."""
        rows = [r for r in self.all(image_id) if r.region_index == 0]
        return rows[0] if rows else None

    def plan(self, region: RegionRequest, index: int, total_tiles: int) -> None:
        """Write the row of a planned region, unless it exists (a re-planned, redelivered image)."""
        self.check_key(region.image_id, region.region_id)
        now = ddb.now_ms()
        record = RegionRecord(
            image_id=region.image_id, region_id=region.region_id, job_id=region.job_id,
            region_index=index, region_status=Status.QUEUED, start_time=now, last_updated_time=now,
            expire_time=now // 1000 + self.ttl_seconds, image_read_role=region.image_read_role,
            region_bounds=[list(region.region_bounds[0]), list(region.region_bounds[1])],
            region_retry_count=0, total_tiles=total_tiles, succeeded_tile_count=0, failed_tile_count=0,
            tile_size=[region.tile_size, region.tile_size],
            tile_overlap=[region.tile_overlap, region.tile_overlap],
            tile_format=region.tile_format, tile_compression=region.tile_compression,
        )
        ddb.conditional(self.client.put_item, TableName=self.table, Item=ddb.marshal(record.to_item()),
                        ConditionExpression="attribute_not_exists(region_id)")

    def start(self, region: RegionRequest, worker: str) -> RegionRecord | None:
        """Mark the region STARTED by this worker; returns the row as it was, None when there was none
        (final rows are left alone)."""
        before = self.get(region.image_id, region.region_id)
        if before is not None and before.region_status in FINAL:
            return before
        now = ddb.now_ms()
        attempts = 0 if before is None else (-1 if before.region_retry_count is None else before.region_retry_count) + 1
        expr, names, vals = ddb.update_expression({
            "region_status": Status.STARTED, "job_id": region.job_id, "start_time": now, "last_updated_time": now,
            "worker": worker, "region_retry_count": attempts,
            "region_bounds": [list(region.region_bounds[0]), list(region.region_bounds[1])],
            "expire_time": now // 1000 + self.ttl_seconds,
            "tile_size": [region.tile_size, region.tile_size],
            "tile_overlap": [region.tile_overlap, region.tile_overlap],
            "tile_format": region.tile_format, "tile_compression": region.tile_compression,
            "succeeded_tile_count": 0, "failed_tile_count": 0,
        })
        vals.update(_FINAL_VALUES)
        started = ddb.conditional(self.client.update_item, TableName=self.table,
                                  Key=self.key(region.image_id, region.region_id), UpdateExpression=expr,
                                  ExpressionAttributeNames=names, ExpressionAttributeValues=vals,
                                  ConditionExpression=_NOT_FINAL)
        # A row another worker finished meanwhile stays finished, and is what the caller sees.
        return before if started else self.get(region.image_id, region.region_id)

    def reopen(self, image_id: str, row: RegionRecord) -> None:
        """Queue a finished region again for its failed tiles only (a job re-run): the tiles to run, and the
        earlier result their features are merged into."""
        self.client.update_item(
            TableName=self.table, Key=self.key(image_id, row.region_id),
            UpdateExpression=("SET region_status = :queued, rerun_tiles = :tiles, prior_attempt = :attempt, "
                              "prior_chunks = :chunks, prior_succeeded = :ok REMOVE end_time"),
            ExpressionAttributeValues=ddb.values({
                ":queued": Status.QUEUED, ":tiles": row.failed_tiles or [],
                ":ok": row.succeeded_tiles or [], ":attempt": row.result_attempt or "",
                ":chunks": row.result_chunks or 0}))

    def progress(self, image_id: str, region_id: str, total: int, succeeded: int, failed: int) -> None:
        expr, names, vals = ddb.update_expression({
            "total_tiles": total, "succeeded_tile_count": succeeded, "failed_tile_count": failed,
            "last_updated_time": ddb.now_ms()})
        vals.update(_FINAL_VALUES)
        names["#region_status"] = "region_status"
        # A row another worker finished keeps its final counts.
        ddb.conditional(self.client.update_item, TableName=self.table, Key=self.key(image_id, region_id),
                        UpdateExpression=expr, ExpressionAttributeNames=names, ExpressionAttributeValues=vals,
                        ConditionExpression=_NOT_FINAL)

    def finish(self, jobs: JobStore, image_id: str, region_id: str, status: str, *, start_ms: int,
               succeeded: Sequence[Any], failed: Sequence[Any], total: int, message: str | None,
               feature_count: int, result_chunks: int | None = None, result_attempt: str | None = None,
               raw_feature_count: int | None = None, failed_tile_reasons: list[str] | None = None) -> bool:
        """Final status + job counter in one transaction; False if the region was already final.

        The final fields are :class:`RegionRecord`'s: ``result_chunks`` / ``result_attempt`` locate the
        region's stored result, ``raw_feature_count`` its features before merging, ``failed_tile_reasons``
        why tiles failed. ``None`` leaves a field out of the row, as before these were typed."""
        end = ddb.now_ms()
        fields = {
            "region_status": status, "end_time": end, "last_updated_time": end,
            "processing_duration": end - start_ms, "total_tiles": total,
            "succeeded_tile_count": len(succeeded), "failed_tile_count": len(failed),
            "succeeded_tiles": list(succeeded), "failed_tiles": list(failed), "message": message,
            "feature_count": feature_count, "result_chunks": result_chunks, "result_attempt": result_attempt,
            "raw_feature_count": raw_feature_count, "failed_tile_reasons": failed_tile_reasons,
        }
        expr, names, vals = ddb.update_expression(fit_final_fields(fields))
        vals.update(_FINAL_VALUES)
        region_update = {"Update": {
            "TableName": self.table, "Key": self.key(image_id, region_id), "UpdateExpression": expr,
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": vals, "ConditionExpression": _NOT_FINAL,
        }}
        return ddb.conditional(self.client.transact_write_items, TransactItems=[
            region_update, jobs.count_region_transaction(image_id, status != Status.FAILED and not failed)])


def fit_final_fields(fields: dict[str, Any], budget: int | None = None) -> dict[str, Any]:
    """A region's final fields within ``budget`` bytes of DynamoDB item, so that its row never outgrows
    400 KB: a region of tens of thousands of small tiles lists more tiles than fit (about 27 bytes each).
    ``succeeded_tiles`` is cut first, then ``failed_tiles`` (``<name>_omitted`` counts the tiles left
    out; the tile counts stay exact), then the message (a note says how much was cut). ``budget``:
    :data:`FINAL_FIELDS_BYTES` unless given."""
    budget = FINAL_FIELDS_BYTES if budget is None else budget
    size = ddb.item_bytes(fields)
    if size <= budget:
        return fields
    fields = dict(fields)
    for name in ("succeeded_tiles", "failed_tiles"):
        if size <= budget or not fields[name]:
            continue
        element_bytes = [1 + ddb.item_bytes({"": tile}) for tile in fields[name]]  # 1: per list element
        keep, removed = len(element_bytes), 0
        omitted_bytes = len(f"{name}_omitted") + 4  # the count attribute added (a number of up to 6 digits)
        while keep and size - removed + omitted_bytes > budget:
            keep -= 1
            removed += element_bytes[keep]
        fields[name] = list(fields[name][:keep])
        fields[f"{name}_omitted"] = len(element_bytes) - keep
        size += omitted_bytes - removed
    message = fields.get("message")
    if size > budget and message:
        data = message.encode("utf-8")
        kept = data[:max(0, len(data) - (size - budget) - 40)].decode("utf-8", "ignore")  # 40: the note
        fields["message"] = f"{kept} ... [{len(data) - len(kept.encode('utf-8')):,} bytes cut]"
    return fields
