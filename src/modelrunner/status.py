"""Image and region status messages on SNS, in the reference's exact format.

Body: ``StatusMonitor update: RequestStatus.<STATUS> <jobId>: <reason>``; all attributes are Strings and
falsy ones are omitted. Unlike the reference, the final image ``processing_duration`` is fractional seconds
(a sub-second job does not say 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .redact import redact

log = logging.getLogger(__name__)

STATUSES = ("STARTED", "IN_PROGRESS", "SUCCESS", "PARTIAL", "FAILED")


def render(status: str, job_id: str, reason: str) -> str:
    """The reference's status text; the reason is cleared of secrets (``redact``), since it quotes errors."""
    return f"StatusMonitor update: RequestStatus.{status} {job_id}: {redact(reason)}"


def attributes(values: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {k: {"DataType": "String", "StringValue": str(v)} for k, v in values.items() if v}


def format_duration(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") if seconds >= 0.001 else "0.001"


@dataclass
class StatusPublisher:
    """Publishes to the image and region topics; a missing topic means nothing is published there."""

    sns: Any
    image_topic: str | None
    region_topic: str | None
    listener: Callable[[str, dict[str, Any]], None] | None = None

    def image(self, status: str, job_id: str, image_id: str, reason: str, duration_s: float | None = None) -> bool:
        """Publish an image status; False when SNS refused it after boto3's retries (True without a topic)."""
        attrs = {"status": status, "job_id": job_id, "image_id": image_id, "image_status": status,
                 "processing_duration": format_duration(duration_s) if duration_s else None}
        return self._publish(self.image_topic, render(status, job_id, reason), attrs)

    def region(self, status: str, job_id: str, image_id: str, region_id: str, duration_ms: int,
               failed_tiles: list[Any] | None = None) -> None:
        failed = None
        if failed_tiles:
            failed = repr([{str(i + 1): tile} for i, tile in enumerate(failed_tiles)])
        attrs = {"status": status, "job_id": job_id, "image_id": image_id, "region_id": region_id,
                 "processing_duration": duration_ms, "failed_tiles": failed}
        self._publish(self.region_topic, render(status, job_id, "Completed region processing"), attrs)

    def _publish(self, topic: str | None, message: str, attrs: dict[str, Any]) -> bool:
        log.info(message, extra={"status_attributes": {k: v for k, v in attrs.items() if v}})
        if self.listener:
            self.listener(message, {k: v for k, v in attrs.items() if v})
        if not topic:
            return True
        try:
            self.sns.publish(TopicArn=topic, Message=message, MessageAttributes=attributes(attrs))
        except Exception:  # never fatal here: the caller keeps a final status pending and tries again
            log.exception("could not publish status to %s", topic)
            return False
        return True
