"""EMF metrics: one job's records, captured, against the reference's namespace, names and dimensions."""

from __future__ import annotations

import io
import json
import threading
import zlib
from collections import defaultdict
from typing import Any

import pytest

from modelrunner.aws import AwsClients
from modelrunner.config import Settings
from modelrunner.errors import EndpointBusy
from modelrunner.inference.detectors import SageMakerDetector
from modelrunner.local.scene import make_scene
from modelrunner.local.stack import create_resources
from modelrunner.metrics import EVENTS_PER_RECORD, NAMESPACE, Metrics, input_format
from modelrunner.requests import ImageRequest, RegionRequest
from modelrunner.runner.complete import maybe_complete
from modelrunner.runner.image import start_image
from modelrunner.runner.region import process_region
from modelrunner.runner.services import Services
from modelrunner.state.records import JobRecord

# The reference's table (interface notes, section 9): each operation's exact dimension set and the metric
# names it must carry. Tiles/Features/Throttles on the region and image records are ours, and extra;
# Scheduling is the upstream runner v3's operation (capacity scheduling), its names depend on the record.
EXPECTED = {
    "ImageProcessing": ({"Operation", "ModelName", "InputFormat"}, {"Duration", "Invocations", "Errors"}),
    "RegionProcessing": ({"Operation", "ModelName", "InputFormat"}, {"Duration", "Invocations", "Throttles"}),
    "TileGeneration": ({"Operation", "InputFormat"}, {"Duration", "Invocations", "Errors"}),
    "TileProcessing": ({"Operation", "ModelName"}, {"Duration", "Invocations", "Errors"}),
    "ModelInvocation": ({"Operation", "ModelName"}, {"Invocations", "Retries", "Duration", "Errors", "Throttles"}),
    "FeatureRefinement": ({"Operation"}, {"Duration", "Invocations"}),
    "FeatureStorage": ({"Operation"}, {"Invocations", "Duration", "Errors"}),
    "FeatureAggregation": ({"Operation"}, {"Invocations", "Duration"}),
    "FeatureSelection": ({"Operation"}, {"Duration"}),
    "FeatureDissemination": ({"Operation"}, {"Duration"}),
    "Scheduling": ({"Operation", "ModelName"}, set()),
}
UNITS = {"Duration": "Seconds", "Invocations": "Count", "Errors": "Count", "Throttles": "Count", "Retries": "Count",
         "Tiles": "Count", "Features": "Count", "Waits": "Count", "Capacity": "Count", "InFlight": "Count",
         "Limit": "Count"}


