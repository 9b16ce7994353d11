"""Process one region: read tiles, encode, invoke the model from a thread pool, build features, merge,
store the region's result, and count the region towards its job (exactly once)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import EndpointBusy, ModelRunnerError
from ..features.convert import relocator
from ..features.featureset import FeatureSet
from ..features.seams import Window, merge_seams, merge_tiles
from ..imagery.context import ImageContext
from ..imagery.grid import Tile
from ..imagery.radiometry import TileRadiometry, plan_radiometry
from ..imagery.source import ImageSource, nitf_source_metadata
from ..inference.limits import AdaptiveLimit
from ..inference.pool import BatchWriter, bounded_map, prefetch
from ..logs import bind
from ..metrics import input_format
from ..redact import redact
from ..requests import ImageRequest, RegionRequest
from ..state.records import JobRecord, RegionRecord
from ..status import FINAL, Status
from .plan import ImagePlan, plan_image
from .schedule import endpoint_lease
from .services import Services
from .tiles import RetryPolicy, TileFailed, TileResult, TileStep

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0


class RegionAborted(ModelRunnerError):
    """The worker is stopping: the region is handed back unfinished (its message becomes visible again)."""


@dataclass
class RegionOutcome:
    region_id: str
    status: str
    total_tiles: int = 0
    failed_tiles: list[Any] = field(default_factory=list)
    feature_count: int = 0
    counted: bool = False  # False when the region had already been finished by an earlier delivery
    seconds: float = 0.0


@dataclass
class _TileWork:
    tile: Tile
    pixels: np.ndarray


def _strips(source: ImageSource, tiles_by_row: list[list[Tile]]) -> Iterator[_TileWork]:
    """Read one strip per tile row (one GDAL read), then slice the tiles out of it (copies: the strip's
    buffer is read into again for the next row, rather than a new one mapped and freed per row)."""
    buffer: np.ndarray | None = None
    for row_tiles in tiles_by_row:
        first, last = row_tiles[0], row_tiles[-1]
        width = last.col + last.width - first.col
        shape = (source.info.band_count, first.height, width)
        reuse = buffer is not None and buffer.shape == shape
        strip = buffer = source.read(first.col, first.row, width, first.height, out=buffer if reuse else None)
        for tile in row_tiles:
            offset = tile.col - first.col
            # Always a copy (ascontiguousarray would hand out a view of a tile as wide as the strip).
            yield _TileWork(tile, strip[:, :, offset:offset + tile.width].copy())


def process_region(services: Services, region: RegionRequest, *, job: JobRecord,
                   abort: threading.Event | None = None) -> RegionOutcome:
    """Run every tile of the region; the region row ends final and the job counts it, once.

    ``job``: the job row, whose request (:meth:`JobRecord.image_request`) gives what the region message does
    not carry (the ROI, the merge, the feature properties, the georegistration).

    A region that cannot be processed (its image cannot be read, say) ends FAILED with the reason and is
    counted; an AWS error after boto3's retries is raised instead, leaving the region unfinished, so that
    its message comes back and the region is run again.

    A region whose endpoint is at capacity (:class:`EndpointBusy`, ``runner/schedule.py``) does not start:
    it is the reference's self-throttled region, counted as one ``RegionProcessing`` ``Throttles``."""
    try:
        with endpoint_lease(services, region) as concurrency:
            return _process(services, region, job, abort, concurrency)
    except EndpointBusy:
        services.metrics.emit("RegionProcessing", {"ModelName": region.model_name,
                                                   "InputFormat": input_format(region.image_extension)},
                              {"Throttles": (1, "Count")})
        raise


