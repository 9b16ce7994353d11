"""motofast changes what moto costs, never what it answers: the same calls against an in-process moto server,
once stock and once patched, give byte-identical statuses, headers that matter and bodies.

One ThreadedMotoServer serves both runs (the patches are class-level, so they can be switched between
runs; ``/moto-api/reset`` makes both runs start from the same empty state). Answers are captured raw
(botocore's ``after-call`` event) so that a serializer difference cannot hide behind boto3's parsing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from osgeo import gdal

from modelrunner.local import motofast
from modelrunner.local.scene import make_scene

#: Headers that must match; dates and request ids legitimately differ between runs.
COMPARED_HEADERS = ("content-type", "content-length", "content-range", "etag", "accept-ranges", "x-amz-crc32",
                    "x-amzn-errortype")


@pytest.fixture(scope="module")
def server(moto_server: str) -> Iterator[str]:
    try:
        yield moto_server
    finally:
        motofast.unpatch()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 1500 x 1400 x 3 bytes is over moto's 5 MB in-memory limit: the key's buffer is rolled to a file.
    path = tmp_path_factory.mktemp("motofast") / "scene.tif"
    make_scene(str(path), 1500, 1400, seed=5)
    return path


def _reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/moto-api/reset", method="POST"), timeout=10).close()


class Recorder:
    """Raw answers of every call made through the clients it made."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls: list[tuple[str, int, dict[str, str], bytes]] = []

    def client(self, service: str) -> Any:
        client = boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                              config=Config(retries={"max_attempts": 1}))
        client.meta.events.register("after-call", self._record)
        return client

    def _record(self, http_response: Any, model: Any, **_: Any) -> None:
        headers = {k.lower(): v for k, v in http_response.headers.items() if k.lower() in COMPARED_HEADERS}
        # A streamed success body is still unread here (reading it would leave boto3 nothing): the
        # scenario hands it over with ``body``. Error bodies are already read by botocore.
        streamed = model.has_streaming_output and http_response.status_code < 300
        self.calls.append((model.name, http_response.status_code, headers, b"" if streamed else http_response.content))

    def body(self, answer: dict[str, Any]) -> bytes:
        """Read a streamed answer's body and record it with its call."""
        data = answer["Body"].read()
        name, status, headers, _ = self.calls[-1]
        self.calls[-1] = (name, status, headers, data)
        return data


def _both(url: str, scenario: Callable[[Recorder], Any]) -> tuple[Recorder, Any, Recorder, Any]:
    """Run ``scenario`` against stock moto, then patched moto, from the same reset state each time."""
    motofast.unpatch()
    _reset(url)
    stock = Recorder(url)
    stock_extra = scenario(stock)
    motofast.patch()
    try:
        _reset(url)
        fast = Recorder(url)
        fast_extra = scenario(fast)
    finally:
        motofast.unpatch()
    return stock, stock_extra, fast, fast_extra


#: Answers that carry the time they were made: compared with the times masked (and without the body CRC).
TIMESTAMPED = {"CreateTable": re.compile(rb'"CreationDateTime": [0-9.e+]+'),
               "DescribeTable": re.compile(rb'"CreationDateTime": [0-9.e+]+')}


def _masked(call: tuple[str, int, dict[str, str], bytes]) -> tuple[str, int, dict[str, str], bytes]:
    name, status, headers, body = call
    if name not in TIMESTAMPED:
        return call
    # The timestamp's digit count varies (1764040000.12 vs 1764040000.123), and so does the length.
    headers = {k: v for k, v in headers.items() if k not in ("x-amz-crc32", "content-length")}
    return name, status, headers, TIMESTAMPED[name].sub(b'"CreationDateTime": 0', body)


def _assert_same(stock: Recorder, fast: Recorder) -> None:
    assert len(stock.calls) == len(fast.calls)
    for before, after in zip(map(_masked, stock.calls), map(_masked, fast.calls), strict=True):
        assert before[:3] == after[:3], f"{before[0]}: {before[1:3]} != {after[1:3]}"
        assert before[3] == after[3], f"{before[0]}: bodies differ"


# --------------------------------------------------------------------------------------------------------- S3


