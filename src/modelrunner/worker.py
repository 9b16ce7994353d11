"""The worker loop: region queue first, then image queue; visibility heartbeat; graceful stop.

Messages are deleted only when their work is finished (or failed for good). While work goes on, a
heartbeat keeps extending their visibility, so a long image is never handed to a second worker, and a
crashed worker's messages come back after one visibility timeout. On SIGTERM the worker takes no new
message; what it holds is finished if it can be within ``stop_timeout``, else handed back (visibility 0).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from . import logs
from .errors import RequestError
from .requests import ImageRequest, RegionRequest
from .runner.complete import fail_job, maybe_complete
from .runner.image import start_image
from .runner.region import RegionAborted, process_region
from .runner.services import Services

log = logging.getLogger(__name__)


@dataclass
class Held:
    queue_url: str
    receipt: str


class Heartbeat:
    """Extends the visibility of held messages every third of the visibility timeout."""

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

    def hand_back(self, receipt: str) -> None:
        """Make a held message visible again now, for another worker."""
        with self._lock:
            held = self._held.pop(receipt, None)
        if held:
            try:
                self.sqs.change_message_visibility(QueueUrl=held.queue_url, ReceiptHandle=receipt,
                                                   VisibilityTimeout=0)
            except Exception:
                log.exception("could not hand a message back")

    def _run(self) -> None:
        period = max(1.0, self.timeout / 3)
        while not self._stop.wait(period):
            with self._lock:
                held = list(self._held.values())
            for item in held:
                try:
                    self.sqs.change_message_visibility(QueueUrl=item.queue_url, ReceiptHandle=item.receipt,
                                                       VisibilityTimeout=self.timeout)
                except Exception:
                    log.exception("could not extend visibility")

    def stop(self) -> None:
        self._stop.set()


class Worker:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.sqs = services.aws.sqs
        self.stopping = threading.Event()
        self.abort = threading.Event()
        self.heartbeat = Heartbeat(self.sqs, self.settings.visibility_timeout)

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
        """Take one message (regions first) and handle it; False when both queues were empty."""
        try:
            message = self._receive(self.settings.region_queue, self.settings.region_wait_seconds)
            if message is not None:
                self.handle_region(message)
                return True
            if self.stopping.is_set():
                return False
            message = self._receive(self.settings.image_queue, 0 if self.settings.region_wait_seconds else 1)
            if message is not None:
                self.handle_image(message)
                return True
        except Exception:  # the worker keeps serving whatever one message did
            log.exception("error while polling or handling a message")
            time.sleep(1)
        finally:
            logs.clear()  # the next message's lines carry its own job, region and tile
            _return_free_memory()
        return False

    def _run_region(self, region: RegionRequest, job: dict[str, Any]) -> bool:
        """Process the region, then complete its job if it was the last; False while another worker holds
        the completion (the caller keeps its message, see :func:`maybe_complete`)."""
        logs.bind(region_id=region.region_id)
        process_region(self.services, region, job=job, abort=self.abort)
        logs.bind(region_id=None)
        _return_free_memory()  # the region's tiles are gone; the completion needs room
        return maybe_complete(self.services, region.image_id)

    def _delete(self, queue_url: str, message: dict[str, Any]) -> None:
        self.heartbeat.release(message["ReceiptHandle"])
        self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    def handle_image(self, message: dict[str, Any]) -> None:
        queue = self.settings.image_queue
        try:
            request = ImageRequest.from_message(message["Body"])
        except RequestError as err:
            self._reject_image(message, err)
            self._delete(queue, message)
            return
        logs.bind(job_id=request.job_id, image_id=request.image_id)
        self.heartbeat.hold(queue, message["ReceiptHandle"])
        try:
            first, job = start_image(self.services, request)
            if first is not None and not self._run_region(first, job):
                return  # another worker completes the job; the message comes back in case it dies
        except RegionAborted:
            log.warning("stopping: image message for job %s handed back", request.job_id)
            self.heartbeat.hand_back(message["ReceiptHandle"])
            return
        except (ClientError, BotoCoreError):
            # An AWS call failed after boto3's own retries: the message comes back, the job is not failed
            # (it may be another worker's, running normally, if this was a duplicate delivery).
            log.exception("job %s: transient AWS error; its message returns after the visibility timeout",
                          request.job_id)
            return
        except Exception as err:
            log.exception("job %s failed", request.job_id)
            fail_job(self.services, request, str(err) or type(err).__name__)
        finally:
            # Whatever happened, this worker stops extending the message: deleted below, or it comes back.
            self.heartbeat.release(message["ReceiptHandle"])
        self._delete(queue, message)

    def _reject_image(self, message: dict[str, Any], err: RequestError) -> None:
        """A request we cannot run: one FAILED status naming the field, and a FAILED job row."""
        job_id, url = "", ""
        try:
            raw = json.loads(message["Body"])
            if isinstance(raw, dict):
                job_id = str(raw.get("jobId") or "")
                urls = raw.get("imageUrls")
                url = str(urls[0]) if isinstance(urls, list) and urls else ""
        except (ValueError, TypeError):
            pass
        job_id = job_id or f"unknown-{message.get('MessageId', '')}"
        image_id = f"{job_id}:{url}"
        reason = str(err)
        log.error("rejected image request %s: %s", job_id, reason)
        if self.services.jobs.create_failed(image_id, job_id, url, reason):  # once, however often redelivered
            self.services.status.image("FAILED", job_id, image_id, reason, 0.001)

    def handle_region(self, message: dict[str, Any]) -> None:
        queue = self.settings.region_queue
        try:
            region = RegionRequest.from_message(message["Body"])
        except RequestError as err:
            log.error("dropping an invalid region message %s: %s", message.get("MessageId"), err)
            self._delete(queue, message)
            return
        logs.bind(job_id=region.job_id, image_id=region.image_id, region_id=region.region_id)
        self.heartbeat.hold(queue, message["ReceiptHandle"])
        try:
            job = self.services.jobs.get(region.image_id)
            if not job:
                log.error("region %s belongs to no known job: dropped", region.region_id)
            elif "end_time" not in job and not self._run_region(region, job):
                return  # another worker completes the job; the message comes back in case it dies
        except RegionAborted:
            log.warning("stopping: region %s handed back", region.region_id)
            self.heartbeat.hand_back(message["ReceiptHandle"])
            return
        except Exception:
            log.exception("region %s could not be processed; its message returns after the visibility timeout",
                          region.region_id)
            return
        finally:
            # Whatever happened, this worker stops extending the message: deleted below, or it comes back.
            self.heartbeat.release(message["ReceiptHandle"])
        self._delete(queue, message)


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
