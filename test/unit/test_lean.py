"""The JSON-protocol fast path (modelrunner.lean) sends what botocore sends, answers what botocore answers,
and leaves failures, stubs and in-process mocks to botocore.

A moto server on 127.0.0.1 (in this process, the ``moto_server`` fixture) stands in for Kinesis and DynamoDB.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from modelrunner.aws import AwsClients
from modelrunner.lean import LeanJsonClient

KEYS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secret", "aws_session_token": "token"}


def client(service: str, url: str) -> Any:
    return boto3.client(service, region_name="us-east-1", endpoint_url=url, **KEYS,
                        config=Config(retries={"mode": "standard", "max_attempts": 2}))


def records_on(kinesis: Any, stream: str) -> list[tuple[bytes, str]]:
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    out: list[tuple[bytes, str]] = []
    while True:
        answer = kinesis.get_records(ShardIterator=iterator, Limit=10000)
        out.extend((r["Data"], r["PartitionKey"]) for r in answer["Records"])
        if not answer["Records"]:
            return out
        iterator = answer["NextShardIterator"]


def test_put_records_on_the_fast_path_lands_the_same_records(moto_server: str):
    stock = client("kinesis", moto_server)
    stock.create_stream(StreamName="lean-a", ShardCount=1)
    lean = LeanJsonClient(client("kinesis", moto_server), ("PutRecords",))
    operation = lean._fast["put_records"]
    batches = [[{"Data": f'{{"n": {i}, "b": "\\u00e9"}}'.encode() + bytes([0, 255]), "PartitionKey": f"k{i % 3}"}
                for i in range(start, start + 50)] for start in (0, 50, 100)]
    answers = [lean.put_records(StreamName="lean-a", Records=batch) for batch in batches]
    assert operation.url == moto_server + "/"  # learnt from botocore's first call, then used
    assert operation.fast
    for answer, batch in zip(answers, batches, strict=True):
        assert answer["FailedRecordCount"] == 0 and len(answer["Records"]) == len(batch)
        assert all(entry["SequenceNumber"] and entry["ShardId"] for entry in answer["Records"])
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert records_on(stock, "lean-a") == [(r["Data"], r["PartitionKey"]) for batch in batches for r in batch]


def test_batch_write_item_with_blobs_answers_as_botocore(moto_server: str):
    stock = client("dynamodb", moto_server)
    stock.create_table(TableName="lean-t", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                       AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                       BillingMode="PAY_PER_REQUEST")
    lean = LeanJsonClient(client("dynamodb", moto_server), ("BatchWriteItem",))
    operation = lean._fast["batch_write_item"]
    assert not operation.plain_answer  # UnprocessedItems may hold blobs: botocore's parser reads the answer

    def items(start: int) -> list[dict[str, Any]]:
        return [{"PutRequest": {"Item": {"k": {"S": f"key-{i}"}, "blob": {"B": bytes(range(i, i + 40))},
                                          "n": {"N": str(i)}, "texts": {"L": [{"S": "é"}, {"S": "x"}]}}}}
                for i in range(start, start + 25)]

    for start in (0, 25, 50):
        answer = lean.batch_write_item(RequestItems={"lean-t": items(start)})
        assert answer["UnprocessedItems"] == {}
    assert operation.fast and operation.url == moto_server + "/"
    got = stock.get_item(TableName="lean-t", Key={"k": {"S": "key-60"}})["Item"]
    assert got["blob"]["B"] == bytes(range(60, 100)) and got["texts"]["L"] == [{"S": "é"}, {"S": "x"}]
    assert stock.scan(TableName="lean-t", Select="COUNT")["Count"] == 75


def test_an_error_answer_goes_to_botocore_and_stays_there(moto_server: str):
    lean = LeanJsonClient(client("kinesis", moto_server), ("PutRecords",))
    operation = lean._fast["put_records"]
    stock = client("kinesis", moto_server)
    stock.create_stream(StreamName="lean-b", ShardCount=1)
    lean.put_records(StreamName="lean-b", Records=[{"Data": b"1", "PartitionKey": "k"}])  # learns the URL
    assert operation.fast
    with pytest.raises(ClientError) as raised:  # the fast call fails; botocore sends it again and raises
        lean.put_records(StreamName="no-such-stream", Records=[{"Data": b"1", "PartitionKey": "k"}])
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert not operation.fast
    answer = lean.put_records(StreamName="lean-b", Records=[{"Data": b"2", "PartitionKey": "k"}])
    assert answer["FailedRecordCount"] == 0
    assert [data for data, _ in records_on(stock, "lean-b")] == [b"1", b"2"]


def test_a_stubbed_or_mocked_client_never_takes_the_fast_path():
    """A stub answers in-process: its URL teaches nothing, so no later call leaves the process."""
    raw = client("kinesis", "https://kinesis.us-east-1.amazonaws.com")
    lean = LeanJsonClient(raw, ("PutRecords",))
    with Stubber(raw) as stub:
        for _ in range(3):
            stub.add_response("put_records", {"Records": [
                {"SequenceNumber": "1", "ShardId": "shardId-000000000000"}]})
        for _ in range(3):
            lean.put_records(StreamName="s", Records=[{"Data": b"x", "PartitionKey": "k"}])
        stub.assert_no_pending_responses()
    assert lean._fast["put_records"].url is None


def test_aws_clients_put_the_bulk_operations_on_the_fast_path(moto_aws: None):
    clients = AwsClients("us-east-1")
    assert isinstance(clients.kinesis, LeanJsonClient) and isinstance(clients.dynamodb, LeanJsonClient)
    assert clients.kinesis is clients.kinesis
    clients.kinesis.create_stream(StreamName="lean-c", ShardCount=1)  # any other call is the client's
    # Under moto's mock_aws the answers are made in-process: the fast path stays off, the mock gets the call.
    answer = clients.kinesis.put_records(StreamName="lean-c", Records=[{"Data": b"m", "PartitionKey": "k"}])
    assert answer["FailedRecordCount"] == 0 and clients.kinesis._fast["put_records"].url is None
    assert records_on(clients.kinesis, "lean-c") == [(b"m", "k")]