def _process(services: Services, region: RegionRequest, job: JobRecord, abort: threading.Event | None,
             concurrency: int) -> RegionOutcome:
    started = time.monotonic()
    start_ms = int(time.time() * 1000)
    before = services.regions.start(region, services.worker_id)
    if before is not None and before.region_status in FINAL:
        log.info("region %s already finished (%s): not processed again", region.region_id, before.region_status)
        return RegionOutcome(region.region_id, before.region_status, counted=False)

    attempt = f"{services.worker_id}@{start_ms}"
    message = None
    chunks = 0
    result = RegionResult()
    try:
        request = job.image_request()
        rerun = _Rerun.of(services, region, before) if before is not None else None
        result = _run_tiles(services, region, request, job, abort, concurrency, rerun)
        chunks = services.features.put_region_result(region.image_id, region.region_id, attempt, result.merged)
        status = result.status
        message = result.message
    except (RegionAborted, ClientError, BotoCoreError):
        raise
    except Exception as err:  # the region fails, is counted, and the job goes on with its other regions
        log.exception("region %s failed", region.region_id)
        message = redact(f"Failed to process image region: {err}")
        status, chunks, result = Status.FAILED, 0, RegionResult(total=result.total)
    counted = services.regions.finish(
        services.jobs, region.image_id, region.region_id, status, start_ms=start_ms, succeeded=result.succeeded,
        failed=result.failed, total=result.total, message=message, feature_count=len(result.merged),
        result_chunks=chunks, result_attempt=attempt, raw_feature_count=result.raw_count,
        failed_tile_reasons=result.failure_reasons() or None)
    duration_ms = int((time.monotonic() - started) * 1000)
    if counted:
        services.status.region(status, region.job_id, region.image_id, region.region_id, duration_ms, result.failed)
        # Throttles 0: this region ran; one held back for endpoint capacity has a record of its own (above).
        services.metrics.emit("RegionProcessing", {"ModelName": region.model_name,
                                                   "InputFormat": input_format(region.image_extension)},
                              {"Duration": (duration_ms / 1000, "Seconds"), "Invocations": (1, "Count"),
                               "Errors": (1 if status != Status.SUCCESS else 0, "Count"), "Throttles": (0, "Count"),
                               "Tiles": (result.total, "Count"), "Features": (len(result.merged), "Count")})
    services.metrics.flush()  # the region's per-tile records
    return RegionOutcome(region.region_id, status, result.total, result.failed, len(result.merged), counted,
                         time.monotonic() - started)


#: Failure reasons kept on a region row (the first ones; each cut to REASON_CHARS characters).
MAX_REASONS = 10
REASON_CHARS = 500


@dataclass
class RegionResult:
    """What a region's tiles produced: the merged features and the tile bookkeeping."""

    merged: FeatureSet = field(default_factory=lambda: FeatureSet.concat([]))
    raw_count: int = 0
    total: int = 0
    succeeded: list[Any] = field(default_factory=list)
    failed: list[Any] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # failure reason -> tiles that failed with it

    @property
    def status(self) -> str:
        """The reference's region status: FAILED when no tile succeeded, PARTIAL when some failed."""
        if self.total == 0 or len(self.failed) == self.total:
            return Status.FAILED
        return Status.PARTIAL if self.failed else Status.SUCCESS

    @property
    def message(self) -> str | None:
        """Why tiles failed, for the region row and the job's final status (None when none did)."""
        if not self.failed:
            return None
        return f"{len(self.failed)} of {self.total} tiles failed: " + "; ".join(self.failure_reasons()[:3])

    def failure_reasons(self) -> list[str]:
        """The distinct reasons, most frequent first, each with its tile count."""
        ordered = sorted(self.reasons.items(), key=lambda item: -item[1])[:MAX_REASONS]
        return [f"{reason[:REASON_CHARS]} ({count} tile{'s' if count > 1 else ''})" for reason, count in ordered]

    def fail(self, key: Any, reason: str) -> None:
        self.failed.append(key)
        reason = redact(reason)  # it quotes the endpoint or GDAL, which may quote a presigned URL
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


@dataclass
class _Rerun:
    """A region run again for its failed tiles only (``runner/rerun.py``): which tiles, and what the earlier
    run left (its merged result, the tiles that succeeded, its raw feature count)."""

    tiles: set[str]
    prior: FeatureSet
    succeeded: list[Any]
    raw_count: int

    @classmethod
    def of(cls, services: Services, region: RegionRequest, row: RegionRecord) -> _Rerun | None:
        if row.rerun_tiles is None:
            return None
        chunks = row.prior_chunks or 0
        prior = FeatureSet.concat([])
        if chunks:
            packed = services.features.region_results(
                region.image_id, {region.region_id: (row.prior_attempt or "", chunks)})[region.region_id]
            prior = packed.take(np.arange(len(packed)))
        return cls({_tile_key(t) for t in row.rerun_tiles}, prior, list(row.prior_succeeded or []),
                   row.raw_feature_count or 0)


def _tile_key(key: Any) -> str:
    """A tile key (``[[row, col], [w, h]]``, as stored) in one comparable form."""
    return json.dumps([[int(v) for v in pair] for pair in key])


