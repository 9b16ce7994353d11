"""Everything a step needs, built once at start-up from the settings and injected (tests swap in moto)."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from ..aws import AwsClients
from ..config import Settings
from ..inference.detectors import Detector, HttpDetector, SageMakerDetector
from ..metrics import Metrics
from ..requests import RegionRequest
from ..state.features import FeatureStore
from ..state.jobs import JobStore
from ..state.regions import RegionStore
from ..status import StatusPublisher


@dataclass
class Services:
    settings: Settings
    aws: AwsClients
    jobs: JobStore
    regions: RegionStore
    features: FeatureStore
    status: StatusPublisher
    metrics: Metrics
    worker_id: str
    _detectors: dict[tuple[Any, ...], Detector] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: Settings, aws: AwsClients | None = None, *, metrics: bool = True) -> Services:
        aws = aws or AwsClients(settings.aws_region, pool_size=settings.workers * 2)
        ttl = int(settings.ddb_ttl_days * 86400)
        return cls(
            settings=settings,
            aws=aws,
            jobs=JobStore(aws.dynamodb, settings.job_table, ttl),
            regions=RegionStore(aws.dynamodb, settings.region_table, ttl),
            features=FeatureStore(aws.dynamodb, settings.feature_table, settings.feature_ttl_seconds, ttl),
            status=StatusPublisher(aws.sns, settings.image_status_topic, settings.region_status_topic),
            metrics=Metrics(enabled=metrics),
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
        )

    def detector(self, region: RegionRequest) -> Detector:
        """One endpoint client per model (and role), reused across regions for its connection pool."""
        params = tuple(sorted((k, str(v)) for k, v in region.model_parameters.items()))
        key = (region.model_invoke_mode, region.model_name, region.model_invocation_role, params)
        with self._lock:
            if key not in self._detectors:
                if region.model_invoke_mode == "HTTP_ENDPOINT":
                    self._detectors[key] = HttpDetector(
                        region.model_name, pool_size=self.settings.workers, timeout=self.settings.http_timeout,
                        verify_tls=self.settings.http_verify_tls, parameters=region.model_parameters,
                        metrics=self.metrics)
                else:
                    clients = self.aws.for_role(region.model_invocation_role)
                    self._detectors[key] = SageMakerDetector(
                        clients.sagemaker_runtime, region.model_name, region.model_parameters, metrics=self.metrics)
            return self._detectors[key]
