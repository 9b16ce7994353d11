"""The demo's request and summary (modelrunner.local.demo): what it asks the worker for and what it prints."""

from __future__ import annotations

import pytest

from modelrunner.cli import build_parser
from modelrunner.local.demo import build_request, summary_rows
from modelrunner.local.stack import Resources
from modelrunner.requests import RECOMMENDED_DISTILLATION, DistillationOption, ImageRequest, KinesisOutput, S3Output
from modelrunner.state.records import JobRecord

RES = Resources(endpoint="http://127.0.0.1:1", prefix="demo", bucket="out-bucket", stream="out-stream")
URL = "s3://images/scene.tif"


@pytest.mark.parametrize(("merge", "expected"), [("recommended", RECOMMENDED_DISTILLATION),
                                                 ("reference", DistillationOption())])
def test_the_demo_request_is_valid_and_asks_for_the_chosen_merge(merge: str, expected: DistillationOption) -> None:
    args = build_parser().parse_args(["demo", "--merge", merge, "--tile-size", "256", "--tile-overlap", "32"])
    request, merge_line = build_request(args, RES, "http://127.0.0.1:2", "demo-1", URL)
    parsed = ImageRequest.from_dict(request)
    assert parsed.distillation == expected
    assert ("postProcessing" in request) == (merge == "recommended")
    assert merge_line.startswith(f"{expected.algorithm_type} {expected.match_metric}")
    assert (parsed.image_url, parsed.tile_size, parsed.tile_overlap) == (URL, 256, 32)
    s3, kinesis = parsed.outputs
    assert isinstance(s3, S3Output) and isinstance(kinesis, KinesisOutput)
    assert (s3.bucket, s3.formats, s3.stac_item, kinesis.stream) == (
        "out-bucket", ("GeoJSON", "GeoParquet"), True, "out-stream")


def test_an_http_demo_invokes_the_model_url() -> None:
    args = build_parser().parse_args(["demo", "--endpoint-type", "HTTP_ENDPOINT"])
    request, _ = build_request(args, RES, "http://127.0.0.1:2", "demo-1", URL)
    parsed = ImageRequest.from_dict(request)
    assert (parsed.model_name, parsed.model_invoke_mode) == ("http://127.0.0.1:2/invocations", "HTTP_ENDPOINT")


def test_summary_rows_read_the_final_job_row() -> None:
    job = JobRecord.from_item({
        "image_id": "demo-1:" + URL, "job_status": "PARTIAL", "status_reason": "1 region failed", "width": 100,
        "height": 50,
           "image_extension": "TIFF", "region_count": 2, "region_success": 1, "region_error": 1,
           "tile_count": 8, "failed_tile_count": 2, "feature_count": 5, "raw_feature_count": 9,
           "processing_duration": 4.0})
    rows = dict(summary_rows(job, [], "NMS IOU 0.75"))
    assert rows == {"status": "PARTIAL (1 region failed)", "image": "100 x 50 px, TIFF",
                    "regions": "2 (1 ok, 1 errors)", "tiles": "8 (2 failed)",
                    "features": "5 after merging 9 detections", "seconds": "4.00 (2.0 tiles/s)",
                    "merge": "NMS IOU 0.75"}


def test_summary_rows_of_a_job_row_without_timings() -> None:
    rows = dict(summary_rows(JobRecord.from_item({"image_id": "demo-1:" + URL, "job_status": "SUCCESS"}), [{}, {}],
                             "m"))
    assert (rows["status"], rows["seconds"], rows["features"]) == ("SUCCESS", "0.00 (0.0 tiles/s)",
                                                                   "2 after merging ? detections")
