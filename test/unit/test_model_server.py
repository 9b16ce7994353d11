"""The model server over real HTTP on 127.0.0.1: container contract, runtime API via boto3, faults."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from osgeo import gdal

from modelrunner.imagery.encode import read_vsimem
from modelrunner.local.model_server import ModelServer, ServerConfig
from modelrunner.local.models import run_model

gdal.UseExceptions()


def encode_tile(width: int = 256, height: int = 192, seed: int = 0) -> bytes:
    """A GeoTIFF tile's bytes: dark noise with one bright rectangle."""
    rng = np.random.default_rng(seed)
    pixels = (rng.integers(0, 32, size=(3, height, width)) + 30).astype(np.uint8)
    pixels[:, 40:80, 60:110] = 200
    source = gdal.GetDriverByName("MEM").Create("", width, height, 3, gdal.GDT_Byte)
    source.WriteRaster(0, 0, width, height, pixels.tobytes())
    name = f"/vsimem/test-server-tile-{seed}-{width}x{height}.tif"
    gdal.GetDriverByName("GTiff").CreateCopy(name, source)
    try:
        data = read_vsimem(name)
    finally:
        gdal.Unlink(name)
    return data


TILE = encode_tile()


def post(
    connection: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection.request("POST", path, body=body, headers={"Content-Type": "image/tiff", **(headers or {})})
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def runtime_client(server: ModelServer, attempts: int = 1) -> Any:
    """A boto3 sagemaker-runtime client aimed at the server, with fake credentials and no retries."""
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": attempts}),
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer("centerpoint", flood_count=7, seed=5) as running:
        yield running


@pytest.fixture
def connection(server: ModelServer) -> Iterator[http.client.HTTPConnection]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    yield conn
    conn.close()


# ---------- container contract


def test_ping(connection: http.client.HTTPConnection) -> None:
    connection.request("GET", "/ping")
    response = connection.getresponse()
    assert response.status == 200
    response.read()


def test_invocations_answers_the_default_model(
    server: ModelServer, connection: http.client.HTTPConnection
) -> None:
    status, headers, body = post(connection, "/invocations", TILE)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == run_model("centerpoint", TILE)
    assert server.url.startswith("http://127.0.0.1:")


def test_keep_alive_serves_many_requests_on_one_connection(connection: http.client.HTTPConnection) -> None:
    for seed in range(5):
        tile = encode_tile(seed=seed)
        status, _, body = post(connection, "/invocations", tile)
        assert status == 200
        assert json.loads(body) == run_model("centerpoint", tile)
    connection.request("GET", "/ping")
    assert connection.getresponse().status == 200


def test_garbage_body_is_a_400_with_a_json_error(connection: http.client.HTTPConnection) -> None:
    status, headers, body = post(connection, "/invocations", b"this is not an image")
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "error" in json.loads(body)
    status, _, _ = post(connection, "/invocations", TILE)  # the connection is still usable
    assert status == 200


def test_unknown_paths_are_404(connection: http.client.HTTPConnection) -> None:
    connection.request("GET", "/nope")
    response = connection.getresponse()
    assert response.status == 404
    response.read()
    status, _, _ = post(connection, "/other", TILE)
    assert status == 404
    status, _, _ = post(connection, "/invocations", TILE)
    assert status == 200


def test_chunked_request_body(server: ModelServer, connection: http.client.HTTPConnection) -> None:
    chunks = [TILE[i : i + 10000] for i in range(0, len(TILE), 10000)]
    connection.request(
        "POST", "/invocations", body=iter(chunks), headers={"Content-Type": "image/tiff"}, encode_chunked=True
    )
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read()) == run_model("centerpoint", TILE)


def test_concurrent_clients(server: ModelServer) -> None:
    before = server.invocations
    failures: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for _ in range(25):
            status, _, _ = post(conn, "/invocations", TILE)
            if status != 200:
                failures.append(str(status))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert server.invocations - before == 100


# ---------- runtime API (boto3)


def test_boto3_invoke_endpoint_selects_the_model_by_endpoint_name(server: ModelServer) -> None:
    client = runtime_client(server)
    answer = client.invoke_endpoint(EndpointName="flood", Body=TILE, ContentType="image/tiff")
    assert answer["ContentType"] == "application/json"
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    assert json.loads(answer["Body"].read()) == run_model("flood", TILE, count=7, seed=5)
    answer = client.invoke_endpoint(EndpointName="objects", Body=TILE)
    (feature,) = json.loads(answer["Body"].read())["features"]
    assert feature["properties"]["imageBBox"] == [60.0, 40.0, 110.0, 80.0]


def test_boto3_unknown_endpoint_name_gets_the_default_model(server: ModelServer) -> None:
    answer = runtime_client(server).invoke_endpoint(EndpointName="my-endpoint-1", Body=TILE)
    assert json.loads(answer["Body"].read()) == run_model("centerpoint", TILE)


def test_boto3_garbage_is_a_model_error_carrying_the_400(server: ModelServer) -> None:
    with pytest.raises(ClientError) as caught:
        runtime_client(server).invoke_endpoint(EndpointName="my-endpoint", Body=b"garbage")
    error = caught.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["OriginalStatusCode"] == 400


# ---------- fault injection


def test_fail_rate_is_deterministic_by_request_counter() -> None:
    with ModelServer(fail_rate=0.25) as failing:
        conn = http.client.HTTPConnection("127.0.0.1", failing.port, timeout=10)
        statuses = [post(conn, "/invocations", TILE)[0] for _ in range(12)]
        conn.close()
        assert statuses == [200, 200, 200, 500] * 3
        assert failing.injected_failures == 3
        assert failing.invocations == 12


def test_fail_rate_through_boto3_internal_and_model_modes() -> None:
    with ModelServer(fail_rate=1.0) as failing:
        with pytest.raises(ClientError) as caught:
            runtime_client(failing).invoke_endpoint(EndpointName="x", Body=TILE)
        assert caught.value.response["Error"]["Code"] == "InternalFailure"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    with ModelServer(fail_rate=1.0, fail_mode="model") as failing:
        with pytest.raises(ClientError) as caught:
            runtime_client(failing).invoke_endpoint(EndpointName="x", Body=TILE)
        assert caught.value.response["Error"]["Code"] == "ModelError"
        assert caught.value.response["OriginalStatusCode"] == 500


def test_delay_ms() -> None:
    with ModelServer(delay_ms=60) as slow:
        conn = http.client.HTTPConnection("127.0.0.1", slow.port, timeout=10)
        start = time.perf_counter()
        assert post(conn, "/invocations", TILE)[0] == 200
        assert time.perf_counter() - start >= 0.06
        conn.close()


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ServerConfig(model="nope")
    with pytest.raises(ValueError):
        ServerConfig(fail_rate=1.5)
    with pytest.raises(ValueError):
        ServerConfig(fail_mode="sometimes")


def test_stop_closes_open_keep_alive_connections() -> None:
    running = ModelServer().start()
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    assert post(conn, "/invocations", TILE)[0] == 200
    running.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        post(conn, "/invocations", TILE)
    conn.close()
    running.stop()  # idempotent


# ---------- command line


def test_command_line_prints_its_url_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "modelrunner.local.model_server", "--model", "flood", "--flood-count", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        status, _, body = post(conn, "/invocations", TILE)
        assert status == 200
        assert len(json.loads(body)["features"]) == 3
        conn.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
