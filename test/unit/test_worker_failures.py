"""How the worker settles an image message whose job failed for good, in-process (moto mock)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from modelrunner.aws import AwsClients
from modelrunner.config import Settings
from modelrunner.local.stack import create_resources
from modelrunner.runner.services import Services
from modelrunner.worker import Outcome, Worker


@pytest.fixture
def worker(moto_aws: None) -> Any:
    res = create_resources(None, prefix="wf")
    settings = Settings(aws_region="us-east-1", job_table=res.job_table, region_table=res.region_table,
                        endpoint_table=res.endpoint_table, feature_table=res.feature_table,
                        image_queue=res.image_queue, region_queue=res.region_queue, workers=1,
                        image_status_topic=res.image_topic, region_status_topic=res.region_topic)
    services = Services.create(settings, AwsClients("us-east-1"), metrics=False)
    statuses: list[tuple[str, dict[str, Any]]] = []
    services.status.listener = lambda message, attrs: statuses.append((message, attrs))
    worker = Worker(services)
    yield worker, statuses
    worker.heartbeat.stop()


def test_a_job_whose_row_is_refused_fails_under_its_own_job_id(worker: Any) -> None:
    """DynamoDB refused the job row itself (a permanent error): the FAILED status and row name the job,
    instead of a row written by the failure path with no job id, and a status for job ''."""
    worker, statuses = worker
    services = worker.services
    refused = ClientError({"Error": {"Code": "ValidationException",
                                     "Message": "Item size has exceeded the maximum allowed size"},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutItem")

    def create(_request: Any, _start_ms: Any = None, message_id: str = "") -> bool:
        raise refused

    services.jobs.create = create  # type: ignore[method-assign]
    body = {"jobId": "refused", "imageUrls": ["s3://images/k.tif"], "imageProcessor": {"name": "ep"},
            "outputs": [{"type": "S3", "bucket": "results"}]}
    message = {"MessageId": "m-1", "ReceiptHandle": "r-1", "Body": json.dumps(body), "Attributes": {}}

    assert worker.handle_image(message) is Outcome.DONE
    [(text, attrs)] = statuses
    assert attrs["status"] == "FAILED" and attrs["job_id"] == "refused"
    assert text == ("StatusMonitor update: RequestStatus.FAILED refused: An error occurred (ValidationException) "
                    "when calling the PutItem operation: Item size has exceeded the maximum allowed size")
    row = services.jobs.get("refused:s3://images/k.tif")
    assert row.job_status == "FAILED" and row.job_id == "refused" and row.status_published is True
