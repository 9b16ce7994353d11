"""The plan of an image: its tile grid, its regions and the region of interest in pixels.

Computed the same way by the worker that starts the image and by every worker that takes one of its
regions, from the image size and the request alone, so region messages only need their bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    roi: shapely.Geometry | None  # region of interest in full-image pixels (x, y)

    def keeps(self, tile: Tile) -> bool:
        if self.roi is None:
            return True
        return bool(self.roi.intersects(shapely.geometry.box(tile.col, tile.row, tile.col + tile.width,
                                                             tile.row + tile.height)))


def roi_in_pixels(roi_wkt: str, geolocator: Geolocator | None) -> shapely.Geometry:
    """The lon/lat region of interest brought into pixel space through the image's sensor model."""
    if geolocator is None:
        raise ImageError("regionOfInterest needs a georeferenced image (no geotransform or RPC found)")
    world = shapely.wkt.loads(roi_wkt)
    # Densify so that long edges follow the sensor model's curvature.
    world = shapely.segmentize(world, max_segment_length=max(1e-6, _extent(world) / 64))

    def to_pixels(coords: np.ndarray) -> np.ndarray:
        return geolocator.to_pixel(coords[:, :2])

    return shapely.make_valid(shapely.transform(world, to_pixels))


def _extent(geometry: shapely.Geometry) -> float:
    minx, miny, maxx, maxy = geometry.bounds
    return max(maxx - minx, maxy - miny)


def plan_image(width: int, height: int, tile_size: int, overlap: int, region_size: tuple[int, int],
               roi_wkt: str | None = None, geolocator: Geolocator | None = None) -> ImagePlan:
    grid = TileGrid.plan(width, height, tile_size, overlap)
    roi = None
    if roi_wkt:
        roi = roi_in_pixels(roi_wkt, geolocator)
        if not roi.intersects(shapely.geometry.box(0, 0, width, height)):
            raise ImageError("regionOfInterest does not intersect the image")
    plan = ImagePlan(grid, [], roi)
    regions = plan_regions(grid, region_size, keep=plan.keeps if roi is not None else None)
    return ImagePlan(grid, regions, roi)
