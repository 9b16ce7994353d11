"""JSON log lines: one object a line, the work's ids from the bound context, the level from configuration,
no secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from modelrunner import logs
from modelrunner.config import Settings
from modelrunner.errors import ConfigError
from modelrunner.inference.pool import bounded_map

REQUIRED = {"AWS_DEFAULT_REGION": "us-east-1", "JOB_TABLE": "j", "REGION_REQUEST_TABLE": "r",
            "FEATURE_TABLE": "f", "IMAGE_QUEUE": "iq", "REGION_QUEUE": "rq", "WORKERS": "2"}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger configured as the worker does, writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure_logging()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    logs.clear()
    try:
        yield stream
    finally:
        logs.clear()
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_is_one_object_with_the_bound_job_region_and_tile(captured: io.StringIO) -> None:
    log = logging.getLogger("modelrunner.test")
    log.info("before any message")
    logs.bind(job_id="j1", image_id="j1:s3://b/k.tif")
    log.info("job line")
    logs.bind(region_id="(0, 0)(774, 806)-j1")

    def tile(key: list[list[int]]) -> None:
        logs.bind(tile=key)  # in the tile thread's own copy of the context
        log.warning("tile line")

    for _, future in bounded_map(tile, [[[0, 0], [512, 512]], [[0, 386], [512, 512]]], workers=2):
        future.result()
    log.info("region line, after the tiles", extra={"feature_count": 3})
    logs.bind(region_id=None)
    log.info("completion line")
    logs.clear()
    log.info("between messages")

    out = lines(captured)
    assert [o["message"] for o in out] == ["before any message", "job line", "tile line", "tile line",
                                           "region line, after the tiles", "completion line", "between messages"]
    for o in out:
        assert {"time", "levelname", "name", "message"} <= set(o)
    assert "job_id" not in out[0] and "job_id" not in out[-1]
    assert (out[1]["job_id"], out[1]["image_id"]) == ("j1", "j1:s3://b/k.tif") and "region_id" not in out[1]
    tiles = sorted(json.dumps(o["tile"]) for o in out[2:4])
    assert tiles == ["[[0, 0], [512, 512]]", "[[0, 386], [512, 512]]"]
    assert all(o["region_id"] == "(0, 0)(774, 806)-j1" and o["job_id"] == "j1" for o in out[2:5])
    assert "tile" not in out[4], "a tile thread's binding stays in that thread"
    assert out[4]["feature_count"] == 3
    assert "region_id" not in out[5] and out[5]["job_id"] == "j1"
    assert out[2]["levelname"] == "WARNING"


def test_secrets_never_reach_a_line(captured: io.StringIO) -> None:
    log = logging.getLogger("modelrunner.test")
    url = ("https://b.s3.amazonaws.com/k.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F2026"
           "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE&X-Amz-Signature=0123456789abcdef")
    log.info("opening %s", url)
    log.info("assumed role", extra={"credentials": {"SecretAccessKey": "wJalrEXAMPLE"}, "session_token": "abc"})
    log.info("env dump aws_secret_access_key=wJalrEXAMPLEKEY and SessionToken: 'FQoGEXAMPLE'")
    try:
        raise RuntimeError("SecretAccessKey='wJalrEXAMPLE2'")
    except RuntimeError:
        log.exception("failed")
    text = captured.getvalue()
    for secret in ("AKIAEXAMPLE", "FwoGZXIvYXdzEXAMPLE", "0123456789abcdef", "wJalrEXAMPLE", "FQoGEXAMPLE", "abc\""):
        assert secret not in text, secret
    out = lines(captured)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in out[0]["message"], "only the secret values go"
    assert out[1]["credentials"] == logs.REDACTED and out[1]["session_token"] == logs.REDACTED


@pytest.mark.parametrize(("env", "verbose", "expected"), [
    ({}, False, "INFO"), ({"MR_LOG_LEVEL": "warning"}, False, "WARNING"), ({"MR_LOG_LEVEL": "DEBUG"}, False, "DEBUG"),
    ({"MR_LOG_LEVEL": "ERROR"}, True, "DEBUG"),
])
def test_level_comes_from_the_settings_and_v(env: dict[str, str], verbose: bool, expected: str) -> None:
    settings = Settings.from_env({**REQUIRED, **env})
    assert settings.log_level == (env.get("MR_LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure_logging(verbose, level=settings.log_level)
        assert logging.getLevelName(root.level) == expected
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_misspelt_level_stops_the_worker() -> None:
    with pytest.raises(ConfigError, match="MR_LOG_LEVEL"):
        Settings.from_env({**REQUIRED, "MR_LOG_LEVEL": "verbose"})
