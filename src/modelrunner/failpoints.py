"""Named points where a worker can be told to die, to prove that a crash at any moment loses nothing.

Off unless ``MR_FAILPOINTS`` names points (read once into :class:`~modelrunner.config.Settings`): a
comma-separated list of ``name`` (die at the first pass) or ``name@n`` (die at the n-th pass). Dying is
``SIGKILL`` of the worker's own process: no ``finally``, no hand-back, exactly what the out-of-memory killer
or a lost Fargate host does. The crash tests start a worker with a point set, let it die there, start a
replacement and compare the job's outputs with an undisturbed run. The points:

- ``region.tile``: a tile's result was collected (mid-region);
- ``complete.merged``: the completion merged the regions, before any output is written;
- ``output.s3``: the S3 output is written, before the job ends (mid-output);
- ``complete.ended``: the job row holds its final status, before the status is published.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable

log = logging.getLogger(__name__)


class Failpoints:
    """The armed points of one process (none in production)."""

    def __init__(self, specs: Iterable[str] = ()) -> None:
        self._at: dict[str, int] = {}
        for spec in specs:
            name, _, count = spec.strip().partition("@")
            if name:
                self._at[name] = int(count) if count else 1
        self._passes: dict[str, int] = {}
        self._lock = threading.Lock()

    def hit(self, name: str) -> None:
        """Pass point ``name``; die here if it is armed for this pass."""
        if name not in self._at:
            return
        with self._lock:
            self._passes[name] = self._passes.get(name, 0) + 1
            due = self._passes[name] == self._at[name]
        if due:
            log.warning("failpoint %s: killing this worker (MR_FAILPOINTS)", name)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
