"""Where a model is called: tile bytes in, a GeoJSON FeatureCollection (a dict) out.

Two endpoint kinds, as the reference: SageMaker runtime ``InvokeEndpoint`` (botocore's adaptive retry mode
does throttling and 5xx back-off, with its client-side rate limit) and a plain HTTP POST. A detector makes
one call; the tile step retries what failed (``MR_MAX_TILE_ATTEMPTS``, see ``runner/tiles.py``), so every
kind of failure (a 5xx, throttling, a dropped connection, a body that is not JSON, bad geometry) gets the
same bounded, jittered back-off. Errors say whether retrying can help: an endpoint that does not exist or
refuses us cannot, and the region stops calling it. Unlike the reference, HTTP non-2xx answers are errors,
redirects are not followed (a model URL must not bounce the worker elsewhere), and TLS is verified unless
configured off.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import urllib3
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import InferenceError

if TYPE_CHECKING:
    from ..metrics import Metrics

#: SageMaker error codes that mean the endpoint throttled the call (counted as ModelInvocation Throttles).
THROTTLING_CODES = ("ThrottlingException", "TooManyRequestsException", "Throttling")

# imageProcessorParameters that reach InvokeEndpoint (the upstream runner's list).
SAGEMAKER_PARAMETERS = ("ContentType", "Accept", "CustomAttributes", "TargetModel", "TargetVariant",
                        "TargetContainerHostname", "InferenceId", "EnableExplanations", "InferenceComponentName",
                        "SessionId")
TILE_CONTENT_TYPES = {"GTIFF": "image/tiff", "NITF": "application/octet-stream", "PNG": "image/png",
                      "JPEG": "image/jpeg"}


class Detector(Protocol):
    """Anything that turns one encoded tile into a FeatureCollection dict."""

    name: str

    def __call__(self, payload: bytes) -> dict[str, Any]: ...


def parse_answer(body: bytes, source: str) -> dict[str, Any]:
    """A model's answer as a JSON object, read as ``json`` would read it; anything else is an
    InferenceError naming ``source`` (the endpoint), so that the tile fails with a reason."""
    try:
        answer = _loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise InferenceError(f"{source} answered with something that is not JSON: {err}") from None
    if not isinstance(answer, dict):
        raise InferenceError(f"{source} answered with JSON that is not an object")
    return answer


def _loads(body: bytes) -> Any:
    """orjson (several times faster on big answers), except where it would differ from ``json``: it reads
    integers beyond 64 bits as floats (so a body with a run of 19+ digits goes to ``json``) and refuses
    ``NaN`` (read by ``json``, whose error is the one reported for what neither reads)."""
    if isinstance(body, bytes | bytearray) and body.translate(_DIGITS).find(_LONG_RUN) >= 0:
        return json.loads(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


_DIGITS = bytes(ord("0") if chr(i).isdigit() and i < 128 else ord(" ") for i in range(256))  # digits -> "0"
_LONG_RUN = b"0" * 19  # 19 digits can exceed a signed 64-bit integer


#: SageMaker runtime error codes that mean the endpoint cannot serve us at all (missing, forbidden).
_SAGEMAKER_DOWN = ("ValidationError", "AccessDeniedException", "UnrecognizedClientException",
                   "ExpiredTokenException", "InvalidSignatureException")


class SageMakerDetector:
    """SageMaker runtime ``InvokeEndpoint``; transport retries are botocore's (adaptive mode, ``aws.py``)."""

    def __init__(self, client: Any, endpoint: str, parameters: Mapping[str, Any] | None = None, *,
                 metrics: Metrics | None = None) -> None:
        self.client = client
        self.name = endpoint
        self.parameters = {k: v for k, v in (parameters or {}).items() if k in SAGEMAKER_PARAMETERS}
        self.metrics = metrics

    def __call__(self, payload: bytes) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            response = self.client.invoke_endpoint(EndpointName=self.name, Body=payload, **self.parameters)
            body = response["Body"].read()
        except ClientError as err:
            # botocore's retries are over; the attempts it made are in the error's metadata.
            code = err.response.get("Error", {}).get("Code", "")
            throttled = code in THROTTLING_CODES
            if self.metrics is not None:
                self.metrics.record("ModelInvocation", {"ModelName": self.name}, time.perf_counter() - started,
                                    error=True, retries=_retries(err.response), throttles=int(throttled))
            raise InferenceError(f"SageMaker endpoint {self.name}: {err}", endpoint_down=code in _SAGEMAKER_DOWN,
                                 throttled=throttled) from None
        except BotoCoreError as err:
            if self.metrics is not None:
                self.metrics.record("ModelInvocation", {"ModelName": self.name}, time.perf_counter() - started,
                                    error=True, retries=0)
            raise InferenceError(f"SageMaker endpoint {self.name}: {err}") from None
        if self.metrics is not None:
            self.metrics.record("ModelInvocation", {"ModelName": self.name}, time.perf_counter() - started,
                                retries=_retries(response))
        return parse_answer(body, f"SageMaker endpoint {self.name}")


