"""modelrunner.runner.tiles: the per-tile step, its retries and its limits."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from modelrunner.errors import InferenceError
from modelrunner.features.convert import relocator
from modelrunner.imagery.grid import Tile
from modelrunner.imagery.radiometry import TileRadiometry
from modelrunner.requests import DistillationOption
from modelrunner.runner.plan import plan_image
from modelrunner.runner.region import RegionResult
from modelrunner.runner.tiles import RetryPolicy, TileFailed, TileStep

BOX = {"type": "FeatureCollection", "features": [
    {"type": "Feature", "id": "a", "geometry": None,
     "properties": {"imageBBox": [10, 10, 20, 20], "featureClasses": [{"iri": "car", "score": 0.9}]}}]}
TILE = Tile(ix=1, iy=0, col=224, row=0, width=256, height=256)
PIXELS = np.zeros((1, 256, 256), np.uint8)


class Scripted:
    """A detector that plays a script: exceptions are raised, anything else is answered."""

    name = "scripted"

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self, payload: bytes) -> dict[str, Any]:
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, BaseException):
            raise item
        return item


def step_for(detector: Scripted, *, attempts: int = 4, max_features: int = 100,
             abort: threading.Event | None = None, feature_properties: list[dict[str, Any]] | None = None) -> TileStep:
    return TileStep(
        detector=detector, tile_format="GTIFF", tile_compression="NONE", radiometry=TileRadiometry(), georef=None,
        to_world=None, plan=plan_image(512, 256, 256, 32, (1024, 1024)), option=DistillationOption(),
        relocate=relocator(None), job_id="j", feature_properties=feature_properties or [], source_metadata=None,
        retry=RetryPolicy(attempts, 0.0, 0.0), max_features=max_features, abort=abort)


def test_a_good_answer_places_the_features_in_full_image_pixels():
    result = step_for(Scripted(BOX))(TILE, PIXELS)
    assert len(result.raw_texts) == 1 and '"imageBBox":[234.0,10.0,244.0,20.0]' in result.raw_texts[0]
    assert len(result.merged) == 1


def _boxes(*labels: str) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": f"b{i}", "geometry": None, "properties": {
            "imageGeometry": {"type": "Polygon", "coordinates": [[[20 + i / 2, 10], [20 + i / 2, 30], [10 + i / 2, 30],
                                                                  [10 + i / 2, 10], [20 + i / 2, 10]]]},
            "imageBBox": [10 + i / 2, 10, 20 + i / 2, 30], "featureClasses": [{"iri": label, "score": 0.5 + i / 10}]}}
        for i, label in enumerate(labels)]}


@pytest.mark.parametrize("feature_properties", [
    [], [{"team": "a"}], [{"featureClasses": [{"iri": "x", "score": 0.1}]}]])
def test_the_tile_set_is_the_same_whether_columns_come_from_placing_or_parsing(feature_properties):
    """Plain boxes give their merge columns straight from placing them; a request's feature properties that
    replace featureClasses make the tile parse them from the finished features. Either way the tile's set
    holds what parsing its finished features gives (here: overlapping boxes of two labels, NMS per label)."""
    from modelrunner.features.featureset import FeatureSet
    from modelrunner.features.seams import merge_tiles
    result = step_for(Scripted(_boxes("car", "bus", "car")), feature_properties=feature_properties)(TILE, PIXELS)
    parsed = FeatureSet.of(result.merged.features(), result.merged.texts)
    assert np.array_equal(result.merged.boxes, parsed.boxes) and result.merged.labels == parsed.labels
    assert np.array_equal(result.merged.scores, parsed.scores)
    assert len(result.raw_texts) == 3
    assert result.merge_later, "NMS on boxes: merged with the region's other tiles"
    merged = merge_tiles([result.merged], DistillationOption())[0]
    assert len(merged) == (1 if feature_properties and "featureClasses" in feature_properties[0] else 2)


@pytest.mark.parametrize("fault", [
    InferenceError("HTTP endpoint x answered 500"),
    InferenceError("HTTP endpoint x answered 429", retriable=True),
    InferenceError("SageMaker endpoint x: ModelError"),
    InferenceError("HTTP endpoint x: connection refused"),
    {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"imageGeometry": {
        "type": "Polygon", "coordinates": "garbage"}}}]},
    {"type": "FeatureCollection", "features": "not a list"},
])
def test_transient_faults_are_retried_until_the_tile_succeeds(fault):
    model = Scripted(fault, fault, BOX)
    result = step_for(model, attempts=3)(TILE, PIXELS)
    assert model.calls == 3 and len(result.raw_texts) == 1


def test_a_tile_fails_after_its_attempts_with_the_last_reason():
    model = Scripted(InferenceError("HTTP endpoint x answered 503: b'overloaded'"))
    with pytest.raises(TileFailed) as err:
        step_for(model, attempts=4)(TILE, PIXELS)
    assert model.calls == 4
    assert "answered 503: b'overloaded'" in err.value.reason and "after 4 attempts" in err.value.reason


def test_permanent_answers_are_not_retried():
    model = Scripted(InferenceError("HTTP endpoint x answered 400: b'bad tile'", retriable=False))
    with pytest.raises(TileFailed, match="400"):
        step_for(model)(TILE, PIXELS)
    assert model.calls == 1


def test_an_endpoint_that_is_down_is_not_called_again_for_the_region():
    model = Scripted(InferenceError("SageMaker endpoint x: Endpoint x not found", endpoint_down=True))
    step = step_for(model)
    for _ in range(5):
        with pytest.raises(TileFailed, match="not found") as err:
            step(TILE, PIXELS)
        assert err.value.endpoint_down
    assert model.calls == 1


def test_too_many_features_fail_the_tile_with_the_limit_named():
    many = {"type": "FeatureCollection", "features": BOX["features"] * 11}
    model = Scripted(many)
    with pytest.raises(TileFailed, match="MR_MAX_FEATURES_PER_TILE = 10"):
        step_for(model, max_features=10)(TILE, PIXELS)
    assert model.calls == 1


def test_a_stopping_worker_does_not_wait_out_the_back_off():
    abort = threading.Event()
    abort.set()
    step = step_for(Scripted(InferenceError("500")), attempts=5, abort=abort)
    step.retry = RetryPolicy(5, 60.0, 60.0)
    with pytest.raises(TileFailed, match="worker stopping"):
        step(TILE, PIXELS)


def test_back_off_is_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(attempts=8, base_seconds=0.5, max_seconds=3.0)
    assert [policy.delay(n, rng=lambda: 1.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(3, rng=lambda: 0.25) == 0.5


def test_region_result_reports_reasons_by_frequency():
    result = RegionResult(total=4)
    result.succeeded.append([[0, 0], [1, 1]])
    result.fail([[0, 1], [1, 1]], "HTTP endpoint x answered 500")
    result.fail([[0, 2], [1, 1]], "timed out")
    result.fail([[0, 3], [1, 1]], "HTTP endpoint x answered 500")
    assert result.status == "PARTIAL"
    assert result.failure_reasons() == ["HTTP endpoint x answered 500 (2 tiles)", "timed out (1 tile)"]
    assert result.message == "3 of 4 tiles failed: HTTP endpoint x answered 500 (2 tiles); timed out (1 tile)"
    assert RegionResult(total=0).status == "FAILED"
