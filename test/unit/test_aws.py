"""The one place clients are built: a worker builds its clients at start-up, once."""

from __future__ import annotations

from modelrunner.aws import WORKER_SERVICES, AwsClients


def test_warm_builds_every_worker_client_once_and_later_calls_reuse_them():
    aws = AwsClients("us-east-1", endpoint_urls={"sagemaker-runtime": "http://127.0.0.1:9"})
    aws.warm()
    built = {service: aws.client(service) for service in WORKER_SERVICES}
    assert {key[0] for key in aws._clients} == set(WORKER_SERVICES)
    assert aws.s3 is built["s3"] and aws.kinesis.wrapped is built["kinesis"] and aws.kinesis is aws.kinesis
    assert aws.sagemaker_runtime.meta.endpoint_url == "http://127.0.0.1:9"
    aws.warm()
    assert all(aws.client(service) is client for service, client in built.items())
    assert aws.for_role(None) is aws


def test_assumed_role_clients_are_built_without_deadlock(moto_aws):
    """for_role builds its STS client while holding the client cache's lock (it once waited on itself)."""
    import threading

    from modelrunner.aws import AwsClients

    clients = AwsClients("us-east-1")
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(
        clients.for_role("arn:aws:iam::123456789012:role/reader").s3.list_buckets()), daemon=True)
    thread.start()
    thread.join(20)
    assert done, "for_role did not return"
    creds = clients.assumed_credentials("arn:aws:iam::123456789012:role/reader")
    assert creds["AWS_ACCESS_KEY_ID"].startswith("ASIA") and creds["AWS_SESSION_TOKEN"]
