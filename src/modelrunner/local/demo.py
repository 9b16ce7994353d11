"""``modelrunner demo``: the real worker on an embedded stand-in for AWS, with a live progress bar.

Starts moto and the bundled model on 127.0.0.1, creates the deployment's resources, makes a synthetic
georeferenced scene (or takes ``--image``), uploads it and requests it by its ``s3://`` URL (so the range-read
path runs), runs worker process(es) as the container runs them, and writes into the output folder:
``result.geojson``, ``result.parquet`` (GeoParquet), ``result.stac-item.json`` (the job's STAC Item),
``overlay.png``, ``request.json`` and ``statuses.json``, and prints how to open the GeoParquet. Everything
started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..requests import DISTILLATION_STEP, RECOMMENDED_DISTILLATION, DistillationOption
from ..state.jobs import JobStore
from ..state.records import JobRecord
from ..state.regions import RegionStore
from ..status import FINAL
from .accuracy import score_features
from .overlay import render_overlay
from .stack import (
    Process,
    Resources,
    create_resources,
    read_statuses,
    start_model,
    start_moto,
    start_worker,
    stop_process,
)


def _bar(done: int, total: int, width: int = 28) -> str:
    filled = int(width * done / total) if total else 0
    return "#" * filled + "-" * (width - filled)


def _progress(res: Resources, image_id: str, started: float) -> tuple[JobRecord | None, str]:
    ddb = res.client("dynamodb")
    job = JobStore(ddb, res.job_table).get(image_id)
    rows = RegionStore(ddb, res.region_table).all(image_id) if job is not None else []
    done = sum(r.succeeded_tile_count + r.failed_tile_count for r in rows)
    total = (job.tile_count if job is not None else None) or 0
    elapsed = max(1e-6, time.monotonic() - started)
    rate = done / elapsed
    eta = f"{(total - done) / rate:4.0f}s" if rate > 0 and total else "   -"
    regions = f"{job.regions_done or 0}/{job.region_count}" if job is not None else "0/0"
    line = (f"[{_bar(done, total)}] tiles {done}/{total or '?'}  {rate:5.1f} tiles/s  "
            f"ETA {eta}  regions {regions}  {(job.job_status if job is not None else None) or 'QUEUED'}")
    return job, line


def _download_extras(res: Resources, job_id: str, out_dir: str) -> list[tuple[str, str]]:
    """Fetch the job's GeoParquet and STAC Item next to result.geojson; (label, path) of each one found."""
    found = []
    for label, suffix in (("geoparquet", ".parquet"), ("stac item", ".stac-item.json")):
        path = os.path.join(out_dir, "result" + suffix)
        try:
            res.client("s3").download_file(res.bucket, f"results/{job_id}{suffix}", path)
        except Exception as err:  # a FAILED job has none; say so and go on
            print(f"no {label}: {err}", file=sys.stderr)
            continue
        found.append((label, path))
    return found


def describe(option: DistillationOption) -> str:
    """A merge setting in one line, as doc/merging.md and scripts/bench_merge_quality name it."""
    text = f"{option.algorithm_type} {option.match_metric} {option.iou_threshold:g}"
    if option.edge_truncation != "NONE":
        text += f", edgeTruncation {option.edge_truncation} (edgeMargin {option.edge_margin:g} px)"
    return text


@dataclass
class _Image:
    """The demo's image: where it is on disk, its ``s3://`` URL and, for a synthetic scene, its objects."""

    path: str
    url: str
    truth: list[Any] | None


def _stage_image(args: argparse.Namespace, res: Resources, work: str) -> _Image:
    """Make a synthetic scene in ``work`` (or take ``--image``) and upload it, so the worker range-reads S3."""
    truth = None
    if args.image:
        image_path = os.path.abspath(args.image)
    else:
        from .scene import make_scene

        image_path = os.path.join(work, "scene.tif")
        scene = make_scene(image_path, args.width, args.height, seed=args.seed)
        truth = scene.objects
        print(f"made a synthetic {args.width} x {args.height} scene with {len(truth)} objects", flush=True)
    key = "images/" + os.path.basename(image_path)
    res.client("s3").upload_file(image_path, res.extra["image_bucket"], key)
    return _Image(image_path, f"s3://{res.extra['image_bucket']}/{key}", truth)


