"""Start an image: job row, STARTED, open the image lazily, plan regions, queue regions 2..n.

Returns the first region, which the caller processes itself. Safe to run twice for the same message:
the job row and region rows are conditional writes, and duplicate region messages find their region
already finished.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from .. import limits
from ..errors import AwsLimitError, ImageError, RequestError
from ..imagery.geolocate import Geolocator
from ..imagery.source import ImageInfo, ImageSource, split_s3_url
from ..requests import ImageRequest, RegionRequest, S3Output
from ..state.records import JobRecord
from ..status import Status
from . import rerun
from .plan import ImagePlan, plan_image
from .services import Services

log = logging.getLogger(__name__)


def _check_s3_object(services: Services, request: ImageRequest) -> None:
    parts = split_s3_url(request.image_url)
    if parts is None:
        return
    s3 = services.aws.for_role(request.image_read_role).s3
    try:
        s3.head_object(Bucket=parts[0], Key=parts[1])
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied", "NoSuchBucket"):
            raise ImageError(f"image {request.image_url} cannot be read from S3 ({code})") from None
        raise  # throttling or a 5xx after boto3's retries: transient, the message comes back


_MISSING = ("404", "NoSuchBucket", "NotFound", "ResourceNotFoundException", "403", "AccessDenied",
            "AccessDeniedException", "Forbidden")


def _check_outputs(services: Services, request: ImageRequest) -> None:
    """Fail a job whose outputs do not exist (or are not ours to write) before any tile is processed,
    instead of after the whole image. Transient errors pass through: the message comes back."""
    for i, output in enumerate(request.outputs):
        clients = services.aws.for_role(output.role)
        try:
            if isinstance(output, S3Output):
                clients.s3.head_bucket(Bucket=output.bucket)
            else:
                summary = clients.kinesis.describe_stream_summary(StreamName=output.stream)
                state = summary["StreamDescriptionSummary"]["StreamStatus"]
                if state not in ("ACTIVE", "UPDATING"):
                    raise RequestError(f"outputs[{i}].stream", f"stream {output.stream} is {state}, not writable")
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code not in _MISSING:
                raise
            what = f"bucket {output.bucket}" if isinstance(output, S3Output) else f"stream {output.stream}"
            field = f"outputs[{i}].{'bucket' if isinstance(output, S3Output) else 'stream'}"
            raise RequestError(field, f"{what} does not exist or cannot be written by this worker ({code})") from None


def _check_size(services: Services, source: ImageSource) -> None:
    """Refuse an image larger than the configured cap before planning thousands of tiles for it."""
    width, height, cap = source.info.width, source.info.height, services.settings.max_image_pixels
    if width * height > cap:
        raise ImageError(f"image {source.url} has {width} x {height} = {width * height:,} pixels, more than this "
                         f"worker accepts (MR_MAX_IMAGE_PIXELS = {cap:,})")


def _extents(geolocator: Geolocator | None, width: int, height: int) -> str | None:
    if geolocator is None:
        return None
    corners = geolocator.to_world([(0, 0), (width, 0), (width, height), (0, height)])
    return json.dumps({"north": float(corners[:, 1].max()), "south": float(corners[:, 1].min()),
                       "east": float(corners[:, 0].max()), "west": float(corners[:, 0].min())})


def start_image(services: Services, request: ImageRequest,
                message_id: str = "") -> tuple[RegionRequest | None, JobRecord | None]:
    """Plan and queue the image; returns (first region to process here, job row), or (None, row) when
    this job was already finished by an earlier delivery of the same message. A new message for a PARTIAL
    job re-runs its failed tiles (``runner/rerun.py``). The row is None only if it vanished meanwhile
    (its TTL: the plan is then written again, as for a new job)."""
    created = services.jobs.create(request, message_id=message_id)
    if not created:
        known = _known_job(services, request, message_id)
        if known is not None:
            return known
        log.info("job %s exists and is unfinished: resuming its plan", request.job_id)
    else:
        services.status.image(Status.STARTED, request.job_id, request.image_id, "Started image request")
        services.jobs.record(request.image_id, "queued", f"image {request.image_url}, model {request.model_name}")
    _check_outputs(services, request)
    _check_s3_object(services, request)
    planned = _plan(services, request)
    fields = {"width": planned.info.width, "height": planned.info.height, "region_count": len(planned.regions),
              "tile_count": planned.tile_total, "extents": planned.extents, "image_extension": planned.info.extension,
              "sensor_model": planned.sensor_model}
    if created:
        fields["job_status"] = Status.IN_PROGRESS
    if not services.jobs.update_unfinished(request.image_id, fields):
        log.info("job %s ended while this duplicate delivery was planning it", request.job_id)
        return None, services.jobs.get(request.image_id)
    if created:
        services.status.image(Status.IN_PROGRESS, request.job_id, request.image_id, "Processing regions")
        services.jobs.record(request.image_id, "started",
                             f"{planned.info.width} x {planned.info.height} pixels, {len(planned.regions)} regions, "
                             f"{planned.tile_total} tiles, sensor model {planned.sensor_model}"
                             f"{' over the DEM' * planned.uses_dem}")
    regions = planned.regions
    for index, (region, tiles) in enumerate(zip(regions, planned.plan.regions, strict=True)):
        services.regions.plan(region, index, tiles.tile_count)
    job = services.jobs.get(request.image_id)
    if job is None or not job.regions_queued:
        # A redelivered image message (its worker died) re-queues only if the first delivery did not get
        # this far; a region queued twice is harmless (its second delivery finds it finished), just wasted.
        _queue_regions(services, regions[1:])
        services.jobs.update_unfinished(request.image_id, {"regions_queued": True})
    return regions[0], job


def _known_job(services: Services, request: ImageRequest,
               message_id: str) -> tuple[RegionRequest | None, JobRecord | None] | None:
    """What to do with a job that has a row already: a duplicate of an ended job (nothing, or a re-run of its
    failed tiles), a re-run whose first delivery died before it queued its regions; None to resume the plan."""
    job = services.jobs.get(request.image_id)
    if job is not None and job.ended:
        if rerun.wants_rerun(job, message_id):
            regions = rerun.reopen(services, request, job, message_id)
            if regions:
                return _queue_rerun(services, request, regions)
        log.info("job %s already ended (%s): duplicate image message", request.job_id, job.job_status)
        return None, job
    if job is not None and len(job.runs or []) > 1:
        pending = [r for r in services.regions.all(request.image_id) if r.region_status == Status.QUEUED and r.is_rerun]
        extension = job.image_extension or ""
        regions = [RegionRequest.for_image(request, r.bounds, extension)
                   for r in sorted(pending, key=lambda r: r.index)]
        if regions and not job.regions_queued:
            return _queue_rerun(services, request, regions)
        return (regions[0] if regions else None), job
    return None


@dataclass(frozen=True)
class _Planned:
    """The image's plan and what the job row and its records say about it."""

    plan: ImagePlan
    info: ImageInfo
    extents: str | None
    sensor_model: str  # the geolocator's kind (RPC, AFFINE, ...) or NONE
    uses_dem: bool
    regions: list[RegionRequest]
    tile_total: int


