"""A small threaded HTTP model server speaking the SageMaker container and runtime contracts.

Two ways in, same answer (a GeoJSON FeatureCollection from :mod:`modelrunner.local.models`):

* the *container* contract a SageMaker endpoint image implements: ``GET /ping`` -> 200 and
  ``POST /invocations`` with the tile bytes as the body; this is what the runner's HTTP endpoint client
  (or ``curl``) talks to;
* the SageMaker *runtime* API, ``POST /endpoints/{EndpointName}/invocations``: point boto3's
  ``sagemaker-runtime`` client at this server with ``endpoint_url`` (any credentials; the SigV4 signature
  is not checked) and ``invoke_endpoint`` works. An ``EndpointName`` that names a model in
  :data:`~modelrunner.local.models.MODELS` selects that model, any other name the server's default model.
  Answers carry what botocore parses: ``Content-Type`` and ``x-Amzn-Invoked-Production-Variant`` headers;
  errors use the rest-json error shape (``x-amzn-ErrorType`` header, ``{"__type", "message"}`` body).

Failure injection, for the runner's retry tests, is deterministic: with ``fail_rate`` p = a/b (as a
fraction), invocation n (counted from 1 across both paths) fails when ``floor(n*a/b) > floor((n-1)*a/b)``,
i.e. exactly p of the requests, evenly spread (p = 0.5 fails requests 2, 4, 6, ...). How a request fails is
``fail_mode``:

- ``internal``: a 500 (on the runtime path SageMaker's ``InternalFailure``, which botocore itself retries);
- ``model``: a 500 from the container, on the runtime path SageMaker's ``ModelError`` (424, not retried by
  botocore);
- ``throttle``: 429 on the container path, ``ThrottlingException`` (400) on the runtime path;
- ``empty``: 200 with an empty body; ``garbage``: 200 with a body that is not JSON; ``badgeometry``: 200
  with a FeatureCollection whose geometry is malformed;
- ``drop``: the connection is closed without an answer; ``slow``: the answer comes after ``slow_ms``.

An undecodable body is a 400 on the container path and, as SageMaker relays container errors, a
``ModelError`` with ``OriginalStatusCode`` 400 on the runtime path. With ``strict_endpoints`` the runtime
path answers an ``EndpointName`` that names no model as SageMaker does for a missing endpoint
(``ValidationError``, 400). ``POST /control`` with a JSON object of these settings (``fail_rate``,
``fail_mode``, ``slow_ms``, ``delay_ms``, ``strict_endpoints``) changes them while the server runs and
restarts the failure count, so one server can play each fault in turn; ``GET /stats`` answers the
invocation and failure counts.

The server is ``http.server.ThreadingHTTPServer`` (one thread per connection) with HTTP/1.1 keep-alive
and TCP_NODELAY, each answer written with a single ``write``: with a few keep-alive client threads the
cost per tile is the model's, not the HTTP layer's.

Command line (prints one line, ``listening on http://HOST:PORT``, once it accepts connections)::

    python -m modelrunner.local.model_server --model flood --flood-count 20 --port 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote

import orjson

from modelrunner.local.models import MODELS, TileDecodeError, run_model

log = logging.getLogger(__name__)

#: Largest request body accepted (a 4096 x 4096 x 4 band float32 tile is 256 MiB).
MAX_BODY_BYTES = 512 * 1024 * 1024
FAIL_MODES = ("internal", "model", "throttle", "empty", "garbage", "badgeometry", "drop", "slow")
_RUNTIME_PREFIX = "/endpoints/"
_RUNTIME_SUFFIX = "/invocations"
_PRODUCTION_VARIANT = "AllTraffic"


@dataclass
class ServerConfig:
    """What a model server answers and how: the default model, model options and failure injection."""

    model: str = "centerpoint"
    flood_count: int = 10
    seed: int = 0
    fail_rate: float = 0.0
    fail_mode: str = "internal"
    delay_ms: float = 0.0
    slow_ms: float = 5000.0
    strict_endpoints: bool = False
    throttle_above: int = 0
    """When > 0, an invocation arriving while more than this many are in flight is throttled (429 /
    ThrottlingException): an endpoint whose capacity is smaller than its clients believe."""
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: {', '.join(sorted(MODELS))}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be in [0, 1], got {self.fail_rate}")
        if self.fail_mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be one of {FAIL_MODES}, got {self.fail_mode!r}")
        if self.delay_ms < 0 or self.slow_ms < 0:
            raise ValueError(f"delay_ms and slow_ms must be >= 0, got {self.delay_ms}, {self.slow_ms}")
        if self.flood_count < 0 or self.seed < 0:
            raise ValueError("flood_count and seed must be >= 0")

    def options_for(self, model: str) -> dict[str, Any]:
        """Keyword options for ``model``: the flood settings for ``flood``, plus any explicit overrides."""
        options: dict[str, Any] = {"count": self.flood_count, "seed": self.seed} if model == "flood" else {}
        options.update(self.model_options.get(model, {}))
        return options


class _FailureSchedule:
    """Deterministic failure injection by request counter (see the module docstring); thread-safe."""

    def __init__(self, rate: float) -> None:
        fraction = Fraction(rate).limit_denominator(1_000_000)
        self._numerator, self._denominator = fraction.numerator, fraction.denominator
        self._count = 0
        self._failed = 0
        self._lock = threading.Lock()

    def next(self) -> tuple[int, bool]:
        """Count one invocation; return its number (from 1) and whether it must fail."""
        a, b = self._numerator, self._denominator
        with self._lock:
            self._count += 1
            n = self._count
            fail = (n * a) // b > ((n - 1) * a) // b
            self._failed += fail
        return n, fail

    @property
    def count(self) -> int:
        """Invocations counted so far."""
        return self._count

    @property
    def failed(self) -> int:
        """Invocations told to fail so far."""
        return self._failed


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its config and can drop its open keep-alive connections on stop."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], config: ServerConfig) -> None:
        self.config = config
        self.failures = _FailureSchedule(config.fail_rate)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._in_flight = self._max_in_flight = self._requests = self._throttled = 0
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log through ``logging``; a client that resets or drops its connection is routine, not an error."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("connection from %s dropped: %s", client_address, error)
        else:
            log.exception("error while serving %s", client_address)

    def enter(self) -> int:
        """An invocation starts; returns how many are in flight with it."""
        with self._connections_lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._requests += 1
            return self._in_flight

    def leave(self) -> None:
        with self._connections_lock:
            self._in_flight -= 1

    def count_throttle(self) -> None:
        with self._connections_lock:
            self._throttled += 1

    def stats(self) -> dict[str, int]:
        """Counts since the start (or the last ``reset_stats`` control)."""
        with self._connections_lock:
            return {"invocations": self.failures.count, "failed": self.failures.failed, "requests": self._requests,
                    "throttled": self._throttled, "in_flight": self._in_flight, "max_in_flight": self._max_in_flight}

    def reconfigure(self, changes: Mapping[str, Any]) -> None:
        """Apply ``/control`` changes (validated as a new :class:`ServerConfig`) and restart the count."""
        config = replace(self.config, **changes)
        self.config = config
        self.failures = _FailureSchedule(config.fail_rate)
        with self._connections_lock:
            self._requests = self._throttled = self._max_in_flight = 0

    def close_connections(self) -> None:
        """Shut down every open client connection, so idle keep-alive handler threads end now."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)


