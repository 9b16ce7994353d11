"""Where a model is called: tile bytes in, a GeoJSON FeatureCollection (a dict) out.

Two endpoint kinds, as the reference: SageMaker runtime ``InvokeEndpoint`` (botocore's adaptive retry mode
does throttling and 5xx back-off) and a plain HTTP POST (urllib3's Retry does the same for HTTP). Unlike the
reference, HTTP non-2xx answers are errors, a Content-Type is sent, and TLS is verified unless configured off.
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


def _parse(body: bytes, source: str) -> dict[str, Any]:
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


class SageMakerDetector:
    """SageMaker runtime ``InvokeEndpoint``; retries are botocore's (adaptive mode, set in ``aws.py``)."""

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
            if self.metrics is not None:
                code = err.response.get("Error", {}).get("Code", "")
                self.metrics.record("ModelInvocation", {"ModelName": self.name}, time.perf_counter() - started,
                                    error=True, retries=_retries(err.response),
                                    throttles=int(code in THROTTLING_CODES))
            raise InferenceError(f"SageMaker endpoint {self.name}: {err}") from None
        except BotoCoreError as err:
            if self.metrics is not None:
                self.metrics.record("ModelInvocation", {"ModelName": self.name}, time.perf_counter() - started,
                                    error=True, retries=0)
            raise InferenceError(f"SageMaker endpoint {self.name}: {err}") from None
        if self.metrics is not None:
            self.metrics.record("ModelInvocation", {"ModelName": self.name}, time.perf_counter() - started,
                                retries=_retries(response))
        return _parse(body, f"SageMaker endpoint {self.name}")


def _retries(response: Mapping[str, Any]) -> int:
    """How many times botocore retried the call (``ResponseMetadata.RetryAttempts``)."""
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)


class HttpDetector:
    """A plain HTTP model endpoint: POST the tile bytes to the URL (``imageProcessor.name``)."""

    RETRY_STATUSES = (429, 500, 502, 503, 504)

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 60.0, verify_tls: bool = True,
                 retries: int = 5, backoff: float = 0.2, content_type: str = "application/octet-stream",
                 parameters: Mapping[str, Any] | None = None, metrics: Metrics | None = None) -> None:
        self.name = url
        self.metrics = metrics
        retry = urllib3.Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff,
                              status_forcelist=self.RETRY_STATUSES, allowed_methods=None,
                              raise_on_status=False, respect_retry_after_header=True)
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
            raise InferenceError(f"HTTP endpoint {self.name} answered {response.status}: {response.data[:200]!r}")
        return _parse(response.data, f"HTTP endpoint {self.name}")

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