def _run_tiles(services: Services, region: RegionRequest, request: ImageRequest, job: JobRecord,
               abort: threading.Event | None, concurrency: int | None = None,
               rerun: _Rerun | None = None) -> RegionResult:
    """Run the region's tiles through a :class:`~modelrunner.runner.tiles.TileStep` on the thread pool.

    ``request``: the job's request (its ROI, merge, feature properties and georegistration); ``job``: its
    row (the image's stored tile radiometry).

    Everything per feature happens in the tile threads (placing, geolocating, serialising; merging inside
    the tile unless it is NMS on boxes), while the model is being waited on for other tiles; the region
    keeps only compact :class:`FeatureSet` s, merges those left inside their tiles in one NMS, and merges
    them all across the tile seams at the end.
    """
    concurrency = concurrency or services.settings.workers
    limit = services.limit(region)
    limit.set_ceiling(concurrency)
    throttles_before = limit.throttles
    with services.open_image(region.image_url, region.image_read_role) as image:
        plan = plan_image(image.source.info.width, image.source.info.height, region.tile_size,
                          region.tile_overlap, services.settings.region_size, request.roi_wkt, image.geolocator)
        tiles_by_row = _region_tiles(plan, region, rerun)
        step = _tile_step(services, region, request, job, image, plan, abort, limit)
        collector = _TileCollector(services, region, total=sum(len(row) for row in tiles_by_row))
        collector.run(step, _strips(image.source, tiles_by_row), concurrency, abort)
    result, parts = collector.result, collector.parts
    later = merge_tiles([parts[i][1] for i in collector.merge_later], request.distillation)
    for i, merged in zip(collector.merge_later, later, strict=True):
        parts[i] = (parts[i][0], merged)
    if rerun is not None:  # the earlier result is one more part of the region's seam merge
        (top, left), (width, height) = region.region_bounds
        parts.append(((left, top, left + width, top + height), rerun.prior))
        result.succeeded = rerun.succeeded + result.succeeded
        result.total += len(rerun.succeeded)
        result.raw_count += rerun.raw_count
    result.merged = merge_seams(parts, request.distillation, step.relocate, final=False)
    services.metrics.emit("Scheduling", {"ModelName": region.model_name},
                          {"Throttles": (limit.throttles - throttles_before, "Count"), "Limit": (limit.limit, "Count")})
    return result


def _region_tiles(plan: ImagePlan, region: RegionRequest, rerun: _Rerun | None) -> list[list[Tile]]:
    """The region's tiles kept by the plan (ROI), row by row; on a re-run only those that failed before
    (the others' features are in the earlier result)."""
    cols, rows = plan.grid.index_ranges(region.region_bounds)
    tiles_by_row = [plan.kept_tiles(cols, range(iy, iy + 1)) for iy in rows]
    if rerun is not None:
        tiles_by_row = [[t for t in row if _tile_key(t.key) in rerun.tiles] for row in tiles_by_row]
    return [row for row in tiles_by_row if row]


def _tile_step(services: Services, region: RegionRequest, request: ImageRequest, job: JobRecord,
               image: ImageContext, plan: ImagePlan, abort: threading.Event | None,
               limit: AdaptiveLimit) -> TileStep:
    """The region's :class:`TileStep`: its encoding, model, georeferencing (unless the request says
    ``georegistration`` NONE), merge, retry policy and limits."""
    settings = services.settings
    geolocator = image.geolocator if request.georegistration != "NONE" else None
    to_world = geolocator.to_world if geolocator is not None else None
    return TileStep(
        detector=services.detector(region), tile_format=region.tile_format,
        tile_compression=region.tile_compression, radiometry=_tile_radiometry(services, region, job, image.source),
        georef=image.georef if geolocator is not None else None, to_world=to_world, plan=plan,
        option=request.distillation, relocate=relocator(to_world), job_id=region.job_id,
        feature_properties=request.feature_properties, source_metadata=nitf_source_metadata(image.source),
        retry=RetryPolicy(settings.max_tile_attempts, settings.tile_retry_base_seconds,
                          settings.tile_retry_max_seconds),
        max_features=settings.max_features_per_tile, abort=abort, limit=limit,
        metrics=services.metrics, input_format=input_format(region.image_extension))


