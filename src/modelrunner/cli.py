"""The ``modelrunner`` command: ``worker`` (what the container runs), ``submit``, ``status``, ``demo``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings
    from .state.records import JobRecord, RegionRecord


def _worker(args: argparse.Namespace) -> int:
    from .config import Settings
    from .errors import ConfigError
    from .imagery.source import configure_gdal
    from .logs import configure_logging
    from .runner.services import Services
    from .worker import Worker, settle_heap

    configure_logging(args.verbose)
    try:
        settings = Settings.from_env()
    except ConfigError as err:
        print(f"modelrunner worker: {err}", file=sys.stderr)
        return 2
    configure_logging(args.verbose, level=settings.log_level)
    announce_ignored(settings)
    configure_gdal()
    services = Services.create(settings, metrics=not args.no_metrics)
    services.aws.warm()
    worker = Worker(services)
    worker.install_signal_handlers()
    settle_heap()  # after the clients are built: their service models join the frozen start-up heap
    worker.run(max_messages=args.max_messages, idle_exit_s=args.idle_exit)
    return 0


def announce_ignored(settings: Settings) -> None:
    """Log, once at start-up, each of the reference's variables that is set and has no effect here, so an
    operator who set one does not believe it is honoured."""
    log = logging.getLogger("modelrunner.config")
    for note in settings.ignored_notes():
        log.info(note)


def _submit(args: argparse.Namespace) -> int:
    import boto3

    from .errors import RequestError
    from .requests import ImageRequest

    if args.request:
        with open(args.request) as handle:
            raw: dict[str, Any] = json.load(handle)
    else:
        raw = {"jobId": args.job_id or uuid.uuid4().hex, "imageUrls": [args.image],
               "imageProcessor": {"name": args.model, "type": args.model_type},
               "imageProcessorTileSize": args.tile_size, "imageProcessorTileOverlap": args.tile_overlap,
               "imageProcessorTileFormat": args.tile_format, "imageProcessorTileCompression": args.tile_compression,
               "outputs": []}
        if args.bucket:
            raw["outputs"].append({"type": "S3", "bucket": args.bucket, "prefix": args.prefix})
        if args.stream:
            raw["outputs"].append({"type": "Kinesis", "stream": args.stream, "batchSize": 500})
    try:
        request = ImageRequest.from_dict(raw)
    except RequestError as err:
        print(f"modelrunner submit: {err}", file=sys.stderr)
        return 2
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=args.queue, MessageBody=json.dumps(request.to_dict()))
    print(request.job_id)
    return 0


def _status(args: argparse.Namespace) -> int:
    import boto3

    from .state.jobs import JobStore
    from .state.regions import RegionStore
    from .status import FINAL, Status

    ddb = boto3.client("dynamodb")
    jobs, regions = JobStore(ddb, args.job_table), RegionStore(ddb, args.region_table)
    image_id = args.job_id if ":" in args.job_id else _find_image_id(ddb, args.job_table, args.job_id)
    printed = 0
    while True:
        job = jobs.get(image_id) if image_id else None
        if job is None:
            print(f"no job {args.job_id}", file=sys.stderr)
            return 1
        rows = regions.all(str(image_id))
        done = sum(r.succeeded_tile_count + r.failed_tile_count for r in rows)
        events = timeline(job, rows)
        for line in events[printed:]:
            print(line)
        printed = len(events)
        print(f"{job.job_id} {job.job_status}: regions {job.regions_done or 0}/"
              f"{job.region_count}, tiles {done}/{_or(job.tile_count, '?')}, "
              f"features {_or(job.feature_count, '-')}" + (f" ({job.status_reason})" if job.status_reason
                                                          and job.job_status != Status.SUCCESS else ""))
        if not args.watch or job.job_status in FINAL:
            return 0 if job.job_status != Status.FAILED else 1
        time.sleep(args.interval)


def _or(value: int | None, absent: str) -> str:
    """A count as the status line prints it, ``absent`` when the row does not hold it yet."""
    return absent if value is None else str(value)


def timeline(job: JobRecord, rows: list[RegionRecord]) -> list[str]:
    """The job's events (its own timeline, and each region's start and end from the region rows), in time
    order, one line each: ``HH:MM:SS.mmm  event  detail``."""
    from datetime import UTC, datetime

    from .status import Status

    events = [(int(e["at"]), str(e["event"]), str(e.get("detail", ""))) for e in job.timeline or []]
    for row in rows:
        where = row.region_id
        if row.region_status not in (None, Status.QUEUED) and row.start_time:
            events.append((int(row.start_time), "region started", f"{where} on {row.worker or '?'}"))
        if row.end_time:
            events.append((int(row.end_time), "region done", f"{where}: {row.region_status}, "
                                                             f"{row.succeeded_tile_count} tiles ok, "
                                                             f"{row.failed_tile_count} failed"))
    events.sort(key=lambda e: e[0])
    return [f"{datetime.fromtimestamp(at / 1000, UTC).strftime('%H:%M:%S.%f')[:-3]}  {event:<15} {detail}"
            for at, event, detail in events]


def _find_image_id(ddb: Any, table: str, job_id: str) -> str | None:
    answer = ddb.scan(TableName=table, FilterExpression="job_id = :j",
                      ExpressionAttributeValues={":j": {"S": job_id}}, ProjectionExpression="image_id")
    items = answer.get("Items") or []
    return items[0]["image_id"]["S"] if items else None


def _demo(args: argparse.Namespace) -> int:
    from .local.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelrunner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run the long-lived worker (configuration from the environment)")
    worker.add_argument("-v", "--verbose", action="store_true", help="DEBUG logging")
    worker.add_argument("--max-messages", type=int, help="stop after handling this many messages")
    worker.add_argument("--idle-exit", type=float, help="stop after this many seconds without a message")
    worker.add_argument("--no-metrics", action="store_true", help="do not print EMF metrics")
    worker.set_defaults(func=_worker)

    submit = sub.add_parser("submit", help="put an ImageRequest on the image queue and print its job id")
    submit.add_argument("--queue", required=True, help="image queue URL")
    submit.add_argument("--request", help="ImageRequest JSON file (instead of the flags below)")
    submit.add_argument("--image", help="image URL (s3://bucket/key or a local path)")
    submit.add_argument("--model", help="SageMaker endpoint name or HTTP URL")
    submit.add_argument("--model-type", default="SM_ENDPOINT", choices=["SM_ENDPOINT", "HTTP_ENDPOINT"])
    submit.add_argument("--job-id")
    submit.add_argument("--tile-size", type=int, default=512)
    submit.add_argument("--tile-overlap", type=int, default=128)
    submit.add_argument("--tile-format", default="GTIFF")
    submit.add_argument("--tile-compression", default="NONE")
    submit.add_argument("--bucket", help="S3 output bucket")
    submit.add_argument("--prefix", default="", help="S3 output prefix")
    submit.add_argument("--stream", help="Kinesis output stream")
    submit.set_defaults(func=_submit)

    status = sub.add_parser("status", help="print a job's progress")
    status.add_argument("job_id", help="job id (or image id)")
    status.add_argument("--job-table", required=True)
    status.add_argument("--region-table", required=True)
    status.add_argument("--watch", action="store_true", help="follow until the job ends")
    status.add_argument("--interval", type=float, default=1.0)
    status.set_defaults(func=_status)

    demo = sub.add_parser("demo", help="run the whole service locally on moto with a bundled model")
    demo.add_argument("--image", help="image to process (default: a synthetic georeferenced scene)")
    demo.add_argument("--model", default="objects", choices=["centerpoint", "flood", "objects"])
    demo.add_argument("--endpoint-type", default="SM_ENDPOINT", choices=["SM_ENDPOINT", "HTTP_ENDPOINT"])
    demo.add_argument("--width", type=int, default=3376)
    demo.add_argument("--height", type=int, default=2576)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--tile-size", type=int, default=512)
    demo.add_argument("--tile-overlap", type=int, default=128)
    demo.add_argument("--tile-format", default="GTIFF", choices=["GTIFF", "NITF", "PNG", "JPEG"])
    demo.add_argument("--tile-compression", default="NONE", choices=["NONE", "JPEG", "J2K", "LZW"])
    demo.add_argument("--merge", default="recommended", choices=["recommended", "reference"],
                      help="duplicate merge: the recommended setting (doc/merging.md) or the drop-in default, "
                           "NMS IOU 0.75 (what a request without postProcessing gets)")
    demo.add_argument("--region-size", type=int, default=2048)
    demo.add_argument("--workers", type=int, default=4, help="tile threads per worker (WORKERS)")
    demo.add_argument("--workers-processes", type=int, default=1, help="worker processes to run")
    demo.add_argument("--output", default="demo-output", help="folder for the result files")
    demo.add_argument("--timeout", type=float, default=600)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
