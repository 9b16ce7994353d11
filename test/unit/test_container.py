"""The container checks' comparison of Kinesis records with the S3 GeoJSON (modelrunner.local.container)."""

from __future__ import annotations

import json

from modelrunner.local.container import streamed_features


def test_streamed_features_drop_inference_metadata_and_sort() -> None:
    b = {"type": "Feature", "properties": {"b": 1, "inferenceMetadata": {"jobId": "j"}}, "geometry": None}
    a = {"type": "Feature", "properties": {"a": 2}, "geometry": None}
    records = [{"partition_key": "j", "data": {"features": [b]}}, {"partition_key": "j", "data": {"features": [a]}}]
    got = streamed_features(records)
    expected = sorted(json.dumps(f, sort_keys=True) for f in (
        {"type": "Feature", "properties": {"b": 1}, "geometry": None}, a))
    assert got == expected
    assert all("inferenceMetadata" not in text for text in got)


def test_streamed_features_of_no_records() -> None:
    assert streamed_features([]) == []
