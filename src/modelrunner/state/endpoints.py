"""Fleet-wide leases on a model endpoint's capacity, in the endpoint table (``ENDPOINT_TABLE``).

One item per endpoint: ``leases`` maps a holder (a worker's region) to the tiles it may have in flight and
when that lease expires; ``version`` makes every change a compare-and-set, so workers across the fleet
together never grant more than the endpoint's capacity. A lease expires unless renewed (a worker that dies
gives its share back after ``lease_seconds``), so capacity is never leaked. A holder alone on an endpoint
always gets a lease, so nothing deadlocks.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from . import ddb

log = logging.getLogger(__name__)


@dataclass
class EndpointLeases:
    client: Any
    table: str
    lease_seconds: float = 30.0
    attempts: int = 8

    def _get(self, endpoint: str) -> dict[str, Any]:
        answer = self.client.get_item(TableName=self.table, Key=ddb.marshal({"endpoint": endpoint}),
                                      ConsistentRead=True)
        return ddb.unmarshal(answer.get("Item"))

    def in_flight(self, endpoint: str) -> int:
        """Tiles granted by unexpired leases (for metrics and tests)."""
        now = time.time()
        return sum(int(lease["tiles"]) for lease in self._get(endpoint).get("leases", {}).values()
                   if float(lease["expires"]) > now)

    def acquire(self, endpoint: str, holder: str, want: int, capacity: int) -> int:
        """Tiles ``holder`` may keep in flight on ``endpoint`` (0: the endpoint is full, wait)."""
        for attempt in range(self.attempts):
            item = self._get(endpoint)
            now = time.time()
            others = {h: lease for h, lease in item.get("leases", {}).items()
                      if h != holder and float(lease["expires"]) > now}
            used = sum(int(lease["tiles"]) for lease in others.values())
            grant = min(want, capacity - used) if others else min(want, capacity)
            if grant <= 0:
                return 0
            leases = {**others, holder: {"tiles": grant, "expires": now + self.lease_seconds}}
            version = int(item.get("version", 0))
            # An item without a version is new, or one the reference's self-throttling left (max_regions,
            # regions_in_progress): taken over, or no region of that endpoint would ever start.
            condition = ("attribute_not_exists(endpoint)" if not item else
                         "version = :v" if "version" in item else "attribute_not_exists(version)")
            values = {":leases": leases, ":next": version + 1, ":cap": capacity}
            if "version" in item:
                values[":v"] = version
            if ddb.conditional(self.client.update_item, TableName=self.table,
                               Key=ddb.marshal({"endpoint": endpoint}),
                               UpdateExpression="SET leases = :leases, version = :next, max_regions = :cap",
                               ConditionExpression=condition, ExpressionAttributeValues=ddb.values(values)):
                return grant
            time.sleep(random.uniform(0, 0.02 * 2 ** attempt))  # another worker changed the item: read again
        return 0

    def renew(self, endpoint: str, holder: str) -> bool:
        """Extend ``holder``'s lease; False when it has expired and been dropped meanwhile."""
        try:
            self.client.update_item(
                TableName=self.table, Key=ddb.marshal({"endpoint": endpoint}),
                UpdateExpression="SET leases.#h.expires = :t ADD version :one",  # a racing acquire reads again
                ConditionExpression="attribute_exists(leases.#h)", ExpressionAttributeNames={"#h": holder},
                ExpressionAttributeValues=ddb.values({":t": time.time() + self.lease_seconds, ":one": 1}))
        except ClientError as err:
            if err.response["Error"]["Code"] in ("ConditionalCheckFailedException", "ValidationException"):
                return False
            raise
        return True

    def release(self, endpoint: str, holder: str) -> None:
        """Give the lease back (a lost release only costs ``lease_seconds`` of that capacity)."""
        self.client.update_item(TableName=self.table, Key=ddb.marshal({"endpoint": endpoint}),
                                UpdateExpression="REMOVE leases.#h ADD version :one",
                                ExpressionAttributeNames={"#h": holder},
                                ExpressionAttributeValues=ddb.values({":one": 1}))