def _retries(response: Mapping[str, Any]) -> int:
    """How many times botocore retried the call (``ResponseMetadata.RetryAttempts``)."""
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)


class HttpDetector:
    """A plain HTTP model endpoint: POST the tile bytes to the URL (``imageProcessor.name``)."""

    #: Answers after which another attempt of the same tile may succeed.
    RETRY_STATUSES = (408, 425, 429, 500, 502, 503, 504)
    #: Answers that mean the endpoint is not there for us: the region stops sending it tiles.
    DOWN_STATUSES = (401, 403, 404, 405)

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 60.0, verify_tls: bool = True,
                 content_type: str = "application/octet-stream",
                 parameters: Mapping[str, Any] | None = None, metrics: Metrics | None = None) -> None:
        self.name = url
        self.metrics = metrics
        # One quick reconnect for a keep-alive connection the server closed; every other retry is the tile
        # step's, with its back-off. Never a redirect.
        retry = urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0, other=0, allowed_methods=None,
                              raise_on_status=False, raise_on_redirect=False)
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=max(1, pool_size), block=True, retries=retry,
                                         timeout=urllib3.Timeout(connect=10.0, read=timeout),
                                         cert_reqs="CERT_REQUIRED" if verify_tls else "CERT_NONE")
        self.headers = {"Content-Type": content_type, "Accept": "application/json"}
        for key, value in (parameters or {}).items():
            header = "X-Amzn-SageMaker-Custom-Attributes" if key == "CustomAttributes" else key
            self.headers[header] = str(value)

    def __call__(self, payload: bytes) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            response = self._pool.request("POST", self.name, body=payload, headers=self.headers)
        except urllib3.exceptions.HTTPError as err:
            self._record(started, None, error=True)
            raise InferenceError(f"HTTP endpoint {self.name}: {err}") from None
        self._record(started, response, error=not 200 <= response.status < 300)
        if not 200 <= response.status < 300:
            raise InferenceError(f"HTTP endpoint {self.name} answered {response.status}: {response.data[:200]!r}",
                                 retriable=response.status in self.RETRY_STATUSES,
                                 endpoint_down=response.status in self.DOWN_STATUSES,
                                 throttled=response.status in (429, 503))
        return parse_answer(response.data, f"HTTP endpoint {self.name}")

    def _record(self, started: float, response: urllib3.BaseHTTPResponse | None, *, error: bool) -> None:
        """One ModelInvocation event; retries and 429 answers from urllib3's retry history."""
        if self.metrics is None:
            return
        history = response.retries.history if response is not None and response.retries is not None else ()
        throttled = sum(1 for attempt in history if attempt.status == 429)
        if response is not None and response.status == 429:
            throttled += 1
        # The reference names HTTP endpoints' ModelInvocation records "http", not by URL.
        self.metrics.record("ModelInvocation", {"ModelName": "http"}, time.perf_counter() - started, error=error,
                            retries=len(history), throttles=throttled)

    def close(self) -> None:
        self._pool.clear()
