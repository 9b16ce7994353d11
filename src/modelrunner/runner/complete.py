"""Complete a job: exactly one worker loads every region's result, merges across region seams, writes
the outputs (S3 first, then Kinesis) and ends the job SUCCESS / PARTIAL / FAILED once.

The final status is written to the job row first, as pending, and published after; whoever touches the
job next (the redelivered message, another region's message) publishes a status still pending, so a worker
killed between the two, or an SNS outage, never loses it (:func:`publish_final`)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..aws import is_transient
from ..errors import SinkError
from ..features.convert import Relocate, relocator
from ..features.featureset import JobFeatures, PackedFeatureSet
from ..features.seams import merge_packed
from ..imagery.context import ImageContext
from ..metrics import input_format
from ..requests import DistillationOption, ImageRequest, KinesisOutput, Output, S3Output
from ..sinks import SinkResult, write_kinesis, write_s3
from ..sinks.checkpoint import DeliveryCheckpoint, decode_chunks
from ..sinks.stac import JobDescription
from ..state.jobs import JobStore
from ..state.records import JobRecord, RegionRecord
from ..status import Status
from . import rerun
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
            ended = complete(services, image_id) is not None
            if ended:
                services.failpoints.hit("complete.ended")
        except BaseException:
            # Outputs could not be written for now (an AWS error after boto3's retries): the job stays
            # open and the next delivery of a message of this job claims the completion at once.
            stop.set()
            with contextlib.suppress(Exception):
                services.jobs.release_claim(image_id, services.worker_id)
            raise
        finally:
            stop.set()
            services.features.forget(image_id)
        return publish_final(services, services.jobs.get(image_id), claimed=ended)
    job = services.jobs.get(image_id)
    if job is not None and job.ended:
        return publish_final(services, job)
    all_done = job is not None and job.region_count > 0 and job.regions_done == job.region_count
    return not all_done


def publish_final(services: Services, job: JobRecord | None, *, claimed: bool = False) -> bool:
    """Publish the job's final status if it is still pending; True when nothing is pending any more.

    ``claimed``: this worker just ended the job (ending it claims the publication). False means it could not
    be published now (SNS failed, or another worker is publishing it): the caller keeps its message, which
    comes back and tries again. ``job`` None (no row): nothing to publish."""
    if job is None or not job.publication_pending:
        return True
    image_id = job.image_id
    if not claimed and not services.jobs.claim_publish(image_id, services.settings.visibility_timeout):
        current = services.jobs.get(image_id)
        return current is None or current.status_published is not False
    if not services.status.image(job.job_status or Status.FAILED, job.job_id, image_id, job.status_reason or "",
                                 float(job.processing_duration or 0.001)):
        return False
    services.jobs.mark_published(image_id)
    return True


def _renew(services: Services, image_id: str, period: float, stop: threading.Event) -> None:
    """Keep this worker's completion claim fresh: a long completion (a big Kinesis write) is not taken over."""
    while not stop.wait(period):
        try:
            if not services.jobs.renew_claim(image_id, services.worker_id):
                return
        except Exception:  # the next renewal tries again; the lease is three periods long
            log.exception("could not renew the completion claim of %s", image_id)


def complete(services: Services, image_id: str) -> str | None:
    """Merge the job's region results, write its outputs and end it; the image, opened only when a seam
    merge needs world coordinates, stays open while the outputs stream and is closed on every path."""
    started = time.monotonic()
    job = services.jobs.get(image_id)
    if job is None:
        raise LookupError(f"job {image_id} has no row to complete")
    request = job.image_request(columns=False)
    with _LazyRelocate(services, request) as relocate:
        return _complete(services, image_id, job, request, relocate, started)