class FakeRuntime:
    """A SageMaker runtime client: one box per tile; botocore 'retried' every third call once."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()  # tile threads call at once

    def invoke_endpoint(self, EndpointName: str, Body: bytes, **_: Any) -> dict[str, Any]:  # noqa: N803
        with self.lock:
            self.calls += 1
            call = self.calls
        x = zlib.crc32(Body) % 300
        answer = {"type": "FeatureCollection", "features": [{"type": "Feature", "id": f"f{x}", "properties": {
            "imageBBox": [x, 10, x + 40, 50], "featureClasses": [{"iri": "thing", "score": 0.9}]}}]}
        return {"Body": io.BytesIO(json.dumps(answer).encode()),
                "ResponseMetadata": {"RetryAttempts": 1 if call % 3 == 0 else 0}}


def parse(lines: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in lines.splitlines() if line.strip()]
    assert records, "no EMF output"
    return records


def check(record: dict[str, Any], names: set[str] | None = None) -> str:
    """Namespace, the operation's exact dimension set, ``names`` (default: the operation's required ones)
    present, known units; returns the operation."""
    meta = record["_aws"]
    assert isinstance(meta["Timestamp"], int)
    [directive] = meta["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE
    [dimensions] = directive["Dimensions"]  # exactly one dimension set, no library defaults
    operation = str(record["Operation"])
    want_dims, want_names = EXPECTED[operation]
    assert set(dimensions) == want_dims, operation
    present = {m["Name"] for m in directive["Metrics"]}
    assert (want_names if names is None else names) <= present, (operation, present)
    assert present <= set(UNITS), present
    for metric in directive["Metrics"]:
        assert metric["Unit"] == UNITS[metric["Name"]]
        assert metric["Name"] in record
    return operation


def test_one_job_emits_the_reference_names_and_dimensions(moto_aws: None, tmp_path: Any) -> None:
    res = create_resources(None, prefix="emf")
    settings = Settings(aws_region="us-east-1", job_table=res.job_table, region_table=res.region_table,
                        endpoint_table=res.endpoint_table, feature_table=res.feature_table,
                        image_queue=res.image_queue, region_queue=res.region_queue, workers=2,
                        region_size=(1024, 1024))
    services = Services.create(settings, AwsClients("us-east-1"))
    out = io.StringIO()
    services.metrics = Metrics(out=out)
    runtime = FakeRuntime()
    detector = SageMakerDetector(runtime, "my-endpoint", metrics=services.metrics)
    services.detector = lambda region: detector  # type: ignore[method-assign]
    scene = make_scene(str(tmp_path / "s.tif"), 1300, 1100, seed=2)
    request = ImageRequest.from_dict({
        "jobId": "emf", "imageUrls": [scene.path], "imageProcessor": {"name": "my-endpoint"},
        "imageProcessorTileSize": 512, "imageProcessorTileOverlap": 128, "imageProcessorTileFormat": "GTIFF",
        "outputs": [{"type": "S3", "bucket": res.bucket, "prefix": ""}]})

    first, job = start_image(services, request)
    rows = sorted(services.regions.all(request.image_id), key=lambda r: r.region_index)
    for row in rows:
        (r, c), (w, h) = row.region_bounds
        region = RegionRequest.for_image(request, ((r, c), (w, h)), "TIFF")
        assert process_region(services, region, job=job).counted
    assert maybe_complete(services, request.image_id)
    assert services.jobs.get(request.image_id).job_status == "SUCCESS"

    records = parse(out.getvalue())
    by_operation: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_operation[check(record)].append(record)
    assert set(by_operation) == set(EXPECTED)

    def total(operation: str, name: str) -> float:
        values = [r[name] for r in by_operation[operation]]
        return sum(sum(v) if isinstance(v, list) else v for v in values)

    def samples(operation: str) -> int:
        return sum(len(r["Duration"]) if isinstance(r["Duration"], list) else 1 for r in by_operation[operation])

    tiles = sum(int(row.total_tiles) for row in services.regions.all(request.image_id))
    assert tiles == 12 == runtime.calls
    # Every tile is one sample of the per-tile operations, counted once.
    for operation in ("TileGeneration", "TileProcessing", "ModelInvocation", "FeatureRefinement"):
        assert samples(operation) == tiles == total(operation, "Invocations"), operation
    assert total("TileProcessing", "Errors") == total("ModelInvocation", "Errors") == 0
    assert total("ModelInvocation", "Retries") == runtime.calls // 3
    assert {r["ModelName"] for r in by_operation["ModelInvocation"]} == {"my-endpoint"}
    assert {r["InputFormat"] for r in by_operation["TileGeneration"]} == {"GTIFF"}
    assert len(by_operation["RegionProcessing"]) == len(rows) == 4
    assert total("RegionProcessing", "Tiles") == tiles
    assert total("RegionProcessing", "Throttles") == 0  # every region ran
    # The endpoint's capacity is unknown (moto has no such endpoint): no lease, one record per region run
    # with the throttles its tiles met and this worker's adaptive limit.
    scheduling = by_operation["Scheduling"]
    assert len(scheduling) == 4 and {r["ModelName"] for r in scheduling} == {"my-endpoint"}
    assert [(r["Throttles"], r["Limit"]) for r in scheduling] == [(0, 2)] * 4
    [image] = by_operation["ImageProcessing"]
    assert (image["ModelName"], image["InputFormat"], image["Invocations"], image["Errors"]) == (
        "my-endpoint", "GTIFF", 1, 0)
    assert image["Duration"] > 0, "the real job duration, not the reference's stale 0"
    assert image["Tiles"] == tiles and image["Features"] >= 1
    assert total("FeatureDissemination", "Invocations") == 1  # one output
    assert samples("FeatureStorage") >= 1


def test_a_region_held_back_for_capacity_is_a_throttled_region(moto_aws: None) -> None:
    """The reference's self-throttled region: RegionProcessing Throttles 1, and nothing of the region runs."""
    res = create_resources(None, prefix="busy")
    settings = Settings(aws_region="us-east-1", job_table=res.job_table, region_table=res.region_table,
                        endpoint_table=res.endpoint_table, feature_table=res.feature_table,
                        image_queue=res.image_queue, region_queue=res.region_queue, workers=2)
    services = Services.create(settings, AwsClients("us-east-1"))
    out = io.StringIO()
    services.metrics = Metrics(out=out)
    services.capacity = lambda region: 2  # type: ignore[method-assign]
    assert services.leases is not None
    assert services.leases.acquire("my-endpoint", "another-worker/r1", want=2, capacity=2) == 2
    request = ImageRequest.from_dict({
        "jobId": "busy", "imageUrls": ["s3://images/scene.ntf"], "imageProcessor": {"name": "my-endpoint"},
        "outputs": [{"type": "S3", "bucket": res.bucket, "prefix": ""}]})
    region = RegionRequest.for_image(request, ((0, 0), (1024, 1024)), "NITF")

    with pytest.raises(EndpointBusy):
        process_region(services, region, job=JobRecord(image_id=request.image_id))

    records = parse(out.getvalue())
    assert {check(r, names=set()) for r in records} == {"Scheduling", "RegionProcessing"}
    [throttled] = [r for r in records if r["Operation"] == "RegionProcessing"]
    assert (throttled["ModelName"], throttled["InputFormat"], throttled["Throttles"]) == ("my-endpoint", "NITF", 1)
    assert {m["Name"] for m in throttled["_aws"]["CloudWatchMetrics"][0]["Metrics"]} == {"Throttles"}
    [wait] = [r for r in records if r["Operation"] == "Scheduling"]
    assert (wait["Waits"], wait["Capacity"]) == (1, 2)
    assert services.regions.all(request.image_id) == []  # the region never started


