"""A worker's own concurrency limit per endpoint: additive increase, multiplicative decrease (AIMD).

The fleet-wide leases (``state/endpoints.py``) keep the fleet within an endpoint's configured capacity; when
the endpoint throttles anyway (capacity configured too high, an endpoint shared with other clients), each
worker halves the calls it has in flight at once, comes back quickly to the highest level that did not
throttle, and only probes above it (one more call in flight) after ``probe_after`` successes in a row, so
that a steady overload costs about one throttled call per probe instead of one per window. When the
throttling stops, each probe succeeds and the limit climbs back to the lease, one call at a time.

Only the first throttle of a burst counts: calls that were already in flight when the limit was lowered
report the old overload, not a new one (as TCP reacts once per window).
"""

from __future__ import annotations

import math
import threading


class AdaptiveLimit:
    """Calls in flight to one endpoint from this worker: at most ``limit`` (between 1 and ``ceiling``)."""

    def __init__(self, ceiling: int, *, decrease: float = 0.5, probe_after: int = 50) -> None:
        self._ceiling = max(1, ceiling)
        self._limit = float(self._ceiling)
        self._safe = float(self._ceiling)  # the highest level known not to throttle
        self._decrease = decrease
        self._probe_after = probe_after
        self._streak = 0
        self._epoch = 0
        self._in_flight = 0
        self._throttles = 0
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    @property
    def throttles(self) -> int:
        """Throttled calls seen since this limit was made."""
        return self._throttles

    def set_ceiling(self, ceiling: int) -> None:
        """The lease changed: never send more than it grants."""
        with self._cond:
            self._ceiling = max(1, ceiling)
            self._limit = min(self._limit, float(self._ceiling))
            self._safe = min(self._safe, float(self._ceiling))
            self._cond.notify_all()

    def acquire(self, abort: threading.Event | None = None) -> int | None:
        """Wait for a slot; returns a token for :meth:`release`, or None if ``abort`` was set meanwhile."""
        with self._cond:
            while self._in_flight >= self.limit:
                if abort is not None and abort.is_set():
                    return None
                self._cond.wait(0.1)
            self._in_flight += 1
            return self._epoch

    def release(self, token: int, throttled: bool) -> None:
        """A call ended; ``throttled`` when the endpoint refused it for load."""
        with self._cond:
            self._in_flight -= 1
            if throttled:
                self._throttles += 1
                if token == self._epoch:  # the first throttle since the last decrease
                    self._epoch += 1
                    self._safe = max(1.0, math.floor(self._limit) - 1.0)
                    self._limit = max(1.0, self._limit * self._decrease)
                    self._streak = 0
            else:
                self._streak += 1
                if self._limit < self._safe:
                    self._limit = min(self._safe, self._limit + 1.0 / self._limit)
                elif self._streak >= self._probe_after and self._limit < self._ceiling:
                    self._safe = self._limit = min(float(self._ceiling), math.floor(self._limit) + 1.0)
                    self._streak = 0
            self._cond.notify_all()
