"""A worker's own concurrency limit per endpoint: additive increase, multiplicative decrease (AIMD).

The fleet-wide leases (``state/endpoints.py``) keep the fleet within an endpoint's configured capacity; when
the endpoint throttles anyway (capacity configured too high, an endpoint shared with other clients), each
worker halves the tiles it sends at once and then raises the limit by one per window of successful calls,
as TCP does with its congestion window, until it is back at its lease.
"""

from __future__ import annotations

import threading


class AdaptiveLimit:
    """Calls in flight to one endpoint from this worker: at most ``limit`` (between 1 and ``ceiling``)."""

    def __init__(self, ceiling: int, decrease: float = 0.5) -> None:
        self._ceiling = max(1, ceiling)
        self._limit = float(self._ceiling)
        self._decrease = decrease
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
            self._cond.notify_all()

    def acquire(self, abort: threading.Event | None = None) -> bool:
        """Wait for a slot; False if ``abort`` was set while waiting."""
        with self._cond:
            while self._in_flight >= self.limit:
                if abort is not None and abort.is_set():
                    return False
                self._cond.wait(0.1)
            self._in_flight += 1
            return True

    def release(self, throttled: bool) -> None:
        """A call ended; ``throttled`` when the endpoint refused it for load."""
        with self._cond:
            self._in_flight -= 1
            if throttled:
                self._throttles += 1
                self._limit = max(1.0, self._limit * self._decrease)
            else:
                self._limit = min(float(self._ceiling), self._limit + 1.0 / max(1.0, self._limit))
            self._cond.notify_all()