def _s3_scenario(path: Path) -> Callable[[Recorder], Any]:
    def scenario(rec: Recorder) -> Any:
        s3 = rec.client("s3")
        s3.create_bucket(Bucket="bucket-b")
        s3.upload_file(str(path), "bucket-b", "scene.tif")
        s3.put_object(Bucket="bucket-b", Key="small", Body=b"0123456789" * 10)
        s3.put_object(Bucket="bucket-b", Key="empty", Body=b"")
        size = path.stat().st_size
        ranges = ["bytes=0-99", "bytes=100-", "bytes=-50", "bytes=0-0", f"bytes={size - 1}-",
                  f"bytes=1000-{size + 5000}", "bytes=5-2", "bytes=0-1,3-4", "bytes=abc", "bytes=-0", f"bytes={size}-",
                  f"bytes={size // 2}-{size // 2 + 3 * 1024 * 1024}"]
        for key in ("scene.tif", "small"):
            for spec in ranges:
                with contextlib.suppress(ClientError):  # InvalidRange: recorded, compared
                    rec.body(s3.get_object(Bucket="bucket-b", Key=key, Range=spec))
        rec.body(s3.get_object(Bucket="bucket-b", Key="small"))
        rec.body(s3.get_object(Bucket="bucket-b", Key="small", PartNumber=1))
        rec.body(s3.get_object(Bucket="bucket-b", Key="small", Range="bytes=3-9", ResponseContentType="text/plain"))
        with contextlib.suppress(ClientError):
            s3.get_object(Bucket="bucket-b", Key="empty", Range="bytes=0-9")
        s3.head_object(Bucket="bucket-b", Key="scene.tif", Range="bytes=0-9")
        # GDAL reads the scene through /vsis3/ with many small ranged GETs (no cache between runs).
        host = rec.url.removeprefix("http://")
        options = {"AWS_S3_ENDPOINT": host, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                   "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "CPL_VSIL_CURL_CHUNK_SIZE": "65536", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
        previous = {k: gdal.GetConfigOption(k) for k in options}
        try:
            for key, value in options.items():
                gdal.SetConfigOption(key, value)
            gdal.VSICurlClearCache()
            dataset = gdal.Open("/vsis3/bucket-b/scene.tif")
            digest = hashlib.sha256(dataset.ReadAsArray(100, 200, 1300, 900).tobytes()).hexdigest()
            dataset = None
        finally:
            for key, value in previous.items():
                gdal.SetConfigOption(key, value)
            gdal.VSICurlClearCache()
        return digest

    return scenario


def test_s3_ranged_reads_are_identical(server: str, scene_path: Path) -> None:
    stock, stock_digest, fast, fast_digest = _both(server, _s3_scenario(scene_path))
    _assert_same(stock, fast)
    expected = gdal.Open(str(scene_path)).ReadAsArray(100, 200, 1300, 900).tobytes()
    assert stock_digest == fast_digest == hashlib.sha256(expected).hexdigest()
    statuses = [status for _, status, _, _ in stock.calls]
    assert 206 in statuses and 416 in statuses and 200 in statuses


def test_s3_ranged_read_does_not_copy_the_object(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sliced range never calls the stock ``FakeKey.value``; a range moto ignores still does (whole body)."""
    motofast.patch()
    try:
        _reset(server)
        stock_value = motofast._stock["s3_value"]
        calls = []

        def counting(key: Any) -> bytes:
            calls.append(key.name)
            return stock_value.fget(key)

        monkeypatch.setitem(motofast._stock, "s3_value", property(counting, stock_value.fset))
        rec = Recorder(server)
        s3 = rec.client("s3")
        s3.create_bucket(Bucket="bucket-c")
        s3.put_object(Bucket="bucket-c", Key="k", Body=bytes(range(256)) * 100)
        assert rec.body(s3.get_object(Bucket="bucket-c", Key="k", Range="bytes=256-511")) == bytes(range(256))
        assert calls == []
        assert len(rec.body(s3.get_object(Bucket="bucket-c", Key="k", Range="bytes=0-1,5-6"))) == 25600
        assert calls == ["k"]
    finally:
        motofast.unpatch()


# --------------------------------------------------------------------------------------------------- DynamoDB

ITEM = {
    "pk": {"S": "job-1"}, "sk": {"S": "region#0001"}, "n": {"N": "42"}, "f": {"N": "-1.5e-3"},
    "empty": {"S": ""}, "unicode": {"S": "Zürich \u2603 \U0001f680"}, "flag": {"BOOL": False}, "none": {"NULL": True},
    "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2.5"]}, "blob": {"B": b"\x00\x01binary\xff"},
    "bs": {"BS": [b"x", b"\x00y"]},
    "m": {"M": {"inner": {"S": "v"}, "deep": {"M": {"l": {"L": [{"N": "1"}, {"S": "two"}, {"B": b"3"},
                                                                 {"M": {}}, {"L": []}]}}}}},
    "features": {"L": [{"S": json.dumps({"type": "Feature", "id": str(i), "properties": {"score": i / 7}})}
                       for i in range(50)]},
}


def _dynamodb_scenario(rec: Recorder) -> None:
    ddb = rec.client("dynamodb")
    ddb.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                {"AttributeName": "sk", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                           {"AttributeName": "sk", "AttributeType": "S"}])
    key = {"pk": ITEM["pk"], "sk": ITEM["sk"]}
    ddb.put_item(TableName="t", Item=ITEM, ReturnConsumedCapacity="TOTAL")
    ddb.put_item(TableName="t", Item={**ITEM, "n": {"N": "43"}}, ReturnValues="ALL_OLD")
    ddb.get_item(TableName="t", Key=key, ConsistentRead=True)
    ddb.get_item(TableName="t", Key=key, ProjectionExpression="n, m.deep, features[1], #u",
                 ExpressionAttributeNames={"#u": "unicode"}, ReturnConsumedCapacity="INDEXES")
    ddb.get_item(TableName="t", Key={"pk": {"S": "missing"}, "sk": {"S": "x"}})
    for return_values in ("ALL_NEW", "UPDATED_OLD", "UPDATED_NEW", "ALL_OLD", "NONE"):
        ddb.update_item(TableName="t", Key=key, ReturnValues=return_values,
                        UpdateExpression="SET tiles = list_append(if_not_exists(tiles, :empty), :t), "
                                         "cnt = if_not_exists(cnt, :zero) + :one ADD ss :s",
                        ExpressionAttributeValues={":empty": {"L": []}, ":t": {"L": [{"L": [{"N": "0"}, {"N": "1"}]}]},
                                                   ":zero": {"N": "0"}, ":one": {"N": "1"}, ":s": {"SS": ["c"]}})
    with contextlib.suppress(ClientError):
        ddb.update_item(TableName="t", Key=key, UpdateExpression="SET n = :v", ConditionExpression="n = :w",
                        ExpressionAttributeValues={":v": {"N": "1"}, ":w": {"N": "0"}},
                        ReturnValuesOnConditionCheckFailure="ALL_OLD")
    ddb.batch_write_item(RequestItems={"t": [
        {"PutRequest": {"Item": {**ITEM, "sk": {"S": f"region#{i:04d}"}, "i": {"N": str(i)}}}} for i in range(2, 27)
        if i != 26] + [{"DeleteRequest": {"Key": {"pk": {"S": "job-1"}, "sk": {"S": "region#0025"}}}}]})
    ddb.query(TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "job-1"}})
    page = ddb.query(TableName="t", KeyConditionExpression="pk = :p AND begins_with(sk, :r)", Limit=7,
                     ExpressionAttributeValues={":p": {"S": "job-1"}, ":r": {"S": "region#"}}, ConsistentRead=True)
    ddb.query(TableName="t", KeyConditionExpression="pk = :p", ExclusiveStartKey=page["LastEvaluatedKey"],
              ExpressionAttributeValues={":p": {"S": "job-1"}}, ScanIndexForward=False, Select="COUNT")
    ddb.query(TableName="t", KeyConditionExpression="pk = :p", FilterExpression="i > :i",
              ProjectionExpression="sk, i", ExpressionAttributeValues={":p": {"S": "job-1"}, ":i": {"N": "20"}})
    ddb.scan(TableName="t", Limit=5)
    ddb.batch_get_item(RequestItems={"t": {"Keys": [key, {"pk": {"S": "job-1"}, "sk": {"S": "region#0003"}}]}})
    ddb.transact_write_items(TransactItems=[
        {"Update": {"TableName": "t", "Key": key, "UpdateExpression": "ADD cnt :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}}}},
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "job-2"}, "sk": {"S": "x"}}}}])
    ddb.transact_get_items(TransactItems=[{"Get": {"TableName": "t", "Key": key}}])
    ddb.delete_item(TableName="t", Key=key, ReturnValues="ALL_OLD")
    ddb.describe_table(TableName="t")


def test_dynamodb_answers_are_identical(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = []
    render = motofast._render

    def counting(value: Any) -> Any:
        answer = render(value)
        rendered.append(answer is not motofast._NOT_PLAIN)
        return answer

    monkeypatch.setattr(motofast, "_render", counting)
    stock, _, fast, _ = _both(server, _dynamodb_scenario)
    _assert_same(stock, fast)
    assert sum(rendered) > 100, "the patched run must take the fast path"
    bodies = {name: body for name, _, _, body in stock.calls}
    assert b'"B": "AAFiaW5hcnn/"' in bodies["GetItem"] or b"AAFiaW5hcnn/" in bodies["PutItem"]


def test_render_leaves_unusual_values_to_the_serializer() -> None:
    plain = {"M": {"a": {"S": "x"}, "b": {"L": [{"N": "1"}, {"BOOL": True}]}}}
    assert motofast._render(plain) is plain
    assert motofast._render({"B": b"\x00"}) == {"B": "AA=="}
    assert motofast._render({"L": [{"S": "a"}, {"B": b"\x00"}]}) == {"L": [{"S": "a"}, {"B": "AA=="}]}
    for odd in ({"S": 1}, {"N": None}, {"S": "a", "N": "1"}, {"BOOL": "true"}, {"SS": ("a",)},
                {"M": {"a": {"S": None}}}, {"X": "1"}, {"B": 3}, "S"):
        assert motofast._render(odd) is motofast._NOT_PLAIN


# ---------------------------------------------------------------------------------------------------- Kinesis


def _kinesis_scenario(rec: Recorder) -> None:
    kinesis = rec.client("kinesis")
    kinesis.create_stream(StreamName="s", ShardCount=1)
    for batch in range(3):
        kinesis.put_records(StreamName="s", Records=[{"Data": f"{batch}-{i}".encode(), "PartitionKey": "p"}
                                                     for i in range(100)])
    kinesis.put_record(StreamName="s", Data=b"one", PartitionKey="p")
    shard = kinesis.list_shards(StreamName="s")["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName="s", ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    kinesis.get_records(ShardIterator=iterator, Limit=1000)


def test_kinesis_answers_are_identical(server: str) -> None:
    stock, _, fast, _ = _both(server, _kinesis_scenario)
    # PutRecord(s) answers (sequence numbers) in full; GetShardIterator / GetRecords carry random iterator
    # tokens and arrival times, so of those the records' sequence numbers, keys and data are compared.
    assert [c[:2] for c in stock.calls] == [c[:2] for c in fast.calls]
    for before, after in zip(stock.calls, fast.calls, strict=True):
        if before[0] in ("PutRecord", "PutRecords"):
            assert before == after, before[0]
    records = [json.loads(c[3])["Records"] for c in (stock.calls[-1], fast.calls[-1])]
    fields = ("SequenceNumber", "PartitionKey", "Data")
    assert [[r[f] for f in fields] for r in records[0]] == [[r[f] for f in fields] for r in records[1]]
    assert len(records[0]) == 301


def _concurrent_puts(url: str, threads: int, calls: int, batch: int) -> tuple[int, set[str], int]:
    """``threads`` clients each send ``calls`` PutRecords of ``batch`` records to one single-shard stream at once.

    Returns the records the puts reported failed, the sequence numbers they answered, and the number of
    records GetRecords reads back from the shard.
    """
    kinesis = boto3.client("kinesis", endpoint_url=url, region_name="us-east-1")
    kinesis.create_stream(StreamName="race", ShardCount=1)
    clients = [boto3.client("kinesis", endpoint_url=url, region_name="us-east-1") for _ in range(threads)]
    start = threading.Barrier(threads)
    answers: list[dict[str, Any]] = []

    def send(index: int) -> None:
        start.wait()
        for call in range(calls):
            answers.append(clients[index].put_records(StreamName="race", Records=[
                {"Data": f"{index}-{call}-{i}".encode(), "PartitionKey": "p"} for i in range(batch)]))

    # A short switch interval hands the GIL between the server's request threads every few bytecodes, so
    # that a put interrupted between reading the last sequence number and storing its record is common.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(send, range(threads)))
    finally:
        sys.setswitchinterval(interval)
    failed = sum(answer["FailedRecordCount"] for answer in answers)
    sequence_numbers = {record["SequenceNumber"] for answer in answers for record in answer["Records"]}

    shard = kinesis.list_shards(StreamName="race")["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName="race", ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    read = 0
    while True:
        page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
        if not page["Records"]:
            return failed, sequence_numbers, read
        read += len(page["Records"])
        iterator = page["NextShardIterator"]


def test_concurrent_puts_on_one_shard_keep_every_record(server: str) -> None:
    """Stock moto loses records here (two puts take the same sequence number); patched moto keeps all."""
    motofast.patch()
    try:
        _reset(server)
        threads, calls, batch = 4, 5, 200
        failed, sequence_numbers, read = _concurrent_puts(server, threads, calls, batch)
    finally:
        motofast.unpatch()
    assert failed == 0
    assert len(sequence_numbers) == threads * calls * batch, "two records answered the same sequence number"
    assert read == threads * calls * batch
