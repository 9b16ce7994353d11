"""The worker's process-level heap settings: start-up objects out of the collector's sight, and young
collections far less often than CPython's default (per-tile JSON trees are acyclic)."""

from __future__ import annotations

import gc

from modelrunner.worker import GC_YOUNG_THRESHOLD, settle_heap


def test_settle_heap_freezes_start_up_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        # Cycles made afterwards are still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