class _BadRequest(Exception):
    """The request itself is malformed (framing, size); answered with ``status``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    """Request handler: /ping, /invocations and /endpoints/{name}/invocations."""

    protocol_version = "HTTP/1.1"
    server_version = "modelrunner-model-server/1.0"
    disable_nagle_algorithm = True  # answers are small: never wait for a delayed ACK
    timeout = 300  # an idle keep-alive connection frees its thread after this many seconds
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Route the per-request access log to ``logging`` (debug) instead of stderr."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/ping":
            self._send(HTTPStatus.OK, b"\n", "text/plain")
        elif path == "/stats":
            self._send_json(HTTPStatus.OK, self.server.stats())
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {path}"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        runtime = path.startswith(_RUNTIME_PREFIX) and path.endswith(_RUNTIME_SUFFIX)
        if runtime:
            endpoint = unquote(path[len(_RUNTIME_PREFIX) : -len(_RUNTIME_SUFFIX)])
            if not endpoint or "/" in endpoint:
                self._drain_body()
                self._runtime_error(HTTPStatus.BAD_REQUEST, "ValidationError", f"bad endpoint path: {path}")
                return
            if endpoint not in MODELS and self.server.config.strict_endpoints:
                self._drain_body()
                self._runtime_error(HTTPStatus.BAD_REQUEST, "ValidationError",
                                    f"Endpoint {endpoint} of account 123456789012 not found.")
                return
            model = endpoint if endpoint in MODELS else self.server.config.model
        elif path == "/invocations":
            model = self.server.config.model
        elif path == "/control":
            self._control()
            return
        else:
            self._drain_body()
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {path}"})
            return
        try:
            body = self._read_body()
        except _BadRequest as err:
            self.close_connection = True  # the framing is unknown: the connection cannot be reused
            if runtime:
                self._runtime_error(err.status, "ValidationError", str(err))
            else:
                self._send_json(err.status, {"error": str(err)})
            return
        self._invoke(model, body, runtime)

    def _control(self) -> None:
        """Change the failure injection while serving (tests play one fault after another)."""
        try:
            changes = json.loads(self._read_body() or b"{}")
            allowed = {"fail_rate", "fail_mode", "slow_ms", "delay_ms", "strict_endpoints", "throttle_above"}
            if not isinstance(changes, dict) or set(changes) - allowed:
                raise ValueError(f"expected an object with keys among {sorted(allowed)}")
            self.server.reconfigure(changes)
        except (ValueError, TypeError, _BadRequest) as err:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        self._send_json(HTTPStatus.OK, {"ok": True})

    def _invoke(self, model: str, body: bytes, runtime: bool) -> None:
        in_flight = self.server.enter()
        try:
            self._answer(model, body, runtime, in_flight)
        finally:
            self.server.leave()

    def _answer(self, model: str, body: bytes, runtime: bool, in_flight: int) -> None:
        config = self.server.config
        if config.throttle_above and in_flight > config.throttle_above:
            self.server.count_throttle()
            message = f"{in_flight} requests in flight, more than {config.throttle_above}"
            if runtime:
                self._runtime_error(HTTPStatus.BAD_REQUEST, "ThrottlingException", message)
            else:
                self._send_json(HTTPStatus.TOO_MANY_REQUESTS, {"error": message})
            return
        number, fail = self.server.failures.next()
        if config.delay_ms > 0:
            time.sleep(config.delay_ms / 1000.0)
        if fail:
            self._fail(config, number, runtime)
            return
        try:
            result = run_model(model, body, **config.options_for(model))
        except TileDecodeError as err:
            if runtime:
                self._model_error(HTTPStatus.BAD_REQUEST, str(err))
            else:
                self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        except Exception as err:  # a model bug must not kill the connection thread: answer 500
            log.exception("model %s failed", model)
            if runtime:
                self._model_error(HTTPStatus.INTERNAL_SERVER_ERROR, f"model {model} failed: {err}")
            else:
                self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"model {model} failed: {err}"})
            return
        headers = {"x-Amzn-Invoked-Production-Variant": _PRODUCTION_VARIANT} if runtime else {}
        self._send_json(HTTPStatus.OK, result, headers)

    def _fail(self, config: ServerConfig, number: int, runtime: bool) -> None:
        """Answer invocation ``number`` with the configured fault (see the module docstring)."""
        message = f"injected {config.fail_mode} failure for invocation {number} (fail rate {config.fail_rate})"
        mode = config.fail_mode
        if mode == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "slow":
            time.sleep(config.slow_ms / 1000.0)
            mode = "internal"  # if the client is still waiting, it gets an error
        if mode == "empty":
            self._send(HTTPStatus.OK, b"", "application/json")
        elif mode == "garbage":
            self._send(HTTPStatus.OK, b"<html>upstream proxy error</html>", "application/json")
        elif mode == "badgeometry":
            self._send_json(HTTPStatus.OK, {"type": "FeatureCollection", "features": [
                {"type": "Feature", "geometry": None,
                 "properties": {"imageGeometry": {"type": "Polygon", "coordinates": "not coordinates"}}}]})
        elif mode == "throttle":
            if runtime:
                self._runtime_error(HTTPStatus.BAD_REQUEST, "ThrottlingException", message)
            else:
                self._send_json(HTTPStatus.TOO_MANY_REQUESTS, {"error": message}, {"Retry-After": "0"})
        elif not runtime:
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": message})
        elif mode == "model":
            self._model_error(HTTPStatus.INTERNAL_SERVER_ERROR, message)
        else:
            self._runtime_error(HTTPStatus.INTERNAL_SERVER_ERROR, "InternalFailure", message)

    def _read_body(self) -> bytes:
        """Read the request body, framed by Content-Length or chunked transfer encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise _BadRequest(
                HTTPStatus.LENGTH_REQUIRED, "a body with Content-Length (or chunked) is required"
            )
        try:
            length = int(length_header)
        except ValueError:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"bad Content-Length: {length_header!r}") from None
        if length < 0:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"bad Content-Length: {length_header!r}")
        if length > MAX_BODY_BYTES:
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(HTTPStatus.BAD_REQUEST, f"bad chunk size line: {line!r}") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _BadRequest(HTTPStatus.BAD_REQUEST, "truncated chunk")
            parts.append(chunk)
            self.rfile.readline(1024)  # the CRLF after the chunk

    def _drain_body(self) -> None:
        """Consume an unwanted body so the keep-alive connection stays usable; close it if we cannot."""
        try:
            self._read_body()
        except _BadRequest:
            self.close_connection = True

    def _runtime_error(self, status: HTTPStatus, error_type: str, message: str, **extra: Any) -> None:
        """An error in the rest-json shape botocore parses into ``ClientError`` (code, message, fields)."""
        self._send_json(
            status, {"__type": error_type, "message": message, **extra}, {"x-amzn-ErrorType": error_type}
        )

    def _model_error(self, original_status: HTTPStatus, message: str) -> None:
        """What SageMaker answers when its container answers ``original_status``: a 424 ModelError."""
        self._runtime_error(
            HTTPStatus.FAILED_DEPENDENCY,
            "ModelError",
            f"Received {'client' if original_status < 500 else 'server'} error ({int(original_status)}) "
            f'from primary with message "{message}"',
            OriginalStatusCode=int(original_status),
            OriginalMessage=message,
        )

    def _send_json(self, status: HTTPStatus, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        # orjson: a model answer of a few hundred features is most of this server's CPU with json. It writes
        # NaN and infinities as null where json writes NaN/Infinity; the bundled models only produce finite
        # numbers (the objects model replaces non-finite pixels first).
        try:
            body = orjson.dumps(payload)
        except TypeError:
            body = json.dumps(payload, separators=(",", ":")).encode()
        self._send(status, body, "application/json", headers)

    def _send(
        self, status: HTTPStatus, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Write status line, headers and body in one ``write`` (one segment for small answers)."""
        lines = [
            f"{self.protocol_version} {int(status)} {status.phrase}",
            f"Server: {self.server_version}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.log_request(int(status), len(body))


class ModelServer:
    """The model server in a background thread, for in-process tests and the demo.

    ``with ModelServer("objects") as server: requests.post(server.url + "/invocations", ...)``; ``port=0``
    (the default) binds a free port, read back from :attr:`port` / :attr:`url` after :meth:`start`.
    """

    def __init__(
        self,
        model: str = "centerpoint",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        flood_count: int = 10,
        seed: int = 0,
        fail_rate: float = 0.0,
        fail_mode: str = "internal",
        delay_ms: float = 0.0,
        slow_ms: float = 5000.0,
        strict_endpoints: bool = False,
        model_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.config = ServerConfig(
            model=model,
            flood_count=flood_count,
            seed=seed,
            fail_rate=fail_rate,
            fail_mode=fail_mode,
            delay_ms=delay_ms,
            slow_ms=slow_ms,
            strict_endpoints=strict_endpoints,
            model_options=dict(model_options or {}),
        )
        self._address = (host, port)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def bind(self) -> _HTTPServer:
        """Bind the listening socket (no serving yet); idempotent."""
        if self._httpd is None:
            self._httpd = _HTTPServer(self._address, self.config)
        return self._httpd

    def start(self) -> ModelServer:
        """Bind and serve in a daemon thread; returns self once connections are accepted."""
        httpd = self.bind()
        if self._thread is None:
            self._thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="model-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and drop open keep-alive connections; idempotent."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        if thread is not None:
            httpd.shutdown()
            thread.join()
        httpd.server_close()
        httpd.close_connections()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._bound().server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``; a wildcard bind address is given as 127.0.0.1."""
        host = str(self._bound().server_address[0])
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def invocations(self) -> int:
        """Invocations received so far (both paths, failed ones included)."""
        return self._bound().failures.count

    @property
    def injected_failures(self) -> int:
        """Invocations answered with an injected failure so far."""
        return self._bound().failures.failed

    def serve_forever(self) -> None:
        """Serve in the calling thread until an exception (SIGINT, or SIGTERM in the CLI) ends it."""
        httpd = self.bind()
        try:
            httpd.serve_forever(poll_interval=0.1)
        finally:
            self._httpd = None
            httpd.server_close()
            httpd.close_connections()

    def _bound(self) -> _HTTPServer:
        if self._httpd is None:
            raise RuntimeError("the model server is not started")
        return self._httpd

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _positive_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (also documents the options)."""
    parser = argparse.ArgumentParser(
        prog="python -m modelrunner.local.model_server",
        description="Serve a bundled model over the SageMaker container and runtime HTTP contracts.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["serve"],
        default="serve",
        help="SageMaker starts containers with 'serve'",
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="centerpoint", help="default model")
    parser.add_argument("--flood-count", type=_non_negative_int, default=10, help="boxes per tile (flood)")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the flood model")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_non_negative_int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--fail-rate", type=_positive_fraction, default=0.0, help="fraction of invocations answered 500"
    )
    parser.add_argument(
        "--fail-mode",
        choices=FAIL_MODES,
        default="internal",
        help="how an injected failure answers (see the module docstring)",
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="extra latency per invocation")
    parser.add_argument("--slow-ms", type=float, default=5000.0, help="latency of a 'slow' failure")
    parser.add_argument("--strict-endpoints", action="store_true",
                        help="runtime path: an endpoint name that names no model is 'not found'")
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level on stderr (DEBUG logs requests)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; print ``listening on URL`` once ready."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    server = ModelServer(
        args.model,
        host=args.host,
        port=args.port,
        flood_count=args.flood_count,
        seed=args.seed,
        fail_rate=args.fail_rate,
        fail_mode=args.fail_mode,
        delay_ms=args.delay_ms,
        slow_ms=args.slow_ms,
        strict_endpoints=args.strict_endpoints,
    )
    server.bind()

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    print(f"listening on {server.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