def build_request(args: argparse.Namespace, res: Resources, model_url: str, job_id: str,
                  url: str) -> tuple[dict[str, Any], str]:
    """The demo's image request (S3 in three formats and Kinesis) and the merge it asks for, in one line.

    ``--merge recommended`` (the default) adds a ``postProcessing`` step; the reference's merge needs none,
    as it is what a request without one gets.
    """
    model_name = args.model if args.endpoint_type == "SM_ENDPOINT" else model_url + "/invocations"
    request: dict[str, Any] = {
        "jobId": job_id, "jobName": job_id, "imageUrls": [url],
        "outputs": [{"type": "S3", "bucket": res.bucket, "prefix": "results/",
                     "formats": ["GeoJSON", "GeoParquet"], "stacItem": True},
                    {"type": "Kinesis", "stream": res.stream, "batchSize": 500}],
        "imageProcessor": {"name": model_name, "type": args.endpoint_type},
        "imageProcessorTileSize": args.tile_size, "imageProcessorTileOverlap": args.tile_overlap,
        "imageProcessorTileFormat": args.tile_format, "imageProcessorTileCompression": args.tile_compression,
    }
    recommended = getattr(args, "merge", "recommended") == "recommended"
    merge = RECOMMENDED_DISTILLATION if recommended else DistillationOption()
    if recommended:
        request["postProcessing"] = [{"step": DISTILLATION_STEP, "algorithm": merge.to_wire()}]
    merge_line = describe(merge) + (" (the recommended setting, see doc/merging.md; --merge reference: the "
                                    "drop-in default)" if recommended else " (the drop-in default)")
    return request, merge_line


def _follow(res: Resources, image_id: str, workers: list[Any],
            timeout: float) -> tuple[JobRecord | None, list[dict[str, Any]]]:
    """Show the progress bar until the job is final, every worker has exited or ``timeout`` s have passed;
    return the last job row and every status message seen (read as they come, so the queue stays short)."""
    statuses: list[dict[str, Any]] = []
    job: JobRecord | None = None
    job_started = time.monotonic()
    tty = sys.stdout.isatty()
    last_line = ""
    while time.monotonic() - job_started < timeout:
        statuses.extend(read_statuses(res))
        job, line = _progress(res, image_id, job_started)
        if line != last_line:
            print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            last_line = line
        if job is not None and job.job_status in FINAL and job.end_time:
            break
        if all(w.poll() is not None for w in workers):
            print("\nall workers exited; see worker-*.log", file=sys.stderr)
            break
        time.sleep(0.5)
    print()
    statuses.extend(read_statuses(res, wait=1))
    return job, statuses


def _download_result(res: Resources, job_id: str, out_dir: str) -> tuple[str, list[dict[str, Any]]]:
    """Fetch result.geojson; its path and features (none, said on stderr, when a FAILED job wrote none)."""
    features: list[dict[str, Any]] = []
    result_path = os.path.join(out_dir, "result.geojson")
    try:
        res.client("s3").download_file(res.bucket, f"results/{job_id}.geojson", result_path)
        with open(result_path) as handle:
            features = json.load(handle)["features"]
    except Exception as err:  # a FAILED job has no result; say so
        print(f"no result object: {err}", file=sys.stderr)
    return result_path, features


