"""Typed settings, read once from the environment at start-up and passed down.

Names and defaults are the reference's (OversightML Model Runner 2.3.0), so a deployment can swap
containers without touching its task definition. The reference's variables that mean nothing here are
accepted and ignored (:data:`IGNORED_REFERENCE_VARIABLES`, logged once at start-up when set). Ours are
prefixed ``MR_``.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ConfigError

_TRUE = ("true", "True", "TRUE", "1", "yes")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: The reference's variables a drop-in deployment may set that have no effect here, each with the reason.
#: The worker starts with them set (a task definition need not change) and says so once at start-up; no
#: setting holds their values, so no code can appear to honour them.
IGNORED_REFERENCE_VARIABLES: dict[str, str] = {
    "WORKERS_PER_CPU": "WORKERS sets the tile threads directly, and the reference uses it only in its "
                       "self-throttling formula, which capacity scheduling replaces (capacity comes from the "
                       "endpoint)",
    "THROTTLING_SCALE_FACTOR": "it scales the reference's regions-per-endpoint formula, which capacity "
                               "scheduling replaces (capacity comes from the endpoint)",
    "ELEVATION_DATA_VERSION": "ELEVATION_DATA_LOCATION names the elevation data itself (the reference reads "
                              "this SRTM tile-set name and never uses it)",
    "API_ENDPOINT": "the reference reads it and never uses it",
    "CODEGURU_PROFILING_GROUP": "no CodeGuru profiler is started",
}


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(name, "is required and not set")
    return value


def _int(env: Mapping[str, str], name: str, default: int | None = None, minimum: int = 0,
         maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ConfigError(name, "is required and not set")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"must be <= {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(name, f"must be a number, got {raw!r}") from None


def _size(env: Mapping[str, str], name: str, default: tuple[int, int]) -> tuple[int, int]:
    """``REGION_SIZE`` is a Python tuple literal in the reference, e.g. ``(8192, 8192)``; ``8192`` also works."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        raise ConfigError(name, f"must be like (8192, 8192), got {raw!r}") from None
    if isinstance(value, int):
        value = (value, value)
    if (not isinstance(value, tuple | list) or len(value) != 2
            or not all(isinstance(v, int) and v > 0 for v in value)):
        raise ConfigError(name, f"must be two positive integers like (8192, 8192), got {raw!r}")
    return int(value[0]), int(value[1])


