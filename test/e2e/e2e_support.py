"""Helpers shared by end-to-end tests that run many jobs through one stack: image statuses collected by job
(the status queue is read destructively, and one job's statuses arrive while waiting for another's), the
depth of a queue, and a worker's resident memory."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import defaultdict
from typing import Any

from modelrunner.local.stack import Resources, read_statuses

FINAL = ("SUCCESS", "PARTIAL", "FAILED")


class Statuses:
    """Every image status read from the stack's status queue so far, kept by job id."""

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.finals: list[str] = []
        """Job ids in the order their first final status arrived."""

    def drain(self, wait: float = 0.0) -> None:
        for status in read_statuses(self.res, wait=wait):
            job_id = status["attributes"].get("job_id", "")
            if status["attributes"].get("status") in FINAL and job_id not in self.finals:
                self.finals.append(job_id)
            self.by_job[job_id].append(status)

    def final(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The job's first final status, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            finals = self.final_statuses(job_id)
            if finals:
                return finals[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id!r} did not end within {timeout} s; statuses: {self.by_job[job_id]}")
            self.drain(wait=1)

    def final_statuses(self, job_id: str) -> list[dict[str, Any]]:
        return [s for s in self.by_job[job_id] if s["attributes"].get("status") in FINAL]

    def names(self, job_id: str) -> list[str]:
        return [s["attributes"].get("status", "") for s in self.by_job[job_id]]


def queue_depth(res: Resources, queue_url: str) -> int:
    """Messages on a queue, visible or in flight."""
    attrs = res.client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def wait_queue_empty(res: Resources, queue_url: str, timeout: float = 10.0) -> int:
    """Poll until no message is left on the queue (visible or in flight); returns what is left at the end.

    A message a worker kept (to come back after its visibility timeout) stays in flight far longer than
    this wait, so a kept message fails the check."""
    deadline = time.monotonic() + timeout
    while (depth := queue_depth(res, queue_url)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return depth


def rss_kib(pid: int) -> int:
    """A process's resident set size in KiB (``VmRSS`` of ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def control(server: Any, **settings: Any) -> None:
    """Change a model server's failure injection while it runs (``POST /control``, see model_server.py)."""
    request = urllib.request.Request(server.url + "/control", data=json.dumps(settings).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


def model_stats(server: Any) -> dict[str, int]:
    """A model server's counts: invocations, failed, requests, throttled, in_flight, max_in_flight."""
    with urllib.request.urlopen(server.url + "/stats", timeout=5) as answer:
        return dict(json.load(answer))


#: Statuses read from a status queue while waiting for another job, by queue URL: the queue is read
#: destructively, and with several jobs running, one job's statuses (even its final one) can arrive while a
#: test waits for another's. ``wait_final`` keeps them here for the wait that asks for that job.
_other_jobs: dict[str, list[dict[str, Any]]] = defaultdict(list)


def wait_final(res: Resources, job_id: str, timeout: float = 120) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Collect image statuses until the job's final one; returns (final, all of this job's)."""
    seen: list[dict[str, Any]] = []
    kept = _other_jobs[res.status_queue]
    earlier = [s for s in kept if s["attributes"].get("job_id") == job_id]
    kept[:] = [s for s in kept if s["attributes"].get("job_id") != job_id]
    deadline = time.monotonic() + timeout
    while True:
        statuses = earlier or read_statuses(res, wait=1)
        earlier = []
        for n, status in enumerate(statuses):
            if status["attributes"].get("job_id") != job_id:
                kept.append(status)
                continue
            seen.append(status)
            if status["attributes"]["status"] in ("SUCCESS", "PARTIAL", "FAILED"):
                kept.extend(s for s in statuses[n + 1:] if s["attributes"].get("job_id") != job_id)
                return status, seen
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} did not end within {timeout} s; statuses: {seen}")


def submit(res: Resources, request: dict[str, Any]) -> None:
    res.client("sqs").send_message(QueueUrl=res.image_queue, MessageBody=json.dumps(request))
