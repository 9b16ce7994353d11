"""The liveness file: the worker loop touches it on every poll, the container's HEALTHCHECK judges its age."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import pytest

from modelrunner import liveness
from modelrunner.config import Settings
from modelrunner.worker import Worker

ENV = {"AWS_DEFAULT_REGION": "us-east-1", "JOB_TABLE": "j", "REGION_REQUEST_TABLE": "r", "FEATURE_TABLE": "f",
       "IMAGE_QUEUE": "iq", "REGION_QUEUE": "rq", "WORKERS": "1", "MR_REGION_WAIT_SECONDS": "0"}


def test_beat_creates_the_file_then_moves_its_mtime(tmp_path):
    path = tmp_path / "hb"
    liveness.HeartbeatFile(str(path)).beat()
    assert path.exists()
    os.utime(path, (1000.0, 1000.0))
    liveness.HeartbeatFile(str(path)).beat()
    assert path.stat().st_mtime > 1000.0


def test_beat_without_a_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    liveness.HeartbeatFile(None).beat()
    liveness.HeartbeatFile("").beat()
    assert list(tmp_path.iterdir()) == []


def test_beat_on_an_unwritable_path_logs_once_and_does_not_raise(tmp_path, caplog):
    path = str(tmp_path / "missing-dir" / "hb")
    heartbeat = liveness.HeartbeatFile(path)
    heartbeat.beat()
    heartbeat.beat()
    assert [r.getMessage() for r in caplog.records].count(
        f"cannot write the heartbeat file {path}: [Errno 2] No such file or directory: '{path}'") == 1


def test_check_fresh_stale_missing_and_unset(tmp_path):
    path = tmp_path / "hb"
    path.touch()
    os.utime(path, (5000.0, 5000.0))
    assert liveness.check(str(path), max_age=60, now=5030.0) == (True, "fresh: the worker loop went round 30.0 s ago")
    healthy, reason = liveness.check(str(path), max_age=60, now=5061.0)
    assert not healthy and reason == "stale: the worker loop last went round 61.0 s ago (limit 60 s)"
    healthy, reason = liveness.check(str(tmp_path / "none"), max_age=60)
    assert not healthy and reason.startswith("no heartbeat file")
    assert liveness.check(None, max_age=60)[0] is False


def test_main_reads_the_environment_and_exits_1_when_stale(tmp_path, monkeypatch, capsys):
    path = tmp_path / "hb"
    liveness.HeartbeatFile(str(path)).beat()
    monkeypatch.setenv("MR_HEARTBEAT_FILE", str(path))
    monkeypatch.delenv("MR_HEARTBEAT_MAX_AGE", raising=False)
    assert liveness.main([]) == 0
    os.utime(path, (path.stat().st_mtime - liveness.DEFAULT_MAX_AGE - 5,) * 2)
    assert liveness.main([]) == 1
    monkeypatch.setenv("MR_HEARTBEAT_MAX_AGE", str(liveness.DEFAULT_MAX_AGE * 2))
    assert liveness.main([]) == 0
    monkeypatch.setenv("MR_HEARTBEAT_MAX_AGE", "ten")
    assert liveness.main([]) == 1
    assert "MR_HEARTBEAT_MAX_AGE must be a number" in capsys.readouterr().out


def test_setting_is_off_by_default_and_read_from_mr_heartbeat_file():
    assert Settings.from_env(ENV).heartbeat_file is None
    assert Settings.from_env({**ENV, "MR_HEARTBEAT_FILE": " /tmp/hb "}).heartbeat_file == "/tmp/hb"


class _EmptyQueues:
    """An SQS client whose queues are always empty; counts the polls (one per iteration: regions first)."""

    def __init__(self) -> None:
        self.polls = 0

    def receive_message(self, QueueUrl: str, **_: Any) -> dict[str, Any]:  # noqa: N803 - boto3's name
        if QueueUrl == ENV["REGION_QUEUE"]:
            self.polls += 1
        time.sleep(0.001)
        return {}


@pytest.mark.parametrize("configured", [True, False])
def test_the_worker_loop_beats_on_every_poll(tmp_path, monkeypatch, configured):
    path = tmp_path / "hb"
    env = {**ENV, "MR_HEARTBEAT_FILE": str(path)} if configured else ENV
    sqs = _EmptyQueues()
    services = SimpleNamespace(settings=Settings.from_env(env), aws=SimpleNamespace(sqs=sqs))
    beats: list[str | None] = []
    worker = Worker(services)  # type: ignore[arg-type]
    assert worker.liveness.path == services.settings.heartbeat_file
    beat = worker.liveness.beat
    monkeypatch.setattr(worker.liveness, "beat", lambda: (beats.append(worker.liveness.path), beat()))
    worker.run(max_messages=None, idle_exit_s=0.2)
    assert sqs.polls >= 2 and beats == [services.settings.heartbeat_file] * sqs.polls
    assert path.exists() is configured