def _names(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list (``MR_HTTP_ENDPOINT_HOSTS=models.internal,10.0.0.5:8080``); unset: ``default``."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


#: Raster drivers GDAL may use to open an image (``gdal.OpenEx(allowed_drivers=...)``, in
#: ``imagery/source.py``): what satellite imagery comes in. Not VRT (it can point at any file) nor any vector,
#: database, network or memory driver (``MEM:::DATAPOINTER=`` reads raw process memory).
DEFAULT_IMAGE_DRIVERS = ("GTiff", "COG", "NITF", "JPEG", "PNG", "JP2OpenJPEG")


def _extension(raw: str) -> str:
    """``ELEVATION_DATA_EXTENSION``: the suffix of the DEM tiles in an ``ELEVATION_DATA_LOCATION`` folder
    (``tif`` and ``.tif`` both mean ``.tif``; empty means the default)."""
    value = raw.strip() or ".tif"
    return value if value.startswith(".") else "." + value


def _log_level(env: Mapping[str, str], name: str) -> str:
    """A logging level name (any case); a typo stops the worker rather than silently logging at INFO."""
    raw = env.get(name, "").strip().upper()
    if not raw:
        return "INFO"
    if raw not in LOG_LEVELS:
        raise ConfigError(name, f"must be one of {', '.join(LOG_LEVELS)}, got {env[name]!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything the worker needs from its environment."""

    aws_region: str
    job_table: str
    region_table: str
    endpoint_table: str
    feature_table: str
    image_queue: str
    region_queue: str
    workers: int
    image_status_topic: str | None = None
    region_status_topic: str | None = None
    region_size: tuple[int, int] = (10240, 10240)
    throttling_retry_timeout: int = 10
    elevation_data_location: str | None = None
    """A DEM file, or a folder (local or s3://) of elevation tiles mosaicked once per process; used for RPC
    images (``imagery/elevation.py``)."""
    elevation_data_extension: str = ".tif"
    ignored_variables: tuple[str, ...] = ()
    """The :data:`IGNORED_REFERENCE_VARIABLES` that are set, to be logged once at start-up (:meth:`ignored_notes`)."""
    # Ours.
    region_wait_seconds: int = 10
    """Long-poll wait on the region queue (the reference's 10 s); the image queue is polled without waiting."""
    visibility_timeout: int = 120
    """Seconds a held message is kept invisible per heartbeat extension."""
    stop_timeout: float = 30.0
    """Seconds between SIGTERM and exit (ECS ``stopTimeout``): work not finished by then is handed back."""
    http_verify_tls: bool = True
    http_timeout: float = 60.0
    ddb_ttl_days: float = 1.0
    feature_ttl_seconds: int = 7200
    kinesis_shard_limits: bool = True
    """Pace Kinesis outputs to each shard's 1,000 records/s and 1 MiB/s (``MR_KINESIS_SHARD_LIMITS``); off only
    for stand-ins without those limits (moto: the local stack turns it off, so that local runs and benchmarks
    are not slowed to a real shard's rate)."""
    max_tile_attempts: int = 4
    """Attempts per tile for errors the endpoint client's own retries do not cover (e.g. HTTP 5xx)."""
    tile_retry_base_seconds: float = 0.5
    """First back-off between attempts of a tile (doubled each attempt, full jitter)."""
    tile_retry_max_seconds: float = 10.0
    """Longest back-off between attempts of a tile."""
    local_image_root: str | None = None
    """Local image paths are refused unless this is set, and then allowed only under it (after resolving
    ``..`` and links). Image URLs are otherwise ``s3://`` only."""
    http_endpoint_hosts: tuple[str, ...] = ()
    """``host`` or ``host:port`` entries an ``HTTP_ENDPOINT`` model URL may name; empty: none allowed."""
    image_drivers: tuple[str, ...] = DEFAULT_IMAGE_DRIVERS
    """GDAL raster drivers allowed to open an image."""
    max_image_pixels: int = 10_000_000_000
    """Images with more pixels (width x height) are refused."""
    max_features_per_tile: int = 20_000
    """A tile whose model answer holds more features fails with that reason."""
    max_receive_count: int = 3
    """A message received more often than this while its job never ended has killed workers: its job ends
    FAILED with that reason instead of crashing the next worker."""
    scheduler_throttling_enabled: bool = True
    """Fleet-wide capacity leases per model endpoint (``SCHEDULER_THROTTLING_ENABLED``, as upstream v3;
    ``SM_SELF_THROTTLING=True`` also turns it on). Needs ``ENDPOINT_TABLE``."""
    default_instance_concurrency: int = 2
    """Tiles one SageMaker instance works on at once, unless the endpoint's ``osml:instance-concurrency``
    tag says otherwise."""
    default_http_concurrency: int = 10
    """Tiles an HTTP endpoint works on at once (``DEFAULT_HTTP_ENDPOINT_CONCURRENCY``)."""
    capacity_target_percentage: float = 1.0
    """Share of an endpoint's capacity the fleet may use (``CAPACITY_TARGET_PERCENTAGE``)."""
    capacity_lease_seconds: float = 30.0
    """A capacity lease not renewed for this long (its worker died) is free again."""
    failpoints: tuple[str, ...] = ()
    """Crash tests only: points where the worker kills itself (``modelrunner.failpoints``); empty in service."""
    heartbeat_file: str | None = None
    """File whose mtime the worker loop sets on every poll (``liveness.py``); the container's HEALTHCHECK."""
    log_level: str = "INFO"
    """Level of the JSON log lines on stderr (``MR_LOG_LEVEL``); the entry point's ``-v`` makes it DEBUG."""
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable once; a missing or malformed one is a ConfigError naming it."""
        env = os.environ if env is None else env
        region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or ""
        if not region:
            raise ConfigError("AWS_DEFAULT_REGION", "is required and not set")
        self_throttling = env.get("SM_SELF_THROTTLING", "False") in _TRUE  # the reference's switch: on only
        return cls(
            aws_region=region,
            job_table=_required(env, "JOB_TABLE") if "IMAGE_REQUEST_TABLE" not in env
            else _required(env, "IMAGE_REQUEST_TABLE"),
            region_table=_required(env, "REGION_REQUEST_TABLE"),
            endpoint_table=env.get("ENDPOINT_TABLE", "").strip(),
            feature_table=_required(env, "FEATURE_TABLE"),
            image_queue=_required(env, "IMAGE_QUEUE"),
            region_queue=_required(env, "REGION_QUEUE"),
            workers=_int(env, "WORKERS", minimum=1),
            image_status_topic=env.get("IMAGE_STATUS_TOPIC") or None,
            region_status_topic=env.get("REGION_STATUS_TOPIC") or None,
            region_size=_size(env, "REGION_SIZE", (10240, 10240)),
            throttling_retry_timeout=_int(env, "THROTTLING_RETRY_TIMEOUT", 10, minimum=0),
            elevation_data_location=env.get("ELEVATION_DATA_LOCATION") or None,
            elevation_data_extension=_extension(env.get("ELEVATION_DATA_EXTENSION", ".tif")),
            ignored_variables=tuple(name for name in IGNORED_REFERENCE_VARIABLES if name in env),
            region_wait_seconds=_int(env, "MR_REGION_WAIT_SECONDS", 10),
            visibility_timeout=_int(env, "MR_VISIBILITY_TIMEOUT", 120, minimum=2, maximum=43200),
            stop_timeout=_float(env, "MR_STOP_TIMEOUT", 30.0),
            http_verify_tls=env.get("MR_HTTP_VERIFY_TLS", "true") in _TRUE,
            http_timeout=_float(env, "MR_HTTP_TIMEOUT", 60.0),
            ddb_ttl_days=_float(env, "DDB_TTL_IN_DAYS", 1.0),
            kinesis_shard_limits=env.get("MR_KINESIS_SHARD_LIMITS", "true") in _TRUE,
            max_tile_attempts=_int(env, "MR_MAX_TILE_ATTEMPTS", 4, minimum=1),
            tile_retry_base_seconds=_float(env, "MR_TILE_RETRY_BASE_SECONDS", 0.5),
            tile_retry_max_seconds=_float(env, "MR_TILE_RETRY_MAX_SECONDS", 10.0),
            local_image_root=env.get("MR_LOCAL_IMAGE_ROOT") or None,
            http_endpoint_hosts=_names(env, "MR_HTTP_ENDPOINT_HOSTS", ()),
            image_drivers=_names(env, "MR_IMAGE_DRIVERS", DEFAULT_IMAGE_DRIVERS),
            max_image_pixels=_int(env, "MR_MAX_IMAGE_PIXELS", 10_000_000_000, minimum=1),
            max_features_per_tile=_int(env, "MR_MAX_FEATURES_PER_TILE", 20_000, minimum=1),
            max_receive_count=_int(env, "MR_MAX_RECEIVE_COUNT", 3, minimum=1),
            scheduler_throttling_enabled=self_throttling
            or env.get("SCHEDULER_THROTTLING_ENABLED", "True") in _TRUE,
            default_instance_concurrency=_int(env, "DEFAULT_INSTANCE_CONCURRENCY", 2, minimum=1),
            default_http_concurrency=_int(env, "DEFAULT_HTTP_ENDPOINT_CONCURRENCY", 10, minimum=1),
            capacity_target_percentage=_float(env, "CAPACITY_TARGET_PERCENTAGE", 1.0),
            capacity_lease_seconds=_float(env, "MR_CAPACITY_LEASE_SECONDS", 30.0),
            failpoints=_names(env, "MR_FAILPOINTS", ()),
            heartbeat_file=env.get("MR_HEARTBEAT_FILE", "").strip() or None,
            log_level=_log_level(env, "MR_LOG_LEVEL"),
        )

    def ignored_notes(self) -> list[str]:
        """One line per ignored reference variable that is set: "X is set and has no effect here because ..."."""
        return [f"{name} is set and has no effect here because {IGNORED_REFERENCE_VARIABLES[name]}"
                for name in self.ignored_variables]
