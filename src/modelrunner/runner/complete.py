"""Complete a job: exactly one worker loads every region's result, merges across region seams, writes
the outputs (S3 first, then Kinesis) and ends the job SUCCESS / PARTIAL / FAILED once."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import SinkError
from ..features.seams import JobFeatures, PackedFeatureSet, merge_packed
from ..imagery.geolocate import Geolocator
from ..imagery.source import ImageSource, set_read_credentials
from ..metrics import input_format
from ..requests import DistillationOption, ImageRequest, Output, S3Output
from ..sinks import SinkResult, write_kinesis, write_s3
from .region import Relocate, relocator
from .services import Services

log = logging.getLogger(__name__)


def completion_lease(services: Services) -> float:
    """Seconds after which another worker may take over a completion whose worker went silent."""
    return 2.0 * services.settings.visibility_timeout


def maybe_complete(services: Services, image_id: str) -> bool:
    """Complete the job if every region is counted and nobody else is completing it.

    Returns True when the caller may delete its message: the job ended (here or elsewhere) or still has
    regions to go. False means every region is done but another worker holds the completion: keep the
    message, so that it comes back and completes the job should that worker die.
    """
    lease = completion_lease(services)
    if services.jobs.claim_completion(image_id, services.worker_id, lease):
        stop = threading.Event()
        renewer = threading.Thread(target=_renew, args=(services, image_id, lease / 3, stop), daemon=True,
                                   name="completion-lease")
        renewer.start()
        try:
            complete(services, image_id)
        finally:
            stop.set()
            services.features.forget(image_id)
        return True
    job = services.jobs.get(image_id)
    all_done = int(job.get("region_count", 0)) > 0 and job.get("regions_done") == job.get("region_count")
    return "end_time" in job or not all_done


def _renew(services: Services, image_id: str, period: float, stop: threading.Event) -> None:
    """Keep this worker's completion claim fresh: a long completion (a big Kinesis write) is not taken over."""
    while not stop.wait(period):
        try:
            if not services.jobs.renew_claim(image_id, services.worker_id):
                return
        except Exception:  # the next renewal tries again; the lease is three periods long
            log.exception("could not renew the completion claim of %s", image_id)


def complete(services: Services, image_id: str) -> str | None:
    started = time.monotonic()
    job = services.jobs.get(image_id)
    request = ImageRequest.from_dict(json.loads(job["request"]))
    rows = sorted(services.regions.all(image_id), key=lambda r: int(r.get("region_index", 0)))
    finished = {r["region_id"]: (str(r.get("result_attempt", "")), int(r["result_chunks"]))
                for r in rows if int(r.get("result_chunks", 0))}
    results = services.features.region_results(image_id, finished)
    read_s = time.monotonic() - started
    merged = merge_regions(rows, results, request.distillation, _LazyRelocate(services, request, job))
    raw_count = sum(int(r.get("raw_feature_count", 0)) for r in rows)
    select_s = time.monotonic() - started
    log.info("job %s: %d features from %d regions read in %.2f s and merged in %.2f s (%d result bytes)",
             request.job_id, len(merged), len(finished), read_s, select_s - read_s,
             sum(part.nbytes for part in results.values()))

    # Outputs are written side by side (each waits mostly on its service); all are done before the final
    # status is published, so the S3 object exists when SUCCESS is read.
    with ThreadPoolExecutor(max_workers=max(1, len(request.outputs)), thread_name_prefix="sink") as pool:
        written_by = list(pool.map(lambda output: _write_output(services, request.job_id, output, merged),
                                   request.outputs))
    sink_results = [r for r, _ in written_by if r is not None]
    reasons = [reason for _, reason in written_by if reason]
    for result in sink_results:
        reasons.extend(result.reasons)

    success = int(job.get("region_success", 0))
    errors = int(job.get("region_error", 0))
    failed_tiles = sum(int(r.get("failed_tile_count", 0)) for r in rows)
    written = [r for r in sink_results if r.features_written or not r.features_failed]
    if not written or success == 0:
        status = "FAILED"
    elif errors or reasons or any(r.features_failed for r in sink_results):
        status = "PARTIAL"
    else:
        status = "SUCCESS"
    reason = "Completed image processing"
    if status != "SUCCESS":
        details = [f"{errors} of {success + errors} regions had errors ({failed_tiles} tiles failed)"] if errors else []
        reason = f"{reason}: " + "; ".join(details + reasons[:5]) if details or reasons else reason
    fields: dict[str, Any] = {
        "feature_count": len(merged), "raw_feature_count": raw_count, "failed_tile_count": failed_tiles,
        "outputs_written": json.dumps([r.sink for r in sink_results]),
    }
    duration = services.jobs.end(image_id, status, reason, fields)
    if duration is None:
        log.info("job %s was ended by another worker", request.job_id)
        return None
    services.status.image(status, request.job_id, image_id, reason, duration)
    tiles = sum(int(r.get("total_tiles", 0)) for r in rows)
    services.metrics.emit("ImageProcessing", {"ModelName": request.model_name,
                                              "InputFormat": input_format(job.get("image_extension"))},
                          {"Duration": (duration, "Seconds"), "Invocations": (1, "Count"),
                           "Errors": (1 if status != "SUCCESS" else 0, "Count"),
                           "Tiles": (tiles, "Count"), "Features": (len(merged), "Count")})
    services.metrics.emit("FeatureAggregation", {}, {"Duration": (read_s, "Seconds"), "Invocations": (1, "Count")})
    services.metrics.emit("FeatureSelection", {}, {"Duration": (select_s - read_s, "Seconds"),
                                                   "Invocations": (1, "Count")})
    services.metrics.flush()  # the outputs' FeatureDissemination records
    return status


