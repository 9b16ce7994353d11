import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelrunner.imagery.grid import TileGrid, axis_positions, balanced_spans, plan_regions, tiles_per_region


def covers(length, positions, size):
    covered = set()
    for p in positions:
        covered.update(range(p, min(p + size, length)))
    return covered == set(range(length))


def test_reference_positions_where_its_grid_ends_at_the_edge():
    grid = TileGrid.plan(3376, 2576, 512, 128)
    assert grid.xs == tuple(range(0, 2865, 358))
    assert grid.ys == tuple(range(0, 2065, 344))
    assert len(grid) == 63


def test_reference_counts_and_last_tile_at_edge():
    grid = TileGrid.plan(12987, 12438, 512, 128)
    assert (grid.columns, grid.rows, len(grid)) == (34, 33, 1122)
    assert grid.xs[:3] == (0, 378, 756) and grid.xs[-1] == 12987 - 512
    assert grid.ys[:3] == (0, 372, 744) and grid.ys[-1] == 12438 - 512


@pytest.mark.parametrize("length", [1, 100, 511, 512, 513, 1000, 1300, 4097, 12987])
@pytest.mark.parametrize(("size", "overlap"), [(512, 128), (512, 0), (256, 255), (1024, 50)])
def test_axis_covers_everything_with_at_least_the_overlap(length, size, overlap):
    positions = axis_positions(length, size, overlap)
    assert positions[0] == 0
    assert covers(length, positions, size)
    assert list(positions) == sorted(set(positions))
    if length >= size:
        assert positions[-1] + size == length
        gaps = [b - a for a, b in zip(positions, positions[1:], strict=False)]
        assert all(size - g >= overlap for g in gaps)


def test_image_smaller_than_a_tile_gives_one_partial_tile():
    grid = TileGrid.plan(300, 200, 512, 128)
    assert [t.bounds for t in grid.tiles()] == [((0, 0), (300, 200))]


def test_regions_match_the_reference_example():
    grid = TileGrid.plan(1300, 1100, 512, 128)
    regions = plan_regions(grid, (1024, 1024))
    # The reference: (0,0)(774,806), (0,524)(774,806), (588,0)(774,512), (588,524)(774,512); our right-hand
    # regions end at the image edge (776 wide) instead of leaving columns 1298-1299 unprocessed.
    assert [r.bounds for r in regions] == [((0, 0), (774, 806)), ((0, 524), (776, 806)),
                                           ((588, 0), (774, 512)), ((588, 524), (776, 512))]
    assert sum(r.tile_count for r in regions) == len(grid) == 12


@pytest.mark.parametrize(("w", "h", "region"), [(12987, 12438, 8192), (3376, 2576, 1024), (5000, 700, 2048),
                                                 (600, 600, 10240)])
def test_every_tile_in_exactly_one_region_and_recoverable_from_bounds(w, h, region):
    grid = TileGrid.plan(w, h, 512, 128)
    regions = plan_regions(grid, (region, region))
    seen = []
    for r in regions:
        cols, rows = grid.index_ranges(r.bounds)
        assert (cols, rows) == (r.cols, r.rows)
        seen.extend(grid.tiles(cols, rows))
    assert sorted((t.ix, t.iy) for t in seen) == sorted((t.ix, t.iy) for t in grid.tiles())


def test_region_keep_filter_drops_empty_regions():
    grid = TileGrid.plan(4096, 4096, 512, 0)
    regions = plan_regions(grid, (1024, 1024), keep=lambda t: t.col < 1024 and t.row < 1024)
    assert [r.bounds for r in regions] == [((0, 0), (1024, 1024))]


def test_invalid_overlap():
    with pytest.raises(ValueError):
        TileGrid.plan(100, 100, 64, 64)


@given(count=st.integers(0, 400), per_region=st.integers(1, 60))
def test_balanced_spans_share_an_axis_evenly(count, per_region):
    spans = balanced_spans(count, per_region)
    assert [i for span in spans for i in span] == list(range(count))  # contiguous, in order, each tile once
    assert len(spans) == math.ceil(count / per_region)  # as many regions as whole nominal ones need
    lengths = [len(span) for span in spans]
    if lengths:
        assert max(lengths) <= per_region
        assert max(lengths) - min(lengths) <= 1
        assert min(lengths) >= min(count, math.ceil(per_region / 2))


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 40000), height=st.integers(1, 40000), tile=st.sampled_from([128, 256, 512, 1024]),
       overlap_share=st.floats(0, 0.9), region=st.integers(128, 20000))
def test_regions_tile_the_grid_and_none_is_thin(width, height, tile, overlap_share, region):
    grid = TileGrid.plan(width, height, tile, int(tile * overlap_share))
    regions = plan_regions(grid, (region, region))
    # Every tile of the grid in exactly one region, each region recoverable from its bounds.
    covered = np.zeros((grid.rows, grid.columns), dtype=np.int32)
    for index, r in enumerate(regions):
        assert r.index == index
        assert grid.index_ranges(r.bounds) == (r.cols, r.rows)
        covered[r.rows.start:r.rows.stop, r.cols.start:r.cols.stop] += 1
    assert (covered == 1).all()
    # The same number of regions as nominal ones would give, each at most nominal and at least half of it,
    # in tiles and in pixels (a nominal region spans (k - 1) strides + a tile).
    sx, sy = grid.stride()
    for axis, count, stride, tile_len, extent in ((0, grid.columns, sx, grid.tile_width, width),
                                                  (1, grid.rows, sy, grid.tile_height, height)):
        k = tiles_per_region(region, tile_len, stride, count)
        spans = sorted({(r.cols, r.rows)[axis] for r in regions}, key=lambda span: span.start)
        assert len(spans) == math.ceil(count / k)
        nominal_px = (k - 1) * stride + tile_len
        for r in regions:
            span = (r.cols, r.rows)[axis]
            pixels = r.bounds[1][axis]
            assert len(span) <= k
            if len(spans) > 1:
                assert len(span) >= math.ceil(k / 2)
                assert pixels >= nominal_px / 2
            else:
                assert pixels == extent


def test_a_24576_square_at_region_size_8192_has_16_even_regions():
    """64 x 64 tiles of 512/128 at 21 tiles a nominal region: 16 x 4 per axis, not 21 + 21 + 21 + 1."""
    grid = TileGrid.plan(24576, 24576, 512, 128)
    regions = plan_regions(grid, (8192, 8192))
    assert (grid.columns, grid.rows, len(regions)) == (64, 64, 16)
    assert {r.tile_count for r in regions} == {256}
    assert [r.cols for r in regions[:4]] == [range(0, 16), range(16, 32), range(32, 48), range(48, 64)]
    assert min(min(r.bounds[1]) for r in regions) >= 8192 // 2
    # The tile positions are the grid's; only their grouping changed.
    assert sum(r.tile_count for r in regions) == len(grid) == 4096
