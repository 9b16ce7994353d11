"""One error root for the runner; each error carries the context an operator needs to act on it."""

from __future__ import annotations


class ModelRunnerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ModelRunnerError):
    """A configuration variable is missing or malformed (raised once, at start-up)."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"configuration {variable}: {reason}")
        self.variable = variable
        self.reason = reason


class RequestError(ModelRunnerError):
    """An ImageRequest or region request is invalid; ``field`` names the offending key."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"Invalid image request: {field}: {reason}")
        self.field = field
        self.reason = reason


class ImageError(ModelRunnerError):
    """The image cannot be opened, read or georeferenced as asked."""


class TileEncodingError(ModelRunnerError):
    """GDAL could not write a tile in the requested format and compression."""


class InferenceError(ModelRunnerError):
    """The model endpoint failed for a tile, or answered with something unusable.

    ``retriable`` is False where another attempt cannot help: the endpoint does not exist or refuses us
    (then no other tile of the region is sent either), or the answer breaks a configured limit."""

    def __init__(self, message: str, *, retriable: bool = True, endpoint_down: bool = False,
                 throttled: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable and not endpoint_down
        self.endpoint_down = endpoint_down
        self.throttled = throttled


class EndpointBusy(ModelRunnerError):
    """The model endpoint's capacity is taken by other work: the region waits (its message comes back later)
    without counting as a failure."""


class FeatureError(ModelRunnerError):
    """A model feature cannot be turned into an output feature (no image geometry, bad properties)."""


class SinkError(ModelRunnerError):
    """An output (S3, Kinesis) could not be written completely."""


class AwsLimitError(ModelRunnerError):
    """A request would break a hard AWS limit or AWS refused it as invalid: permanent, retrying cannot help;
    the job fails with this reason."""
