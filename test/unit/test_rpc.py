"""imagery/rpc.py: the RPC00B field rules, the TRE formatter and the chip model, read back by GDAL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from modelrunner.imagery.rpc import TRE_LENGTH, chip_rpc00b, format_rpc00b, rpc00b_number
from modelrunner.local.scene import linear_rpc

gdal.UseExceptions()

GEOTRANSFORM = (-77.05, 1e-5, 0.0, 38.9, 0.0, -1e-5)


def _bent(rpc: dict[str, str]) -> dict[str, str]:
    """``rpc`` with height-dependent, non-linear terms, so every coefficient field carries a value."""
    rng = np.random.default_rng(3)
    for key in ("LINE_NUM_COEFF", "SAMP_NUM_COEFF", "LINE_DEN_COEFF", "SAMP_DEN_COEFF"):
        values = np.array([float(v) for v in rpc[key].split()])
        values[3:] += rng.normal(0.0, 2e-3, 17)
        rpc[key] = " ".join(repr(float(v)) for v in values)
    rpc.update(HEIGHT_OFF="-12", HEIGHT_SCALE="500", ERR_BIAS="1.25", ERR_RAND="0.5")
    return rpc


def _read_back(tmp_path: Path, tre: str) -> dict[str, str]:
    """Write ``tre`` into a NITF the way the scene generator does (Create() with TRE=) and let GDAL parse it."""
    path = str(tmp_path / "rpc.ntf")
    dataset = gdal.GetDriverByName("NITF").Create(path, 64, 64, 1, gdal.GDT_Byte, [f"TRE=RPC00B={tre}"])
    del dataset  # closing writes the file
    return gdal.Open(path).GetMetadata_Dict("RPC")


@pytest.mark.parametrize("model", ["scene", "chip"])
def test_a_formatted_tre_reads_back_as_the_same_model(tmp_path: Path, model: str) -> None:
    rpc = linear_rpc(GEOTRANSFORM, 13000, 12500)
    if model == "chip":
        rpc = chip_rpc00b(_bent(rpc), 700, 600, 256, 256)
    tre = format_rpc00b(rpc)
    assert len(tre) == TRE_LENGTH
    parsed = _read_back(tmp_path, tre)
    for key, value in rpc.items():
        got = [float(v) for v in parsed[key].split()]
        assert got == [float(v) for v in value.split()], key  # exact: the model is built in RPC00B precision


def test_fields_that_do_not_fit_are_refused() -> None:
    rpc = linear_rpc(GEOTRANSFORM, 1000, 800)
    with pytest.raises(ValueError, match="SAMP_OFF"):
        format_rpc00b({**rpc, "SAMP_OFF": "100000"})
    with pytest.raises(ValueError, match="does not fit RPC00B"):
        format_rpc00b({**rpc, "SAMP_NUM_COEFF": " ".join(["2e10"] * 20)})
    with pytest.raises(ValueError, match="20 coefficients"):
        format_rpc00b({**rpc, "LINE_DEN_COEFF": "1"})


def test_coefficients_round_to_seven_significant_digits() -> None:
    assert rpc00b_number(1.23456789) == 1.234568
    assert rpc00b_number(-9.87654321e-5) == -9.876543e-5
    assert rpc00b_number(4e-10) == 0.0
