"""A picture of a result: the image, downsampled, with each detection's box drawn on it (PNG via GDAL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from osgeo import gdal

from ..features.convert import image_bounds

COLOUR = (255, 40, 40)


def _stretch(pixels: np.ndarray) -> np.ndarray:
    """Any pixel type to 8 bits for display (2-98 % percentile stretch per band)."""
    if pixels.dtype == np.uint8:
        return pixels
    out = np.empty(pixels.shape, dtype=np.uint8)
    for i, band in enumerate(pixels):
        lo, hi = np.percentile(band, (2, 98))
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    return out


def feature_boxes(features: Sequence[dict[str, Any]]) -> list[tuple[float, float, float, float]]:
    """Pixel boxes (minx, miny, maxx, maxy) of features, from imageGeometry or imageBBox."""
    return [image_bounds(feature.get("properties") or {}) for feature in features]


def render_overlay(image_path: str, features: Sequence[dict[str, Any]], out_path: str, max_side: int = 1600) -> int:
    """Write the overlay PNG; returns the number of boxes drawn."""
    dataset = gdal.Open(image_path)
    width, height = dataset.RasterXSize, dataset.RasterYSize
    scale = min(1.0, max_side / max(width, height))
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    bands = [min(i, dataset.RasterCount) for i in (1, 2, 3)]
    pixels = np.stack([dataset.GetRasterBand(b).ReadAsArray(buf_xsize=out_w, buf_ysize=out_h) for b in bands])
    canvas = _stretch(pixels).copy()
    drawn = 0
    for minx, miny, maxx, maxy in feature_boxes(features):
        x0, x1 = (int(np.clip(round(v * scale), 0, out_w - 1)) for v in (minx, maxx))
        y0, y1 = (int(np.clip(round(v * scale), 0, out_h - 1)) for v in (miny, maxy))
        # Two-pixel outlines (inside the box where it has room), so small detections stay visible.
        for c, value in enumerate(COLOUR):
            canvas[c, y0:min(y0 + 2, y1 + 1), x0:x1 + 1] = value
            canvas[c, max(y1 - 1, y0):y1 + 1, x0:x1 + 1] = value
            canvas[c, y0:y1 + 1, x0:min(x0 + 2, x1 + 1)] = value
            canvas[c, y0:y1 + 1, max(x1 - 1, x0):x1 + 1] = value
        drawn += 1
    mem = gdal.GetDriverByName("MEM").Create("", out_w, out_h, 3, gdal.GDT_Byte)
    for i in range(3):
        mem.GetRasterBand(i + 1).WriteArray(canvas[i])
    gdal.GetDriverByName("PNG").CreateCopy(out_path, mem)
    return drawn
