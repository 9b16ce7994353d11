"""End-to-end fixtures: a real moto server and the bundled model server on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modelrunner.local.stack import (
    Process,
    Resources,
    create_resources,
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
