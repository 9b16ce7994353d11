"""A small bounded thread pool: at most ``workers`` tasks run and at most ``backlog`` more wait.

The producer (reading and cutting tiles) blocks instead of running ahead of the model, so memory stays
bounded by in-flight tiles, not by region or image size.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                backlog: int | None = None) -> Iterator[tuple[T, Future[R]]]:
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
            future = pool.submit(fn, item)
            future.add_done_callback(lambda f, item=item: finished.put((item, f)))
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
