"""No credential, signature or presigned URL in any log line or status: a job with assumed roles (the image
read role, the model's role, an output's role), logged at DEBUG, and its failure cases."""

from __future__ import annotations

import re

import pytest
from e2e_support import submit, wait_final

from modelrunner.local.scene import make_scene

pytestmark = pytest.mark.e2e

ROLE = "arn:aws:iam::123456789012:role/reader"
SECRETS = re.compile(r"(ASIA|AKIA)[A-Z0-9]{16}|X-Amz-Signature=(?!\[REDACTED)|Signature=[0-9a-f]{16}|"
                     r"(?i:secret_access_key|session_token)\W+(?!\[REDACTED)[A-Za-z0-9/+]{8}")


def test_assumed_roles_leave_no_secret_in_logs_or_statuses(stack, model_server, worker_factory, tmp_path):
    scene = make_scene(str(tmp_path / "s.tif"), 600, 400, seed=1)
    stack.client("s3").upload_file(scene.path, stack.extra["image_bucket"], "s.tif")
    env = stack.worker_env(model_url=model_server.url, workers=2)
    worker = worker_factory(env, name="verbose", args=["-v"])  # DEBUG: the most a log ever says
    worker_log = tmp_path / "verbose.log"
    request = {"jobId": "roles", "imageUrls": [f"s3://{stack.extra['image_bucket']}/s.tif"], "imageReadRole": ROLE,
               "imageProcessor": {"name": "centerpoint", "type": "SM_ENDPOINT", "assumedRole": ROLE},
               "outputs": [{"type": "S3", "bucket": stack.bucket, "prefix": "", "role": ROLE}],
               "imageProcessorTileSize": 256, "imageProcessorTileOverlap": 32, "imageProcessorTileFormat": "GTIFF"}
    submit(stack, request)
    final, seen = wait_final(stack, "roles")
    assert final["attributes"]["status"] == "SUCCESS", final["message"]
    # A failure whose reason quotes a URL with a signature in it.
    signed = dict(request, jobId="signed", imageUrls=[
        f"s3://{stack.extra['image_bucket']}/missing.tif?X-Amz-Signature=0123456789abcdef0123456789abcdef"])
    submit(stack, signed)
    failed, more = wait_final(stack, "signed")
    assert failed["attributes"]["status"] == "FAILED"
    assert worker.poll() is None
    text = worker_log.read_text()
    assert "sts" in text.lower() or "roles" in text  # the log is the worker's and it logged the job
    for status in seen + more:
        assert not SECRETS.search(status["message"] + str(status["attributes"])), status
    leaks = [line for line in text.splitlines() if SECRETS.search(line)]
    assert leaks == []
