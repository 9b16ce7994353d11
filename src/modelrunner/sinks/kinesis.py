"""Write one job's features to a Kinesis data stream, one record per feature, in the reference's format.

Each record's data is ``json.dumps({"type": "FeatureCollection", "features": [feature]})`` as UTF-8 and
its partition key is the job id, so existing consumers keep working. What differs from the reference is
how failures are handled:

* PutRecords batches respect the service limits (at most ``min(500, batchSize)`` records and 5 MiB of
  data + partition keys per call) instead of letting the service reject the whole call;
* a feature too large for a single record (over 1 MiB with its partition key) is not silently dropped:
  it is counted as failed with a reason naming it and its size, and the others are still sent;
* records that fail inside a successful call (throttling, internal failures) are retried, only those and
  in their original order, with exponential back-off and jitter, up to ``max_attempts`` attempts; what
  still fails is reported in the :class:`SinkResult` rather than raised.

Call-level throttling and 5xx answers are retried by botocore itself (standard retry mode, see
:data:`~modelrunner.sinks.base.SINK_CLIENT_CONFIG`); a call that still raises stops the write.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import SinkError
from ..requests import KinesisOutput
from .base import SinkResult, feature_json, feature_label

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * MiB  # data + partition key, summed over the call's records
MAX_RECORD_BYTES = 1 * MiB  # data + partition key of one record
MAX_PARTITION_KEY_CHARS = 256
MAX_BACKOFF_SECONDS = 5.0
WRITABLE_STATES = ("ACTIVE", "UPDATING")
# Per-record error codes that cannot succeed on a retry (the stream's KMS key is unusable): reported at
# once instead of after max_attempts of back-off. Anything else (ProvisionedThroughputExceededException,
# InternalFailure, KMSThrottlingException, codes unknown today) is retried.
NOT_RETRYABLE_CODES = frozenset({
    "AccessDeniedException",
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSNotFoundException",
    "KMSOptInRequired",
})
# A job with many failing batches would otherwise produce one reason per batch and error code.
MAX_REASONS = 100
_MAX_LABELS_PER_REASON = 10


@dataclass(frozen=True)
class _Record:
    label: str
    data: bytes
    size: int  # data + partition key bytes, as Kinesis counts them against its limits


class _CallFailed(Exception):
    """PutRecords raised (after botocore's retries); carries the original error."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
        self.partial: SinkResult | None = None  # what the failing batch delivered before it failed


def write_kinesis(
    kinesis_client: Any,
    output: KinesisOutput,
    job_id: str,
    features: Iterable[dict[str, Any] | str],
    *,
    max_attempts: int = 8,
    base_delay: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
    max_in_flight: int = 1,
) -> SinkResult:
    """Put every feature on ``output``'s stream and report how many got there and why the rest did not.

    ``kinesis_client`` is a boto3 Kinesis client built by the caller (with the output's role assumed if it
    has one). ``max_attempts`` counts every PutRecords attempt for a record, the first included; the wait
    before retry ``n`` is drawn from ``[d/2, d]`` with ``d = min(base_delay * 2**(n-1), 5 s)`` and passed
    to ``sleep`` (injectable so tests do not wait).

    Raises :class:`SinkError` only when nothing could be written: the stream is missing or not writable,
    the job id cannot be a partition key, or a PutRecords call raised before any record was delivered. A
    call that raises later stops the write and the features not delivered are reported as failed.

    ``max_in_flight`` > 1 sends that many PutRecords calls at once (the stream's shards take them in
    parallel; records of different calls may then interleave, which the reference never promised either).
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    stream = output.stream
    _check_stream(kinesis_client, stream)
    if not job_id or len(job_id) > MAX_PARTITION_KEY_CHARS:
        raise SinkError(
            f"job id of {len(job_id)} characters cannot be a Kinesis partition key "
            f"(1 to {MAX_PARTITION_KEY_CHARS} characters) for stream {stream!r}"
        )
    result = SinkResult(sink=f"kinesis:{stream}")
    per_call = max(1, min(MAX_RECORDS_PER_CALL, output.batch_size))
    key_bytes = len(job_id.encode("utf-8"))

    def send(batch: list[_Record]) -> SinkResult:
        part = SinkResult(sink=result.sink)
        try:
            _put_with_retries(kinesis_client, stream, job_id, batch, part,
                              max_attempts=max_attempts, base_delay=base_delay, sleep=sleep)
        except _CallFailed as failure:
            failure.partial = part
            raise
        return part

    def merge(part: SinkResult) -> None:
        result.features_written += part.features_written
        result.features_failed += part.features_failed
        for reason in part.reasons:
            _add_reason(result, reason)

    pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="kinesis") if max_in_flight > 1 else None
    in_flight: deque[Future[SinkResult]] = deque()

    def collect(future: Future[SinkResult]) -> None:
        try:
            merge(future.result())
        except _CallFailed as failure:
            if failure.partial is not None:
                merge(failure.partial)
            raise

    def put(batch: list[_Record]) -> None:
        if pool is None:
            collect(_done(send, batch))
            return
        while len(in_flight) >= max_in_flight:
            collect(in_flight.popleft())
        in_flight.append(pool.submit(send, batch))

    iterator: Iterator[dict[str, Any] | str] = iter(features)
    seen = 0
    batch: list[_Record] = []
    batch_bytes = 0
    try:
        for feature in iterator:
            index = seen
            seen += 1
            record = _encode(feature, index, key_bytes, result)
            if record is None:
                continue
            if batch and (len(batch) >= per_call or batch_bytes + record.size > MAX_BYTES_PER_CALL):
                put(batch)
                batch, batch_bytes = [], 0
            batch.append(record)
            batch_bytes += record.size
        if batch:
            put(batch)
        while in_flight:
            collect(in_flight.popleft())
    except _CallFailed as failure:
        while in_flight:  # what the other calls in flight delivered still counts
            with contextlib.suppress(_CallFailed):
                collect(in_flight.popleft())
        if result.features_written == 0:
            error = failure.error
            raise SinkError(f"writing to Kinesis stream {stream!r} failed: {error}") from error
        seen += sum(1 for _ in iterator)
        not_sent = seen - result.features_written - result.features_failed
        result.features_failed += not_sent
        _add_reason(
            result,
            f"PutRecords to stream {stream!r} failed after {result.features_written} features were "
            f"delivered; {not_sent} features not delivered: {failure.error}",
        )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return result


def _done(fn: Callable[[list[_Record]], SinkResult], batch: list[_Record]) -> Future[SinkResult]:
    """Run ``fn`` now, in this thread, as a finished future (the one-call-at-a-time path)."""
    future: Future[SinkResult] = Future()
    try:
        future.set_result(fn(batch))
    except _CallFailed as failure:
        future.set_exception(failure)
    return future


def _check_stream(kinesis_client: Any, stream: str) -> None:
    """Fail fast, naming the stream, when it is missing or cannot take records.

    DescribeStreamSummary is cheaper and less throttled than DescribeStream; the latter is the fallback
    for roles granted only ``kinesis:DescribeStream`` (what the reference needed).
    """
    try:
        try:
            status = kinesis_client.describe_stream_summary(StreamName=stream)[
                "StreamDescriptionSummary"]["StreamStatus"]
        except ClientError as err:
            if _error_code(err) not in ("AccessDeniedException", "AccessDenied"):
                raise
            status = kinesis_client.describe_stream(StreamName=stream, Limit=1)[
                "StreamDescription"]["StreamStatus"]
    except ClientError as err:
        if _error_code(err) == "ResourceNotFoundException":
            raise SinkError(f"output stream {stream!r} does not exist") from err
        raise SinkError(f"output stream {stream!r} cannot be described: {err}") from err
    except BotoCoreError as err:
        raise SinkError(f"output stream {stream!r} cannot be described: {err}") from err
    if status not in WRITABLE_STATES:
        raise SinkError(f"output stream {stream!r} is {status}, not ACTIVE or UPDATING")


def _encode(feature: dict[str, Any] | str, index: int, key_bytes: int, result: SinkResult) -> _Record | None:
    """The feature as a record, or None after counting it failed (not serialisable, or over 1 MiB)."""
    label = feature_label(feature, index)
    try:
        data = ('{"type": "FeatureCollection", "features": [' + feature_json(feature) + "]}").encode("utf-8")
    except (TypeError, ValueError) as err:
        result.features_failed += 1
        _add_reason(result, f"feature {label} cannot be serialised as JSON: {err}")
        return None
    size = len(data) + key_bytes
    if size > MAX_RECORD_BYTES:
        result.features_failed += 1
        _add_reason(
            result,
            f"feature {label} is {size:,} bytes as a Kinesis record (data + partition key), over the "
            f"{MAX_RECORD_BYTES:,}-byte record limit; not sent",
        )
        return None
    return _Record(label=label, data=data, size=size)


def _put_with_retries(
    kinesis_client: Any,
    stream: str,
    job_id: str,
    records: list[_Record],
    result: SinkResult,
    *,
    max_attempts: int,
    base_delay: float,
    sleep: Callable[[float], None],
) -> None:
    """Send one batch; re-send only the records that failed, in order, until none left or out of attempts."""
    pending = records
    attempt = 1
    while True:
        try:
            response = kinesis_client.put_records(
                StreamName=stream, Records=[{"Data": r.data, "PartitionKey": job_id} for r in pending]
            )
        except (ClientError, BotoCoreError) as err:
            raise _CallFailed(err) from err
        entries = response.get("Records") or []
        retry: list[_Record] = []
        final: dict[str, list[tuple[_Record, str]]] = {}
        for position, record in enumerate(pending):
            entry = entries[position] if position < len(entries) else {"ErrorCode": "MissingResultEntry"}
            code = entry.get("ErrorCode")
            if not code:
                result.features_written += 1
            elif code in NOT_RETRYABLE_CODES or attempt >= max_attempts:
                final.setdefault(code, []).append((record, entry.get("ErrorMessage") or ""))
            else:
                retry.append(record)
        for code, failed in final.items():
            result.features_failed += len(failed)
            labels = ", ".join(r.label for r, _ in failed[:_MAX_LABELS_PER_REASON])
            extra = len(failed) - _MAX_LABELS_PER_REASON
            more = f" and {extra} more" if extra > 0 else ""
            message = f" ({failed[0][1]})" if failed[0][1] else ""
            _add_reason(
                result,
                f"{len(failed)} features not delivered to stream {stream!r} after {attempt} attempts: "
                f"{code}{message}; features {labels}{more}",
            )
        if not retry:
            return
        delay = _backoff(attempt, base_delay)
        logger.info("Kinesis %s: %d of %d records failed, retrying in %.2fs (attempt %d of %d)",
                    stream, len(retry), len(pending), delay, attempt + 1, max_attempts)
        sleep(delay)
        pending = retry
        attempt += 1


def _backoff(attempt: int, base_delay: float) -> float:
    """Exponential back-off with equal jitter: spreads retries of concurrent workers, never zero."""
    ceiling = min(MAX_BACKOFF_SECONDS, base_delay * 2 ** (attempt - 1))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def _add_reason(result: SinkResult, reason: str) -> None:
    """Append a reason, keeping the list bounded; the counts stay exact either way."""
    if len(result.reasons) < MAX_REASONS:
        result.reasons.append(reason)
    elif len(result.reasons) == MAX_REASONS:
        result.reasons.append("further failures not itemised; see features_failed for the count")


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))