def _complete(services: Services, image_id: str, job: JobRecord, request: ImageRequest,
              relocate: Relocate, started: float) -> str | None:
    rows = sorted(services.regions.all(image_id), key=lambda r: r.index)
    finished = {r.region_id: (r.result_attempt or "", r.result_chunks) for r in rows if r.result_chunks}
    results = services.features.region_results(image_id, finished)
    read_s = time.monotonic() - started
    merged = merge_regions(rows, results, request.distillation, relocate)
    raw_count = sum(r.raw_feature_count or 0 for r in rows)
    select_s = time.monotonic() - started
    log.info("job %s: %d features from %d regions read in %.2f s and merged in %.2f s (%d result bytes)",
             request.job_id, len(merged), len(finished), read_s, select_s - read_s,
             sum(part.nbytes for part in results.values()))
    services.failpoints.hit("complete.merged")
    services.jobs.record(image_id, "merged", f"{len(merged)} features from {len(finished)} regions "
                                             f"in {select_s:.2f} s")

    # Outputs are written side by side (each waits mostly on its service); all are done before the final
    # status is published, so the S3 object exists when SUCCESS is read.
    published = rerun.published_before(services, image_id, job)  # a re-run sends Kinesis only what is new
    with ThreadPoolExecutor(max_workers=max(1, len(request.outputs)), thread_name_prefix="sink") as pool:
        written_by = list(pool.map(lambda output: _write_output(
            services, request.job_id, output,
            rerun.only_new(merged, published) if published is not None and not isinstance(output, S3Output)
            else merged, request=request, job=job), request.outputs))
    sink_results = [r for r, _ in written_by if r is not None]
    reasons = [reason for _, reason in written_by if reason]
    for result in sink_results:
        reasons.extend(result.reasons)
    for result in sink_results:
        services.jobs.record(image_id, "output written", f"{result.sink}: {result.features_written} features")
    status, reason = job_outcome(rows, sink_results, reasons)
    fields: dict[str, Any] = {
        "feature_count": len(merged), "raw_feature_count": raw_count,
        "failed_tile_count": sum(r.failed_tile_count for r in rows),
        "outputs_written": json.dumps([r.sink for r in sink_results]),
    }
    duration = services.jobs.end(image_id, status, reason, fields)
    if duration is None:
        log.info("job %s was ended by another worker", request.job_id)
        return None
    tiles = sum(r.total_tiles or 0 for r in rows)
    services.metrics.emit("ImageProcessing", {"ModelName": request.model_name,
                                              "InputFormat": input_format(job.image_extension)},
                          {"Duration": (duration, "Seconds"), "Invocations": (1, "Count"),
                           "Errors": (1 if status != Status.SUCCESS else 0, "Count"),
                           "Tiles": (tiles, "Count"), "Features": (len(merged), "Count")})
    services.metrics.emit("FeatureAggregation", {}, {"Duration": (read_s, "Seconds"), "Invocations": (1, "Count")})
    services.metrics.emit("FeatureSelection", {}, {"Duration": (select_s - read_s, "Seconds"),
                                                   "Invocations": (1, "Count")})
    services.metrics.flush()  # the outputs' FeatureDissemination records
    return status


#: Distinct failure causes quoted in a final status reason (the region rows keep more).
MAX_REASONS_IN_STATUS = 5


def job_outcome(rows: list[RegionRecord], sink_results: list[SinkResult], sink_reasons: list[str]
                ) -> tuple[str, str]:
    """The job's final status and reason from its region rows and what the outputs took.

    FAILED when no output could be written or no tile produced anything; PARTIAL when some tiles or
    regions failed or an output lost features (whenever some tiles succeeded, never FAILED); else SUCCESS.
    The reason gives the counts and the underlying causes (the endpoint's answer, GDAL's error)."""
    total = sum(r.total_tiles or 0 for r in rows)
    failed = sum(r.failed_tile_count for r in rows)
    broken = [r for r in rows if r.region_status == Status.FAILED and r.failed_tile_count == 0]
    succeeded = total - failed - sum(r.total_tiles or 0 for r in broken)
    written = [r for r in sink_results if r.features_written or not r.features_failed]
    if not written or succeeded <= 0:
        status = Status.FAILED
    elif failed or broken or sink_reasons or any(r.features_failed for r in sink_results):
        status = Status.PARTIAL
    else:
        status = Status.SUCCESS
    reason = "Completed image processing"
    if status == Status.SUCCESS:
        return status, reason
    causes: list[str] = []
    for row in rows:
        for cause in row.failed_tile_reasons or []:
            if cause not in causes:
                causes.append(str(cause))
        message = row.message
        if any(row is b for b in broken) and message and message not in causes:
            causes.append(message)
    details = []
    if failed:
        details.append(f"{failed} of {total} tiles failed")
    if broken:
        details.append(f"{len(broken)} of {len(rows)} regions could not be processed")
    details.extend(causes[:MAX_REASONS_IN_STATUS])
    if len(causes) > MAX_REASONS_IN_STATUS:
        details.append(f"and {len(causes) - MAX_REASONS_IN_STATUS} more causes on the region rows")
    details.extend(sink_reasons[:MAX_REASONS_IN_STATUS])
    return status, f"{reason}: " + "; ".join(details) if details else reason


