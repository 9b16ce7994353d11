"""The real-AWS wrapper itself: each limit at its edge (accepted at the limit, refused one byte over, with
AWS's code and message), cancellation reasons, injected faults, and conflicts between transactions."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import boto3
import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError

from realaws import ITEM_BYTES, RealAws, item_size, value_size


@pytest.fixture
def aws(moto_aws: None) -> RealAws:
    return RealAws()


@pytest.fixture
def ddb(aws: RealAws) -> Any:
    client = aws.wrap(boto3.client("dynamodb"))
    for name, keys in (("hash", [("h", "HASH")]), ("both", [("h", "HASH"), ("r", "RANGE")])):
        client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": a, "KeyType": t} for a, t in keys],
                            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a, _ in keys])
    return client


def code(err: pytest.ExceptionInfo[ClientError]) -> str:
    return err.value.response["Error"]["Code"]


def padded(size: int, **key: str) -> dict[str, Any]:
    """An item of exactly ``size`` bytes as DynamoDB counts them (keys given as strings)."""
    item = {name: {"S": value} for name, value in key.items()}
    item["pad"] = {"S": ""}
    item["pad"]["S"] = "x" * (size - item_size(item))
    assert item_size(item) == size
    return item


def test_sizes_are_counted_as_dynamodb_documents_them():
    assert value_size({"S": "abc"}) == 3 and value_size({"S": "東"}) == 3
    assert value_size({"N": "12345"}) == 4 and value_size({"N": "-0.00100"}) == 2, "significant digits"
    assert value_size({"B": b"\0" * 7}) == 7 and value_size({"BOOL": True}) == 1 and value_size({"NULL": True}) == 1
    assert value_size({"L": []}) == 3 and value_size({"L": [{"S": "ab"}, {"N": "1"}]}) == 3 + (1 + 2) + (1 + 2)
    assert value_size({"M": {"k": {"S": "v"}}}) == 3 + 1 + 1 + 1
    assert item_size({"id": {"N": "1"}, "name": {"S": "abc"}}) == 2 + 2 + 4 + 3


def test_items_over_400_kb_are_refused_as_aws_counts_them(ddb):
    ddb.put_item(TableName="hash", Item=padded(400_000, h="a"))  # moto itself refuses over 405,000 of its bytes
    with pytest.raises(ClientError, match="Item size has exceeded the maximum allowed size") as err:
        ddb.put_item(TableName="hash", Item=padded(ITEM_BYTES + 1, h="b"))
    assert code(err) == "ValidationException"
    # 210,000 one-byte strings: 210 KB to moto, 420 KB to DynamoDB (a byte per list element, 3 per list).
    listed = {"h": {"S": "c"}, "l": {"L": [{"S": "a"}] * 210_000}}
    with pytest.raises(ClientError, match="Item size has exceeded"):
        ddb.put_item(TableName="hash", Item=listed)
    with pytest.raises(ClientError, match="Item size has exceeded"):
        ddb.batch_write_item(RequestItems={"hash": [{"PutRequest": {"Item": listed}}]})
    assert "Item" not in ddb.get_item(TableName="hash", Key={"h": {"S": "c"}})


def test_an_update_is_refused_by_the_item_it_would_leave(ddb):
    ddb.put_item(TableName="hash", Item=padded(300_000, h="a"))
    grow = {"TableName": "hash", "Key": {"h": {"S": "a"}}, "UpdateExpression": "SET more = :m"}
    with pytest.raises(ClientError, match="Item size to update has exceeded") as err:
        ddb.update_item(**grow, ExpressionAttributeValues={":m": {"S": "y" * 200_000}})
    assert code(err) == "ValidationException"
    assert "more" not in ddb.get_item(TableName="hash", Key={"h": {"S": "a"}})["Item"], "nothing written"
    ddb.update_item(**grow, ExpressionAttributeValues={":m": {"S": "y" * 100_000}})  # 400,011 bytes: fits


def test_keys_over_2048_and_1024_bytes_are_refused(ddb):
    ddb.put_item(TableName="both", Item={"h": {"S": "h" * 2048}, "r": {"S": "r" * 1024}})
    with pytest.raises(ClientError, match="Size of hashkey has exceeded the maximum size limit of2048 bytes"):
        ddb.put_item(TableName="both", Item={"h": {"S": "h" * 2049}, "r": {"S": "r"}})
    with pytest.raises(ClientError, match="Aggregated size of all range keys has exceeded the size limit of 1024"):
        ddb.get_item(TableName="both", Key={"h": {"S": "h"}, "r": {"S": "é" * 513}})


def test_a_transaction_is_cancelled_with_its_reasons(ddb):
    ddb.put_item(TableName="hash", Item=padded(300_000, h="big"))
    ddb.put_item(TableName="hash", Item={"h": {"S": "small"}})
    actions = [{"Update": {"TableName": "hash", "Key": {"h": {"S": "small"}}, "UpdateExpression": "SET n = :one",
                           "ExpressionAttributeValues": {":one": {"N": "1"}}}},
               {"Update": {"TableName": "hash", "Key": {"h": {"S": "big"}}, "UpdateExpression": "SET more = :m",
                           "ExpressionAttributeValues": {":m": {"S": "y" * 200_000}}}}]
    with pytest.raises(ddb.exceptions.TransactionCanceledException) as err:
        ddb.transact_write_items(TransactItems=actions)
    assert [r["Code"] for r in err.value.response["CancellationReasons"]] == ["None", "ValidationError"]
    assert "n" not in ddb.get_item(TableName="hash", Key={"h": {"S": "small"}})["Item"], "all or nothing"
    condition = [{"Put": {"TableName": "hash", "Item": {"h": {"S": "small"}}, "ConditionExpression":
                          "attribute_not_exists(h)"}}]
    with pytest.raises(ddb.exceptions.TransactionCanceledException) as err:
        ddb.transact_write_items(TransactItems=condition)
    assert [r["Code"] for r in err.value.response["CancellationReasons"]] == ["ConditionalCheckFailed"]


def test_injected_cancellations_and_errors_answer_the_next_calls_only(ddb, aws):
    put = [{"Put": {"TableName": "hash", "Item": {"h": {"S": "a"}}}}, {"Put": {"TableName": "hash",
                                                                             "Item": {"h": {"S": "b"}}}}]
    aws.inject("TransactWriteItems", "TransactionConflict", index=1)
    aws.inject("TransactWriteItems", "ThrottlingError")
    for expected in (["None", "TransactionConflict"], ["ThrottlingError", "None"]):
        with pytest.raises(ddb.exceptions.TransactionCanceledException) as err:
            ddb.transact_write_items(TransactItems=put)
        reasons = err.value.response["CancellationReasons"]
        assert [r["Code"] for r in reasons] == expected
        assert all(r["Message"] for r in reasons if r["Code"] != "None"), "AWS says why"
    ddb.transact_write_items(TransactItems=put)
    assert aws.calls["TransactWriteItems"] == 3
    assert "Item" not in ddb.get_item(TableName="hash", Key={"h": {"S": "missing"}})
    sns = aws.wrap(boto3.client("sns"))
    topic = sns.create_topic(Name="t")["TopicArn"]
    aws.inject("Publish", "Throttling", times=2)
    for _ in range(2):
        with pytest.raises(ClientError) as err:
            sns.publish(TopicArn=topic, Message="m")
        assert code(err) == "Throttling"
    sns.publish(TopicArn=topic, Message="m")
    assert aws.refusals.count(("Publish", "Throttling")) == 2


def test_transactions_meeting_on_an_item_conflict(moto_aws):
    aws = RealAws(hold_s=1.0)
    ddb = aws.wrap(boto3.client("dynamodb"))
    ddb.create_table(TableName="hash", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "h", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "h", "AttributeType": "S"}])
    count = {"Update": {"TableName": "hash", "Key": {"h": {"S": "job"}}, "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}}
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def finish(region: str) -> None:
        start.wait()
        try:
            ddb.transact_write_items(TransactItems=[{"Put": {"TableName": "hash", "Item": {"h": {"S": region}}}},
                                                    count])
            outcomes.append("done")
        except ddb.exceptions.TransactionCanceledException as err:
            outcomes.append(",".join(r["Code"] for r in err.response["CancellationReasons"]))

    threads = [threading.Thread(target=finish, args=(f"r{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["None,TransactionConflict", "done"]
    assert ddb.get_item(TableName="hash", Key={"h": {"S": "job"}})["Item"]["n"] == {"N": "1"}
    holder = threading.Thread(target=ddb.transact_write_items, kwargs={"TransactItems": [count]})
    holder.start()
    while not aws.held_items():  # the transaction holds the job row for hold_s once it got it
        time.sleep(0.01)
    with pytest.raises(ClientError) as err:  # a single write to an item a transaction holds
        ddb.update_item(**count["Update"])
    holder.join()
    assert code(err) == "TransactionConflictException"


def test_sns_sqs_and_s3_limits(aws):
    sns = aws.wrap(boto3.client("sns"))
    topic = sns.create_topic(Name="t")["TopicArn"]
    attrs = {"a": {"DataType": "String", "StringValue": "v" * 1000}}  # 1 + 6 + 1000 bytes
    sns.publish(TopicArn=topic, Message="m" * (262_144 - 1007), MessageAttributes=attrs)
    with pytest.raises(ClientError, match="Message too long") as err:
        sns.publish(TopicArn=topic, Message="m" * (262_144 - 1006), MessageAttributes=attrs)
    assert code(err) == "InvalidParameter"

    sqs = aws.wrap(boto3.client("sqs"))
    queue = sqs.create_queue(QueueName="q")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="b" * 262_144)
    with pytest.raises(ClientError, match="Message must be shorter than 262144 bytes"):
        sqs.send_message(QueueUrl=queue, MessageBody="é" * 131_073)
    with pytest.raises(ClientError, match="Batch requests cannot be longer than 262144 bytes") as err:
        sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": "b" * 100_000}
                                                        for i in range(3)])
    assert code(err) == "AWS.SimpleQueueService.BatchRequestTooLong"
    with pytest.raises(ClientError, match="Maximum number of entries per request are 10"):
        sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": "b"} for i in range(11)])

    s3 = aws.wrap(boto3.client("s3"))
    s3.create_bucket(Bucket="bucket-1")
    s3.put_object(Bucket="bucket-1", Key="k" * 1024, Body=b"x")
    with pytest.raises(ClientError, match="Your key is too long") as err:
        s3.put_object(Bucket="bucket-1", Key="k" * 1025, Body=b"x")
    assert code(err) == "KeyTooLongError"
    with pytest.raises((ClientError, S3UploadFailedError), match="KeyTooLongError"):
        s3.upload_fileobj(io.BytesIO(b"x"), "bucket-1", "k" * 1025)  # boto3's managed transfer is checked too
