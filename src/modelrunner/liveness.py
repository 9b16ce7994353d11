"""The worker's liveness file: touched on every turn of the worker loop, read by the container's HEALTHCHECK.

A worker whose process is alive can still be of no use: stuck in a call that never returns, or its loop
dead while the visibility heartbeat thread keeps its message hidden from every other worker. The process
table cannot tell; the loop's own progress can. The loop calls :meth:`HeartbeatFile.beat` once per poll iteration (an
empty long poll takes ``MR_REGION_WAIT_SECONDS``, a message as long as its region or its job's
completion takes), which sets the file's modification time; ``python3 -m modelrunner.liveness`` (the
image's HEALTHCHECK) exits 1 when that time is older than ``MR_HEARTBEAT_MAX_AGE`` seconds.

``MR_HEARTBEAT_MAX_AGE`` must exceed the longest single message the deployment sees, or a worker busy with
a long region is reported unhealthy and replaced (its message handed back, and the next worker meets the
same region). Off unless ``MR_HEARTBEAT_FILE`` is set (the image sets it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

log = logging.getLogger(__name__)

#: Seconds without a beat after which the worker counts as stuck, unless ``MR_HEARTBEAT_MAX_AGE`` says.
DEFAULT_MAX_AGE = 600.0

class HeartbeatFile:
    """The liveness file of one worker (``MR_HEARTBEAT_FILE``; None or empty: off). The worker creates it at
    start-up and owns it; it remembers whether it has already warned that the file cannot be written."""

    def __init__(self, path: str | None) -> None:
        self.path = path or None
        self._warned = False

    def beat(self) -> None:
        """Record that the worker loop went round once more: the file's mtime becomes now (created if missing).

        A no-op when off. A file that cannot be written is logged once and otherwise ignored: the worker
        keeps serving, and the health check, finding no fresh file, reports it.
        """
        if self.path is None:
            return
        try:
            try:
                os.utime(self.path)
            except FileNotFoundError:
                with open(self.path, "a"):
                    pass
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning("cannot write the heartbeat file %s: %s", self.path, err)


def check(path: str | None, max_age: float, now: float | None = None) -> tuple[bool, str]:
    """Whether the heartbeat file was touched within ``max_age`` seconds, with a line saying why not."""
    if not path:
        return False, "MR_HEARTBEAT_FILE is not set: nothing to check"
    try:
        mtime = os.stat(path).st_mtime
    except OSError as err:
        return False, f"no heartbeat file {path}: {err.strerror or err}"
    age = (time.time() if now is None else now) - mtime
    if age > max_age:
        return False, f"stale: the worker loop last went round {age:.1f} s ago (limit {max_age:g} s)"
    return True, f"fresh: the worker loop went round {max(age, 0.0):.1f} s ago"


def main(argv: list[str] | None = None) -> int:
    """The HEALTHCHECK command: exit 0 when the heartbeat is fresh, 1 when it is stale or missing."""
    parser = argparse.ArgumentParser(prog="python3 -m modelrunner.liveness", description=main.__doc__)
    parser.add_argument("--file", default=os.environ.get("MR_HEARTBEAT_FILE", ""),
                        help="heartbeat file (default: $MR_HEARTBEAT_FILE)")
    parser.add_argument("--max-age", type=float, default=None,
                        help=f"seconds (default: $MR_HEARTBEAT_MAX_AGE, else {DEFAULT_MAX_AGE:.0f})")
    args = parser.parse_args(argv)
    max_age = args.max_age
    if max_age is None:
        raw = os.environ.get("MR_HEARTBEAT_MAX_AGE", "").strip()
        try:
            max_age = float(raw) if raw else DEFAULT_MAX_AGE
        except ValueError:
            print(f"MR_HEARTBEAT_MAX_AGE must be a number of seconds, got {raw!r}")
            return 1
    healthy, reason = check(args.file, max_age)
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