def _plan(services: Services, request: ImageRequest) -> _Planned:
    """Open the image, check its size and plan its regions (an ImageError when no tile lies in the ROI)."""
    with services.open_image(request.image_url, request.image_read_role) as image:
        source, geolocator = image.source, image.geolocator
        _check_size(services, source)
        plan = plan_image(source.info.width, source.info.height, request.tile_size, request.tile_overlap,
                          services.settings.region_size, request.roi_wkt, geolocator)
        info = source.info
        extents = _extents(geolocator, info.width, info.height)
        sensor_model = "NONE" if geolocator is None else geolocator.kind
        uses_dem = geolocator is not None and geolocator.uses_dem
    if not plan.regions:
        raise ImageError("no tile of the image lies in the regionOfInterest")
    regions = [RegionRequest.for_image(request, r.bounds, info.extension) for r in plan.regions]
    tile_total = sum(r.tile_count if plan.roi is None else sum(1 for t in plan.grid.tiles(r.cols, r.rows)
                                                                 if plan.keeps(t)) for r in plan.regions)
    return _Planned(plan, info, extents, sensor_model, uses_dem, regions, tile_total)


def _queue_rerun(services: Services, request: ImageRequest,
                 regions: list[RegionRequest]) -> tuple[RegionRequest, JobRecord | None]:
    """Queue a re-run's regions but the first, which the caller processes."""
    _queue_regions(services, regions[1:])
    services.jobs.update_unfinished(request.image_id, {"regions_queued": True})
    return regions[0], services.jobs.get(request.image_id)


def _queue_regions(services: Services, regions: list[RegionRequest]) -> None:
    """Send the region messages, up to 10 a call and 256 KiB a call (SendMessageBatch's limits).

    Every body is checked against SQS's size limit before the first is sent (a region message carries the
    request's parameters: a request near the limit makes region messages over it), so a job either queues
    all its regions or fails with the reason, AwsLimitError; so does a message SQS refuses as it is.
    """
    queue = services.settings.region_queue
    bodies = [r.to_json() for r in regions]
    sizes = [limits.utf8_bytes(body) for body in bodies]
    for region, size in zip(regions, sizes, strict=True):
        limits.check_size(f"region message for {region.region_id}", size, limits.SQS_MESSAGE_BYTES, f"queue {queue}")
    batch: list[str] = []
    batch_bytes = 0
    for body, size in zip(bodies, sizes, strict=True):
        if batch and (len(batch) == limits.SQS_BATCH_ENTRIES or batch_bytes + size > limits.SQS_MESSAGE_BYTES):
            _send_batch(services.aws.sqs, queue, batch)
            batch, batch_bytes = [], 0
        batch.append(body)
        batch_bytes += size
    if batch:
        _send_batch(services.aws.sqs, queue, batch)


def _send_batch(sqs: Any, queue: str, bodies: list[str]) -> None:
    """One SendMessageBatch; an entry that failed by the sender's fault is refused for good (AwsLimitError),
    the others are sent again once each, alone, loudly."""
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
    answer = _sqs_call(sqs.send_message_batch, queue, Entries=entries)
    for failure in sorted(answer.get("Failed", []), key=lambda f: int(f["Id"])):
        if failure.get("SenderFault") and limits.is_permanent("sqs", str(failure.get("Code", ""))):
            raise AwsLimitError(f"sqs refused a region message on queue {queue}: {failure.get('Code')}: "
                                f"{failure.get('Message', '')}")
        log.warning("region message %s not sent (%s): sending it again", failure["Id"], failure.get("Code"))
        _sqs_call(sqs.send_message, queue, MessageBody=bodies[int(failure["Id"])])


def _sqs_call(call: Any, queue: str, **kwargs: Any) -> Any:
    """An SQS call on ``queue`` whose refusal is permanent (AwsLimitError); other errors as they are."""
    try:
        return call(QueueUrl=queue, **kwargs)
    except ClientError as err:
        refusal = limits.refused(err, "sqs", f"queue {queue}")
        if refusal is not None:
            raise refusal from err
        raise
