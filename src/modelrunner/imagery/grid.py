"""Where tiles and regions are: pure functions from image size, tile size, overlap and region size.

One tile grid covers the whole image. Along each axis it uses the reference's spacing (the requested
overlap grown so that the stride spreads the tiles evenly, ``_grown_overlap``), but its last tile ends
exactly at the image edge, so no pixel is left unprocessed (the reference drops up to n-2 pixels at the
right and bottom). Where the reference's grid already ends at the edge, positions are identical; tile
counts always are. Regions are rectangles of whole tiles of that one grid: a region seam never adds or
moves a tile, and every tile belongs to exactly one region. Along each axis, tiles are shared evenly
between the regions (no thin remainder region at the right or bottom).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Bounds = tuple[tuple[int, int], tuple[int, int]]  # ((row, col), (width, height))


def _grown_overlap(length: int, size: int, overlap: int) -> tuple[int, int]:
    """(tile count, overlap) along one axis: the reference's ``expand`` that spreads tiles evenly."""
    stride = size - overlap
    count = max(1, math.ceil((length - overlap) / stride))
    if count > 1:
        excess = overlap + count * stride - length
        overlap += math.ceil(excess / (count - 1))
    return count, overlap


def axis_positions(length: int, size: int, overlap: int) -> tuple[int, ...]:
    """Tile origins along one axis of ``length`` pixels; the last tile ends at ``length``."""
    if length <= 0:
        return ()
    if length <= size:
        return (0,)
    count, grown = _grown_overlap(length, size, overlap)
    stride = size - grown
    positions = [i * stride for i in range(count)]
    positions[-1] = length - size
    return tuple(positions)


@dataclass(frozen=True)
class Tile:
    """One tile: its grid index and its window in full-image pixels."""

    ix: int
    iy: int
    col: int
    row: int
    width: int
    height: int

    @property
    def bounds(self) -> Bounds:
        return (self.row, self.col), (self.width, self.height)

    @property
    def key(self) -> list[list[int]]:
        """The reference's JSON form of a tile: ``[[row, col], [width, height]]``."""
        return [[self.row, self.col], [self.width, self.height]]


@dataclass(frozen=True)
class TileGrid:
    """The tile grid of one image (or of one processing window of it)."""

    width: int
    height: int
    tile_size: int
    overlap: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @classmethod
    def plan(cls, width: int, height: int, tile_size: int, overlap: int) -> TileGrid:
        if tile_size <= 0 or not 0 <= overlap < tile_size:
            raise ValueError(f"tile size {tile_size} / overlap {overlap}: need 0 <= overlap < size")
        return cls(width, height, tile_size, overlap,
                   axis_positions(width, tile_size, overlap), axis_positions(height, tile_size, overlap))

    @property
    def tile_width(self) -> int:
        return min(self.tile_size, self.width)

    @property
    def tile_height(self) -> int:
        return min(self.tile_size, self.height)

    @property
    def columns(self) -> int:
        return len(self.xs)

    @property
    def rows(self) -> int:
        return len(self.ys)

    def __len__(self) -> int:
        return len(self.xs) * len(self.ys)

    def stride(self) -> tuple[int, int]:
        """The regular stride (x, y): the spacing of all tiles but possibly the last of each axis."""
        sx = self.xs[1] - self.xs[0] if len(self.xs) > 1 else self.tile_width
        sy = self.ys[1] - self.ys[0] if len(self.ys) > 1 else self.tile_height
        return sx, sy

    def tile(self, ix: int, iy: int) -> Tile:
        return Tile(ix, iy, self.xs[ix], self.ys[iy], self.tile_width, self.tile_height)

    def tiles(self, cols: range | None = None, rows: range | None = None) -> Iterator[Tile]:
        """Tiles in row-major order (rows outer), optionally restricted to index ranges."""
        for iy in rows if rows is not None else range(self.rows):
            for ix in cols if cols is not None else range(self.columns):
                yield self.tile(ix, iy)

    def index_ranges(self, bounds: Bounds) -> tuple[range, range]:
        """Column and row index ranges of the tiles lying wholly inside ``bounds``."""
        (row, col), (width, height) = bounds
        c0 = bisect_left(self.xs, col)
        c1 = bisect_right(self.xs, col + width - self.tile_width)
        r0 = bisect_left(self.ys, row)
        r1 = bisect_right(self.ys, row + height - self.tile_height)
        return range(c0, max(c0, c1)), range(r0, max(r0, r1))

    def bounds_of(self, cols: range, rows: range) -> Bounds:
        """The smallest window holding the tiles of the given index ranges."""
        col, row = self.xs[cols.start], self.ys[rows.start]
        width = self.xs[cols.stop - 1] + self.tile_width - col
        height = self.ys[rows.stop - 1] + self.tile_height - row
        return (row, col), (width, height)


