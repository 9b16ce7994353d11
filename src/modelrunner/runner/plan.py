"""The plan of an image: its tile grid, its regions and the region of interest in pixels.

Computed the same way by the worker that starts the image and by every worker that takes one of its
regions, from the image size and the request alone, so region messages only need their bounds.

Region of interest (``regionOfInterest``, WKT in lon/lat): brought into pixel space through the image's
sensor model (densified first, so long edges follow an RPC's curvature); only tiles that intersect it are
processed, a region none of whose tiles does is not planned at all, and features that do not intersect
it are dropped. An ROI that misses the image is an error (the job ends FAILED with that reason). Tests
are vectorised with a prepared geometry: a 200,000 x 200,000 image has 150,000 tiles of 512.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import shapely.geometry
import shapely.wkt

from ..errors import ImageError
from ..imagery.geolocate import Geolocator
from ..imagery.grid import Region, Tile, TileGrid, plan_regions


@dataclass(frozen=True)
class ImagePlan:
    grid: TileGrid
    regions: list[Region]
    roi: shapely.Geometry | None  # region of interest in full-image pixels (x, y), prepared

    def keeps(self, tile: Tile) -> bool:
        if self.roi is None:
            return True
        return bool(shapely.intersects(self.roi, shapely.box(tile.col, tile.row, tile.col + tile.width,
                                                              tile.row + tile.height)))

    def kept_tiles(self, cols: range, rows: range) -> list[Tile]:
        """The tiles of these index ranges that the ROI keeps, row-major."""
        tiles = list(self.grid.tiles(cols, rows))
        if self.roi is None or not tiles:
            return tiles
        return [t for t, keep in zip(tiles, _intersects(self.roi, tiles), strict=True) if keep]

    def keeps_feature(self, geometry: shapely.Geometry) -> bool:
        """A feature is kept when its pixel geometry intersects the ROI (or there is no ROI)."""
        return self.roi is None or bool(shapely.intersects(self.roi, geometry))


def _intersects(roi: shapely.Geometry, tiles: Sequence[Tile]) -> np.ndarray:
    x0 = np.array([t.col for t in tiles], dtype=np.float64)
    y0 = np.array([t.row for t in tiles], dtype=np.float64)
    x1 = x0 + np.array([t.width for t in tiles])
    y1 = y0 + np.array([t.height for t in tiles])
    return np.asarray(shapely.intersects(roi, shapely.box(x0, y0, x1, y1)), dtype=bool)


def roi_in_pixels(roi_wkt: str, geolocator: Geolocator | None) -> shapely.Geometry:
    """The lon/lat region of interest brought into pixel space through the image's sensor model."""
    if geolocator is None:
        raise ImageError("regionOfInterest needs a georeferenced image (no usable geotransform or RPC found)")
    world = shapely.wkt.loads(roi_wkt)
    # Densify so that long edges follow the sensor model's curvature.
    world = shapely.segmentize(world, max_segment_length=max(1e-6, _extent(world) / 64))

    def to_pixels(coords: np.ndarray) -> np.ndarray:
        return geolocator.to_pixel(coords[:, :2])

    return shapely.make_valid(shapely.transform(world, to_pixels))


def _extent(geometry: shapely.Geometry) -> float:
    minx, miny, maxx, maxy = shapely.bounds(geometry)
    return float(max(maxx - minx, maxy - miny))


def plan_image(width: int, height: int, tile_size: int, overlap: int, region_size: tuple[int, int],
               roi_wkt: str | None = None, geolocator: Geolocator | None = None) -> ImagePlan:
    grid = TileGrid.plan(width, height, tile_size, overlap)
    if not roi_wkt:
        return ImagePlan(grid, plan_regions(grid, region_size), None)
    roi: Any = roi_in_pixels(roi_wkt, geolocator)
    if not shapely.intersects(roi, shapely.box(0, 0, width, height)):
        (minx, miny, maxx, maxy) = (round(v, 1) for v in roi.bounds)
        raise ImageError(f"regionOfInterest does not intersect the image: it lies at pixels x {minx}..{maxx}, "
                         f"y {miny}..{maxy} of a {width} x {height} image")
    shapely.prepare(roi)
    kept: list[Region] = []
    for region in plan_regions(grid, region_size):
        (row, col), (w, h) = region.bounds
        if not shapely.intersects(roi, shapely.box(col, row, col + w, row + h)):
            continue
        if _intersects(roi, list(grid.tiles(region.cols, region.rows))).any():
            kept.append(Region(len(kept), region.cols, region.rows, region.bounds))
    return ImagePlan(grid, kept, roi)
