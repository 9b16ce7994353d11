"""Write one job's features to a Kinesis data stream, by default one record per feature in the reference's
format, paced to what each shard takes.

Each record's data is ``json.dumps({"type": "FeatureCollection", "features": [...]})`` as UTF-8. By default
(``partitionKey`` jobId, ``featuresPerRecord`` 1) a record holds one feature and its partition key is the job
id, exactly as the reference writes them, so existing consumers keep working. Options of the output:

* ``partitionKey`` ``tile``: the key names the tile grid cell of the feature's pixel origin, so a job's
  records spread over the stream's shards while one tile's records stay on one shard, in order;
  ``feature``: every record has its own key (the job id and the record's position), spread evenly;
* ``featuresPerRecord`` N: up to N consecutive features in one record's FeatureCollection (never over the
  1 MiB record limit; with ``tile`` keys a record holds features of one tile only).

How records are sent: Kinesis maps the MD5 of a partition key to one shard (the stream's hash key ranges,
from ListShards). Records are routed to their shard here and each shard gets its own sender, one
PutRecords call at a time: as many calls in flight as shards in use. Each sender keeps a sliding one-second
window of what it sent and waits before a call that would take its shard over 1,000 records/s or
1 MiB/s (data + partition key), so a job alone on a stream is not throttled at all; a call carries at most
``min(500, batchSize)`` records and 1 MiB.

When the shard is shared (other jobs, other writers) records are still throttled: those failing inside a
successful call (ProvisionedThroughputExceeded, InternalFailure, ...) are retried, only those and in order,
with exponential back-off and jitter, *until delivered*, within a time bound that follows from the data
size (:func:`retry_bound`). Only what is still failing past the bound, an error that cannot succeed on a
retry (KMS access), or a feature over 1 MiB on its own is reported failed, each with a reason. Call-level
throttling and 5xx answers are retried by botocore (standard mode, set in ``aws.py``); a
call that still raises stops the write.

A :class:`~.checkpoint.DeliveryCheckpoint` makes a crashed write resumable: the feature stream is cut
into chunks, chunks confirmed delivered are saved as they complete, and chunks an earlier attempt saved
are not sent again.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from ..aws import is_transient
from ..errors import SinkError
from ..requests import KinesisOutput
from .base import SinkResult, feature_json, feature_label
from .checkpoint import SAVE_INTERVAL_SECONDS, DeliveryCheckpoint

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * MiB  # data + partition key, summed over the call's records
MAX_RECORD_BYTES = 1 * MiB  # data + partition key of one record
MAX_PARTITION_KEY_CHARS = 256
SHARD_RECORDS_PER_SECOND = 1000
SHARD_BYTES_PER_SECOND = 1 * MiB
#: Bytes per PutRecords call: the API takes 5 MiB, but all of a call goes to one shard here, which takes
#: 1 MiB a second; a bigger call would be throttled for the most part at once.
CALL_BYTES = min(MAX_BYTES_PER_CALL, SHARD_BYTES_PER_SECOND)
MAX_BACKOFF_SECONDS = 5.0
#: The retry bound of one shard's records: this floor, plus this factor times the time its records need at
#: the shard's full rate (so a shard shared with as many other writers still delivers).
RETRY_FLOOR_SECONDS = 60.0
RETRY_RATE_FACTOR = 10.0
WRITABLE_STATES = ("ACTIVE", "UPDATING")
# Per-record error codes that cannot succeed on a retry (the stream's KMS key is unusable): reported at
# once. Anything else (ProvisionedThroughputExceededException, InternalFailure, KMSThrottlingException,
# codes unknown today) is retried.
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
#: Sender threads at most: calls in flight = shards in use, up to this many (a 500-shard stream does not
#: get 500 threads; each sender then serves several shards, every one still paced to its own limits).
MAX_SENDERS = 32
# Batches waiting per shard sender: the reader stays at most this far ahead of a slow shard.
QUEUED_BATCHES = 2
_HEAD = b'{"type": "FeatureCollection", "features": ['
_SEPARATOR = b", "
_TAIL = b"]}"
_HASH_SPACE = 2**128


def retry_bound(records: int, nbytes: int) -> float:
    """Seconds a shard's sender keeps retrying throttled records: :data:`RETRY_FLOOR_SECONDS` plus
    :data:`RETRY_RATE_FACTOR` times what ``records`` records of ``nbytes`` bytes need at the shard's rate.

    2,000 features of 20 KB need 38 s at 1 MiB/s, so they are retried for up to 7.4 minutes; 100,000 small
    features need 100 s at 1,000 records/s, so up to 17.7 minutes.
    """
    return RETRY_FLOOR_SECONDS + RETRY_RATE_FACTOR * max(records / SHARD_RECORDS_PER_SECOND,
                                                         nbytes / SHARD_BYTES_PER_SECOND)


class _Record(NamedTuple):
    """One record to put (a tuple: a job makes one per feature, and a frozen dataclass costs a microsecond
    more to build)."""

    label: str
    data: bytes
    key: str
    size: int  # data + partition key bytes, as Kinesis counts them against its limits
    features: int  # features the record carries
    chunk: int  # the checkpoint chunk of its features


class _CallFailed(Exception):
    """PutRecords raised (after botocore's retries); carries the original error."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _Progress:
    """What the write has done so far, shared by the reader and the shard senders (under ``lock``)."""

    sink: str
    checkpoint: DeliveryCheckpoint | None
    clock: Callable[[], float]
    lock: threading.Lock = field(default_factory=threading.Lock)
    result: SinkResult = field(init=False)
    # chunk -> (features not yet settled, whether any failed); a chunk with all delivered is complete.
    open_chunks: dict[int, list[int]] = field(default_factory=dict)
    closed_chunks: set[int] = field(default_factory=set)  # the reader has passed their end
    delivered_chunks: set[int] = field(default_factory=set)
    last_save: float = float("-inf")
    failure: _CallFailed | None = None

    def __post_init__(self) -> None:
        self.result = SinkResult(sink=self.sink)

    def expect(self, chunk: int, features: int) -> None:
        with self.lock:
            self.open_chunks.setdefault(chunk, [0, 0])[0] += features

    def close_chunk(self, chunk: int) -> None:
        """The reader will give ``chunk`` no more features."""
        with self.lock:
            self.closed_chunks.add(chunk)
            self._settle(chunk)
        self._maybe_save()

    def delivered(self, records: list[_Record]) -> None:
        with self.lock:
            for record in records:
                self.result.features_written += record.features
                self.open_chunks[record.chunk][0] -= record.features
                self._settle(record.chunk)
        self._maybe_save()

    def failed(self, records: list[_Record], reason: str | None) -> None:
        """Count ``records`` failed (their chunks will never be complete) with one reason for them all."""
        with self.lock:
            for record in records:
                self.result.features_failed += record.features
                entry = self.open_chunks.setdefault(record.chunk, [0, 0])
                entry[0] -= record.features
                entry[1] = 1
            if reason:
                _add_reason(self.result, reason)

    def _settle(self, chunk: int) -> None:
        entry = self.open_chunks.get(chunk)
        if entry is not None and entry[0] == 0 and not entry[1] and chunk in self.closed_chunks:
            self.delivered_chunks.add(chunk)

    def _maybe_save(self, force: bool = False) -> None:
        if self.checkpoint is None:
            return
        now = self.clock()
        with self.lock:
            if not force and now - self.last_save < SAVE_INTERVAL_SECONDS:
                return
            self.last_save = now
            chunks = set(self.delivered_chunks)
        try:
            self.checkpoint.save(chunks)
        except Exception:  # a lost save costs re-sends after a crash, never a record
            logger.exception("could not save the delivery checkpoint of %s", self.sink)

    def save_now(self) -> None:
        self._maybe_save(force=True)


class _Window:
    """A sliding one-second log of what one shard was sent: :meth:`wait_for` returns once a call of
    ``records`` records and ``nbytes`` bytes keeps every one-second window within the shard's limits."""

    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.clock, self.sleep = clock, sleep
        self.sent: deque[tuple[float, int, int]] = deque()
        self.records = 0
        self.nbytes = 0

    def wait_for(self, records: int, nbytes: int) -> None:
        while True:
            now = self.clock()
            while self.sent and self.sent[0][0] <= now - 1.0:
                _, r, b = self.sent.popleft()
                self.records -= r
                self.nbytes -= b
            if (not self.sent or (self.records + records <= SHARD_RECORDS_PER_SECOND
                                  and self.nbytes + nbytes <= SHARD_BYTES_PER_SECOND)):
                self.sent.append((now, records, nbytes))
                self.records += records
                self.nbytes += nbytes
                return
            self.sleep(max(1e-3, self.sent[0][0] + 1.0 - now))


class _ShardMap:
    """Which shard a partition key goes to: the MD5 of the key as a 128-bit number, in the open shards'
    hash key ranges (what Kinesis does)."""

    def __init__(self, ranges: list[tuple[int, str]]) -> None:
        ranges = sorted(ranges)
        self.starts = [start for start, _ in ranges]
        self.ids = [shard for _, shard in ranges]

    def __len__(self) -> int:
        return len(self.ids)

    def shard_of(self, key: str) -> int:
        if len(self.ids) == 1:
            return 0
        value = int.from_bytes(hashlib.md5(key.encode("utf-8"), usedforsecurity=False).digest(), "big")
        return max(0, bisect.bisect_right(self.starts, value) - 1)


def write_kinesis(
    kinesis_client: Any,
    output: KinesisOutput,
    job_id: str,
    features: Iterable[dict[str, Any] | str],
    *,
    max_attempts: int | None = None,
    base_delay: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    tile_stride: int = 1024,
    checkpoint: DeliveryCheckpoint | None = None,
    pace: bool = True,
) -> SinkResult:
    """Put every feature on ``output``'s stream and report how many got there and why the rest did not.

    ``kinesis_client`` is a boto3 Kinesis client built by the caller (with the output's role assumed if it
    has one). Failed records are retried until delivered or past :func:`retry_bound`; ``max_attempts``, when
    given, also caps the PutRecords attempts of a record (the first included). The wait before retry ``n``
    is drawn from ``[d/2, d]`` with ``d = min(base_delay * 2**(n-1), 5 s)``. ``sleep`` and ``clock`` are
    injectable so tests and simulations run on a virtual clock; both are called from the shard senders'
    threads. ``tile_stride`` (tile size minus overlap, pixels) places features in tiles for ``tile`` keys.
    ``checkpoint``: chunks to skip, and where to save the chunks this write delivers. ``pace`` False sends
    without waiting for the shards' windows (for stand-ins such as moto that have no limits).

    Raises :class:`SinkError` only when nothing could be written: the stream is missing or not writable,
    the job id cannot be a partition key, or a PutRecords call raised before any record was delivered. A
    call that raises later stops the write and the features not delivered are reported as failed.
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    stream = output.stream
    open_shards = _check_stream(kinesis_client, stream)
    if not job_id or len(job_id) > MAX_PARTITION_KEY_CHARS:
        raise SinkError(
            f"job id of {len(job_id)} characters cannot be a Kinesis partition key "
            f"(1 to {MAX_PARTITION_KEY_CHARS} characters) for stream {stream!r}"
        )
    shards = _ShardMap([(0, "all")]) if output.partition_key == "jobId" else _shard_map(kinesis_client, stream,
                                                                                        open_shards)
    progress = _Progress(sink=f"kinesis:{stream}", checkpoint=checkpoint, clock=clock)
    settings = _Sending(kinesis_client, stream, progress, max_attempts, base_delay, sleep, clock, pace)
    batches = _Batches(settings, shards, max(1, min(MAX_RECORDS_PER_CALL, output.batch_size)))
    counted = _Counted(features)
    skipped = 0
    try:
        for record in _records(counted, output, job_id, tile_stride, progress,
                               checkpoint.done if checkpoint else frozenset(), checkpoint):
            if progress.failure is not None:
                break
            if record.data == b"":  # a feature of a chunk an earlier attempt delivered
                skipped += record.features
                continue
            batches.add(record)
        batches.flush()
    finally:
        batches.close()
    progress.save_now()
    return _settle(progress, counted, skipped, stream)


class _Counted:
    """The job's features, counting how many were read (what a stopped write never reached still counts)."""

    def __init__(self, features: Iterable[dict[str, Any] | str]) -> None:
        self.features = iter(features)
        self.seen = 0

    def __iter__(self) -> Iterator[dict[str, Any] | str]:
        for feature in self.features:
            self.seen += 1
            yield feature

    def drain(self) -> None:
        for _ in self:
            pass


class _Batches:
    """Records grouped per shard into PutRecords batches (at most ``per_call`` records and
    :data:`CALL_BYTES`), each full batch handed to its shard's sender."""

    def __init__(self, settings: _Sending, shards: _ShardMap, per_call: int) -> None:
        self.settings, self.shards, self.per_call = settings, shards, per_call
        self.senders: dict[int, _ShardSender] = {}
        self.pending: dict[int, list[_Record]] = {}
        self.pending_bytes: dict[int, int] = {}

    def add(self, record: _Record) -> None:
        shard = self.shards.shard_of(record.key)
        batch = self.pending.get(shard)
        if batch is None:
            batch = self.pending[shard] = []
            self.pending_bytes[shard] = 0
        elif len(batch) >= self.per_call or self.pending_bytes[shard] + record.size > CALL_BYTES:
            self._send(shard)
            batch = self.pending[shard] = []
            self.pending_bytes[shard] = 0
        batch.append(record)
        self.pending_bytes[shard] += record.size

    def flush(self) -> None:
        for shard in list(self.pending):
            self._send(shard)

    def close(self) -> None:
        """Let every sender finish what it was given, and wait for them."""
        for sender in self.senders.values():
            sender.finish()
        for sender in self.senders.values():
            sender.join()

    def _send(self, shard: int) -> None:
        batch = self.pending.pop(shard, [])
        self.pending_bytes.pop(shard, None)
        if batch:
            index = shard % MAX_SENDERS
            if index not in self.senders:
                self.senders[index] = _ShardSender(self.settings, index)
            self.senders[index].put(shard, batch)


def _settle(progress: _Progress, counted: _Counted, skipped: int, stream: str) -> SinkResult:
    """The write's result; a call that raised raises again when it is transient (the completion is
    retried, the checkpoint skipping what was delivered), else its features count as not delivered."""
    result = progress.result
    if skipped:
        result.features_written += skipped
        logger.info("Kinesis %s: %d features delivered by an earlier attempt were not sent again", stream, skipped)
    if progress.failure is None:
        return result
    error = progress.failure.error
    if is_transient(error):
        # Throttling or a 5xx after botocore's retries: the completion is retried later and the
        # checkpoint saved above skips what was delivered, so nothing is lost or sent twice.
        raise error
    if result.features_written == 0:
        raise SinkError(f"writing to Kinesis stream {stream!r} failed: {error}") from error
    counted.drain()
    not_sent = max(0, counted.seen - result.features_written - result.features_failed)
    result.features_failed += not_sent
    _add_reason(
        result,
        f"PutRecords to stream {stream!r} failed after {result.features_written} features were "
        f"delivered; {not_sent} features not delivered: {error}",
    )
    return result


@dataclass
class _Sending:
    """What every shard sender shares: the client, the stream, the retry settings and the progress."""

    client: Any
    stream: str
    progress: _Progress
    max_attempts: int | None
    base_delay: float
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    pace: bool = True


@dataclass
class _Shard:
    """One shard as its sender sees it: its one-second window, and what it was given (for the retry bound)."""

    window: _Window
    records: int = 0
    nbytes: int = 0
    started: float | None = None


class _ShardSender:
    """The calls to one shard (or, on streams of more than :data:`MAX_SENDERS` shards, to every
    :data:`MAX_SENDERS`-th shard), one at a time, each paced by its shard's window, in a thread of their own."""

    def __init__(self, settings: _Sending, index: int) -> None:
        self.settings = settings
        self.queue: queue.Queue[tuple[int, list[_Record]] | None] = queue.Queue(maxsize=QUEUED_BATCHES)
        self.shards: dict[int, _Shard] = {}
        self.thread = threading.Thread(target=self._run, name=f"kinesis-shard-{index}", daemon=True)
        self.thread.start()

    def put(self, shard: int, batch: list[_Record]) -> None:
        self.queue.put((shard, batch))

    def finish(self) -> None:
        self.queue.put(None)

    def join(self) -> None:
        self.thread.join()

    def _run(self) -> None:
        settings = self.settings
        while True:
            item = self.queue.get()
            if item is None:
                return
            if settings.progress.failure is not None:  # the write stopped: the reader counts these
                continue
            index, batch = item
            shard = self.shards.setdefault(index, _Shard(_Window(settings.clock, settings.sleep)))
            if shard.started is None:
                shard.started = settings.clock()
            shard.records += len(batch)
            shard.nbytes += sum(r.size for r in batch)
            try:
                self._send(shard, batch)
            except Exception as err:  # never let the reader wait on a dead sender's full queue
                failure = err if isinstance(err, _CallFailed) else _CallFailed(err)
                if not isinstance(err, _CallFailed):
                    logger.exception("Kinesis sender for %s failed", settings.stream)
                with settings.progress.lock:
                    if settings.progress.failure is None:
                        settings.progress.failure = failure

    def _send(self, shard: _Shard, records: list[_Record]) -> None:
        """Send one batch; re-send only the records that failed, in order, until none is left, or the
        shard's retry bound (or ``max_attempts``) is reached."""
        settings, progress = self.settings, self.settings.progress
        pending = records
        attempt = 1
        while True:
            if settings.pace:
                shard.window.wait_for(len(pending), sum(r.size for r in pending))
            try:
                response = settings.client.put_records(
                    StreamName=settings.stream,
                    Records=[{"Data": r.data, "PartitionKey": r.key} for r in pending])
            except (ClientError, BotoCoreError) as err:
                raise _CallFailed(err) from err
            entries = response.get("Records") or []
            if response.get("FailedRecordCount") == 0 and len(entries) == len(pending):  # the usual answer
                progress.delivered(pending)
                return
            retry = self._settle(shard, pending, entries, attempt)
            if not retry:
                return
            delay = _backoff(attempt, settings.base_delay)
            logger.info("Kinesis %s: %d of %d records failed, retrying in %.2fs (attempt %d)",
                        settings.stream, len(retry), len(pending), delay, attempt + 1)
            settings.sleep(delay)
            pending = retry
            attempt += 1

    def _settle(self, shard: _Shard, pending: list[_Record], entries: list[dict[str, Any]],
                attempt: int) -> list[_Record]:
        """Count a call's delivered records, report those failed for good (with the reason per error code),
        and return those to send again."""
        settings, progress = self.settings, self.settings.progress
        retry: list[_Record] = []
        done: list[_Record] = []
        final: dict[str, list[tuple[_Record, str]]] = {}
        bound = retry_bound(shard.records, shard.nbytes)
        out_of_time = shard.started is not None and settings.clock() - shard.started >= bound
        out_of_attempts = settings.max_attempts is not None and attempt >= settings.max_attempts
        for position, record in enumerate(pending):
            entry = entries[position] if position < len(entries) else {"ErrorCode": "MissingResultEntry"}
            code = entry.get("ErrorCode")
            if not code:
                done.append(record)
            elif code in NOT_RETRYABLE_CODES or out_of_time or out_of_attempts:
                final.setdefault(code, []).append((record, entry.get("ErrorMessage") or ""))
            else:
                retry.append(record)
        progress.delivered(done)
        for code, failed in final.items():
            labels = ", ".join(r.label for r, _ in failed[:_MAX_LABELS_PER_REASON])
            extra = len(failed) - _MAX_LABELS_PER_REASON
            more = f" and {extra} more" if extra > 0 else ""
            message = f" ({failed[0][1]})" if failed[0][1] else ""
            within = (f" within {bound:.0f} s (the retry bound for {shard.records:,} records of "
                      f"{shard.nbytes:,} bytes on this shard)" if out_of_time and code not in NOT_RETRYABLE_CODES
                      else "")
            progress.failed(
                [r for r, _ in failed],
                f"{sum(r.features for r, _ in failed)} features not delivered to stream {settings.stream!r} "
                f"after {attempt} attempts{within}: {code}{message}; records {labels}{more}")
        return retry

def _records(features: Iterable[dict[str, Any] | str], output: KinesisOutput, job_id: str, tile_stride: int,
             progress: _Progress, skip: frozenset[int], checkpoint: DeliveryCheckpoint | None) -> Iterator[_Record]:
    """The job's records, in feature order: up to ``featuresPerRecord`` consecutive features of one chunk
    (and one tile, with tile keys) each, at most 1 MiB with the key. A feature that cannot be serialised or
    is over 1 MiB on its own is counted failed with its reason. Features of chunks in ``skip`` come out as
    records with empty data (counted, not sent)."""
    chunk_size = checkpoint.chunk_features if checkpoint is not None else 1 << 62
    encode = _Encoder(output.partition_key, job_id, tile_stride, progress)
    group = _Group(output.features_per_record, by_key=output.partition_key == "tile")
    one_each = output.features_per_record == 1
    chunk, index, chunk_end = 0, -1, chunk_size
    for index, feature in enumerate(features):
        if index >= chunk_end:
            if group.texts:
                yield group.take(progress)
            progress.close_chunk(chunk)
            chunk = index // chunk_size
            chunk_end = (chunk + 1) * chunk_size
        if chunk in skip:
            yield _Record("", b"", "", 0, 1, chunk)
            continue
        encoded = encode(feature, index, chunk)
        if encoded is None:
            continue
        if one_each:  # the default: a record per feature, built here without gathering
            label, text, key = encoded
            yield _record(progress, label, text, key, 1, chunk)
            continue
        if group.texts and group.full_for(encoded[1], encoded[2]):
            yield group.take(progress)
        group.add(encoded[0], encoded[1], encoded[2], chunk)
    if group.texts:
        yield group.take(progress)
    if index >= 0:
        progress.close_chunk(chunk)


@dataclass
class _Encoder:
    """A feature as (label, JSON text, partition key), or None when it cannot be sent: it cannot be
    serialised, or is over the record limit on its own (counted failed, with the reason)."""

    kind: str
    job_id: str
    tile_stride: int
    progress: _Progress

    def __post_init__(self) -> None:
        self.prefix = self.job_id if len(self.job_id) <= 200 else hashlib.sha256(self.job_id.encode()).hexdigest()
        self.frame = len(_HEAD) + len(_TAIL)

    def __call__(self, feature: dict[str, Any] | str, index: int, chunk: int) -> tuple[str, bytes, str] | None:
        label = feature_label(feature, index)
        try:
            text = feature_json(feature).encode("utf-8")
        except (TypeError, ValueError) as err:
            self._failed(label, chunk, f"feature {label} cannot be serialised as JSON: {err}")
            return None
        key = _partition_key(self.kind, self.job_id, self.prefix, text, self.tile_stride, index)
        one_size = self.frame + len(text) + _key_bytes(key)
        if one_size > MAX_RECORD_BYTES:
            self._failed(label, chunk, f"feature {label} is {one_size:,} bytes as a Kinesis record (data + "
                                       f"partition key), over the {MAX_RECORD_BYTES:,}-byte record limit; not sent")
            return None
        return label, text, key

    def _failed(self, label: str, chunk: int, reason: str) -> None:
        self.progress.expect(chunk, 1)
        self.progress.failed([_Record(label, b"", "", 0, 1, chunk)], reason)


@dataclass
class _Group:
    """The features of the record being built: up to ``per_record``, under 1 MiB, one key when ``by_key``."""

    per_record: int
    by_key: bool
    texts: list[bytes] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    body: int = 0
    key: str = ""
    chunk: int = 0

    def full_for(self, text: bytes, key: str) -> bool:
        """Whether ``text`` (with partition key ``key``) must start a record of its own (called with
        features gathered only)."""
        if len(self.texts) >= self.per_record or (self.by_key and key != self.key):
            return True
        grown = (len(_HEAD) + self.body + len(_SEPARATOR) * len(self.texts) + len(text) + len(_TAIL)
                 + len(self.key.encode()))
        return grown > MAX_RECORD_BYTES

    def add(self, label: str, text: bytes, key: str, chunk: int) -> None:
        if not self.texts:
            self.key, self.chunk = key, chunk
        self.texts.append(text)
        self.labels.append(label)
        self.body += len(text)

    def take(self, progress: _Progress) -> _Record:
        """The record of the features gathered (called with some gathered), expected by ``progress``."""
        labels = self.labels
        label = labels[0] if len(labels) == 1 else f"{labels[0]}..{labels[-1]}"
        record = _record(progress, label, _SEPARATOR.join(self.texts), self.key, len(self.texts), self.chunk)
        self.texts, self.labels, self.body = [], [], 0
        return record


def _record(progress: _Progress, label: str, body: bytes, key: str, features: int, chunk: int) -> _Record:
    """The record of ``features`` features (``body``: their texts, separated), expected by ``progress``."""
    progress.expect(chunk, features)
    data = _HEAD + body + _TAIL
    return _Record(label, data, key, len(data) + _key_bytes(key), features, chunk)


def _key_bytes(key: str) -> int:
    """A partition key's length in UTF-8 bytes (what Kinesis counts), without encoding an ASCII key."""
    return len(key) if key.isascii() else len(key.encode("utf-8"))


def _partition_key(kind: str, job_id: str, prefix: str, text: bytes, tile_stride: int, index: int) -> str:
    """The partition key of a record starting with this feature, the ``index``-th of the job (see the
    module docstring); the same on every attempt, the feature order being deterministic."""
    if kind == "jobId":
        return job_id
    if kind == "feature":
        return f"{prefix}/{index}"
    x, y = _pixel_origin(text)
    stride = max(1, tile_stride)
    return f"{prefix}/{int(y // stride)}/{int(x // stride)}"


def _pixel_origin(text: bytes) -> tuple[float, float]:
    """The top-left pixel of a feature's image geometry (``imageBBox``, else ``imageGeometry``);
    (0, 0) for a feature that has neither (then all such features share one key)."""
    try:
        props = orjson.loads(text).get("properties") or {}
        bbox = props.get("imageBBox")
        if isinstance(bbox, list) and len(bbox) == 4:
            return float(bbox[0]), float(bbox[1])
        geometry = props.get("imageGeometry")
        if isinstance(geometry, dict):
            xs, ys = _min_xy(geometry.get("coordinates"))
            if xs != float("inf"):
                return xs, ys
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        pass
    return 0.0, 0.0


def _min_xy(coordinates: Any) -> tuple[float, float]:
    if isinstance(coordinates, list) and coordinates and isinstance(coordinates[0], int | float):
        return float(coordinates[0]), float(coordinates[1])
    low_x = low_y = float("inf")
    for part in coordinates if isinstance(coordinates, list) else []:
        x, y = _min_xy(part)
        low_x, low_y = min(low_x, x), min(low_y, y)
    return low_x, low_y


def _check_stream(kinesis_client: Any, stream: str) -> int:
    """Fail fast, naming the stream, when it is missing or cannot take records; return its open shard
    count (1 when only DescribeStream is allowed).

    DescribeStreamSummary is cheaper and less throttled than DescribeStream; the latter is the fallback
    for roles granted only ``kinesis:DescribeStream`` (what the reference needed).
    """
    shards = 1
    try:
        try:
            summary = kinesis_client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
            status = summary["StreamStatus"]
            shards = int(summary.get("OpenShardCount") or 1)
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
    return shards


def _shard_map(kinesis_client: Any, stream: str, open_shards: int) -> _ShardMap:
    """The open shards' hash key ranges (ListShards, else DescribeStream for roles that only have that).
    Without either, the key space is cut into ``open_shards`` equal ranges, which is how Kinesis creates a
    stream's shards (resharded streams then see some throttling, which the retries absorb)."""
    ranges: list[tuple[int, str]] = []
    try:
        token: str | None = None
        while True:
            answer = (kinesis_client.list_shards(NextToken=token) if token
                      else kinesis_client.list_shards(StreamName=stream))
            ranges += _open_ranges(answer.get("Shards", []))
            token = answer.get("NextToken")
            if not token:
                break
    except (ClientError, BotoCoreError) as err:
        logger.info("ListShards on %s failed (%s); using DescribeStream", stream, err)
        ranges = []
        try:
            start: str | None = None
            while True:
                kwargs = {"StreamName": stream, **({"ExclusiveStartShardId": start} if start else {})}
                description = kinesis_client.describe_stream(**kwargs)["StreamDescription"]
                shards = description.get("Shards", [])
                ranges += _open_ranges(shards)
                if not description.get("HasMoreShards") or not shards:
                    break
                start = shards[-1]["ShardId"]
        except (ClientError, BotoCoreError) as err2:
            logger.info("DescribeStream on %s failed (%s); assuming %d even shards", stream, err2, open_shards)
            ranges = []
    if not ranges:
        step = _HASH_SPACE // max(1, open_shards)
        ranges = [(i * step, f"shard-{i}") for i in range(max(1, open_shards))]
    return _ShardMap(ranges)


def _open_ranges(shards: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(starting hash key, shard id) of the shards still taking records (no ending sequence number)."""
    return [(int(s["HashKeyRange"]["StartingHashKey"]), s["ShardId"]) for s in shards
            if "EndingSequenceNumber" not in s.get("SequenceNumberRange", {})]


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