def _write_output(services: Services, job_id: str, output: Output, features: Iterable[dict[str, Any] | str], *,
                  request: ImageRequest | None = None,
                  job: JobRecord | None = None) -> tuple[SinkResult | None, str | None]:
    """Write one output; (its result, None), or (None, why nothing could be written).

    ``request`` and ``job`` (the job row read at the start of this completion) describe the job to the
    sinks: the STAC Item and the CRS of an S3 output, the tile grid of Kinesis ``tile`` keys, and the
    Kinesis delivery checkpoint of an earlier, crashed completion (its chunks are not sent again)."""
    clients = services.aws.for_role(output.role)
    started = time.monotonic()
    try:
        disseminate = services.metrics.timed("FeatureDissemination", {})
        if isinstance(output, S3Output):
            description = JobDescription.of(request, job) if request is not None and job is not None else None
            result = disseminate(write_s3)(clients.s3, output, job_id, features, job=description)
            services.failpoints.hit("output.s3")
        else:
            stride = request.tile_size - request.tile_overlap if request is not None else 1024
            result = disseminate(write_kinesis)(
                clients.kinesis, output, job_id, features, tile_stride=stride,
                checkpoint=_checkpoint(services, job, output) if job is not None else None,
                pace=services.settings.kinesis_shard_limits)
        log.info("job %s: %s took %d features in %.2f s (%d failed)", job_id, ", ".join(result.locations or
                 [result.sink]), result.features_written, time.monotonic() - started, result.features_failed)
        return result, None
    except SinkError as err:
        return None, str(err)
    except (ClientError, BotoCoreError) as err:
        if is_transient(err):
            raise  # the completion is retried (its message comes back), never a SUCCESS without this output
        log.exception("output %s failed", output)
        return None, f"{output.to_dict()['type']} output failed: {err}"
    except Exception as err:  # an output we could not write is reported, never swallowed
        log.exception("output %s failed", output)
        return None, f"{output.to_dict()['type']} output failed: {err}"


def _checkpoint(services: Services, job: JobRecord, output: KinesisOutput) -> DeliveryCheckpoint:
    """The output's delivery checkpoint on the job row: the chunks an earlier completion saved, and a save
    that writes to the row while the job is unended. An unreadable saved value is ignored (everything is
    sent again: duplicates, never a loss)."""
    key = f"kinesis:{output.stream}/{output.partition_key}/{output.features_per_record}"
    image_id = job.image_id
    try:
        done = decode_chunks(JobStore.output_checkpoint(job, key))
    except ValueError:
        log.warning("job %s: ignoring an unreadable delivery checkpoint for %s", image_id, key)
        done = frozenset()
    if done:
        log.info("job %s: %s delivered %d chunks in an earlier attempt; not sending them again", image_id, key,
                 len(done))
    return DeliveryCheckpoint(done, lambda delivered: services.jobs.checkpoint_output(image_id, key, delivered))


def merge_regions(rows: list[RegionRecord], results: dict[str, PackedFeatureSet], option: DistillationOption,
                  relocate: Relocate | None = None) -> JobFeatures:
    """Merge every region's result across the region seams (see :mod:`~modelrunner.features.seams`); the
    features come out as texts streamed from the stored results."""
    parts = []
    for row in rows:
        part = results.get(row.region_id)
        if part is None:  # a region that failed has no result
            continue
        (top, left), (width, height) = row.bounds
        parts.append(((float(left), float(top), float(left + width), float(top + height)), part))
    return merge_packed(parts, option, relocate)


class _LazyRelocate:
    """Recomputes world coordinates of features a seam merge changed (NMM, joined masks), opening the
    image only if some feature needs it. Features stream to the outputs after the merge (from several
    sink threads), so the image stays open until :meth:`close` (``with``)."""

    def __init__(self, services: Services, request: ImageRequest) -> None:
        self.services, self.request = services, request
        self._relocate: Relocate | None = None
        self._image: ImageContext | None = None
        self._lock = threading.Lock()

    def __call__(self, feature: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._relocate is None:
                to_world = None
                if self.request.georegistration != "NONE":
                    self._image = self.services.open_image(self.request.image_url, self.request.image_read_role)
                    geolocator = self._image.geolocator
                    to_world = geolocator.to_world if geolocator is not None else None
                self._relocate = relocator(to_world)
            relocate = self._relocate
        return relocate(feature)

    def close(self) -> None:
        """Close the image if it was opened."""
        with self._lock:
            if self._image is not None:
                self._image.close()
                self._image = None

    def __enter__(self) -> _LazyRelocate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fail_job(services: Services, image_id: str, reason: str) -> bool:
    """End a started job FAILED with the reason (once: a second call does nothing); True once its final
    status (this one, or the one another worker wrote first) is published."""
    ended = services.jobs.end(image_id, Status.FAILED, reason) is not None
    return publish_final(services, services.jobs.get(image_id), claimed=ended)
