"""modelrunner.redact: no credential, signature or presigned URL in a log line or a status."""

from __future__ import annotations

import json
import logging

import pytest

from modelrunner import redact as redaction
from modelrunner.logs import JsonFormatter
from modelrunner.redact import MASK, redact
from modelrunner.status import render

PRESIGNED = ("https://b.s3.amazonaws.com/k.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAXXXXXXXXXXXXXXXX"
             "%2F20261206%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261206T000000Z&X-Amz-Expires=3600"
             "&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEJr%2F%2F&X-Amz-Signature="
             "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")


@pytest.mark.parametrize("text, secret", [
    (f"cannot open image {PRESIGNED}: HTTP 403", "0123456789abcdef0123456789abcdef"),
    (f"cannot open image {PRESIGNED}: HTTP 403", "IQoJb3JpZ2luX2VjEJr"),
    (f"cannot open image {PRESIGNED}: HTTP 403", "ASIAXXXXXXXXXXXXXXXX"),
    ("Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261206/us-east-1/s3/aws4_request, "
     "SignedHeaders=host, Signature=fe5f80f77d5fa3beca038a248ff027", "fe5f80f77d5fa3beca038a248ff027"),
    ("key AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
    ('{"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}', "wJalrXUtnFEMI"),
    ("aws_session_token=FwoGZXIvYXdzEBYaDH", "FwoGZXIvYXdzEBYaDH"),
    ("https://x/y?Signature=abc123def456&Expires=1", "abc123def456"),
])
def test_secrets_are_masked(text, secret):
    cleaned = redact(text)
    assert secret not in cleaned and MASK in cleaned


def test_plain_text_is_left_alone():
    text = "HTTP endpoint http://127.0.0.1:8080/invocations answered 500: b'overloaded' (after 4 attempts)"
    assert redact(text) == text


def test_registered_credentials_are_masked_anywhere():
    redaction.register("s3cr3t-value-of-an-assumed-role", None, "short")
    assert redact("boto said s3cr3t-value-of-an-assumed-role!") == f"boto said {MASK}!"
    assert redact("short stays") == "short stays"  # too short to register: it would mask ordinary words


def test_log_lines_and_statuses_are_redacted():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "cannot open %s", (PRESIGNED,), None)
    record.image_url = PRESIGNED
    line = JsonFormatter().format(record)
    assert "0123456789abcdef0123" not in line and json.loads(line)["levelname"] == "ERROR"
    assert "0123456789abcdef0123" not in render("FAILED", "j", f"cannot open image {PRESIGNED}")
