"""Capacity-aware scheduling: endpoint capacities, fleet-wide leases, the adaptive limit."""

from __future__ import annotations

import threading
import time

import boto3
import pytest

from modelrunner.inference.capacity import CONCURRENCY_TAG, CapacityReader, CapacitySettings
from modelrunner.inference.limits import AdaptiveLimit
from modelrunner.local.stack import create_resources
from modelrunner.state.endpoints import EndpointLeases


def endpoint(sm, name, instances=2, concurrency=None, serverless=None):
    sm.create_model(ModelName=name, ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
                    PrimaryContainer={"Image": "x"})
    variant = {"VariantName": "AllTraffic", "ModelName": name}
    if serverless:
        variant["ServerlessConfig"] = {"MemorySizeInMB": 2048, "MaxConcurrency": serverless}
    else:
        variant.update(InitialInstanceCount=instances, InstanceType="ml.m5.xlarge")
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
    tags = [{"Key": CONCURRENCY_TAG, "Value": str(concurrency)}] if concurrency else []
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name, Tags=tags)


def test_capacity_from_the_sagemaker_api(moto_aws):
    sm = boto3.client("sagemaker")
    endpoint(sm, "tagged", instances=3, concurrency=4)
    endpoint(sm, "untagged", instances=2)
    endpoint(sm, "serverless", serverless=7)
    clock = [0.0]
    reader = CapacityReader(sm, CapacitySettings(default_instance_concurrency=2, default_http_concurrency=10,
                                                 cache_seconds=60), clock=lambda: clock[0])
    assert reader.capacity("SM_ENDPOINT", "tagged") == 12
    assert reader.capacity("SM_ENDPOINT", "untagged") == 4
    assert reader.capacity("SM_ENDPOINT", "serverless") == 7
    assert reader.capacity("HTTP_ENDPOINT", "http://models/x") == 10
    assert reader.capacity("SM_ENDPOINT", "unknown") is None  # not scheduled, never blocked
    sm.add_tags(ResourceArn=sm.describe_endpoint(EndpointName="untagged")["EndpointArn"],
                Tags=[{"Key": CONCURRENCY_TAG, "Value": "5"}])
    assert reader.capacity("SM_ENDPOINT", "untagged") == 4  # cached
    clock[0] = 61
    assert reader.capacity("SM_ENDPOINT", "untagged") == 10
    half = CapacityReader(sm, CapacitySettings(target_percentage=0.5))
    assert half.capacity("SM_ENDPOINT", "tagged") == 6


@pytest.fixture
def leases(moto_aws):
    res = create_resources(None, prefix="lease")
    return EndpointLeases(boto3.client("dynamodb"), res.endpoint_table, lease_seconds=2.0)


def test_leases_never_grant_more_than_the_capacity(leases):
    assert leases.acquire("ep", "w1/r1", want=3, capacity=4) == 3
    assert leases.acquire("ep", "w2/r1", want=3, capacity=4) == 1
    assert leases.acquire("ep", "w3/r1", want=3, capacity=4) == 0  # full: wait
    assert leases.in_flight("ep") == 4
    leases.release("ep", "w1/r1")
    assert leases.acquire("ep", "w3/r1", want=3, capacity=4) == 3
    assert leases.acquire("other", "w3/r2", want=3, capacity=4) == 3  # another endpoint is not held up


def test_an_item_the_reference_left_is_taken_over(leases):
    # The reference's self-throttling writes the endpoint's item without our version attribute.
    leases.client.put_item(TableName=leases.table, Item={"endpoint": {"S": "ep"}, "max_regions": {"N": "5"},
                                                         "regions_in_progress": {"N": "0"}})
    assert leases.acquire("ep", "w1/r1", want=3, capacity=4) == 3
    assert leases.acquire("ep", "w2/r1", want=3, capacity=4) == 1  # versioned from then on
    assert leases.in_flight("ep") == 4


def test_a_holder_alone_always_runs(leases):
    assert leases.acquire("ep", "w1/r1", want=8, capacity=4) == 4
    assert leases.acquire("ep", "w1/r1", want=8, capacity=4) == 4  # its own lease is not in its way


def test_a_dead_holders_lease_expires_and_renewal_keeps_a_live_one(leases):
    assert leases.acquire("ep", "dead", want=4, capacity=4) == 4
    assert leases.acquire("ep", "live", want=2, capacity=4) == 0
    time.sleep(1.2)
    assert leases.renew("ep", "dead")  # still alive at 1.2 s: extended to 3.2 s
    time.sleep(1.2)
    assert leases.acquire("ep", "live", want=2, capacity=4) == 0
    time.sleep(2.2)  # not renewed again: expired
    assert leases.acquire("ep", "live", want=2, capacity=4) == 2
    assert not leases.renew("ep", "dead")  # dropped by the grant that replaced it


def test_a_grant_racing_another_reads_again_and_stays_within_the_capacity(leases):
    """Worker a reads the item, worker b grants itself capacity meanwhile, then a writes: its compare-and-set
    fails and it reads again, so together they never exceed the capacity. (Played in order rather than with
    threads: moto's conditional writes are not atomic across threads, DynamoDB's are.)"""
    real_get = leases._get
    raced = []

    def get_then_race(endpoint):
        item = real_get(endpoint)
        if not raced:
            raced.append(None)
            raced[0] = leases.acquire(endpoint, "b", want=6, capacity=8)  # lands between a's read and write
        return item

    leases._get = get_then_race
    granted = leases.acquire("ep", "a", want=6, capacity=8)
    assert raced == [6] and granted == 2 and leases.in_flight("ep") == 8


def test_adaptive_limit_halves_on_throttling_and_recovers():
    limit = AdaptiveLimit(8, probe_after=5)
    tokens = [limit.acquire() for _ in range(8)]
    limit.release(tokens[0], throttled=True)
    assert limit.limit == 4
    for token in tokens[1:4]:  # the same burst: counted once
        limit.release(token, throttled=True)
    assert limit.limit == 4 and limit.throttles == 4
    for token in tokens[4:]:
        limit.release(token, throttled=False)
    # Quick recovery to the last level that did not throttle (7), then one probe per 5 successes.
    for _ in range(40):
        limit.release(limit.acquire(), throttled=False)
    assert limit.limit == 8
    limit.set_ceiling(3)
    assert limit.limit == 3


def test_adaptive_limit_bounds_in_flight_calls():
    limit = AdaptiveLimit(2)
    first, second = limit.acquire(), limit.acquire()
    stop = threading.Event()
    stop.set()
    assert limit.acquire(stop) is None  # full, and the worker is stopping
    limit.release(first, throttled=False)
    assert limit.acquire(stop) is not None
    limit.release(second, throttled=False)
