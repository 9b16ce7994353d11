"""A Kinesis stream that enforces what real Kinesis enforces and moto does not, on a virtual clock.

moto accepts any PutRecords at any rate, so a sink that loses throttled records passes every moto test.
:class:`LimitedStream` stands in for the boto3 client instead (``describe_stream_summary``, ``list_shards``,
``put_records``) and answers as the service does:

* the partition key's MD5 picks the shard among equal hash key ranges (how a stream's shards are created);
* each shard takes at most 1,000 records and 1 MiB (data + partition key) per second; a record beyond
  either fails inside the call with ``ProvisionedThroughputExceededException``, the others are stored;
* ``other_load`` (0 to 1) takes that share of every shard's capacity for writers the sink does not know
  about (other jobs on the same stream), so even a perfectly paced sink is throttled;
* calls over 500 records or 5 MiB, records over 1 MiB and partition keys outside 1-256 characters are
  refused with the service's ``InvalidArgumentException``, so a sink that breaks a limit fails loudly.

Time is virtual and kept per thread: each shard sender of the sink advances its own clock by its calls
(``call_seconds`` each) and its sleeps, as parallel calls on a real stream each take their own time. A
thread's clock starts where the latest clock stood when the stream was last described (a write starts).
:meth:`elapsed` is the latest clock of all: the simulated publish time, without the CPU time of encoding.
Used by the tests and by ``scripts/bench_outputs``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from typing import Any

from botocore.exceptions import ClientError

MiB = 1024 * 1024
HASH_SPACE = 2**128


class LimitedStream:
    """A boto3-like Kinesis client for one stream of ``shards`` shards at the real per-shard limits."""

    def __init__(self, name: str = "features", shards: int = 1, *, records_per_second: int = 1000,
                 bytes_per_second: int = MiB, call_seconds: float = 0.02, other_load: float = 0.0) -> None:
        self.name, self.shards = name, shards
        self.records_per_second, self.bytes_per_second = records_per_second, bytes_per_second
        self.call_seconds, self.other_load = call_seconds, other_load
        self._lock = threading.Lock()
        self._local = threading.local()
        self._base = 0.0
        self._clocks: dict[int, float] = {}
        self._used: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])  # (shard, second) -> use
        self.stored: list[list[tuple[str, bytes]]] = [[] for _ in range(shards)]
        self.calls = 0
        self.throttled = 0
        step = HASH_SPACE // shards
        self.starts = [i * step for i in range(shards)]

    # The virtual clock --------------------------------------------------------------------------------

    def clock(self) -> float:
        """This thread's virtual time (seconds)."""
        if not hasattr(self._local, "now"):
            self._local.now = self._base
        return float(self._local.now)

    def sleep(self, seconds: float) -> None:
        self._advance(max(0.0, seconds))

    def elapsed(self) -> float:
        """The simulated time by which every thread's work was done."""
        with self._lock:
            return max([self._base, *self._clocks.values()])

    def _advance(self, seconds: float) -> float:
        now = self.clock() + seconds
        self._local.now = now
        with self._lock:
            self._clocks[threading.get_ident()] = now
        return now

    # The client ---------------------------------------------------------------------------------------

    def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:  # noqa: N803
        self._check_name(StreamName)
        self._base = self.elapsed()  # a write starts once everything before it is done
        self._local.now = self._base
        return {"StreamDescriptionSummary": {"StreamName": StreamName, "StreamStatus": "ACTIVE",
                                             "OpenShardCount": self.shards}}

    def list_shards(self, StreamName: str) -> dict[str, Any]:  # noqa: N803
        self._check_name(StreamName)
        ends = [*self.starts[1:], HASH_SPACE]
        return {"Shards": [{"ShardId": f"shardId-{i:012d}",
                            "HashKeyRange": {"StartingHashKey": str(start), "EndingHashKey": str(end - 1)},
                            "SequenceNumberRange": {"StartingSequenceNumber": "0"}}
                           for i, (start, end) in enumerate(zip(self.starts, ends, strict=True))]}

    def shard_of(self, key: str) -> int:
        value = int.from_bytes(hashlib.md5(key.encode(), usedforsecurity=False).digest(), "big")
        return max(i for i, start in enumerate(self.starts) if start <= value)

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self._check_name(StreamName)
        if not 1 <= len(Records) <= 500:
            self._refuse(f"{len(Records)} records in one call; 1 to 500 allowed")
        sizes = [len(r["Data"]) + len(r["PartitionKey"].encode()) for r in Records]
        if sum(sizes) > 5 * MiB:
            self._refuse(f"{sum(sizes)} bytes in one call; at most 5 MiB")
        for record, size in zip(Records, sizes, strict=True):
            if not 1 <= len(record["PartitionKey"]) <= 256:
                self._refuse("partition key must be 1 to 256 characters")
            if size > MiB:
                self._refuse(f"record of {size} bytes; at most 1 MiB")
        now = self._advance(self.call_seconds)
        second = int(now)
        free = 1.0 - self.other_load
        entries: list[dict[str, Any]] = []
        with self._lock:
            self.calls += 1
            for record, size in zip(Records, sizes, strict=True):
                shard = self.shard_of(record["PartitionKey"])
                used = self._used[(shard, second)]
                if used[0] + 1 <= self.records_per_second * free and used[1] + size <= self.bytes_per_second * free:
                    used[0] += 1
                    used[1] += size
                    self.stored[shard].append((record["PartitionKey"], bytes(record["Data"])))
                    entries.append({"SequenceNumber": str(len(self.stored[shard])),
                                    "ShardId": f"shardId-{shard:012d}"})
                else:
                    self.throttled += 1
                    entries.append({"ErrorCode": "ProvisionedThroughputExceededException",
                                    "ErrorMessage": f"Rate exceeded for shard shardId-{shard:012d} in stream "
                                                    f"{self.name} under account 123456789012."})
        return {"FailedRecordCount": sum("ErrorCode" in e for e in entries), "Records": entries}

    def records(self) -> list[tuple[str, bytes]]:
        """Every stored record, shard by shard, in arrival order."""
        return [record for shard in self.stored for record in shard]

    def _check_name(self, name: str) -> None:
        if name != self.name:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException",
                                         "Message": f"Stream {name} not found"}}, "DescribeStreamSummary")

    def _refuse(self, message: str) -> None:
        raise ClientError({"Error": {"Code": "InvalidArgumentException", "Message": message}}, "PutRecords")
