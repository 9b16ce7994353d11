"""How many tiles an endpoint can work on at once, read through the SageMaker API and cached briefly.

SageMaker: the sum over production variants of instance count x per-instance concurrency (the endpoint's
``osml:instance-concurrency`` tag, else ``DEFAULT_INSTANCE_CONCURRENCY``, as the upstream runner v3), or a
serverless variant's ``MaxConcurrency``; times ``CAPACITY_TARGET_PERCENTAGE``. HTTP endpoints:
``DEFAULT_HTTP_ENDPOINT_CONCURRENCY``. An endpoint the worker cannot describe (no permission, a throttled
control plane, an endpoint SageMaker does not know) is not scheduled (None), logged once: scheduling
degrades, it never blocks a job.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

CONCURRENCY_TAG = "osml:instance-concurrency"


@dataclass(frozen=True)
class CapacitySettings:
    default_instance_concurrency: int = 2
    default_http_concurrency: int = 10
    target_percentage: float = 1.0
    cache_seconds: float = 60.0


class CapacityReader:
    """Endpoint capacities in concurrent tiles, each cached for ``cache_seconds``."""

    def __init__(self, sagemaker: Any, settings: CapacitySettings = CapacitySettings(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sagemaker = sagemaker
        self.settings = settings
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, int | None]] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def capacity(self, mode: str, name: str) -> int | None:
        """Tiles the endpoint ``name`` (SM_ENDPOINT or HTTP_ENDPOINT) can work on at once (at least 1), or
        None when it cannot be known."""
        key = (mode, name)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now - cached[0] < self.settings.cache_seconds:
                return cached[1]
        raw = self.settings.default_http_concurrency if mode == "HTTP_ENDPOINT" else self._sagemaker(name)
        value = None if raw is None else max(1, math.floor(raw * self.settings.target_percentage))
        with self._lock:
            self._cache[key] = (now, value)
        return value

    def _sagemaker(self, name: str) -> int | None:
        try:
            endpoint = self.sagemaker.describe_endpoint(EndpointName=name)
            config = self.sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
            tags = self.sagemaker.list_tags(ResourceArn=endpoint["EndpointArn"]).get("Tags", [])
        except (ClientError, BotoCoreError) as err:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("cannot read the capacity of SageMaker endpoint %s (%s): not scheduled", name, err)
            return None
        per_instance = self.settings.default_instance_concurrency
        for tag in tags:
            if tag.get("Key") == CONCURRENCY_TAG:
                try:
                    per_instance = max(1, int(tag["Value"]))
                except (TypeError, ValueError):
                    log.warning("endpoint %s: tag %s=%r is not an integer", name, CONCURRENCY_TAG, tag.get("Value"))
        configured = {v.get("VariantName"): v for v in config.get("ProductionVariants", [])}
        total = 0
        for variant in endpoint.get("ProductionVariants", []):
            serverless = variant.get("CurrentServerlessConfig") or \
                (configured.get(variant.get("VariantName")) or {}).get("ServerlessConfig")
            if serverless:
                total += int(serverless.get("MaxConcurrency", 1))
            else:
                total += int(variant.get("CurrentInstanceCount", 1)) * per_instance
        return total or per_instance
