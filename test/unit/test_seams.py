"""features/seams.py: feature texts are compact JSON, with a fallback for what orjson refuses."""

from __future__ import annotations

import json

from modelrunner.features.seams import feature_text


def test_feature_text_is_compact_json_and_falls_back_for_what_orjson_refuses():
    feature = {"type": "Feature", "properties": {"name": "é", "score": 1e-06, "n": 3}}
    text = feature_text(feature)
    assert json.loads(text) == feature and ", " not in text
    huge = {"type": "Feature", "properties": {"n": 2 ** 70}}
    assert json.loads(feature_text(huge)) == huge
