"""LeanInvoker sends what botocore sends, answers what botocore answers, and leaves failures to botocore.

A recording HTTP server on 127.0.0.1 stands in for SageMaker: it keeps every request (path, headers, body)
and answers from a script of (status, headers, body), repeating the last entry.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EndpointConnectionError

from modelrunner.errors import InferenceError
from modelrunner.inference.detectors import SageMakerDetector
from modelrunner.inference.invoke import LeanInvoker
from modelrunner.local.stack import free_port

KEYS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secret", "aws_session_token": "token"}
ANSWER = json.dumps({"type": "FeatureCollection", "features": []}).encode()
OK = (200, {"Content-Type": "application/json", "x-Amzn-Invoked-Production-Variant": "AllTraffic"}, ANSWER)
THROTTLED = (400, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": "ThrottlingException"},
             b'{"__type": "ThrottlingException", "message": "Rate exceeded"}')
MODEL_ERROR = (424, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": "ModelError"},
               b'{"__type": "ModelError", "Message": "Received client error (400) from primary"}')


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.script: list[tuple[int, dict[str, str], bytes]] = [OK]
        self.lock = threading.Lock()

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests.append((path, headers, body))
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, headers, answer = recorder.answer(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", recorder
    finally:
        httpd.shutdown()
        httpd.server_close()


def client(url: str, attempts: int = 3) -> Any:
    return boto3.client("sagemaker-runtime", region_name="us-east-1", endpoint_url=url, **KEYS,
                        config=Config(retries={"mode": "adaptive", "max_attempts": attempts}))


CALLS = [
    {"EndpointName": "flood", "Body": bytes(range(256)) * 40},
    {"EndpointName": "my model/v~2 é", "Body": b"tile", "ContentType": "image/tiff", "Accept": "application/json",
     "CustomAttributes": "a=b;c", "TargetVariant": "v 1", "InferenceId": "id-1"},
    {"EndpointName": "e", "Body": b""},
]


def _signed(headers: dict[str, str]) -> list[str]:
    return headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")


@pytest.mark.parametrize("call", CALLS)
def test_the_request_is_botocore_s_and_its_signature_checks_out(server: tuple[str, Recorder], call: dict[str, Any]):
    url, recorder = server
    plain = client(url)
    plain.invoke_endpoint(**call)
    lean = LeanInvoker(client(url))
    assert lean.fast and not lean.checked
    lean.invoke_endpoint(**call)  # through botocore, which shows the URL it resolves
    assert lean.fast and lean.checked
    lean.invoke_endpoint(**call)
    (stock_path, stock_headers, stock_body), _, (path, headers, body) = recorder.requests
    assert (path, body) == (stock_path, stock_body)
    assert _signed(headers) == _signed(stock_headers)
    for name in _signed(stock_headers):
        if name != "x-amz-date":
            assert headers[name] == stock_headers[name], name
    assert "lean-invoke" in headers["user-agent"] and "lean-invoke" not in stock_headers["user-agent"]
    # The signature is what SigV4 gives for this request at its own X-Amz-Date.
    request = AWSRequest(method="POST", url=url + path, data=body,
                         headers={name: headers[name] for name in _signed(headers) if name != "host"})
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(Credentials("AKIDEXAMPLE", "secret", "token"), "sagemaker", "us-east-1")
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    assert headers["authorization"].endswith(f"Signature={expected}")


def test_the_answer_is_botocore_s(server: tuple[str, Recorder]):
    url, _ = server
    stock = client(url).invoke_endpoint(**CALLS[1])
    invoker = LeanInvoker(client(url))
    invoker.invoke_endpoint(**CALLS[1])
    lean = invoker.invoke_endpoint(**CALLS[1])
    assert invoker.fast and invoker.checked
    assert lean["Body"].read() == stock["Body"].read() == ANSWER
    for key in ("ContentType", "InvokedProductionVariant"):
        assert lean[key] == stock[key]
    assert lean["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_a_throttled_call_is_retried_by_botocore_and_later_calls_stay_there(server: tuple[str, Recorder]):
    url, recorder = server
    recorder.script = [OK, THROTTLED, THROTTLED, OK]
    lean = LeanInvoker(client(url))
    lean.invoke_endpoint(**CALLS[0])  # the checking call
    answer = lean.invoke_endpoint(**CALLS[0])
    assert answer["Body"].read() == ANSWER
    assert not lean.fast
    agents = [headers["user-agent"] for _, headers, _ in recorder.requests[1:]]
    # The fast attempt, then botocore's two (one throttled, retried after its back-off).
    assert len(agents) == 3 and "lean-invoke" in agents[0] and not any("lean-invoke" in a for a in agents[1:])
    lean.invoke_endpoint(**CALLS[0])
    assert "lean-invoke" not in recorder.requests[-1][1]["user-agent"]


def test_errors_are_reported_as_botocore_reports_them(server: tuple[str, Recorder]):
    url, recorder = server
    recorder.script = [MODEL_ERROR]
    with pytest.raises(ClientError) as stock:
        client(url).invoke_endpoint(**CALLS[0])
    with pytest.raises(InferenceError) as stock_tile:  # as the worker reports a tile's failure
        SageMakerDetector(client(url), "flood")(b"tile")
    lean = LeanInvoker(client(url))
    recorder.script = [OK, MODEL_ERROR]
    lean.invoke_endpoint(**CALLS[0])  # the checking call
    with pytest.raises(ClientError) as fast:
        lean.invoke_endpoint(**CALLS[0])
    assert str(fast.value) == str(stock.value)
    assert fast.value.response["Error"] == stock.value.response["Error"]
    assert "ModelError" in str(fast.value)
    lean = LeanInvoker(client(url))
    recorder.script = [OK, MODEL_ERROR]
    detector = SageMakerDetector(lean, "flood")
    detector(b"tile")
    with pytest.raises(InferenceError) as lean_tile:
        detector(b"tile")
    assert str(lean_tile.value) == str(stock_tile.value)


def test_a_refused_connection_is_botocore_s_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EndpointConnectionError) as stock:
        client(url, attempts=1).invoke_endpoint(**CALLS[0])
    lean = LeanInvoker(client(url, attempts=1))
    lean.checked = True  # as after a first call that succeeded: this one takes the fast path
    with pytest.raises(EndpointConnectionError) as fast:
        lean.invoke_endpoint(**CALLS[0])
    assert str(fast.value) == str(stock.value)
    assert not lean.fast


def test_a_url_botocore_would_not_use_turns_the_fast_path_off(server: tuple[str, Recorder]):
    url, recorder = server
    lean = LeanInvoker(client(url))
    lean._uri = "/models/{EndpointName}/invoke"  # as if the endpoint rules sent the call elsewhere
    lean.invoke_endpoint(**CALLS[0])
    assert lean.checked and not lean.fast
    lean.invoke_endpoint(**CALLS[0])
    assert all("lean-invoke" not in headers["user-agent"] for _, headers, _ in recorder.requests)


def test_no_fast_path_where_botocore_would_send_differently(server: tuple[str, Recorder],
                                                            monkeypatch: pytest.MonkeyPatch):
    url, recorder = server
    proxied = boto3.client("sagemaker-runtime", region_name="us-east-1", endpoint_url=url, **KEYS,
                           config=Config(proxies={"http": "http://127.0.0.1:9"}))
    assert not LeanInvoker(proxied).fast
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert not LeanInvoker(client(url)).fast
    monkeypatch.delenv("HTTPS_PROXY")
    lean = LeanInvoker(client(url))
    for _ in range(2):  # the checking call, then a fast one
        lean.invoke_endpoint(**CALLS[0], SessionId="NEW_SESSION", PrefixAwareId="x")  # members passed on as is
    assert lean.fast and "x-amzn-sagemaker-session-id" in recorder.requests[-1][1]
    assert "lean-invoke" in recorder.requests[-1][1]["user-agent"]
    assert lean.meta.endpoint_url == url  # anything else is the client's


class _InProcess(io.BytesIO):
    """An answer body made in-process, as moto's ``mock_aws`` makes them (no HTTP response under it)."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


def test_an_answer_made_in_process_never_teaches_the_fast_path(server: tuple[str, Recorder]):
    """A stand-in that answers from a ``before-send`` hook (moto's ``mock_aws`` does) shows botocore's URL
    but sends nothing: the invoker keeps checking through botocore and never sends a call itself to that
    URL (which, under a test's stub, would be the real service)."""
    url, recorder = server
    lean = LeanInvoker(client(url))
    stubbed: list[str] = []

    def answer(request: Any, **_: Any) -> AWSResponse:
        stubbed.append(request.url)
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"}, _InProcess(ANSWER))

    lean.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", answer)
    for _ in range(3):
        assert lean.invoke_endpoint(**CALLS[0])["Body"].read() == ANSWER
    assert len(stubbed) == 3 and recorder.requests == []
    assert lean.fast and not lean.checked