def test_events_are_written_a_hundred_values_a_record() -> None:
    out = io.StringIO()
    metrics = Metrics(out=out)
    for i in range(2 * EVENTS_PER_RECORD + 50):
        metrics.record("ModelInvocation", {"ModelName": "m"}, i / 1000, error=i % 10 == 0, retries=1,
                       throttles=int(i % 50 == 0))
    assert len(out.getvalue().splitlines()) == 2, "written as each hundred fills"
    metrics.flush()
    records = parse(out.getvalue())
    assert [len(r["Duration"]) for r in records] == [100, 100, 50]
    assert sum(r["Invocations"] for r in records) == 250
    assert sum(r["Errors"] for r in records) == 25
    assert sum(r["Retries"] for r in records) == 250
    assert sum(r["Throttles"] for r in records) == 5
    assert [v for r in records for v in r["Duration"]] == pytest.approx([i / 1000 for i in range(250)])
    metrics.flush()
    assert len(out.getvalue().splitlines()) == 3, "nothing left to write"


def test_timed_counts_exceptions_as_errors_and_raises_them() -> None:
    out = io.StringIO()
    metrics = Metrics(out=out)

    @metrics.timed("TileProcessing", {"ModelName": "m"})
    def tile(n: int) -> int:
        if n < 0:
            raise ValueError("bad tile")
        return n * 2

    assert tile(2) == 4
    with pytest.raises(ValueError, match="bad tile"):
        tile(-1)
    metrics.flush()
    [record] = parse(out.getvalue())
    assert (record["Invocations"], record["Errors"], len(record["Duration"])) == (2, 1, 2)
    assert "Retries" not in record


def test_disabled_metrics_write_nothing() -> None:
    out = io.StringIO()
    metrics = Metrics(enabled=False, out=out)
    metrics.emit("RegionProcessing", {"ModelName": "m", "InputFormat": "GTIFF"}, {"Duration": (1.0, "Seconds")})
    metrics.record("TileProcessing", {"ModelName": "m"}, 0.1)
    metrics.flush()
    assert out.getvalue() == ""


@pytest.mark.parametrize(("extension", "expected"), [("TIFF", "GTIFF"), ("NITF", "NITF"), ("png", "PNG"),
                                                      ("JP2", "JP2OPENJPEG"), ("", "UNKNOWN"), (None, "UNKNOWN")])
def test_input_format_is_the_gdal_driver_name(extension: str | None, expected: str) -> None:
    assert input_format(extension) == expected
