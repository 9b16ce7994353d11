"""Image and region status messages on SNS, in the reference's exact format.

Body: ``StatusMonitor update: RequestStatus.<STATUS> <jobId>: <reason>``; all attributes are Strings and
falsy ones are omitted. Unlike the reference, the final image ``processing_duration`` is fractional seconds
(a sub-second job does not say 0).

SNS refuses a message over 256 KiB (body and attributes together), which the reference never checked: a
region with thousands of failed tiles could not report them. Here a message is cut to fit before it is
sent: ``failed_tiles`` keeps the tiles that fit and ``failed_tiles_omitted`` says how many were left out;
a reason too long for the body is cut and says by how much.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

from . import limits
from .redact import redact

log = logging.getLogger(__name__)

class Status(StrEnum):
    """A job's or a region's status: the reference's ``RequestStatus`` values (what status messages, job rows
    and region rows carry), and QUEUED for a region planned but not started. A ``str``, so rows, messages and
    comparisons with stored values need no conversion."""

    QUEUED = "QUEUED"
    STARTED = "STARTED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCESS = "SUCCESS"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"


#: The statuses a job or region ends with.
FINAL = (Status.SUCCESS, Status.PARTIAL, Status.FAILED)


def render(status: str, job_id: str, reason: str) -> str:
    """The reference's status text; the reason is cleared of secrets (``redact``), since it quotes errors."""
    return f"StatusMonitor update: RequestStatus.{status} {job_id}: {redact(reason)}"


def attributes(values: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {k: {"DataType": "String", "StringValue": str(v)} for k, v in values.items() if v}


def message_bytes(message: str, attrs: Mapping[str, Mapping[str, str]]) -> int:
    """A message's size as SNS counts it against its limit: the body, and each attribute's name, data type
    and value (UTF-8 bytes)."""
    return limits.utf8_bytes(message) + sum(
        limits.utf8_bytes(name) + limits.utf8_bytes(value["DataType"]) + limits.utf8_bytes(value["StringValue"])
        for name, value in attrs.items())


def failed_tiles_text(failed_tiles: list[Any], room: int | None = None) -> tuple[str, int]:
    """The reference's ``failed_tiles`` text (``[{'1': tile}, ...]``), of at most ``room`` bytes when given:
    (text, how many tiles were left out to fit)."""
    entries = [repr({str(i + 1): tile}) for i, tile in enumerate(failed_tiles)]
    size, kept = 2, 0  # the brackets
    for entry in entries:
        step = limits.utf8_bytes(entry) + (2 if kept else 0)  # ", " between entries
        if room is not None and size + step > room:
            break
        size += step
        kept += 1
    return "[" + ", ".join(entries[:kept]) + "]", len(entries) - kept


def fit_message(message: str, values: Mapping[str, Any], failed_tiles: list[Any] | None = None,
                limit: int = limits.SNS_MESSAGE_BYTES) -> tuple[str, dict[str, dict[str, str]]]:
    """Body and attributes within SNS's ``limit``: the failed-tile list is cut first (the count of omitted
    tiles in ``failed_tiles_omitted``), then the body (a note at its end says how many bytes were cut)."""
    values = dict(values)
    if failed_tiles:
        values["failed_tiles"], _ = failed_tiles_text(failed_tiles)
    attrs = attributes(values)
    over = message_bytes(message, attrs) - limit
    if over > 0 and failed_tiles:
        whole = attrs.pop("failed_tiles")["StringValue"]
        marker = len("failed_tiles_omitted") + len("String") + len(str(len(failed_tiles)))
        text, omitted = failed_tiles_text(failed_tiles, max(2, len(whole) - over - marker))
        attrs["failed_tiles"] = {"DataType": "String", "StringValue": text}
        attrs["failed_tiles_omitted"] = {"DataType": "String", "StringValue": str(omitted)}
        over = message_bytes(message, attrs) - limit
    if over > 0:
        data = message.encode("utf-8")
        kept = data[:max(0, len(data) - over - 40)].decode("utf-8", "ignore")  # 40: room for the note
        message = f"{kept} ... [{len(data) - len(kept.encode('utf-8')):,} bytes cut]"
    return message, attrs


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
        """Publish an image status; True when SNS took it (or no image topic is configured), False when the
        publish failed after boto3's retries (logged): a final status is pending until it is published."""
        attrs = {"status": status, "job_id": job_id, "image_id": image_id, "image_status": status,
                 "processing_duration": format_duration(duration_s) if duration_s else None}
        return self._publish(self.image_topic, render(status, job_id, reason), attrs)

    def region(self, status: str, job_id: str, image_id: str, region_id: str, duration_ms: int,
               failed_tiles: list[Any] | None = None) -> bool:
        """Publish a region status (True when published or no topic, as :meth:`image`); a failed-tile list
        too long for SNS is cut (see :func:`fit_message`)."""
        attrs = {"status": status, "job_id": job_id, "image_id": image_id, "region_id": region_id,
                 "processing_duration": duration_ms}
        return self._publish(self.region_topic, render(status, job_id, "Completed region processing"), attrs,
                             failed_tiles)

    def _publish(self, topic: str | None, message: str, values: dict[str, Any],
                 failed_tiles: list[Any] | None = None) -> bool:
        message, attrs = fit_message(message, values, failed_tiles)
        logged = {k: v["StringValue"] for k, v in attrs.items()}
        log.info(message, extra={"status_attributes": logged})
        if self.listener:
            self.listener(message, logged)
        if not topic:
            return True
        limits.check_size("SNS status message with its attributes", message_bytes(message, attrs),
                          limits.SNS_MESSAGE_BYTES, f"topic {topic}")
        try:
            self.sns.publish(TopicArn=topic, Message=message, MessageAttributes=attrs)
        except ClientError as err:
            refusal = limits.refused(err, "sns", f"topic {topic}")
            if refusal is not None:  # retrying cannot help; the status stays pending, its message goes to the DLQ
                log.error("SNS refused a status for %s: %s", topic, refusal)
                return False
            log.exception("could not publish status to %s", topic)
            return False
        except Exception:  # never fatal here: the caller keeps a final status pending and tries again
            log.exception("could not publish status to %s", topic)
            return False
        return True
