"""Small thread helpers for the tile pipeline: a bounded pool (at most ``workers`` tasks run and at most
``backlog`` more wait), a bounded read-ahead, and a background batch writer.

Producers (reading and cutting tiles) block instead of running ahead of the model, so memory stays bounded
by in-flight tiles, not by region or image size.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                backlog: int | None = None) -> Generator[tuple[T, Future[R]], None, None]:
    """Run ``fn`` over ``items`` on ``workers`` threads; yield (item, done future) as each finishes.

    At most ``workers + backlog`` items are in flight. Exceptions stay in the futures, so one failing item
    never stops the others. Items are consumed lazily, in the calling thread.
    """
    limit = workers + (workers * 2 if backlog is None else backlog)
    finished: queue.SimpleQueue[tuple[T, Future[R]]] = queue.SimpleQueue()
    in_flight = 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tile")
    try:
        for item in items:
            while in_flight >= limit:
                yield finished.get()
                in_flight -= 1
            # Each item runs in a copy of the caller's context: log lines carry the job and region.
            future = pool.submit(contextvars.copy_context().run, fn, item)
            future.add_done_callback(lambda f, item=item: finished.put((item, f)))  # type: ignore[misc]
            in_flight += 1
            while True:
                try:
                    pair = finished.get_nowait()
                except queue.Empty:
                    break
                in_flight -= 1
                yield pair
        while in_flight:
            yield finished.get()
            in_flight -= 1
    finally:
        # Closed early (the consumer stopped): drop queued work, wait only for what is running.
        pool.shutdown(wait=True, cancel_futures=True)


_DONE = object()


def prefetch(items: Iterable[T], depth: int) -> Generator[T, None, None]:
    """Iterate ``items`` on a background thread, at most ``depth`` ahead of the consumer.

    The tile reader uses it so that reading the next strip of the image overlaps the model calls for the
    current one, instead of stalling the pool while the main thread waits on the read. The iterable is
    only ever touched by that one thread (a GDAL dataset must not be shared). An exception in it is
    raised to the consumer at the point it happened; closing the iterator early stops the thread.
    """
    ready: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def hand_over(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    source = iter(items)

    def produce() -> None:
        try:
            for item in source:
                if not hand_over(item):
                    return
            hand_over(_DONE)
        except BaseException as err:  # handed to the consumer, raised there
            hand_over(_Failure(err))
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a generator's own clean-up runs now, on its thread
                close()

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class BatchWriter(Generic[T]):
    """Hands items to ``write`` in batches of ``size``, on one background thread, so that the thread
    collecting tile results never waits on a storage call. ``close`` writes what is left, waits, and
    raises the first error a write raised (the items after it are not written)."""

    def __init__(self, write: Callable[[list[T]], None], size: int, max_pending: int = 4) -> None:
        self._write = write
        self._size = size
        self._batch: list[T] = []
        self._queue: queue.Queue[list[T] | None] = queue.Queue(maxsize=max(1, max_pending))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="batch-writer", daemon=True)
        self._thread.start()

    def add(self, items: Iterable[T]) -> None:
        self._raise()
        self._batch.extend(items)
        while len(self._batch) >= self._size:
            self._queue.put(self._batch[:self._size])
            del self._batch[:self._size]

    def close(self) -> None:
        """Write the rest and wait; raises the first write error."""
        if self._batch and self._error is None:
            self._queue.put(self._batch)
        self._batch = []
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(batch)
                except BaseException as err:  # raised by the next add() or by close()
                    self._error = err
