"""The command line: ``demo`` end to end, and ``submit`` + ``worker`` + ``status`` against a moto server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from e2e_support import wait_final
from osgeo import gdal

from modelrunner.local.overlay import feature_boxes
from modelrunner.local.scene import make_scene

pytestmark = pytest.mark.e2e


def cli(*args, env=None, timeout=180):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "modelrunner.cli", *args], capture_output=True, text=True,
                          env=full, timeout=timeout)


def test_help_on_every_command():
    for command in ([], ["worker"], ["submit"], ["status"], ["demo"]):
        result = cli(*command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout


def test_demo_writes_result_overlay_request_and_statuses(tmp_path):
    out = tmp_path / "out"
    result = cli("demo", "--width", "1400", "--height", "1100", "--model", "objects", "--region-size", "1024",
                 "--output", str(out), "--workers-processes", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"result.geojson", "result.parquet", "result.stac-item.json", "overlay.png", "request.json",
            "statuses.json"} <= set(os.listdir(out))
    features = json.loads((out / "result.geojson").read_text())["features"]
    assert features
    table = pq.read_table(out / "result.parquet")
    assert table.column("id").to_pylist() == [f["id"] for f in features]
    item = json.loads((out / "result.stac-item.json").read_text())
    assert set(item["assets"]) == {"geojson", "geoparquet"} and item["bbox"] and item["geometry"]
    assert "read_parquet" in result.stdout and "duckdb" in result.stdout
    request = json.loads((out / "request.json").read_text())
    assert request["imageProcessor"]["name"] == "objects"
    statuses = [s["attributes"]["status"] for s in json.loads((out / "statuses.json").read_text())]
    assert statuses[0] == "STARTED" and statuses[-1] == "SUCCESS"
    overlay = gdal.Open(str(out / "overlay.png"))
    assert overlay.GetDriver().ShortName == "PNG"
    assert (overlay.RasterXSize, overlay.RasterYSize) == (1400, 1100)
    drawn = int(re.search(r"overlay\.png \((\d+) boxes\)", result.stdout).group(1))
    assert drawn == len(feature_boxes(features)) == len(features)
    # The demo requests the recommended merge (and says so): one feature per object across every seam.
    assert "NMM IOS 0.3, edgeTruncation MERGE" in result.stdout and "recommended" in result.stdout
    assert request["postProcessing"][0]["algorithm"]["edgeTruncation"] == "MERGE"
    precision = float(re.search(r"precision\s+([0-9.]+)", result.stdout).group(1))
    recall = float(re.search(r"recall\s+([0-9.]+)", result.stdout).group(1))
    assert precision >= 0.98 and recall >= 0.99
    assert "tiles" in result.stdout and "seconds" in result.stdout


def test_submit_worker_status(stack, model_server, worker_factory, tmp_path):
    scene = make_scene(str(tmp_path / "s.tif"), 900, 700, seed=4)
    stack.client("s3").upload_file(scene.path, stack.extra["image_bucket"], "s.tif")
    env = stack.worker_env(model_url=model_server.url, workers=2)
    worker_factory(env)
    submitted = cli("submit", "--queue", stack.image_queue, "--image", f"s3://{stack.extra['image_bucket']}/s.tif",
                    "--model", "centerpoint", "--job-id", "cli-job", "--bucket", stack.bucket, env=env)
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "cli-job"
    final, _ = wait_final(stack, "cli-job")
    assert final["attributes"]["status"] == "SUCCESS"
    status = cli("status", "cli-job", "--job-table", stack.job_table, "--region-table", stack.region_table,
                 "--watch", env=env)
    assert status.returncode == 0, status.stderr
    assert "cli-job SUCCESS" in status.stdout and "tiles 6/6" in status.stdout
    # The timeline: queued, started, each region started and done, merged, the output, the end, the status.
    events = [line.split()[1:3] for line in status.stdout.splitlines() if line[:2].isdigit()]
    names = [" ".join(e) if e[0] in ("region", "output", "status") else e[0] for e in events]
    assert names[:2] == ["queued", "started"] and names[-4:] == ["merged", "output written", "ended",
                                                                  "status published"]
    assert names.count("region started") == names.count("region done") >= 1

    bad = cli("submit", "--queue", stack.image_queue, "--image", "s3://x/y.tif", "--model", "centerpoint",
              "--tile-format", "TIFF", "--bucket", stack.bucket, env=env)
    assert bad.returncode == 2 and "imageProcessorTileFormat" in bad.stderr
