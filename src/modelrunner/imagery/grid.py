"""Where tiles and regions are: pure functions from image size, tile size, overlap and region size.

One tile grid covers the whole image. Along each axis it uses the reference's spacing (the requested
overlap grown so that the stride spreads the tiles evenly, ``_grown_overlap``), but its last tile ends
exactly at the image edge, so no pixel is left unprocessed (the reference drops up to n-2 pixels at the
right and bottom). Where the reference's grid already ends at the edge, positions are identical; tile
counts always are. Regions are rectangles of whole tiles of that one grid: a region seam never adds or
moves a tile, and every tile belongs to exactly one region.
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


def plan_regions(grid: TileGrid, region_size: tuple[int, int],
                 keep: Callable[[Tile], bool] | None = None) -> list[Region]:
    """Cut the grid into regions of whole tiles, row-major; drop regions with no tile to keep."""
    if len(grid) == 0:
        return []
    sx, sy = grid.stride()
    kx = tiles_per_region(region_size[0], grid.tile_width, sx, grid.columns)
    ky = tiles_per_region(region_size[1], grid.tile_height, sy, grid.rows)
    regions: list[Region] = []
    for r0 in range(0, grid.rows, ky):
        for c0 in range(0, grid.columns, kx):
            cols = range(c0, min(c0 + kx, grid.columns))
            rows = range(r0, min(r0 + ky, grid.rows))
            if keep is not None and not any(keep(t) for t in grid.tiles(cols, rows)):
                continue
            regions.append(Region(len(regions), cols, rows, grid.bounds_of(cols, rows)))
    return regions
