"""inference/detectors.py: model answers are read with orjson and a JSON fallback for what it refuses."""

from __future__ import annotations

import math

from modelrunner.inference.detectors import parse_answer


def test_model_answers_are_read_with_the_json_fallback():
    assert parse_answer(b'{"features": [], "n": 2}', "m") == {"features": [], "n": 2}
    assert parse_answer(b'{"big": 123456789012345678901234567890}', "m")["big"] == 123456789012345678901234567890
    assert math.isnan(parse_answer(b'{"score": NaN}', "m")["score"])
