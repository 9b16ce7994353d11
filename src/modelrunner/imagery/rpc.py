"""An image's RPC model re-expressed for one NITF chip, exactly representable in the RPC00B TRE.

A chip's RPC is the image's RPC with its pixel origin moved to the chip's corner. In a GeoTIFF that is a
change of LINE_OFF / SAMP_OFF (stored as doubles). RPC00B cannot always hold that: its offsets are whole,
non-negative pixels (a chip past the image's LINE_OFF would need a negative one, and GDAL then writes no
RPC00B at all, silently), and its ground offsets and scales have 4 decimals (an RPC read from a GeoTIFF
would be moved by up to 5e-5 degrees, about 5 m, by GDAL's rounding). So the chip model is rebuilt:

* new offsets and scales are picked that RPC00B holds exactly (pixel offsets at the chip centre, the
  image's scales rounded to the field widths, ground offsets rounded to 4 decimals);
* the polynomials are rewritten for them: the ground normalisation change is an affine substitution
  ``x = a x' + b`` of each of longitude, latitude and height, expanded exactly over the 20 cubic terms,
  and the pixel normalisation change is ``num' = alpha num + beta den``;
* coefficients are rounded to RPC00B's 7 significant digits (a relative change of at most 5e-8, i.e.
  about 1e-4 pixel on a 2048-pixel scale).

This is algebra on GDAL's RPC metadata; evaluating the model stays GDAL's job (tests compare GDAL's RPC
transformer on the chip with GDAL's transformer on the image).

This module also owns the RPC00B field rules (widths, signs, decimals, limits) and the TRE formatter
:func:`format_rpc00b`: the synthetic scene generator (:mod:`modelrunner.local.scene`) builds its models
in the same precision and writes its TRE with it, so the rules live in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import comb

import numpy as np

# Exponents of (longitude L, latitude P, height H) of the 20 RPC00B terms, in GDAL's order.
TERMS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (2, 0, 0), (0, 2, 0), (0, 0, 2),
    (1, 1, 1), (3, 0, 0), (1, 2, 0), (1, 0, 2), (2, 1, 0), (0, 3, 0), (0, 1, 2), (2, 0, 1), (0, 2, 1), (0, 0, 3),
)
_INDEX = {exponents: i for i, exponents in enumerate(TERMS)}

# RPC00B field rules (STDI-0002 Appendix E). Pixel offsets and scales are whole pixels, LINE_* in 6
# digits and SAMP_* in 5; HEIGHT_* whole metres, signed, 4 digits; LAT / LONG offsets and scales signed
# with 4 decimals; ERR_* unsigned with 2 decimals; coefficients ``+d.ddddddE+d`` (7 significant digits).
LINE_LIMIT = 999999
SAMP_LIMIT = 99999
HEIGHT_LIMIT = 9999
GROUND_DECIMALS = 4
ERR_LIMIT = 9999.99
TRE_LENGTH = 1041
# (field, format, width) of the 13 fixed fields after SUCCESS, in TRE order; "d" formats take whole numbers.
_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("ERR_BIAS", "07.2f", 7), ("ERR_RAND", "07.2f", 7),
    ("LINE_OFF", "06d", 6), ("SAMP_OFF", "05d", 5),
    ("LAT_OFF", "+08.4f", 8), ("LONG_OFF", "+09.4f", 9), ("HEIGHT_OFF", "+05d", 5),
    ("LINE_SCALE", "06d", 6), ("SAMP_SCALE", "05d", 5),
    ("LAT_SCALE", "+08.4f", 8), ("LONG_SCALE", "+09.4f", 9), ("HEIGHT_SCALE", "+05d", 5),
)
_COEFFICIENT_KEYS = ("LINE_NUM_COEFF", "LINE_DEN_COEFF", "SAMP_NUM_COEFF", "SAMP_DEN_COEFF")


def _coefficients(rpc: Mapping[str, str], key: str) -> np.ndarray:
    values = np.array([float(v) for v in rpc[key].split()], dtype=np.float64)
    if values.size != 20:
        raise ValueError(f"RPC {key} needs 20 coefficients, got {values.size}")
    return values


def substitute(coefficients: np.ndarray, scale: tuple[float, float, float],
               shift: tuple[float, float, float]) -> np.ndarray:
    """Coefficients of the same cubic after ``L = a0 L' + b0``, ``P = a1 P' + b1``, ``H = a2 H' + b2``."""
    out = np.zeros(20, dtype=np.float64)
    for term, exponents in enumerate(TERMS):
        value = coefficients[term]
        if value == 0.0:
            continue
        e0, e1, e2 = exponents
        for k0 in range(e0 + 1):
            f0 = comb(e0, k0) * scale[0] ** k0 * shift[0] ** (e0 - k0)
            for k1 in range(e1 + 1):
                f1 = comb(e1, k1) * scale[1] ** k1 * shift[1] ** (e1 - k1)
                for k2 in range(e2 + 1):
                    f2 = comb(e2, k2) * scale[2] ** k2 * shift[2] ** (e2 - k2)
                    out[_INDEX[(k0, k1, k2)]] += value * f0 * f1 * f2
    return out