@dataclass(frozen=True)
class Region:
    """A rectangle of whole tiles, processed by one worker at a time."""

    index: int
    cols: range
    rows: range
    bounds: Bounds

    @property
    def tile_count(self) -> int:
        return len(self.cols) * len(self.rows)


def tiles_per_region(region_size: int, tile_size: int, stride: int, tile_count: int) -> int:
    """How many tiles fit along one axis of a nominal region, as the reference sizes regions.

    A region of k tiles spans ``(k - 1) * stride + tile_size`` pixels; the reference rounds the nominal
    region size down to whole strides, so k = floor((R - overlap) / stride), at least 1.
    """
    overlap = tile_size - stride
    return max(1, min(tile_count, (region_size - overlap) // stride))


def balanced_spans(tile_count: int, per_region: int) -> list[range]:
    """Split ``tile_count`` tiles of one axis into as few runs of at most ``per_region`` as possible, evenly.

    The run count is the reference's, ``ceil(tile_count / per_region)``, but the tiles are spread so that
    runs differ by at most one tile, the longer ones first: cutting full runs and leaving the remainder to
    the last one made regions one tile wide (a 24,576-pixel axis at ``REGION_SIZE`` 8192 is 64 tiles of
    512/128: 21 + 21 + 21 + 1 before, 16 x 4 now), i.e. a queue message, a DynamoDB transaction and a
    seam merge for a sliver of work. Every run has at least ``ceil(per_region / 2)`` tiles unless the whole
    axis has fewer: with n >= 2 runs, ``tile_count >= (n - 1) * per_region + 1`` gives ``tile_count / n >=
    (per_region + 1) / 2``. So no region spans less than half of a nominal one (``per_region`` tiles:
    ``(per_region - 1) * stride + tile`` pixels, which is ``REGION_SIZE`` rounded down to whole strides).
    """
    if tile_count <= 0:
        return []
    runs = -(-tile_count // max(1, per_region))
    size, longer = divmod(tile_count, runs)
    spans: list[range] = []
    start = 0
    for i in range(runs):
        stop = start + size + (1 if i < longer else 0)
        spans.append(range(start, stop))
        start = stop
    return spans


def plan_regions(grid: TileGrid, region_size: tuple[int, int],
                 keep: Callable[[Tile], bool] | None = None) -> list[Region]:
    """Cut the grid into regions of whole tiles, row-major; drop regions with no tile to keep.

    Regions are nominally ``region_size`` (rounded down to whole tiles, as the reference does); along each
    axis the tiles are shared evenly between the regions (:func:`balanced_spans`), so the region count is
    the reference's but no region is a thin remainder. The tiles themselves (the grid) do not depend on
    the regions.
    """
    if len(grid) == 0:
        return []
    sx, sy = grid.stride()
    kx = tiles_per_region(region_size[0], grid.tile_width, sx, grid.columns)
    ky = tiles_per_region(region_size[1], grid.tile_height, sy, grid.rows)
    regions: list[Region] = []
    for rows in balanced_spans(grid.rows, ky):
        for cols in balanced_spans(grid.columns, kx):
            if keep is not None and not any(keep(t) for t in grid.tiles(cols, rows)):
                continue
            regions.append(Region(len(regions), cols, rows, grid.bounds_of(cols, rows)))
    return regions