def summary_rows(job: JobRecord, features: Sequence[Any], merge_line: str) -> list[tuple[str, str]]:
    """The summary's (label, value) rows read from the final job row: status, image, counts, speed, merge."""
    status = job.job_status or "UNKNOWN"
    seconds = float(job.processing_duration or 0)
    tiles = job.tile_count or 0
    feature_count = len(features) if job.feature_count is None else job.feature_count
    detections = "?" if job.raw_feature_count is None else job.raw_feature_count
    return [
        ("status", status + ("" if status == "SUCCESS" else f" ({job.status_reason or ''})")),
        ("image", f"{job.width} x {job.height} px, {job.image_extension or ''}"),
        ("regions", f"{job.region_count} ({job.region_success} ok, {job.region_error} errors)"),
        ("tiles", f"{tiles} ({job.failed_tile_count or 0} failed)"),
        ("features", f"{feature_count} after merging {detections} detections"),
        ("seconds", f"{seconds:.2f} ({tiles / seconds if seconds else 0:.1f} tiles/s)"),
        ("merge", merge_line),
    ]


def _report(args: argparse.Namespace, res: Resources, job: JobRecord, job_id: str, image: _Image,
            out_dir: str, merge_line: str) -> None:
    """Download the outputs, draw the overlay and print the summary table (and how to open the GeoParquet)."""
    result_path, features = _download_result(res, job_id, out_dir)
    extras = _download_extras(res, job_id, out_dir)
    overlay_path = os.path.join(out_dir, "overlay.png")
    drawn = render_overlay(image.path, features, overlay_path)
    rows = summary_rows(job, features, merge_line)
    if image.truth is not None and args.model == "objects":
        rows.append(("accuracy", score_features(image.truth, features).line()))
    rows += [("result", result_path), *extras, ("overlay", f"{overlay_path} ({drawn} boxes)"),
             ("statuses", os.path.join(out_dir, "statuses.json"))]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows))
    if extras:
        parquet = os.path.join(out_dir, "result.parquet")
        print(f"\nopen the GeoParquet with DuckDB or GeoPandas (doc/outputs.md):\n"
              f"  duckdb -c \"LOAD spatial; SELECT class, count(*), avg(score) FROM '{parquet}' GROUP BY class\"\n"
              f"  python -c \"import geopandas; print(geopandas.read_parquet('{parquet}').head())\"")


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo end to end (see the module docstring); 0 when the job succeeded or was partial.

    Everything it starts is stopped in ``finally``, also on Ctrl-C (exit 130).
    """
    out_dir = os.path.abspath(args.output)
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="modelrunner-demo-")
    processes: list[Process] = []
    workers: list[Any] = []
    try:
        print("starting moto (AWS stand-in) and the bundled model on 127.0.0.1 ...", flush=True)
        moto = start_moto()
        processes.append(moto)
        model = start_model(args.model)
        processes.append(model)
        res = create_resources(moto.url, prefix="demo")
        image = _stage_image(args, res, work)
        job_id = f"demo-{int(time.time())}"
        request, merge_line = build_request(args, res, model.url, job_id, image.url)
        print(f"merging duplicates with {merge_line}", flush=True)
        with open(os.path.join(out_dir, "request.json"), "w") as handle:
            json.dump(request, handle, indent=2)
        env = res.worker_env(model_url=model.url, workers=args.workers, region_size=args.region_size)
        for i in range(max(1, getattr(args, "workers_processes", 1))):
            workers.append(start_worker(env, log_path=os.path.join(out_dir, f"worker-{i + 1}.log")))
        res.client("sqs").send_message(QueueUrl=res.image_queue, MessageBody=json.dumps(request))
        print(f"submitted job {job_id} for {image.url}", flush=True)
        job, statuses = _follow(res, f"{job_id}:{image.url}", workers, args.timeout)
        with open(os.path.join(out_dir, "statuses.json"), "w") as handle:
            json.dump(statuses, handle, indent=2)
        status = (job.job_status if job is not None else None) or "UNKNOWN"
        if job is None or status not in FINAL:
            print(f"job did not finish within {args.timeout} s", file=sys.stderr)
            return 1
        _report(args, res, job, job_id, image, out_dir, merge_line)
        return 0 if status in ("SUCCESS", "PARTIAL") else 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        for proc in workers:
            stop_process(proc)
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)