def rpc00b_number(value: float) -> float:
    """The nearest value an RPC00B coefficient field (``+d.ddddddE+d``) holds; under 1e-9 it is 0."""
    if abs(value) < 1e-9:
        return 0.0
    rounded = float(f"{value:.6e}")
    if abs(rounded) >= 1e10:
        raise ValueError(f"RPC coefficient {value} does not fit RPC00B")
    return rounded


def _coefficient_field(value: float) -> str:
    """``+d.ddddddE+d``: the 12-character RPC00B coefficient field."""
    if rpc00b_number(value) == 0.0:
        return "+0.000000E+0"
    mantissa, exponent = f"{value:+.6E}".split("E")
    return f"{mantissa}E{int(exponent):+d}"


def _fixed_field(name: str, value: float, fmt: str, width: int) -> str:
    text = format(round(value) if fmt.endswith("d") else value, fmt)
    if len(text) != width:
        raise ValueError(f"RPC field {name}={value} does not fit RPC00B ({width} characters)")
    return text


def format_rpc00b(rpc: Mapping[str, str]) -> str:
    """Format GDAL RPC metadata as the 1041-character RPC00B TRE body (values rounded to its fields).

    Needed where GDAL does not write the TRE itself: NITF Create() mode ignores the RPC metadata domain
    (only CreateCopy writes RPC00B from it). Values that do not fit their field raise ``ValueError``.
    """
    parts = ["1"]  # SUCCESS
    for name, fmt, width in _FIELDS:
        value = float(rpc[name])
        parts.append(_fixed_field(name, max(value, 0.0) if name.startswith("ERR_") else value, fmt, width))
    for key in _COEFFICIENT_KEYS:
        values = _coefficients(rpc, key)
        parts.extend(_coefficient_field(float(v)) for v in values)
    tre = "".join(parts)
    if len(tre) != TRE_LENGTH:
        raise ValueError(f"RPC00B TRE of {len(tre)} characters, expected {TRE_LENGTH}")
    return tre


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


def chip_rpc00b(rpc: Mapping[str, str], col: int, row: int, width: int, height: int) -> dict[str, str]:
    """The RPC (GDAL metadata form) of the chip at (col, row), size width x height, in RPC00B precision."""
    num = {"LINE": _coefficients(rpc, "LINE_NUM_COEFF"), "SAMP": _coefficients(rpc, "SAMP_NUM_COEFF")}
    den = {"LINE": _coefficients(rpc, "LINE_DEN_COEFF"), "SAMP": _coefficients(rpc, "SAMP_DEN_COEFF")}

    def ground(name: str, decimals: int, limit: float, minimum: float) -> tuple[float, float, float, float]:
        offset, scale = float(rpc[f"{name}_OFF"]), float(rpc[f"{name}_SCALE"])
        new_offset = _clamp(round(offset, decimals), -limit, limit)
        new_scale = max(round(scale, decimals), minimum)
        return new_offset, new_scale, new_scale / scale, (new_offset - offset) / scale

    lon_off, lon_scale, a_lon, b_lon = ground("LONG", GROUND_DECIMALS, 180.0, 10.0 ** -GROUND_DECIMALS)
    lat_off, lat_scale, a_lat, b_lat = ground("LAT", GROUND_DECIMALS, 90.0, 10.0 ** -GROUND_DECIMALS)
    h_off, h_scale, a_h, b_h = ground("HEIGHT", 0, float(HEIGHT_LIMIT), 1.0)
    scale, shift = (a_lon, a_lat, a_h), (b_lon, b_lat, b_h)

    out: dict[str, str] = {
        "ERR_BIAS": repr(_clamp(float(rpc.get("ERR_BIAS", 0.0)), 0.0, ERR_LIMIT)),
        "ERR_RAND": repr(_clamp(float(rpc.get("ERR_RAND", 0.0)), 0.0, ERR_LIMIT)),
        "LAT_OFF": repr(lat_off), "LONG_OFF": repr(lon_off), "HEIGHT_OFF": repr(h_off),
        "LAT_SCALE": repr(lat_scale), "LONG_SCALE": repr(lon_scale), "HEIGHT_SCALE": repr(h_scale),
    }
    for axis, origin, size, limit in (("LINE", row, height, LINE_LIMIT), ("SAMP", col, width, SAMP_LIMIT)):
        offset, pixel_scale = float(rpc[f"{axis}_OFF"]), float(rpc[f"{axis}_SCALE"])
        new_offset = size // 2
        new_scale = _clamp(round(pixel_scale), 1, limit)
        alpha = pixel_scale / new_scale
        beta = (offset - origin - new_offset) / new_scale
        numerator = substitute(alpha * num[axis] + beta * den[axis], scale, shift)
        denominator = substitute(den[axis], scale, shift)
        if denominator[0] != 0.0:  # keep the conventional den[0] = 1 (the ratio is unchanged)
            numerator, denominator = numerator / denominator[0], denominator / denominator[0]
        out[f"{axis}_OFF"] = str(new_offset)
        out[f"{axis}_SCALE"] = str(int(new_scale))
        out[f"{axis}_NUM_COEFF"] = " ".join(repr(rpc00b_number(v)) for v in numerator)
        out[f"{axis}_DEN_COEFF"] = " ".join(repr(rpc00b_number(v)) for v in denominator)
    return out
