"""What every sink reports back (:class:`SinkResult`), and the feature text and label every sink writes.

A sink never decides the job's outcome: it says how many features reached the output and why the others
did not, and the worker turns that into SUCCESS / PARTIAL / FAILED. Sinks raise :class:`SinkError` only
when nothing could be done at all (the bucket or stream is missing, or the service call itself kept
failing after botocore's own retries).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Clients are created by the caller (``aws.AwsClients``: assumed roles, endpoints and regions are its
# business, and it gives S3 and Kinesis botocore's *standard* retry mode, which retries throttling codes such
# as Kinesis' ProvisionedThroughputExceededException with exponential back-off and jitter).


@dataclass
class SinkResult:
    """The outcome of writing one job's features to one output.

    ``sink`` names the destination (``s3://bucket/key`` or ``kinesis:stream``) so a status message can say
    where the results went; ``reasons`` says, in words an operator can act on, why ``features_failed``
    features did not get there.
    """

    sink: str
    features_written: int = 0
    features_failed: int = 0
    reasons: list[str] = field(default_factory=list)
    # Every object or stream written, when an output writes several (an S3 output's formats, its STAC Item).
    locations: list[str] = field(default_factory=list)


def feature_label(feature: Any, index: int) -> str:
    """A short name for a feature in failure reasons: its GeoJSON ``id``, else ``properties.id``, else
    its position in the job's feature stream (so a reason is never anonymous)."""
    if type(feature) is str:  # the runner's own features are texts: named by position, without an ABC check
        return f"#{index}"
    if isinstance(feature, Mapping):
        ident = feature.get("id")
        if ident in (None, ""):
            props = feature.get("properties")
            if isinstance(props, Mapping):
                ident = props.get("id")
        if ident not in (None, ""):
            return json.dumps(ident) if not isinstance(ident, str) else repr(ident)
    return f"#{index}"


def feature_json(feature: dict[str, Any] | str) -> str:
    """A feature's GeoJSON text; a ``str`` is taken as already-serialised JSON (the job's stored results
    are kept as text, so features nobody changed are never parsed and re-serialised)."""
    return feature if isinstance(feature, str) else json.dumps(feature)
