"""Capacity-aware scheduling: a region runs only with a share of its endpoint's capacity.

Before a region starts, its worker takes a lease on the endpoint's capacity (``state/endpoints.py``);
the lease sets how many tiles the region sends at once, is renewed while the region runs and is released
when it ends (or expires, if the worker dies). When the endpoint is full the region does not start: its
message comes back after ``THROTTLING_RETRY_TIMEOUT`` seconds and the worker takes other work, so jobs for
a free endpoint never wait behind jobs for a busy one. Within its lease, a worker lowers its own
concurrency when the endpoint throttles anyway (``inference/limits.py``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from ..errors import EndpointBusy
from ..requests import RegionRequest
from .services import Services

log = logging.getLogger(__name__)


@contextlib.contextmanager
def endpoint_lease(services: Services, region: RegionRequest) -> Iterator[int]:
    """Hold a share of the region's endpoint while the block runs; yields the tiles it may keep in flight.
    Raises :class:`EndpointBusy` when the endpoint is full."""
    settings = services.settings
    capacity = services.capacity(region) if settings.scheduler_throttling_enabled and settings.endpoint_table \
        else None
    leases = services.leases
    if capacity is None or leases is None:  # not scheduled: this worker's thread pool is the only limit
        yield settings.workers
        return
    holder = f"{services.worker_id}/{region.region_id}"
    dimensions = {"ModelName": region.model_name}
    granted = leases.acquire(region.model_name, holder, settings.workers, capacity)
    if granted == 0:
        services.metrics.emit("Scheduling", dimensions, {"Waits": (1, "Count"), "Capacity": (capacity, "Count")})
        raise EndpointBusy(f"endpoint {region.model_name} is at its capacity of {capacity} concurrent tiles: "
                           f"region {region.region_id} waits")
    services.metrics.emit("Scheduling", dimensions, {"Capacity": (capacity, "Count"), "InFlight": (granted, "Count"),
                                                     "Waits": (0, "Count")})
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(settings.capacity_lease_seconds / 3):
            try:
                if not leases.renew(region.model_name, holder):
                    log.warning("capacity lease of %s on %s lapsed", region.region_id, region.model_name)
            except Exception:  # the next renewal tries again
                log.exception("could not renew the capacity lease of %s", region.region_id)

    renewer = threading.Thread(target=renew, name="capacity-lease", daemon=True)
    renewer.start()
    try:
        yield granted
    finally:
        stop.set()
        renewer.join()
        try:
            leases.release(region.model_name, holder)
        except Exception:  # it expires on its own
            log.exception("could not release the capacity lease of %s", region.region_id)
