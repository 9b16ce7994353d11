"""The job (image) row: created once, filled when the image is opened, counted per region, ended once.

Exactly-once rules, all with DynamoDB conditional writes:

- ``create`` succeeds for one delivery of an image message only (``attribute_not_exists``);
- a region is counted in the same transaction that moves its row to a final status, so a redelivered
  region can never be counted twice, and a crash can never leave it finished but uncounted;
- ``claim_completion`` lets exactly one worker aggregate (a lease, so a crashed aggregator is replaced);
- ``end`` writes the final status once (``attribute_not_exists(end_time)``), as *pending*: it is marked
  published only once SNS took it, and until then whoever touches the job next publishes it
  (``claim_publish``: one publisher at a time, a lease in case it dies).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..redact import redact
from ..requests import ImageRequest
from ..status import Status
from . import ddb
from .records import CHECKPOINT_PREFIX, JobRecord

log = logging.getLogger(__name__)


def stored_request(request: ImageRequest) -> dict[str, Any]:
    """The request as kept in the row's ``request`` attribute: without ``featureProperties`` and
    ``regionOfInterest``, which the reference's own columns (``feature_properties``, ``roi_wkt``) hold already.

    Stored twice, a request SQS accepts (up to 256 KiB, nearly all of it featureProperties padding or a long
    ROI) made a row over DynamoDB's 400 KB item limit, and the job failed before it had a row. Once, every
    request that fits a message fits the row. Readers of ``request`` (the completion) need neither."""
    stored = request.to_dict()
    stored.pop("featureProperties", None)
    stored.pop("regionOfInterest", None)
    return stored


@dataclass
class JobStore:
    client: Any
    table: str
    ttl_seconds: int = 86400

    def get(self, image_id: str) -> JobRecord | None:
        """The job row (a consistent read), or None when there is none."""
        answer = self.client.get_item(TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
                                      ConsistentRead=True)
        item = answer.get("Item")
        return JobRecord.from_item(ddb.unmarshal(item)) if item else None

    def create(self, request: ImageRequest, start_ms: int | None = None, message_id: str = "") -> bool:
        """Write the job row; False if this job already exists (a redelivered image message). ``message_id``
        (the SQS message) starts the row's ``runs``: a redelivery of it never re-runs the job."""
        start = start_ms or ddb.now_ms()
        record = JobRecord(
            runs=[message_id] if message_id else None,
            image_id=request.image_id, job_id=request.job_id, image_url=request.image_url,
            image_read_role=request.image_read_role, model_invoke_mode=request.model_invoke_mode,
            model_name=request.model_name, start_time=start, expire_time=start // 1000 + self.ttl_seconds,
            processing_duration=0, region_count=0, region_success=0, region_error=0,
            regions_done=0, job_status=Status.STARTED,
            tile_size=f"({request.tile_size}, {request.tile_size})",
            tile_overlap=f"({request.tile_overlap}, {request.tile_overlap})",
            outputs=json.dumps([o.to_dict() for o in request.outputs]),
            feature_properties=json.dumps([dict(p) for p in request.feature_properties]),
            feature_distillation_option=json.dumps(request.distillation.to_dict()),
            roi_wkt=request.roi_wkt,
            request=json.dumps(stored_request(request)),
        )
        return self._put_new(record.to_item())

    def create_failed(self, image_id: str, job_id: str, image_url: str, reason: str) -> bool:
        """A job row for a request that could not be parsed: FAILED with the reason, for whoever looks.
        False when the row exists already (a redelivery, or the id of another job)."""
        now = ddb.now_ms()
        record = JobRecord(image_id=image_id, job_id=job_id, image_url=image_url, start_time=now, end_time=now,
                           expire_time=now // 1000 + self.ttl_seconds, processing_duration=0,
                           job_status=Status.FAILED, status_reason=redact(reason), region_count=0,
                           region_success=0, region_error=0, status_published=False, status_publishing=time.time())
        return self._put_new(record.to_item())

    def _put_new(self, item: Mapping[str, Any]) -> bool:
        """Write a job row that must not exist yet; False when it does. What DynamoDB would refuse is refused
        first, AwsLimitError: a key over 2,048 bytes (the job id and image URL), a row over 400 KB (the
        request's parameters: a large regionOfInterest or featureProperties)."""
        ddb.check_key(self.table, "image_id", item["image_id"])
        ddb.check_item(self.table, item, "the job row, holding the request's parameters")
        return ddb.conditional(self.client.put_item, TableName=self.table, Item=ddb.marshal(item),
                               ConditionExpression="attribute_not_exists(image_id)")

    def update_unfinished(self, image_id: str, fields: Mapping[str, Any]) -> bool:
        """Update the row unless the job has ended (a slow duplicate must not reopen a finished job)."""
        expr, names, vals = ddb.update_expression(fields)
        return ddb.conditional(
            self.client.update_item, TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
            UpdateExpression=expr, ExpressionAttributeNames=names, ExpressionAttributeValues=vals,
            ConditionExpression="attribute_not_exists(end_time)")

    def renew_claim(self, image_id: str, worker: str) -> bool:
        """Keep a completion claim fresh while its worker is still completing (False: it was taken over)."""
        return ddb.conditional(
            self.client.update_item, TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
            UpdateExpression="SET completion_claimed = :now", ConditionExpression="completion_worker = :w",
            ExpressionAttributeValues=ddb.values({":now": time.time(), ":w": worker}))

    def update(self, image_id: str, fields: Mapping[str, Any]) -> None:
        expr, names, vals = ddb.update_expression(fields)
        ddb.checked(self.client.update_item, TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
                    UpdateExpression=expr, ExpressionAttributeNames=names, ExpressionAttributeValues=vals)

    def set_once(self, image_id: str, attribute: str, value: Any) -> Any:
        """Set ``attribute`` unless it is set already; returns the value stored (first writer wins)."""
        answer = ddb.checked(
            self.client.update_item, TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
            UpdateExpression="SET #a = if_not_exists(#a, :v)", ConditionExpression="attribute_exists(image_id)",
            ExpressionAttributeNames={"#a": attribute}, ExpressionAttributeValues=ddb.values({":v": value}),
            ReturnValues="ALL_NEW")
        return ddb.unmarshal(answer.get("Attributes")).get(attribute)

    def count_region_transaction(self, image_id: str, succeeded: bool) -> dict[str, Any]:
        """The job half of a region's final transaction (see RegionStore.finish)."""
        counter = "region_success" if succeeded else "region_error"
        return {"Update": {
            "TableName": self.table, "Key": ddb.marshal({"image_id": image_id}),
            "UpdateExpression": "ADD #c :one, regions_done :one",
            "ExpressionAttributeNames": {"#c": counter},
            "ExpressionAttributeValues": ddb.values({":one": 1}),
        }}

    def claim_completion(self, image_id: str, worker: str, lease_seconds: float) -> bool:
        """True for exactly one caller once every region is counted (or after the last claim went stale)."""
        now = time.time()
        return ddb.conditional(
            self.client.update_item, TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
            UpdateExpression="SET completion_worker = :w, completion_claimed = :now ADD completion_attempts :one",
            ConditionExpression=("regions_done = region_count AND region_count > :zero "
                                 "AND attribute_not_exists(end_time) AND "
                                 "(attribute_not_exists(completion_claimed) OR completion_claimed < :stale)"),
            ExpressionAttributeValues=ddb.values({":w": worker, ":now": now, ":stale": now - lease_seconds,
                                                  ":zero": 0, ":one": 1}))

    @staticmethod
    def output_checkpoint(job: JobRecord, output_key: str) -> str:
        """What :meth:`checkpoint_output` saved for an output in this job row ("" when nothing)."""
        return job.delivered.get(output_key, "")

    def checkpoint_output(self, image_id: str, output_key: str, delivered: str) -> bool:
        """Save which parts of one output were confirmed delivered (an encoded chunk set, see
        :mod:`~modelrunner.sinks.checkpoint`), so that a worker replacing a crashed completion re-sends only
        the rest. Conditional on the job not having ended: False when it has (nothing is written then).

        A stale completer (its claim taken over) may overwrite a newer set with its own; both only name
        chunks that were delivered, so the cost is some re-sends, never a skipped record.
        """
        return ddb.conditional(
            self.client.update_item, TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
            UpdateExpression="SET #c = :d", ConditionExpression="attribute_exists(image_id) AND "
                                                                "attribute_not_exists(end_time)",
            ExpressionAttributeNames={"#c": CHECKPOINT_PREFIX + output_key},
            ExpressionAttributeValues=ddb.values({":d": delivered}))

    def end(self, image_id: str, status: str, reason: str, fields: Mapping[str, Any] | None = None) -> float | None:
        """Write the final status once; returns the job duration in seconds, or None if already ended."""
        job = self.get(image_id)
        end = ddb.now_ms()
        duration = max(0.001, (end - (job.start_time if job is not None else end)) / 1000.0)
        payload = {"end_time": end, "processing_duration": duration, "job_status": status,
                   "status_reason": redact(reason), "status_published": False, "status_publishing": time.time(),
                   **(fields or {})}
        expr, names, vals = ddb.update_expression(payload)
        expr += ", #timeline = list_append(if_not_exists(#timeline, :empty), :final)"  # in the same write
        names["#timeline"] = "timeline"
        vals.update(ddb.values({":empty": [], ":final": [{"at": end, "event": "ended", "detail": status}]}))
        ended = ddb.conditional(self.client.update_item, TableName=self.table,
                                Key=ddb.marshal({"image_id": image_id}), UpdateExpression=expr,
                                ExpressionAttributeNames=names, ExpressionAttributeValues=vals,
                                ConditionExpression="attribute_not_exists(end_time)")
        return duration if ended else None

    def claim_publish(self, image_id: str, lease_seconds: float) -> bool:
        """Take the right to publish a pending final status (none taken in the last ``lease_seconds``)."""
        now = time.time()
        return ddb.conditional(
            self.client.update_item, TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
            UpdateExpression="SET status_publishing = :now",
            ConditionExpression="status_published = :no AND (attribute_not_exists(status_publishing) "
                                "OR status_publishing < :stale)",
            ExpressionAttributeValues=ddb.values({":now": now, ":no": False, ":stale": now - lease_seconds}))

    def mark_published(self, image_id: str) -> None:
        """The final status reached SNS: nothing is pending any more."""
        self.client.update_item(
            TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
            UpdateExpression="SET status_published = :yes, timeline = list_append(if_not_exists(timeline, :empty), "
                             ":e) REMOVE status_publishing",
            ExpressionAttributeValues=ddb.values({":yes": True, ":empty": [], ":e": [
                {"at": ddb.now_ms(), "event": "status published"}]}))

    def release_claim(self, image_id: str, worker: str) -> None:
        """Give up a completion claim this worker holds (its completion failed and will be retried)."""
        ddb.conditional(
            self.client.update_item, TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
            UpdateExpression="REMOVE completion_worker, completion_claimed",
            ConditionExpression="completion_worker = :w", ExpressionAttributeValues=ddb.values({":w": worker}))

    def record(self, image_id: str, event: str, detail: str = "") -> None:
        """Add an event to the job's timeline (queued, started, merged, each output, final): what
        ``modelrunner status`` shows beside the region rows' own start and end times. Region events stay on
        the region rows, so a job of thousands of regions keeps a small row."""
        entry = {"at": ddb.now_ms(), "event": event, **({"detail": detail[:500]} if detail else {})}
        log.info("job event: %s %s", event, detail, extra={"event": event, "image_id": image_id})
        self.client.update_item(
            TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
            UpdateExpression="SET timeline = list_append(if_not_exists(timeline, :empty), :e)",
            ConditionExpression="attribute_exists(image_id)",
            ExpressionAttributeValues=ddb.values({":e": [entry], ":empty": []}))

    def reopen(self, image_id: str, message_id: str, regions: int, checkpoints: list[str]) -> bool:
        """Reopen an ended PARTIAL job to re-run the failed tiles of ``regions`` regions (see
        ``runner/rerun.py``): not ended, not claimed, those regions not counted, output checkpoints cleared.
        Once per message id; False when another delivery reopened it first."""
        names = {f"#c{i}": name for i, name in enumerate(checkpoints)}
        remove = ", ".join(["end_time", "completion_worker", "completion_claimed", "status_published",
                            "status_publishing", *names])
        return ddb.conditional(
            self.client.update_item, TableName=self.table, Key=ddb.marshal({"image_id": image_id}),
            UpdateExpression=(f"SET job_status = :running, runs = list_append(if_not_exists(runs, :none), :run), "
                              f"regions_done = regions_done - :k, region_error = region_error - :k, "
                              f"regions_queued = :no REMOVE {remove}"),
            ConditionExpression="job_status = :partial AND attribute_exists(end_time) AND NOT contains(runs, :m)",
            **({"ExpressionAttributeNames": names} if names else {}),
            ExpressionAttributeValues=ddb.values({":running": Status.IN_PROGRESS, ":none": [], ":run": [message_id],
                                                  ":k": regions, ":no": False, ":partial": Status.PARTIAL,
                                                  ":m": message_id}))
