"""CloudWatch metrics as EMF JSON lines on stdout (aws-embedded-metrics), the reference's names.

Namespace ``OSML/ModelRunner``; operations ImageProcessing, RegionProcessing, TileProcessing,
ModelInvocation, FeatureSelection, FeatureDissemination. Records are per region and per image (tile
figures are aggregated per region), which keeps stdout small at thousands of tiles per second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aws_embedded_metrics.config import get_config
from aws_embedded_metrics.logger.metrics_logger_factory import create_metrics_logger

log = logging.getLogger(__name__)
NAMESPACE = "OSML/ModelRunner"


class Metrics:
    """Emits one EMF record per call; disabled (no output) when ``enabled`` is False."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        config = get_config()
        config.service_name = "OSML"
        config.service_type = "ModelRunner"
        config.log_group_name = "/aws/OSML/MRService"
        config.namespace = NAMESPACE
        if not config.environment:
            config.environment = "local"

    def emit(self, operation: str, dimensions: Mapping[str, str], values: Mapping[str, tuple[float, str]]) -> None:
        if not self.enabled:
            return

        async def flush() -> None:
            logger = create_metrics_logger()
            logger.set_namespace(NAMESPACE)
            logger.set_dimensions({"Operation": operation, **dimensions})
            for name, (value, unit) in values.items():
                logger.put_metric(name, value, unit)
            await logger.flush()

        try:
            asyncio.run(flush())
        except Exception:  # metrics never fail the work
            log.exception("could not emit metrics for %s", operation)
