"""The worker loop: region queue first, then image queue; visibility heartbeat; graceful stop.

Messages are deleted only when their work is finished (or failed for good). While work goes on, a
heartbeat keeps extending their visibility, so a long image is never handed to a second worker, and a
crashed worker's messages come back after one visibility timeout. On SIGTERM the worker takes no new
message; what it holds is finished if it can be within ``stop_timeout``, else handed back (visibility 0).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import gc
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from . import logs
from .aws import is_transient
from .errors import EndpointBusy, RequestError
from .liveness import HeartbeatFile
from .redact import redact
from .requests import ImageRequest, RegionRequest
from .runner.complete import fail_job, maybe_complete, publish_final
from .runner.image import start_image
from .runner.region import RegionAborted, process_region
from .runner.services import Services
from .state.records import JobRecord
from .status import FINAL, Status

log = logging.getLogger(__name__)


#: SQS keeps a received message invisible for at most 12 hours in all; extensions past that are refused.
MAX_VISIBILITY_SECONDS = 12 * 3600


@dataclass
class Held:
    queue_url: str
    receipt: str
    since: float = field(default_factory=time.monotonic)
    warned: bool = False


class Heartbeat:
    """Extends the visibility of held messages every third of the visibility timeout.

    Never past SQS's 12-hour limit from the receipt (the call would fail): work that runs longer lets its
    message return, and the step it runs is idempotent, so another worker redoes it (logged once)."""

    def __init__(self, sqs: Any, timeout: int) -> None:
        self.sqs = sqs
        self.timeout = timeout
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def hold(self, queue_url: str, receipt: str) -> None:
        with self._lock:
            self._held[receipt] = Held(queue_url, receipt)

    def release(self, receipt: str) -> None:
        with self._lock:
            self._held.pop(receipt, None)

    def hand_back(self, receipt: str, delay: int = 0) -> None:
        """Make a held message visible again, now or after ``delay`` seconds, for another worker."""
        with self._lock:
            held = self._held.pop(receipt, None)
        if held:
            try:
                self.sqs.change_message_visibility(QueueUrl=held.queue_url, ReceiptHandle=receipt,
                                                   VisibilityTimeout=delay)
            except Exception:
                log.exception("could not hand a message back")

    def _run(self) -> None:
        period = max(1.0, self.timeout / 3)
        while not self._stop.wait(period):
            with self._lock:
                held = list(self._held.values())
            for item in held:
                left = int(MAX_VISIBILITY_SECONDS - (time.monotonic() - item.since)) - 60
                extension = min(self.timeout, left)
                if extension <= 0:
                    if not item.warned:
                        log.warning("a message held for 12 hours (SQS's visibility limit) returns to the queue; "
                                    "its work will be redone by the next worker")
                        item.warned = True
                    continue
                try:
                    self.sqs.change_message_visibility(QueueUrl=item.queue_url, ReceiptHandle=item.receipt,
                                                       VisibilityTimeout=extension)
                except Exception:
                    log.exception("could not extend visibility")

    def stop(self) -> None:
        self._stop.set()


class Outcome(enum.Enum):
    """What becomes of a message once its handler returns: the one place messages are settled.

    Delivery is at least once: a message is deleted only when its work is finished (or failed for good
    and reported); every other path leaves it to come back, and every step it runs is idempotent."""

    DONE = "done"
    """Delete it: the work is finished, or failed for good with a FAILED status."""
    RETRY_LATER = "retry later"
    """Keep it: it comes back after the visibility timeout (a transient AWS error, a final status not yet
    published, or another worker completing the job who might die)."""
    HAND_BACK = "hand back"
    """Make it visible now: this worker is stopping and another should take it at once."""
    WAIT = "wait"
    """Make it visible after ``THROTTLING_RETRY_TIMEOUT``: its endpoint is at capacity (not a failure)."""


def receive_count(message: dict[str, Any]) -> int:
    """SQS's ``ApproximateReceiveCount`` of a message (1 on its first delivery)."""
    try:
        return int((message.get("Attributes") or {}).get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        return 1


class Worker:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.liveness = HeartbeatFile(self.settings.heartbeat_file)
        self.sqs = services.aws.sqs
        self.stopping = threading.Event()
        self.abort = threading.Event()
        self.heartbeat = Heartbeat(self.sqs, self.settings.visibility_timeout)
        self._images_first = False

    # Signals -----------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping.is_set():
            return
        log.info("signal %s: finishing the current message, then stopping", signum)
        self.request_stop()

    def request_stop(self) -> None:
        self.stopping.set()
        # Leave a margin inside the stop timeout to hand work back before the container is killed.
        timer = threading.Timer(max(0.0, self.settings.stop_timeout - 5.0), self.abort.set)
        timer.daemon = True
        timer.start()

    # Loop --------------------------------------------------------------------------------------------
    def run(self, max_messages: int | None = None, idle_exit_s: float | None = None) -> int:
        """Serve until stopped; returns the number of messages handled. ``idle_exit_s`` is for tests/demo."""
        handled = 0
        idle_since = time.monotonic()
        try:
            while not self.stopping.is_set():
                self.liveness.beat()  # the container's HEALTHCHECK reads it
                if max_messages is not None and handled >= max_messages:
                    break
                if self.poll_once():
                    handled += 1
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
        finally:
            self.heartbeat.stop()
        return handled

    def _receive(self, queue_url: str, wait: int) -> dict[str, Any] | None:
        answer = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=wait,
                                          VisibilityTimeout=self.settings.visibility_timeout,
                                          MessageAttributeNames=["All"], AttributeNames=["All"])
        messages = answer.get("Messages") or []
        return messages[0] if messages else None

    def poll_once(self) -> bool:
        """Take one message (regions first), handle it and settle it; False when both queues were empty."""
        try:
            order = [(self.settings.region_queue, self.settings.region_wait_seconds, self.handle_region),
                     (self.settings.image_queue, 0 if self.settings.region_wait_seconds else 1, self.handle_image)]
            if self._images_first:  # a region just waited for its endpoint: let other jobs in first
                order.reverse()
                self._images_first = False
            for queue, wait, handler in order:
                if queue == self.settings.image_queue and self.stopping.is_set():
                    continue
                message = self._receive(queue, wait)
                if message is not None:
                    self.heartbeat.hold(queue, message["ReceiptHandle"])
                    try:
                        outcome = handler(message)
                    except Exception:  # a bug in a handler: the message comes back; the worker keeps serving
                        log.exception("unexpected error handling message %s", message.get("MessageId"))
                        outcome = Outcome.RETRY_LATER
                    self._images_first = outcome is Outcome.WAIT
                    self.settle(queue, message, outcome)
                    return True
        except Exception:  # the worker keeps serving whatever one message or one SQS call did
            log.exception("error while polling or settling a message")
            time.sleep(1)
        finally:
            logs.clear()  # the next message's lines carry its own job, region and tile
            _return_free_memory()
        return False

    def settle(self, queue_url: str, message: dict[str, Any], outcome: Outcome) -> None:
        """Delete, keep or hand back a message, as its handler decided; the heartbeat lets go of it."""
        receipt = message["ReceiptHandle"]
        if outcome is Outcome.HAND_BACK:
            self.heartbeat.hand_back(receipt)
            return
        if outcome is Outcome.WAIT:
            self.heartbeat.hand_back(receipt, delay=self.settings.throttling_retry_timeout)
            return
        self.heartbeat.release(receipt)
        if outcome is Outcome.DONE:
            self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)
        else:
            log.info("message %s kept: it returns after the visibility timeout", message.get("MessageId"))

    # Image requests ----------------------------------------------------------------------------------
    def handle_image(self, message: dict[str, Any]) -> Outcome:
        """Start an image request and process its first region (completing the job if it was the last)."""
        try:
            request = ImageRequest.from_message(message["Body"])
            self.services.policy.image_path(request.image_url, "imageUrls[0]")
            self.services.policy.check_model(request.model_invoke_mode, request.model_name)
        except RequestError as err:
            return self._reject_image(message, err)
        logs.bind(job_id=request.job_id, image_id=request.image_id)
        try:
            if receive_count(message) > self.settings.max_receive_count:
                stuck = self._stuck_image(request, receive_count(message))
                if stuck is not None:
                    return Outcome.DONE if fail_job(self.services, request.image_id, stuck) else Outcome.RETRY_LATER
            first, job = start_image(self.services, request, message.get("MessageId", ""))
            # Finished by an earlier delivery (its final status may still be pending), or its row is gone (TTL).
            if first is None or job is None:
                return Outcome.DONE if publish_final(self.services, job) else Outcome.RETRY_LATER
            return self._run_region(first, job)
        except Exception as err:
            return self._failed(err, f"job {request.job_id}", request.image_id, request)

    def _reject_image(self, message: dict[str, Any], err: RequestError) -> Outcome:
        """A request we cannot run: one FAILED status naming the field, and a FAILED job row."""
        job_id, url = "", ""
        try:
            raw = json.loads(message["Body"])
            if isinstance(raw, dict):
                job_id = str(raw["jobId"]) if isinstance(raw.get("jobId"), str) else ""
                urls = raw.get("imageUrls")
                url = urls[0] if isinstance(urls, list) and urls and isinstance(urls[0], str) else ""
        except (ValueError, TypeError):
            pass
        if err.field == "jobId":
            job_id = ""  # the request's own id cannot be a key
        return self._record_refusal(message, job_id, url, str(err), fail_existing=False)

    def _stuck_image(self, request: ImageRequest, received: int) -> str | None:
        """The reason to fail a job whose image message came back too often, or None if its own work (the
        plan and the first region) is done and it only waits for the completion."""
        job = self.services.jobs.get(request.image_id)
        if job is None or job.ended:
            return None
        first = self.services.regions.first(request.image_id)
        first_status = first.region_status if first is not None else None
        if job.regions_queued and first_status in FINAL:
            return self._stuck_completion(job, received)
        if job.regions_queued and first_status != Status.STARTED:
            return None  # waiting (its region was never started): no worker died on it
        return (f"the image request was received {received} times and never got through its first region: "
                f"workers processing it stopped or died (MR_MAX_RECEIVE_COUNT = {self.settings.max_receive_count}), "
                "so it is failed instead of retried")

    def _stuck_completion(self, job: JobRecord, received: int) -> str | None:
        attempts = job.completion_attempts or 0
        if attempts <= self.settings.max_receive_count:
            return None
        return (f"the job's completion was started {attempts} times and never finished: workers completing it "
                f"stopped or died (MR_MAX_RECEIVE_COUNT = {self.settings.max_receive_count})")

    # Region requests ---------------------------------------------------------------------------------
    def handle_region(self, message: dict[str, Any]) -> Outcome:
        """Process one region of a job (completing the job if it was the last)."""
        try:
            region = RegionRequest.from_message(message["Body"])
            self.services.policy.image_path(region.image_url, "image_url")
            self.services.policy.check_model(region.model_invoke_mode, region.model_name, "model_name")
        except RequestError as err:
            return self._reject_region(message, err)
        logs.bind(job_id=region.job_id, image_id=region.image_id, region_id=region.region_id)
        try:
            job = self.services.jobs.get(region.image_id)
            if job is None:
                log.error("region %s belongs to no known job: dropped", region.region_id)
                return Outcome.DONE
            if job.ended:
                return Outcome.DONE if publish_final(self.services, job) else Outcome.RETRY_LATER
            received = receive_count(message)
            if received > self.settings.max_receive_count:
                row = self.services.regions.get(region.image_id, region.region_id)
                state = row.region_status if row is not None else None
                stuck = None if state not in FINAL else self._stuck_completion(job, received)
                if state == Status.STARTED:
                    limit = self.settings.max_receive_count
                    stuck = (f"region {region.region_id} was received {received} times and never finished: workers "
                             f"processing it stopped or died (MR_MAX_RECEIVE_COUNT = {limit})")
                if stuck is not None:
                    return Outcome.DONE if fail_job(self.services, region.image_id, stuck) else Outcome.RETRY_LATER
            return self._run_region(region, job)
        except Exception as err:
            return self._failed(err, f"region {region.region_id}", region.image_id)

    def _reject_region(self, message: dict[str, Any], err: RequestError) -> Outcome:
        """A region message we cannot run. Its job could never count that region and would stay
        IN_PROGRESS forever, so the job ends FAILED with the reason (a job nobody knows gets a FAILED row,
        as a rejected image request does)."""
        reason = f"region request {redact(str(err))}"
        log.error("invalid region message %s: %s", message.get("MessageId"), reason)
        try:
            raw = json.loads(message["Body"])
        except (ValueError, TypeError):
            raw = None
        job_id = str(raw["job_id"]) if isinstance(raw, dict) and isinstance(raw.get("job_id"), str) else ""
        url = str(raw["image_url"]) if isinstance(raw, dict) and isinstance(raw.get("image_url"), str) else ""
        return self._record_refusal(message, job_id, url, reason, fail_existing=True)

    def _record_refusal(self, message: dict[str, Any], job_id: str, url: str, reason: str, *,
                        fail_existing: bool) -> Outcome:
        """One FAILED status and a FAILED job row for a message we cannot run, keyed by its own job id and
        image URL where they can be a key (else ``unknown-<MessageId>``); with ``fail_existing``, a job that
        exists already is ended FAILED instead."""
        url = redact(url)  # a refused URL may be a presigned one: its signature stays out of rows and statuses
        if not _usable_key(job_id, url):
            job_id, url = f"unknown-{message.get('MessageId', '')}", ""
        log.error("refused %s: %s", job_id, reason)
        try:
            return self._end_failed(f"{job_id}:{url}", job_id, url, reason, fail_existing=fail_existing)
        except Exception as write_err:
            return self._failed(write_err, f"refused job {job_id}", None)

    def _end_failed(self, image_id: str, job_id: str, url: str, reason: str, *, fail_existing: bool) -> Outcome:
        """End a job FAILED with ``reason``: the existing row when ``fail_existing`` finds one, else a FAILED
        row of its own (a job that never had one, so that its status names it); DONE once the status is
        published."""
        if fail_existing and self.services.jobs.get(image_id) is not None:
            return Outcome.DONE if fail_job(self.services, image_id, reason) else Outcome.RETRY_LATER
        created = self.services.jobs.create_failed(image_id, job_id, url, reason)
        if not created:
            log.warning("job %s exists already: a duplicate of a refused request, or another job's id", image_id)
        return Outcome.DONE if publish_final(self.services, self.services.jobs.get(image_id), claimed=created) \
            else Outcome.RETRY_LATER

    # Shared ------------------------------------------------------------------------------------------
    def _run_region(self, region: RegionRequest, job: JobRecord) -> Outcome:
        """Process the region, then complete its job if it was the last. Kept (RETRY_LATER) while another
        worker holds the completion, so that the message comes back should that worker die."""
        logs.bind(region_id=region.region_id)
        process_region(self.services, region, job=job, abort=self.abort)
        logs.bind(region_id=None)
        _return_free_memory()  # the region's tiles are gone; the completion needs room
        return Outcome.DONE if maybe_complete(self.services, region.image_id) else Outcome.RETRY_LATER

    def _failed(self, err: Exception, what: str, image_id: str | None, request: ImageRequest | None = None
                ) -> Outcome:
        """Settle a message whose handling raised: hand it back when stopping, keep it when the cause may
        pass, else fail its job for good with the reason (``request``: an image request, whose job row may
        not exist yet)."""
        if isinstance(err, RegionAborted):
            log.warning("stopping: %s handed back", what)
            return Outcome.HAND_BACK
        if isinstance(err, EndpointBusy):
            log.info("%s", err)
            return Outcome.WAIT
        if isinstance(err, ClientError | BotoCoreError) and is_transient(err):
            # After boto3's own retries: the message comes back and the step is run again (it may also be
            # a duplicate delivery of a job another worker is running normally: nothing is failed).
            log.exception("%s: transient AWS error; the message returns after the visibility timeout", what)
            return Outcome.RETRY_LATER
        log.exception("%s failed", what)
        if image_id is None:
            return Outcome.DONE
        try:
            reason = str(err) or type(err).__name__
            if request is not None:
                # It may have failed before its row was written (the row itself may be what DynamoDB refused):
                # ending a row that does not exist would write one without a job id.
                return self._end_failed(image_id, request.job_id, request.image_url, reason, fail_existing=True)
            return Outcome.DONE if fail_job(self.services, image_id, reason) else Outcome.RETRY_LATER
        except Exception:
            log.exception("%s: could not record the failure; the message returns", what)
            return Outcome.RETRY_LATER


def _usable_key(job_id: str, url: str) -> bool:
    """Whether a rejected request's own ids can key its FAILED job row."""
    return bool(job_id) and len(job_id.encode("utf-8", "replace")) <= 256 and \
        len(f"{job_id}:{url}".encode("utf-8", "replace")) <= 2000 and job_id.isprintable()


#: Container allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Take what start-up built out of the cyclic garbage collector's sight, and let it run less often.

    A tile's model answer becomes thousands of short-lived dicts and lists (parsed, placed, serialised,
    dropped): acyclic, so reference counting frees them, but at CPython's default threshold they set off a
    young collection every few features, and the older generations' collections walk every object still
    alive, botocore's service models included. Measured on benchmark case 3 (1,122 tiles): 2.85 s of the
    worker's CPU went to the collector; with start-up frozen and this threshold, 0.12 s. Call once, when
    start-up is done (clients built, modules imported).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _return_free_memory() -> None:
    """Hand the heap's free pages back to the system after a message (glibc only): a region's tiles and a
    job's texts leave the heap fragmented, and a long-running worker's resident size should not keep the
    high-water mark of its biggest job."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None
