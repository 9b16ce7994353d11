"""Which parts of a job's output stream were already delivered, so that a replacement worker re-sends only
the rest.

Kinesis is at-least-once: a worker killed while writing a job's records leaves some delivered and the job
unended; the replacement completes the job again. Without a record of what got there it re-sends every
record (4,948 duplicates for one killed demo job). The feature stream of a job is deterministic (the same
regions, merged the same way, in the same order), so it is cut into *chunks* of
:data:`CHUNK_FEATURES` consecutive features; a chunk is delivered when every one of its records was
confirmed by PutRecords, and the set of delivered chunks is saved on the job row as it grows. A completion
attempt skips the chunks an earlier attempt saved: what is re-sent after a crash is at most the chunks that
were in flight, never the whole set.

The sink knows nothing of DynamoDB: it is given the chunks done so far and a function that persists the
new set (:meth:`~modelrunner.state.jobs.JobStore.checkpoint_output` in the worker).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: Features per chunk: small enough that a crash re-sends little (a chunk is one or two PutRecords calls),
#: large enough that the saved set of a 100,000-feature job stays a short string and is saved rarely.
CHUNK_FEATURES = 1000
#: The delivered set is saved at most this often (seconds) while a write runs, and once at its end.
SAVE_INTERVAL_SECONDS = 2.0


def encode_chunks(chunks: Iterable[int]) -> str:
    """``{0, 1, 2, 5, 7, 8}`` -> ``"0-2,5,7-8"``: runs, so that a job's set stays a few characters long
    (chunks mostly complete in order)."""
    ordered = sorted(set(chunks))
    runs: list[str] = []
    start = previous = None
    for chunk in ordered:
        if previous is not None and chunk == previous + 1:
            previous = chunk
            continue
        if start is not None:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = chunk
    if start is not None:
        runs.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(runs)


def decode_chunks(text: str | None) -> frozenset[int]:
    """Inverse of :func:`encode_chunks`; ``None`` or ``""`` is the empty set. Raises ValueError on text
    that is not such a list (a corrupted row must not silently skip features)."""
    chunks: set[int] = set()
    for run in (text or "").split(","):
        if not run:
            continue
        first, _, last = run.partition("-")
        low, high = int(first), int(last or first)
        if low < 0 or high < low:
            raise ValueError(f"not a chunk range: {run!r}")
        chunks.update(range(low, high + 1))
    return frozenset(chunks)


@dataclass
class DeliveryCheckpoint:
    """The chunks an earlier attempt delivered (``done``) and how to save a larger set.

    ``persist`` takes the encoded set and returns False when it could not be saved because the job ended
    meanwhile (another worker finished it); the write goes on either way, since saving is an
    optimisation of a crash's re-send, never a condition of delivery.
    """

    done: frozenset[int]
    persist: Callable[[str], bool]
    chunk_features: int = CHUNK_FEATURES
    _saved: set[int] = field(default_factory=set, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._saved = set(self.done)

    def save(self, delivered: Iterable[int]) -> None:
        """Persist ``done`` plus ``delivered`` if that adds anything to what was last saved."""
        with self._lock:
            union = self._saved | set(delivered)
            if union == self._saved:
                return
            self.persist(encode_chunks(union))
            self._saved = union
