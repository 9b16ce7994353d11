"""The per-tile step: encode the pixels, call the model (with bounded retries), place the features.

One :class:`TileStep` serves every tile of a region from the tile threads. Retrying lives here, around the
whole call-and-parse, so that every failure a model endpoint can produce (a 5xx, throttling, a dropped or
refused connection, a timeout, an empty body, a body that is not JSON, a FeatureCollection with bad
geometry) gets the same treatment: up to ``MR_MAX_TILE_ATTEMPTS`` attempts with exponential back-off and
full jitter, then the tile is recorded as failed with the last reason. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..errors import FeatureError, InferenceError
from ..features.convert import (
    BoxColumns,
    Feature,
    ToWorld,
    finish,
    geolocate,
    image_shape,
    place_tile,
    to_image_features,
)
from ..features.featureset import FeatureSet, feature_text
from ..features.seams import merge_set, on_columns
from ..imagery.encode import encode_tile
from ..imagery.geolocate import Georeference
from ..imagery.grid import Tile
from ..imagery.radiometry import TileRadiometry
from ..inference.detectors import Detector
from ..inference.limits import AdaptiveLimit
from ..metrics import Metrics
from ..requests import DistillationOption
from .plan import ImagePlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per tile and the back-off between them (exponential, full jitter)."""

    attempts: int = 4
    base_seconds: float = 0.5
    max_seconds: float = 10.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): uniform in [0, min(max, base * 2^(n-1))]."""
        return float(rng() * min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1)))


#: The feature properties :class:`BoxColumns` are read from: a request's feature properties that set one of
#: them (they are applied after placing) make the tile's columns be parsed from the finished features.
_COLUMN_SOURCES = frozenset({"imageGeometry", "imageBBox", "featureClasses"})


class TileFailed(Exception):
    """A tile that failed for good; ``reason`` is what the status and the region row report."""

    def __init__(self, reason: str, *, endpoint_down: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.endpoint_down = endpoint_down


@dataclass
class TileResult:
    """What one tile produced: every raw feature text (for the feature table) and the tile's set, merged
    inside itself unless ``merge_later`` (then :func:`~modelrunner.features.seams.merge_tiles` merges it with
    the region's other tiles, in one NMS)."""

    raw_texts: list[str]
    merged: FeatureSet
    merge_later: bool = False


@dataclass
class TileStep:
    """Everything a tile needs, fixed for the region; call it with a tile and its pixels."""

    detector: Detector
    tile_format: str
    tile_compression: str
    radiometry: TileRadiometry
    georef: Georeference | None
    to_world: ToWorld | None
    plan: ImagePlan
    option: DistillationOption
    relocate: Callable[[Feature], Feature]
    job_id: str
    feature_properties: Sequence[Mapping[str, Any]]
    source_metadata: list[dict[str, Any]] | None
    retry: RetryPolicy
    max_features: int
    abort: threading.Event | None = None
    limit: AdaptiveLimit | None = None
    """This worker's concurrency limit for the endpoint (lowered while it throttles)."""
    metrics: Metrics | None = None
    input_format: str = "UNKNOWN"  # the TileGeneration records' InputFormat

    def __post_init__(self) -> None:
        self._down: str | None = None  # set once the endpoint said it cannot serve us
        self._encode = encode_tile if self.metrics is None else \
            self.metrics.timed("TileGeneration", {"InputFormat": self.input_format})(encode_tile)

    def __call__(self, tile: Tile, pixels: np.ndarray) -> TileResult:
        if not self.radiometry.identity:
            pixels = self.radiometry.apply(pixels)
        payload = self._encode(pixels, self.tile_format, self.tile_compression,
                               self.georef.for_chip(tile.col, tile.row) if self.georef else None)
        features, columns = self._detect(tile, payload)
        texts = [feature_text(f) for f in features]
        tile_set = FeatureSet.of(features, texts) if columns is None else \
            FeatureSet(texts, columns.boxes, columns.scores, columns.labels, np.ones(len(texts), dtype=bool))
        if self.option.algorithm_type == "SOFT_NMS":  # decayed once, at completion
            return TileResult(texts, tile_set)
        if on_columns(tile_set, self.option):  # NMS on boxes: merged with the region's other tiles at once
            return TileResult(texts, tile_set, merge_later=True)
        return TileResult(texts, merge_set(tile_set, self.option, self.relocate, features))

    def _detect(self, tile: Tile, payload: bytes) -> tuple[list[Feature], BoxColumns | None]:
        """Call the model and place its features, retrying any failure up to the attempt limit."""
        attempt = 0
        while True:
            if self._down is not None:
                raise TileFailed(self._down, endpoint_down=True)
            attempt += 1
            try:
                answer = self._call(payload)
                inference_dt = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                refining = time.perf_counter()
                features = self._features(tile, answer, inference_dt)
                if self.metrics is not None:
                    self.metrics.record("FeatureRefinement", {}, time.perf_counter() - refining)
                return features
            except InferenceError as err:
                if err.endpoint_down:
                    self._down = f"{err} (no further tile of this region was sent)"
                    raise TileFailed(str(err), endpoint_down=True) from None
                if not err.retriable or attempt >= self.retry.attempts:
                    raise TileFailed(self._reason(err, attempt)) from None
                reason = str(err)
            except FeatureError as err:
                if attempt >= self.retry.attempts:
                    raise TileFailed(self._reason(err, attempt)) from None
                reason = f"unusable model answer: {err}"
            delay = self.retry.delay(attempt)
            log.info("tile %s: attempt %d of %d failed (%s); retrying in %.2f s", tile.key, attempt,
                     self.retry.attempts, reason[:300], delay)
            if (self.abort or threading.Event()).wait(delay):
                raise TileFailed("worker stopping")

    def _call(self, payload: bytes) -> Any:
        """One model call, within this worker's adaptive limit for the endpoint."""
        if self.limit is None:
            return self.detector(payload)
        token = self.limit.acquire(self.abort)
        if token is None:
            raise TileFailed("worker stopping")
        throttled = False
        try:
            return self.detector(payload)
        except InferenceError as err:
            throttled = err.throttled
            raise
        finally:
            self.limit.release(token, throttled)

    def _features(self, tile: Tile, answer: Any, inference_dt: str) -> tuple[list[Feature], BoxColumns | None]:
        """The tile's features, finished, and their box columns when all are plain boxes (and the request's
        feature properties replace none of what the columns were read from)."""
        found = answer.get("features") if isinstance(answer, dict) else None
        if isinstance(found, list) and len(found) > self.max_features:
            raise InferenceError(f"the model answered {len(found):,} features for one tile, more than this worker "
                                 f"accepts (MR_MAX_FEATURES_PER_TILE = {self.max_features:,})", retriable=False)
        columns: BoxColumns | None = None
        if self.plan.roi is None:
            features, columns = place_tile(answer, tile.col, tile.row, self.to_world)
        else:
            features = to_image_features(answer, tile.col, tile.row)
            features = [f for f in features if self.plan.keeps_feature(image_shape(f["properties"]))]
            geolocate(features, self.to_world)
        finish(features, job_id=self.job_id, inference_dt=inference_dt, feature_properties=self.feature_properties,
               source_metadata=self.source_metadata)
        if any(_COLUMN_SOURCES.intersection(extra) for extra in self.feature_properties):
            columns = None
        return features, columns

    @staticmethod
    def _reason(err: Exception, attempt: int) -> str:
        return f"{err} (after {attempt} attempt{'s' if attempt > 1 else ''})"
