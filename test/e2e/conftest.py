"""End-to-end fixtures: a real moto server and the bundled model server on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modelrunner.local.stack import (
    Process,
    Resources,
    create_resources,
    read_statuses,
    start_model,
    start_moto,
    start_worker,
    stop_process,
)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Process]:
    proc = start_moto()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def model_server() -> Iterator[Process]:
    proc = start_model("centerpoint")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def own_model() -> Iterator[Process]:
    """A model server of the module's own, for tests that change its failure settings (``/control``)."""
    proc = start_model("centerpoint")
    yield proc
    proc.stop()


_counter = iter(range(1000))


@pytest.fixture
def stack(moto_server: Process) -> Resources:
    """Fresh resources (own names) on the shared moto server for each test."""
    return create_resources(moto_server.url, prefix=f"t{next(_counter)}-{os.getpid()}")


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


@pytest.fixture
def worker_factory(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    started = []

    def start(env: dict[str, str], name: str = "worker", args: list[str] | None = None) -> Any:
        proc = start_worker(env, log_path=str(tmp_path / f"{name}.log"), args=args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_process(proc)
    for log in tmp_path.glob("*.log"):
        text = log.read_text(errors="replace")
        if '"levelname": "ERROR"' in text:
            print(f"--- {log.name} (errors) ---")
            print("\n".join(line for line in text.splitlines() if "ERROR" in line)[-4000:])


def submit(res: Resources, request: dict[str, Any]) -> None:
    res.client("sqs").send_message(QueueUrl=res.image_queue, MessageBody=json.dumps(request))
