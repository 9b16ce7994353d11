"""CloudWatch metrics as EMF JSON lines on stdout (aws-embedded-metrics), the reference's names.

Namespace ``OSML/ModelRunner``; metric names ``Duration`` (Seconds), ``Invocations``, ``Errors``,
``Throttles``, ``Retries`` (Count); each record carries exactly its operation's dimension set (the
reference's table, section 9 of the interface notes, plus ``Scheduling``, the operation the upstream
runner v3 added for capacity scheduling; ``doc/operations.md`` lists them):

========================  ==========================  ==============================================
Operation                 other dimensions            when
========================  ==========================  ==============================================
ImageProcessing           ModelName, InputFormat      once per job, at completion (+ Tiles, Features)
RegionProcessing          ModelName, InputFormat      once per region (+ Tiles, Features); Throttles
                                                      alone for a region held back for capacity
TileGeneration            InputFormat                 per tile cut and encoded
TileProcessing            ModelName                   per tile, end to end
ModelInvocation           ModelName                   per endpoint call (+ Retries, Throttles)
FeatureRefinement         (none)                      per tile: placing and geolocating its features
FeatureStorage            (none)                      per feature-table write
FeatureAggregation        (none)                      per job: reading the regions' results back
FeatureSelection          (none)                      per job: merging across region seams
FeatureDissemination      (none)                      per job and output written
Scheduling                ModelName                   per capacity lease asked for (Waits, Capacity,
                                                      InFlight); per region run (Throttles, Limit)
========================  ==========================  ==============================================

Per-event figures (tiles, model calls, storage writes) are not one EMF record each: :meth:`Metrics.record`
adds the event to an accumulator per operation and dimension set, and a record is written per 100 events
(and at the end of each region), holding every event's ``Duration`` as one value of an EMF value array
and the counts summed. CloudWatch reads each array value as its own sample, so averages, percentiles
and sums are those of one record per event, at a hundredth of the lines and of the CPU
(``scripts/bench_metrics`` measures both ways). Records are serialised by the library's
:class:`~aws_embedded_metrics.serializers.log_serializer.LogSerializer` and written synchronously: the
library's ``MetricsLogger.flush`` is a coroutine, and an event loop per record cost more than the record.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, ParamSpec, TypeVar

from aws_embedded_metrics.config import get_config
from aws_embedded_metrics.logger.metrics_context import MetricsContext
from aws_embedded_metrics.serializers.log_serializer import LogSerializer

log = logging.getLogger(__name__)
NAMESPACE = "OSML/ModelRunner"
#: Events per accumulated record: EMF's limit of values per metric in one record.
EVENTS_PER_RECORD = 100

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class _Events:
    """What :meth:`Metrics.record` has gathered for one operation and dimension set since the last write."""

    durations: list[float] = field(default_factory=list)
    errors: int = 0
    retries: int = 0
    throttles: int = 0
    calls: bool = False  # the operation reports Retries and Throttles (endpoint calls)


class Metrics:
    """Writes EMF records to ``out`` (stdout by default); writes nothing when ``enabled`` is False.

    Thread-safe: tile threads record events concurrently; a record is written by whichever thread
    fills an accumulator, or by :meth:`flush`.
    """

    def __init__(self, enabled: bool = True, out: IO[str] | None = None) -> None:
        self.enabled = enabled
        self._out = out
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._events: dict[tuple[str, tuple[tuple[str, str], ...]], _Events] = {}
        config = get_config()
        config.service_name = "OSML"
        config.service_type = "ModelRunner"
        config.log_group_name = "/aws/OSML/MRService"
        config.namespace = NAMESPACE
        if not config.environment:
            config.environment = "local"

    # One record now ------------------------------------------------------------------------------------
    def emit(self, operation: str, dimensions: Mapping[str, str], values: Mapping[str, tuple[float, str]]) -> None:
        """Write one record: ``values`` maps metric name to (value, unit)."""
        if not self.enabled:
            return
        try:
            context = self._context(operation, dimensions)
            for name, (value, unit) in values.items():
                context.put_metric(name, value, unit)
            self._write(context)
        except Exception:  # metrics never fail the work
            log.exception("could not emit metrics for %s", operation)

    # Accumulated events --------------------------------------------------------------------------------
    def record(self, operation: str, dimensions: Mapping[str, str], duration_s: float, *, error: bool = False,
               retries: int | None = None, throttles: int = 0) -> None:
        """Count one event of ``operation`` (a tile, a call): its duration, whether it failed, and for
        endpoint calls (``retries`` given) the retries and throttled attempts it took."""
        if not self.enabled:
            return
        key = (operation, tuple(sorted(dimensions.items())))
        full: _Events | None = None
        with self._lock:
            events = self._events.get(key)
            if events is None:
                events = self._events[key] = _Events()
            events.durations.append(duration_s)
            events.errors += bool(error)
            if retries is not None:
                events.calls = True
                events.retries += retries
                events.throttles += throttles
            if len(events.durations) >= EVENTS_PER_RECORD:
                full = self._events.pop(key)
        if full is not None:
            self._write_events(key, full)

    def timed(self, operation: str, dimensions: Mapping[str, str]) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Wrap a function so each call is recorded as one event (an exception counts as an error and
        is raised on)."""

        def wrap(fn: Callable[P, R]) -> Callable[P, R]:
            if not self.enabled:
                return fn

            @functools.wraps(fn)
            def timed_call(*args: P.args, **kwargs: P.kwargs) -> R:
                started = time.perf_counter()
                try:
                    result = fn(*args, **kwargs)
                except BaseException:
                    self.record(operation, dimensions, time.perf_counter() - started, error=True)
                    raise
                self.record(operation, dimensions, time.perf_counter() - started)
                return result

            return timed_call

        return wrap

    def flush(self) -> None:
        """Write every accumulated event now (end of a region, end of a job)."""
        if not self.enabled:
            return
        with self._lock:
            pending, self._events = self._events, {}
        for key, events in pending.items():
            self._write_events(key, events)

    # Writing -------------------------------------------------------------------------------------------
    def _write_events(self, key: tuple[str, tuple[tuple[str, str], ...]], events: _Events) -> None:
        operation, dimensions = key
        try:
            context = self._context(operation, dict(dimensions))
            for duration in events.durations:
                context.put_metric("Duration", duration, "Seconds")
            context.put_metric("Invocations", len(events.durations), "Count")
            context.put_metric("Errors", events.errors, "Count")
            if events.calls:
                context.put_metric("Retries", events.retries, "Count")
                context.put_metric("Throttles", events.throttles, "Count")
            self._write(context)
        except Exception:  # metrics never fail the work
            log.exception("could not emit metrics for %s", operation)

    @staticmethod
    def _context(operation: str, dimensions: Mapping[str, str]) -> MetricsContext:
        context = MetricsContext(namespace=NAMESPACE)
        context.set_dimensions([{"Operation": operation, **dimensions}], use_default=False)
        return context

    def _write(self, context: MetricsContext) -> None:
        lines = LogSerializer.serialize(context)
        out = self._out or sys.stdout
        with self._write_lock:
            out.write("".join(line + "\n" for line in lines))
            out.flush()


#: The reference's ``InputFormat`` is GDAL's driver name; jobs and regions carry the image "extension".
_DRIVERS = {"TIFF": "GTIFF", "JP2": "JP2OPENJPEG"}


def input_format(image_extension: str | None) -> str:
    """The ``InputFormat`` dimension (``GTIFF``, ``NITF``, ``PNG``, ``JPEG``...) of an image extension."""
    extension = (image_extension or "").upper()
    return _DRIVERS.get(extension, extension) or "UNKNOWN"
