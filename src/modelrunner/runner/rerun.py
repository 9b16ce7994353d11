"""Re-running a PARTIAL job's failed tiles: a request re-submitted with the same job id (a new message, not a
redelivery of one that already ran) reopens the job, runs only the tiles that failed after their retries,
merges their features into each region's stored result, and completes the job again: the S3 objects are
written anew with every feature, Kinesis gets only the features the earlier run did not publish, and the job
ends SUCCESS if the tiles now pass.

The job row lists the messages that ran it (``runs``), so a redelivery of any of them is a duplicate, never
a re-run; reopening is a conditional write, so two re-submissions reopen the job once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from ..requests import ImageRequest, RegionRequest, S3Output, result_key
from ..state.records import CHECKPOINT_PREFIX, JobRecord
from ..status import Status
from .services import Services

log = logging.getLogger(__name__)


def wants_rerun(job: JobRecord, message_id: str) -> bool:
    """An ended PARTIAL job with failed tiles, asked again by a message that has not run it before."""
    return (job.job_status == Status.PARTIAL and (job.failed_tile_count or 0) > 0 and bool(message_id)
            and message_id not in (job.runs or []))


def reopen(services: Services, request: ImageRequest, job: JobRecord,
           message_id: str) -> list[RegionRequest]:
    """Reopen the job for its failed tiles; the regions to run again (empty when there is nothing to re-run
    or another delivery reopened it first)."""
    rows = sorted(services.regions.all(request.image_id), key=lambda r: r.index)
    failed = [r for r in rows if r.failed_tile_count > 0]
    if not failed:
        return []
    checkpoints = [CHECKPOINT_PREFIX + key for key in job.delivered]
    published = _published(services, request)
    run = len(job.runs or []) + 1
    if published is not None:  # kept before anything is written again: the re-run's Kinesis sends the rest
        services.features.put_blob(request.image_id, f"published-{run}", b"".join(sorted(published)))
    if not services.jobs.reopen(request.image_id, message_id, len(failed), checkpoints):
        return []
    for row in failed:
        services.regions.reopen(request.image_id, row)
    tiles = sum(r.failed_tile_count for r in failed)
    services.jobs.record(request.image_id, "re-run", f"{tiles} failed tiles in {len(failed)} regions")
    log.info("job %s: re-running %d failed tiles in %d regions", request.job_id, tiles, len(failed))
    extension = job.image_extension or ""
    return [RegionRequest.for_image(request, r.bounds, extension) for r in failed]


def published_before(services: Services, image_id: str, job: JobRecord) -> set[bytes] | None:
    """Digests of the features an earlier run of this job published (kept when the job was reopened), or
    None when the job has not been re-run or they are unknown: then every feature is published again
    (duplicates rather than a loss)."""
    runs = len(job.runs or [])
    if runs < 2:
        return None
    data = services.features.get_blob(image_id, f"published-{runs}")
    if data is None:
        return None
    return {data[i:i + DIGEST_BYTES] for i in range(0, len(data), DIGEST_BYTES)}


def _published(services: Services, request: ImageRequest) -> set[bytes] | None:
    """Digests of the features in the job's S3 GeoJSON (None without an S3 output or when unreadable)."""
    for output in request.outputs:
        if isinstance(output, S3Output):
            s3 = services.aws.for_role(output.role).s3
            try:
                body = s3.get_object(Bucket=output.bucket, Key=result_key(output.prefix, request.job_id))["Body"]
                return {_digest(f) for f in json.loads(body.read())["features"]}
            except Exception:
                log.exception("job %s: cannot read the earlier result; every feature is published again",
                              request.job_id)
                return None
    return None


def only_new(features: Iterable[dict[str, Any] | str], published: set[bytes]) -> Iterator[dict[str, Any] | str]:
    """The features not in ``published`` (the job's earlier result)."""
    for feature in features:
        if _digest(feature) not in published:
            yield feature


#: Bytes of a feature's digest: 16 bytes of SHA-256 of its canonical JSON.
DIGEST_BYTES = 16


def _digest(feature: dict[str, Any] | str) -> bytes:
    parsed = json.loads(feature) if isinstance(feature, str) else feature
    return hashlib.sha256(json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()).digest()[:DIGEST_BYTES]