class _TileCollector:
    """Hands a region's tiles to the thread pool and collects what each produced: its merged features (a
    seam-merge part), its raw features (to the feature table, from a background thread), or its failure
    (recorded with the reason, never hidden, never fatal); the region row's progress once a second."""

    def __init__(self, services: Services, region: RegionRequest, total: int) -> None:
        self.services, self.region = services, region
        self.result = RegionResult(total=total)
        self.parts: list[tuple[Window, FeatureSet]] = []
        self.merge_later: list[int] = []  # the parts still to be merged inside themselves (merge_tiles)
        self._last_progress = time.monotonic()

    def run(self, step: TileStep, works: Iterator[_TileWork], concurrency: int,
            abort: threading.Event | None) -> None:
        """Every tile through ``step``, ``concurrency`` at a time. The next strip is read while the model
        works on this one, and the loop only hands out tiles and collects results."""
        services, region = self.services, self.region

        @services.metrics.timed("TileProcessing", {"ModelName": region.model_name})
        def run(work: _TileWork) -> TileResult:
            bind(tile=work.tile.key)  # this tile's copy of the log context
            return step(work.tile, work.pixels)

        raw_writer: BatchWriter[dict[str, Any]] = BatchWriter(
            services.metrics.timed("FeatureStorage", {})(services.features.put_items), 25)
        tiles = prefetch(works, depth=services.settings.workers * 2)
        try:
            with contextlib.closing(bounded_map(run, tiles, concurrency)) as results:
                for work, future in results:
                    if abort is not None and abort.is_set():
                        raise RegionAborted(f"worker stopping: region {region.region_id} handed back")
                    self._collect(work.tile, future, raw_writer)
        except BaseException:
            tiles.close()
            with contextlib.suppress(Exception):  # the error on the way out is the one to report
                raw_writer.close()
            raise
        raw_writer.close()

    def _collect(self, tile: Tile, future: Future[TileResult], raw_writer: BatchWriter[dict[str, Any]]) -> None:
        services, region, result = self.services, self.region, self.result
        try:
            tile_result = future.result()
        except TileFailed as err:
            log.warning("tile %s of region %s failed: %s", tile.key, region.region_id, err.reason,
                        extra={"tile": tile.key})
            result.fail(tile.key, err.reason)
            return
        except Exception as err:  # an unexpected error in our own tile code: the same, loudly
            log.exception("tile %s of region %s failed", tile.key, region.region_id)
            result.fail(tile.key, f"{type(err).__name__}: {err}")
            return
        services.failpoints.hit("region.tile")
        result.succeeded.append(tile.key)
        result.raw_count += len(tile_result.raw_texts)
        tile_id = f"{tile.ix}:{tile.ix}:{tile.iy}:{tile.iy}"
        raw_writer.add(services.features.raw_items(region.image_id, region.region_id, tile_id,
                                                   tile_result.raw_texts))
        if tile_result.merge_later:
            self.merge_later.append(len(self.parts))
        self.parts.append(((tile.col, tile.row, tile.col + tile.width, tile.row + tile.height), tile_result.merged))
        if time.monotonic() - self._last_progress > PROGRESS_EVERY_S:
            services.regions.progress(region.image_id, region.region_id, result.total, len(result.succeeded),
                                      len(result.failed))
            self._last_progress = time.monotonic()


#: Job-row attribute holding the image's TileRadiometry (JSON), written once by the first region to need it
#: (:attr:`JobRecord.tile_radiometry`).
RADIOMETRY_KEY = "tile_radiometry"


def _tile_radiometry(services: Services, region: RegionRequest, job: JobRecord,
                     source: ImageSource) -> TileRadiometry:
    """The image's band choice and dynamic-range stretch for this tile encoding, the same in every region.

    A stretch is measured once (one decimated read, :mod:`modelrunner.imagery.radiometry`) and stored in
    the job row with ``if_not_exists``: whichever region measures first wins, and every other region,
    on any worker, reads back and uses exactly those numbers. A band choice alone is not stored: it
    follows from the image's metadata.
    """
    if job.tile_radiometry:
        return TileRadiometry.from_json(job.tile_radiometry)
    radiometry = plan_radiometry(source.dataset, region.tile_format, region.tile_compression)
    if radiometry.stretch is None:
        return radiometry
    try:
        stored: Any = services.jobs.set_once(region.image_id, RADIOMETRY_KEY, radiometry.to_json())
    except ClientError as err:
        log.warning("could not store the tile radiometry of %s (%s): using this region's own", region.image_id, err)
        return radiometry
    return TileRadiometry.from_json(stored) if isinstance(stored, str) and stored else radiometry
