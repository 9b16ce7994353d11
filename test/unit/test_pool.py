"""The tile pipeline's thread helpers: read-ahead and the background batch writer."""

from __future__ import annotations

import threading
import time

import pytest

from modelrunner.inference.pool import BatchWriter, bounded_map, prefetch


def test_prefetch_yields_everything_in_order_and_stays_within_its_depth():
    produced: list[int] = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    got = []
    for item in prefetch(items(), depth=3):
        time.sleep(0.001)
        assert len(produced) - len(got) <= 3 + 2, "never more than depth ahead (+ one in hand, one being put)"
        got.append(item)
    assert got == list(range(50))


def test_prefetch_raises_the_producers_error_where_it_happened():
    def items():
        yield 1
        yield 2
        raise OSError("strip unreadable")

    got = []
    with pytest.raises(OSError, match="strip unreadable"):
        for item in prefetch(items(), depth=4):
            got.append(item)
    assert got == [1, 2]


def test_closing_prefetch_early_stops_its_thread():
    stopped = threading.Event()

    def items():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            stopped.set()

    reader = prefetch(items(), depth=2)
    assert next(reader) == 0
    reader.close()
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
    assert stopped.is_set(), "the source iterator was closed"


def test_prefetch_feeds_a_bounded_map():
    out = sorted(future.result() for _, future in bounded_map(lambda x: x * x, prefetch(range(20), 4), 3))
    assert out == [x * x for x in range(20)]


def test_batch_writer_writes_full_batches_in_the_background_and_the_rest_on_close():
    written: list[list[int]] = []
    writer: BatchWriter[int] = BatchWriter(written.append, 25)
    for start in range(0, 110, 10):
        writer.add(range(start, start + 10))
    writer.close()
    assert [len(b) for b in written] == [25, 25, 25, 25, 10]
    assert [x for b in written for x in b] == list(range(110))


def test_batch_writer_reports_the_first_write_error_and_writes_nothing_after_it():
    written: list[list[int]] = []

    def write(batch: list[int]) -> None:
        if batch[0] == 2:
            raise RuntimeError("table gone")
        written.append(batch)

    writer: BatchWriter[int] = BatchWriter(write, 2, max_pending=1)
    with pytest.raises(RuntimeError, match="table gone"):
        for i in range(0, 40, 2):
            writer.add([i, i + 1])
            time.sleep(0.002)
        writer.close()
    with pytest.raises(RuntimeError, match="table gone"):
        writer.close()
    assert written == [[0, 1]]
