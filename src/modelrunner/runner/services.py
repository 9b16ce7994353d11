"""Everything a step needs, built once at start-up from the settings and injected (tests swap in moto)."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from ..aws import AwsClients
from ..config import Settings
from ..failpoints import Failpoints
from ..imagery.context import ImageContext
from ..inference.capacity import CapacityReader, CapacitySettings
from ..inference.detectors import TILE_CONTENT_TYPES, Detector, HttpDetector, SageMakerDetector
from ..inference.limits import AdaptiveLimit
from ..metrics import Metrics
from ..policy import AccessPolicy
from ..requests import RegionRequest
from ..state.endpoints import EndpointLeases
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
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    failpoints: Failpoints = field(default_factory=Failpoints)
    leases: EndpointLeases | None = None
    capacities: CapacityReader | None = None
    _limits: dict[tuple[str, str], AdaptiveLimit] = field(default_factory=dict)
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
            policy=AccessPolicy(settings.local_image_root, settings.http_endpoint_hosts),
            failpoints=Failpoints(settings.failpoints),
            leases=EndpointLeases(aws.dynamodb, settings.endpoint_table, settings.capacity_lease_seconds)
            if settings.endpoint_table else None,
            capacities=CapacityReader(aws.client("sagemaker"), CapacitySettings(
                settings.default_instance_concurrency, settings.default_http_concurrency,
                settings.capacity_target_percentage)),
        )

    def capacity(self, region: RegionRequest) -> int | None:
        """The region's endpoint capacity in concurrent tiles (None: unknown, not scheduled)."""
        if self.capacities is None or self.leases is None:
            return None
        return self.capacities.capacity(region.model_invoke_mode, region.model_name)

    def limit(self, region: RegionRequest) -> AdaptiveLimit:
        """This worker's adaptive concurrency limit for the region's endpoint (shared by its regions)."""
        key = (region.model_invoke_mode, region.model_name)
        with self._lock:
            if key not in self._limits:
                self._limits[key] = AdaptiveLimit(self.settings.workers)
            return self._limits[key]

    def open_image(self, url: str, read_role: str = "") -> ImageContext:
        """Open a request's image with the allowed drivers, as ``read_role`` when one is given (its
        credentials are GDAL's for that bucket only while the image is open), with its geolocator over the
        configured elevation model. The only place the runner opens images; close it (``with``)."""
        credentials = self.aws.assumed_credentials(read_role) if read_role else None
        return ImageContext.open(url, drivers=self.settings.image_drivers, credentials=credentials,
                                 dem_location=self.settings.elevation_data_location,
                                 dem_extension=self.settings.elevation_data_extension)

    def detector(self, region: RegionRequest) -> Detector:
        """One endpoint client per model (and role, parameters and tile type), reused across regions for its
        connection pool."""
        params = tuple(sorted((k, str(v)) for k, v in region.model_parameters.items()))
        key = (region.model_invoke_mode, region.model_name, region.model_invocation_role, params, region.tile_format)
        with self._lock:
            if key not in self._detectors:
                if region.model_invoke_mode == "HTTP_ENDPOINT":
                    self._detectors[key] = HttpDetector(
                        region.model_name, pool_size=self.settings.workers, timeout=self.settings.http_timeout,
                        verify_tls=self.settings.http_verify_tls, parameters=region.model_parameters,
                        content_type=TILE_CONTENT_TYPES.get(region.tile_format, "application/octet-stream"),
                        metrics=self.metrics)
                else:
                    clients = self.aws.for_role(region.model_invocation_role)
                    self._detectors[key] = SageMakerDetector(
                        clients.sagemaker_runtime, region.model_name, region.model_parameters, metrics=self.metrics)
            return self._detectors[key]
