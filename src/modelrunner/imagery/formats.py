"""Which tile format / compression pairs exist, and what each one does to the pixels.

The reference accepted every pair of its four formats and four compressions and silently wrote something
else for five of them (GTIFF+J2K was LZW, NITF+LZW was JPEG 2000, PNG and JPEG ignored the compression).
Here a pair either does what it says or is rejected when the request is validated, naming both halves.
The matrix was measured with GDAL 3.6.2 (see ``doc/tile-formats.md`` and ``test/unit/test_imagery_formats.py``).

This module is imported by request validation, so it must stay light: GDAL is only imported to ask
whether a JPEG 2000 writer exists, once, when a J2K pair is first checked.
"""

from __future__ import annotations

import functools

#: Compressions each tile format really writes. Order: the reference's enum order.
SUPPORTED: dict[str, tuple[str, ...]] = {
    "NITF": ("NONE", "JPEG", "J2K"),  # IC=NC, IC=C3, IC=C8
    "JPEG": ("NONE", "JPEG"),  # a JPEG file is always JPEG-compressed: NONE kept for the reference's sake
    "PNG": ("NONE",),  # a PNG is always deflate-compressed (lossless): NONE means "no lossy step"
    "GTIFF": ("NONE", "JPEG", "LZW"),  # COMPRESS=NONE / JPEG / LZW
}

#: Why the remaining pairs are refused (what the reference silently did instead).
_REASONS: dict[tuple[str, str], str] = {
    ("GTIFF", "J2K"): "GeoTIFF has no JPEG 2000 compression (the reference silently wrote LZW)",
    ("NITF", "LZW"): "LZW is not a NITF image compression (the reference silently wrote JPEG 2000, IC=C8)",
    ("PNG", "JPEG"): "a PNG is always deflate-compressed and never JPEG (the reference ignored the compression)",
    ("PNG", "J2K"): "a PNG is always deflate-compressed and never JPEG 2000 (the reference ignored the compression)",
    ("PNG", "LZW"): "a PNG is always deflate-compressed and never LZW (the reference ignored the compression)",
    ("JPEG", "J2K"): "a JPEG file is always JPEG-compressed (the reference ignored the compression)",
    ("JPEG", "LZW"): "a JPEG file is always JPEG-compressed (the reference ignored the compression)",
}

#: Pairs whose tiles are lossy: a model sees approximately, not exactly, the image's pixels.
LOSSY = frozenset({("NITF", "JPEG"), ("NITF", "J2K"), ("JPEG", "NONE"), ("JPEG", "JPEG"), ("GTIFF", "JPEG")})

#: Pairs that hold 8-bit samples only: other pixel types get the image's dynamic-range stretch
#: (:mod:`modelrunner.imagery.radiometry`). JPEG compression is 8-bit here (GDAL's 12-bit JPEG would clip
#: 16-bit data to 0..4095; GeoTIFF refuses 16-bit JPEG outright).
EIGHT_BIT = frozenset({("NITF", "JPEG"), ("JPEG", "NONE"), ("JPEG", "JPEG"), ("GTIFF", "JPEG")})

#: Pairs that hold only 1 or 3 bands (grey or RGB): JPEG files (4 bands would be written as CMYK and read
#: back converted to 3) and NITF IC=C3 (GDAL refuses 2 and 4+ bands). GeoTIFF JPEG takes any band count.
ONE_OR_THREE_BANDS = frozenset({("NITF", "JPEG"), ("JPEG", "NONE"), ("JPEG", "JPEG")})


@functools.cache
def jpeg2000_writer() -> str | None:
    """The short name of a JPEG 2000 driver GDAL can write with (what NITF IC=C8 needs), or None."""
    from osgeo import gdal

    for name in ("JP2OpenJPEG", "JP2KAK", "JP2ECW", "JP2Lura"):
        driver = gdal.GetDriverByName(name)
        if driver is not None and driver.GetMetadataItem("DCAP_CREATECOPY") == "YES":
            return name
    return None


def unsupported_reason(tile_format: str, compression: str) -> str | None:
    """None when the pair can be written, else why not (a sentence naming the format and the compression)."""
    allowed = SUPPORTED.get(tile_format)
    if allowed is None:
        return f"tile format {tile_format} is not one of {', '.join(SUPPORTED)}"
    if compression not in allowed:
        why = _REASONS.get((tile_format, compression), "GDAL cannot write it")
        return (f"tile format {tile_format} cannot be written with compression {compression}: {why}; "
                f"{tile_format} supports {', '.join(allowed)}")
    if compression == "J2K" and jpeg2000_writer() is None:
        return (f"tile format {tile_format} cannot be written with compression {compression}: this GDAL has no "
                "JPEG 2000 writer (JP2OpenJPEG, JP2KAK, JP2ECW or JP2Lura)")
    return None
