"""JSON log lines on stderr: one object a line, with the job, region and tile the line is about.

Every line has ``time``, ``levelname``, ``name`` and ``message`` (the reference's keys are ``levelname``,
``message``, ``job_id`` and ``image_id``, so log queries written for it keep working), plus the fields of
the work in hand: ``job_id`` and ``image_id`` while a message is handled, ``region_id`` while a region is
processed, ``tile`` (``[[row, col], [width, height]]``) on lines about one tile. Those fields come from
:func:`bind`, a :mod:`contextvars` context: the worker binds them once per message, and a thread started
with a copy of the context (the tile pool's) carries them too, so the code that logs never passes them.

The level is ``MR_LOG_LEVEL`` (``config.Settings.log_level``, default INFO); the entry point's ``-v``
makes it DEBUG. Nothing secret reaches a line: values of fields whose name says credential, secret,
token, password or signature are replaced by ``[REDACTED]``, and every line goes through
:func:`modelrunner.redact.redact` (presigned-URL signatures, named secrets, assumed-role credentials).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from .config import LOG_LEVELS
from .redact import MASK, redact

REDACTED = MASK

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("modelrunner_log", default=_EMPTY)

# Field names whose values are never logged (the text of every line also goes through redact.redact).
_SECRET_FIELD = re.compile(r"secret|password|passwd|token|credential|signature|authorization|session_key",
                           re.IGNORECASE)


def bind(**fields: Any) -> None:
    """Add ``fields`` to every line logged from this context on (and from threads given a copy of it).

    Later fields replace earlier ones of the same name and ``None`` removes a field, so a worker that binds
    per message just binds again (and :func:`clear` s between messages): nothing needs undoing.
    """
    merged = {**_context.get(), **fields}
    _context.set({k: v for k, v in merged.items() if v is not None})


def clear() -> None:
    """Forget every bound field (the worker does this between messages)."""
    _context.set(_EMPTY)


def bound() -> Mapping[str, Any]:
    """The fields bound in this context (read-only)."""
    return _context.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: the standard keys, the bound context, and the record's ``extra``."""

    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "levelname": record.levelname,
            "name": record.name,
            "message": record.getMessage(),
        }
        for key, value in _context.get().items():
            out[key] = REDACTED if _SECRET_FIELD.search(key) else value
        for key, value in vars(record).items():
            if key not in self._STANDARD:
                out[key] = REDACTED if _SECRET_FIELD.search(key) else value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str))


def level_name(level: str | None, verbose: bool = False) -> str:
    """The effective level: DEBUG with ``-v``, else ``level`` (``MR_LOG_LEVEL``), else INFO."""
    if verbose:
        return "DEBUG"
    name = (level or "INFO").strip().upper()
    return name if name in LOG_LEVELS else "INFO"


def configure_logging(verbose: bool = False, json_lines: bool = True, level: str | None = None) -> None:
    """Send every logger's records to stderr, as JSON lines unless ``json_lines`` is False (the demo)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_name(level, verbose))
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
