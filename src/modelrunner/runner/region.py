"""Process one region: read tiles, encode, invoke the model from a thread pool, build features, merge,
store the region's result, and count the region towards its job (exactly once)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from ..errors import ModelRunnerError
from ..features.convert import Feature, finish, geolocate, image_shape, place_features, to_image_features
from ..features.seams import FeatureSet, Window, feature_text, merge_seams, merge_set
from ..imagery.encode import encode_tile
from ..imagery.geolocate import Geolocator, Georeference
from ..imagery.grid import Tile
from ..imagery.radiometry import TileRadiometry, plan_radiometry
from ..imagery.source import ImageSource, nitf_source_metadata
from ..inference.pool import BatchWriter, bounded_map, prefetch
from ..logs import bind
from ..metrics import input_format
from ..requests import DistillationOption, RegionRequest
from .plan import plan_image
from .services import Services

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


def process_region(services: Services, region: RegionRequest, *, job: dict[str, Any],
                   abort: threading.Event | None = None) -> RegionOutcome:
    """Run every tile of the region; the region row ends final and the job counts it, once."""
    started = time.monotonic()
    start_ms = int(time.time() * 1000)
    before = services.regions.start(region, services.worker_id)
    if before.get("region_status") in ("SUCCESS", "PARTIAL", "FAILED"):
        log.info("region %s already finished (%s): not processed again", region.region_id, before["region_status"])
        return RegionOutcome(region.region_id, before["region_status"], counted=False)

    attempt = f"{services.worker_id}@{start_ms}"
    message = None
    raw_count = total = chunks = 0
    failed: list[Any] = []
    succeeded: list[Any] = []
    merged = FeatureSet.concat([])
    try:
        option = DistillationOption.from_stored(_json(job.get("feature_distillation_option"), {}))
        merged, raw_count, total, succeeded, failed = _run_tiles(services, region, job, option, abort)
        chunks = services.features.put_region_result(region.image_id, region.region_id, attempt, merged)
        status = "FAILED" if total == 0 or len(failed) == total else "PARTIAL" if failed else "SUCCESS"
    except RegionAborted:
        raise
    except Exception as err:  # the region fails, is counted, and the job goes on with its other regions
        log.exception("region %s failed", region.region_id)
        message = f"Failed to process image region: {err}"
        status, chunks, merged, raw_count = "FAILED", 0, FeatureSet.concat([]), 0
    counted = services.regions.finish(
        services.jobs, region.image_id, region.region_id, status, start_ms=start_ms, succeeded=succeeded,
        failed=failed, total=total, message=message, feature_count=len(merged),
        extra={"result_chunks": chunks, "result_attempt": attempt, "raw_feature_count": raw_count})
    duration_ms = int((time.monotonic() - started) * 1000)
    if counted:
        services.status.region(status, region.job_id, region.image_id, region.region_id, duration_ms, failed)
        # Throttles: regions are never held back for endpoint capacity here (no self-throttling).
        services.metrics.emit("RegionProcessing", {"ModelName": region.model_name,
                                                   "InputFormat": input_format(region.image_extension)},
                              {"Duration": (duration_ms / 1000, "Seconds"), "Invocations": (1, "Count"),
                               "Errors": (1 if status != "SUCCESS" else 0, "Count"), "Throttles": (0, "Count"),
                               "Tiles": (total, "Count"), "Features": (len(merged), "Count")})
    services.metrics.flush()  # the region's per-tile records
    return RegionOutcome(region.region_id, status, total, failed, len(merged), counted,
                         time.monotonic() - started)


def _json(value: Any, default: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value else default


@dataclass
class _TileResult:
    raw_texts: list[str]  # every feature the model found (GeoJSON), for the feature table
    merged: FeatureSet  # the tile's features after merging inside the tile


def _run_tiles(services: Services, region: RegionRequest, job: dict[str, Any], option: DistillationOption,
               abort: threading.Event | None) -> tuple[FeatureSet, int, int, list[Any], list[Any]]:
    """Run the region's tiles; returns the region's merged features, the raw feature count, the tile count,
    and the succeeded and failed tiles.

    Everything per feature happens in the tile threads (placing, geolocating, serialising, merging inside
    the tile), while the model is being waited on for other tiles; the region keeps only compact
    :class:`FeatureSet` s and merges them across the tile seams at the end.
    """
    settings = services.settings
    if region.image_read_role:
        from ..imagery.source import set_read_credentials

        set_read_credentials(region.image_url, services.aws.assumed_credentials(region.image_read_role))
    with ImageSource.open(region.image_url) as source:
        georef = Georeference.of(source.dataset)
        geolocator = Geolocator.for_dataset(source.dataset, settings.elevation_data_location,
                                            settings.elevation_data_extension)
        plan = plan_image(source.info.width, source.info.height, region.tile_size, region.tile_overlap,
                          settings.region_size, job.get("roi_wkt"), geolocator)
        cols, rows = plan.grid.index_ranges(region.region_bounds)
        tiles_by_row = [plan.kept_tiles(cols, range(iy, iy + 1)) for iy in rows]
        tiles_by_row = [row for row in tiles_by_row if row]
        total = sum(len(row) for row in tiles_by_row)
        detector = services.detector(region)
        job_id = region.job_id
        feature_properties = _json(job.get("feature_properties"), [])
        source_metadata = nitf_source_metadata(source)
        georegister = geolocator is not None and _georegistration(job) != "NONE"
        to_world = geolocator.to_world if georegister and geolocator is not None else None
        relocate = relocator(to_world)
        chip_georef = georef if georegister else None
        radiometry = _tile_radiometry(services, region, job, source)
        soft = option.algorithm_type == "SOFT_NMS"
        metrics = services.metrics
        encode = metrics.timed("TileGeneration", {"InputFormat": input_format(region.image_extension)})(encode_tile)

        @metrics.timed("TileProcessing", {"ModelName": region.model_name})
        def run(work: _TileWork) -> _TileResult:
            tile = work.tile
            bind(tile=tile.key)  # this tile's thread-local copy of the log context
            pixels = work.pixels if radiometry.identity else radiometry.apply(work.pixels)
            payload = encode(pixels, region.tile_format, region.tile_compression,
                                  chip_georef.for_chip(tile.col, tile.row) if chip_georef else None)
            answer = detector(payload)
            refining = time.perf_counter()
            inference_dt = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if plan.roi is None:
                features = place_features(answer, tile.col, tile.row, to_world)
            else:
                features = to_image_features(answer, tile.col, tile.row)
                features = [f for f in features if plan.keeps_feature(image_shape(f["properties"]))]
                geolocate(features, to_world)
            finish(features, job_id=job_id, inference_dt=inference_dt, feature_properties=feature_properties,
                   source_metadata=source_metadata)
            texts = [feature_text(f) for f in features]
            metrics.record("FeatureRefinement", {}, time.perf_counter() - refining)
            tile_set = FeatureSet.of(features, texts)
            if soft:  # decayed once, at completion
                return _TileResult(texts, tile_set)
            return _TileResult(texts, merge_set(tile_set, option, relocate, features))

        parts: list[tuple[Window, FeatureSet]] = []
        raw_count = 0
        succeeded: list[Any] = []
        failed: list[Any] = []
        last_progress = time.monotonic()
        # Raw features go to the feature table from a background thread, and the next strip is read while
        # the model works on this one: the loop below only hands out tiles and collects results.
        raw_writer: BatchWriter[dict[str, Any]] = BatchWriter(
            metrics.timed("FeatureStorage", {})(services.features.put_items), 25)
        tiles = prefetch(_strips(source, tiles_by_row), depth=settings.workers * 2)
        try:
            with contextlib.closing(bounded_map(run, tiles, settings.workers)) as results:
                for work, future in results:
                    if abort is not None and abort.is_set():
                        raise RegionAborted(f"worker stopping: region {region.region_id} handed back")
                    tile = work.tile
                    try:
                        result = future.result()
                    except Exception as err:  # one tile's failure is recorded, never hidden, never fatal
                        log.warning("tile %s of region %s failed: %s", tile.key, region.region_id, err,
                                    extra={"tile": tile.key})
                        failed.append(tile.key)
                        continue
                    succeeded.append(tile.key)
                    raw_count += len(result.raw_texts)
                    tile_id = f"{tile.ix}:{tile.ix}:{tile.iy}:{tile.iy}"
                    raw_writer.add(services.features.raw_items(region.image_id, region.region_id, tile_id,
                                                               result.raw_texts))
                    parts.append(((tile.col, tile.row, tile.col + tile.width, tile.row + tile.height),
                                  result.merged))
                    if time.monotonic() - last_progress > PROGRESS_EVERY_S:
                        services.regions.progress(region.image_id, region.region_id, total, len(succeeded),
                                                  len(failed))
                        last_progress = time.monotonic()
        except BaseException:
            tiles.close()
            with contextlib.suppress(Exception):  # the error on the way out is the one to report
                raw_writer.close()
            raise
        raw_writer.close()
    return merge_seams(parts, option, relocate, final=False), raw_count, total, succeeded, failed


Relocate = Callable[[Feature], Feature]


def relocator(to_world: Callable[[np.ndarray], np.ndarray] | None) -> Relocate:
    """A ``relocate`` for :func:`distill`: fresh world geometry for a feature whose pixels changed."""

    def relocate(feature: Feature) -> Feature:
        geolocate([feature], to_world)
        return feature

    return relocate


def _georegistration(job: dict[str, Any]) -> str:
    """The request's ``georegistration`` (AUTO or NONE), carried in the job row's stored request."""
    return str(_json(job.get("request"), {}).get("georegistration") or "AUTO")


#: Job-row attribute holding the image's TileRadiometry (JSON), written once by the first region to need it.
RADIOMETRY_KEY = "tile_radiometry"


def _tile_radiometry(services: Services, region: RegionRequest, job: dict[str, Any],
                     source: ImageSource) -> TileRadiometry:
    """The image's band choice and dynamic-range stretch for this tile encoding, the same in every region.

    A stretch is measured once (one decimated read, :mod:`modelrunner.imagery.radiometry`) and stored in
    the job row with ``if_not_exists``: whichever region measures first wins, and every other region,
    on any worker, reads back and uses exactly those numbers. A band choice alone is not stored: it
    follows from the image's metadata.
    """
    stored = job.get(RADIOMETRY_KEY)
    if isinstance(stored, str) and stored:
        return TileRadiometry.from_json(stored)
    radiometry = plan_radiometry(source.dataset, region.tile_format, region.tile_compression)
    if radiometry.stretch is None:
        return radiometry
    try:
        stored = services.jobs.set_once(region.image_id, RADIOMETRY_KEY, radiometry.to_json())
    except ClientError as err:
        log.warning("could not store the tile radiometry of %s (%s): using this region's own", region.image_id, err)
        return radiometry
    return TileRadiometry.from_json(stored) if isinstance(stored, str) and stored else radiometry
