"""``python -m modelrunner.local.motofast``: the moto server with a cost that real AWS does not have removed.

moto's Kinesis shard builds a list of every record key on each PutRecords to find the first/last sequence
number (O(n^2) over a stream's life: about a minute for 100k records). The ordered dict's first and last
keys give the same values in O(1). Responses are unchanged; only the benchmark's and demo's timings are.
"""

from __future__ import annotations

import sys
from typing import Any


def patch() -> None:
    from moto.kinesis.models import Shard

    def first(self: Any) -> int:
        return next(iter(self.records)) if self.records else 0

    def last(self: Any) -> int:
        return next(reversed(self.records)) if self.records else 0

    Shard.get_min_sequence_number = first
    Shard.get_max_sequence_number = last


def main() -> None:
    patch()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