KINESIS_CALLS_IN_FLIGHT = 2
"""PutRecords calls sent at once: one batch is serialised while the other is on the wire. Not more: every
record's partition key is the job id, so all go to one shard, whose throughput limit more calls would only
meet sooner (throttled records are retried with back-off). Records of the two calls may interleave on the
stream; the reference never promised an order."""


def _write_output(services: Services, job_id: str, output: Output,
                  features: JobFeatures) -> tuple[SinkResult | None, str | None]:
    """Write one output; (its result, None), or (None, why nothing could be written)."""
    clients = services.aws.for_role(output.role)
    started = time.monotonic()
    try:
        disseminate = services.metrics.timed("FeatureDissemination", {})
        if isinstance(output, S3Output):
            result = disseminate(write_s3)(clients.s3, output, job_id, features)
        else:
            result = disseminate(write_kinesis)(clients.kinesis, output, job_id, features,
                                                max_in_flight=KINESIS_CALLS_IN_FLIGHT)
        log.info("job %s: %s took %d features in %.2f s (%d failed)", job_id, result.sink, result.features_written,
                 time.monotonic() - started, result.features_failed)
        return result, None
    except SinkError as err:
        return None, str(err)
    except Exception as err:  # an output we could not write is reported, never swallowed
        log.exception("output %s failed", output)
        return None, f"{output.to_dict()['type']} output failed: {err}"


def merge_regions(rows: list[dict[str, Any]], results: dict[str, PackedFeatureSet], option: DistillationOption,
                  relocate: Relocate | None = None) -> JobFeatures:
    """Merge every region's result across the region seams (see :mod:`~modelrunner.features.seams`); the
    features come out as texts streamed from the stored results."""
    parts = []
    for row in rows:
        part = results.get(row["region_id"])
        if part is None:  # a region that failed has no result
            continue
        (top, left), (width, height) = row["region_bounds"]
        parts.append(((float(left), float(top), float(left + width), float(top + height)), part))
    return merge_packed(parts, option, relocate)


class _LazyRelocate:
    """Recomputes world coordinates of features a seam merge changed (NMM, joined masks), opening the
    image only if some feature needs it."""

    def __init__(self, services: Services, request: ImageRequest, job: dict[str, Any]) -> None:
        self.services, self.request, self.job = services, request, job
        self._relocate: Relocate | None = None

    def __call__(self, feature: dict[str, Any]) -> dict[str, Any]:
        if self._relocate is None:
            settings = self.services.settings
            to_world = None
            if self.request.georegistration != "NONE":
                if self.request.image_read_role:
                    set_read_credentials(self.request.image_url,
                                         self.services.aws.assumed_credentials(self.request.image_read_role))
                with ImageSource.open(self.request.image_url) as source:
                    geolocator = Geolocator.for_dataset(source.dataset, settings.elevation_data_location,
                                                        settings.elevation_data_extension)
                to_world = geolocator.to_world if geolocator is not None else None
            self._relocate = relocator(to_world)
        return self._relocate(feature)


def fail_job(services: Services, request: ImageRequest, reason: str) -> None:
    """End a started job FAILED with the reason (once: a second call does nothing)."""
    duration = services.jobs.end(request.image_id, "FAILED", reason)
    if duration is not None:
        services.status.image("FAILED", request.job_id, request.image_id, reason, duration)
