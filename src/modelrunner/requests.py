"""ImageRequest and RegionRequest: parse, validate, defaults, and round trips to the wire format.

Domain objects only: nothing here touches AWS or GDAL. Every rejection is a :class:`RequestError` that
names the offending field (in the wire spelling, e.g. ``imageProcessorTileSize``) and the reason, so the
job's FAILED status tells the requester exactly what to fix.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import RequestError
from .imagery.formats import unsupported_reason

INVOKE_MODES = ("SM_ENDPOINT", "HTTP_ENDPOINT")
TILE_FORMATS = ("NITF", "JPEG", "PNG", "GTIFF")
TILE_COMPRESSIONS = ("NONE", "JPEG", "J2K", "LZW")
#: ``georegistration``: AUTO geolocates features when the image has a usable sensor model (the reference's
#: only behaviour); NONE never does (features keep image coordinates), for imagery whose geolocation is
#: missing or wrong.
GEOREGISTRATIONS = ("AUTO", "NONE")
#: A job id is part of every key (DynamoDB keys, the Kinesis partition key, the S3 result key): at most
#: this many UTF-8 bytes keeps all of them within AWS's limits whatever the image URL.
MAX_JOB_ID_BYTES = 256
MAX_S3_KEY_BYTES = 1024
_STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
DEFAULT_TILE_SIZE = 1024
DEFAULT_TILE_OVERLAP = 50
MAX_TILE_SIZE = 16384

DISTILLATION_STEP = "FEATURE_DISTILLATION"
ALGORITHMS = ("NMS", "SOFT_NMS", "NMM", "GREEDYNMM")
MATCH_METRICS = ("IOU", "IOS")
#: ``edgeTruncation``: what happens to a detection cut by an interior tile edge (a partial view of an object
#: a neighbouring tile saw more of): NONE (the reference's behaviour), SUPPRESS, MERGE. See doc/merging.md.
EDGE_TRUNCATIONS = ("NONE", "SUPPRESS", "MERGE")
DEFAULT_EDGE_MARGIN = 2.0
MAX_EDGE_MARGIN = 256.0
# Wire keys (camelCase first, then the snake_case spelling the reference also accepts) -> our attribute.
_ALGORITHM_KEYS = {
    "algorithmType": "algorithm_type", "algorithm_type": "algorithm_type",
    "iouThreshold": "iou_threshold", "iou_threshold": "iou_threshold",
    "skipBoxThreshold": "skip_box_threshold", "skip_box_threshold": "skip_box_threshold",
    "sigma": "sigma",
    "matchMetric": "match_metric", "match_metric": "match_metric",
    "classAgnostic": "class_agnostic", "class_agnostic": "class_agnostic",
    "edgeTruncation": "edge_truncation", "edge_truncation": "edge_truncation",
    "edgeMargin": "edge_margin", "edge_margin": "edge_margin",
}
_SOFT_ONLY = {"skip_box_threshold", "sigma"}
_WIRE_KEYS = {attr: key for key, attr in reversed(_ALGORITHM_KEYS.items())}  # attribute -> camelCase key
#: S3 result formats (``format`` / ``formats`` of an S3 output). GeoJSON is the reference's one object,
#: byte for byte; GeoParquet and FlatGeobuf are for analysts loading 100,000+ features (see doc/outputs.md).
S3_FORMATS = ("GeoJSON", "GeoParquet", "FlatGeobuf")
#: Kinesis ``partitionKey``: jobId (the reference's: a job's records all go to one shard, in order), tile
#: (the tile a feature was found in: spread over shards, a tile's records stay together and in order) or
#: feature (each record its own key: spread evenly, no order).
PARTITION_KEYS = ("jobId", "tile", "feature")


def _json_body(body: str | bytes) -> Any:
    """An SQS message body as JSON; anything else is a RequestError on field ``body``."""
    try:
        return json.loads(body)
    except (ValueError, TypeError) as err:
        raise RequestError("body", f"is not valid JSON ({err})") from None


def _int(value: Any, name: str, *, minimum: int, maximum: int | None = None) -> int:
    """An int field, accepting numeric strings and truncating floats as the reference does."""
    if isinstance(value, bool):
        raise RequestError(name, f"must be an integer, got {value!r}")
    try:
        number = int(float(value)) if isinstance(value, str | float) else int(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(name, f"must be an integer, got {value!r}") from None
    if number < minimum:
        raise RequestError(name, f"must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise RequestError(name, f"must be <= {maximum}, got {number}")
    return number


def _str(value: Any, name: str, *, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RequestError(name, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RequestError(name, "is required and must not be empty")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...], default: str) -> str:
    if value is None or value == "":
        return default
    if value not in choices:
        raise RequestError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _role(value: Any, name: str) -> str:
    role = _str(value, name)
    if role and not role.startswith("arn:"):
        raise RequestError(name, f"must be an IAM role ARN starting with 'arn:', got {role!r}")
    return role


def _number(value: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError(name, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(name, f"must be a number, got {value!r}") from None
    if not (lo <= number <= hi) or math.isnan(number):
        raise RequestError(name, f"must be between {lo} and {hi}, got {number}")
    return number


@dataclass(frozen=True)
class DistillationOption:
    """How duplicate detections are merged (the request's ``postProcessing`` FEATURE_DISTILLATION step).

    ``NMS`` and ``SOFT_NMS`` are the reference's; ``NMM`` and ``GREEDYNMM`` (merge matched boxes into their
    union box, SAHI's two merges), ``match_metric`` IOS, ``class_agnostic`` and ``edge_truncation`` (partial
    views cut by an interior tile edge, within ``edge_margin`` pixels of it) are ours. Unlike the reference,
    SOFT_NMS honours ``iou_threshold``: only boxes overlapping more than it are decayed.
    """

    algorithm_type: str = "NMS"
    iou_threshold: float = 0.75
    skip_box_threshold: float = 0.0001
    sigma: float = 0.1
    match_metric: str = "IOU"
    class_agnostic: bool = False
    edge_truncation: str = "NONE"
    edge_margin: float = DEFAULT_EDGE_MARGIN

    @classmethod
    def from_dict(cls, algorithm: Mapping[str, Any], where: str = "postProcessing[0].algorithm") -> DistillationOption:
        if not isinstance(algorithm, Mapping):
            raise RequestError(where, "must be an object")
        values: dict[str, Any] = {}
        for key, value in algorithm.items():
            attr = _ALGORITHM_KEYS.get(key)
            if attr is None:
                raise RequestError(f"{where}.{key}", "unknown key")
            values[attr] = value
        kind = _choice(values.get("algorithm_type"), f"{where}.algorithmType", ALGORITHMS, "NMS")
        if kind != "SOFT_NMS":
            extra = sorted(k for k in algorithm if _ALGORITHM_KEYS[k] in _SOFT_ONLY)
            if extra:
                raise RequestError(f"{where}.{extra[0]}", f"only applies to SOFT_NMS, not {kind}")
        option = cls(algorithm_type=kind)
        if "iou_threshold" in values:
            option = replace(option, iou_threshold=_number(values["iou_threshold"], f"{where}.iouThreshold", 0, 1))
        if "skip_box_threshold" in values:
            option = replace(option, skip_box_threshold=_number(
                values["skip_box_threshold"], f"{where}.skipBoxThreshold", 0, 1))
        if "sigma" in values:
            sigma = _number(values["sigma"], f"{where}.sigma", 0, 1e6)
            if sigma <= 0:
                raise RequestError(f"{where}.sigma", "must be > 0")
            option = replace(option, sigma=sigma)
        if "match_metric" in values:
            option = replace(option, match_metric=_choice(
                values["match_metric"], f"{where}.matchMetric", MATCH_METRICS, "IOU"))
        if "class_agnostic" in values:
            if not isinstance(values["class_agnostic"], bool):
                raise RequestError(f"{where}.classAgnostic", "must be true or false")
            option = replace(option, class_agnostic=values["class_agnostic"])
        if "edge_truncation" in values:
            edge = _choice(values["edge_truncation"], f"{where}.edgeTruncation", EDGE_TRUNCATIONS, "NONE")
            if edge != "NONE" and kind == "SOFT_NMS":
                # SOFT_NMS merges once, at the job level, where only region windows are known: the tile edges
                # that cut a detection are not, so the option could not do what it says.
                raise RequestError(f"{where}.edgeTruncation", "does not apply to SOFT_NMS")
            option = replace(option, edge_truncation=edge)
        if "edge_margin" in values:
            if option.edge_truncation == "NONE":
                raise RequestError(f"{where}.edgeMargin", "only applies with edgeTruncation SUPPRESS or MERGE")
            option = replace(option, edge_margin=_number(values["edge_margin"], f"{where}.edgeMargin", 0,
                                                         MAX_EDGE_MARGIN))
        return option

    def to_dict(self) -> dict[str, Any]:
        """The job row's ``feature_distillation_option`` (reference keys, ours only when not default)."""
        out: dict[str, Any] = {"algorithm_type": self.algorithm_type, "iou_threshold": self.iou_threshold}
        if self.algorithm_type == "SOFT_NMS":
            out["skip_box_threshold"] = self.skip_box_threshold
            out["sigma"] = self.sigma
        if self.match_metric != "IOU":
            out["match_metric"] = self.match_metric
        if self.class_agnostic:
            out["class_agnostic"] = True
        if self.edge_truncation != "NONE":
            out["edge_truncation"] = self.edge_truncation
            out["edge_margin"] = self.edge_margin
        return out

    def to_wire(self) -> dict[str, Any]:
        """The camelCase ``algorithm`` object of a request (the same keys as :meth:`to_dict`)."""
        return {_WIRE_KEYS[key]: value for key, value in self.to_dict().items()}

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> DistillationOption:
        """Inverse of :meth:`to_dict` (reads the job row)."""
        return cls(**{k: v for k, v in stored.items() if k in cls.__dataclass_fields__})


#: The merge we recommend to new users (``scripts/bench_merge_quality`` measured it; doc/merging.md says why);
#: the demo requests it. A request without ``postProcessing`` still gets the reference's NMS 0.75.
RECOMMENDED_DISTILLATION = DistillationOption(algorithm_type="NMM", iou_threshold=0.3, match_metric="IOS",
                                              edge_truncation="MERGE")


def _post_processing(value: Any) -> DistillationOption:
    if value is None or value == []:
        return DistillationOption()
    if not isinstance(value, list):
        raise RequestError("postProcessing", "must be a list of steps")
    steps = [s for s in value if isinstance(s, Mapping) and s.get("step") == DISTILLATION_STEP]
    for i, step in enumerate(value):
        if not isinstance(step, Mapping):
            raise RequestError(f"postProcessing[{i}]", "must be an object")
        if step.get("step") != DISTILLATION_STEP:
            raise RequestError(f"postProcessing[{i}].step", f"must be {DISTILLATION_STEP}, got {step.get('step')!r}")
        unknown = sorted(set(step) - {"step", "algorithm"})
        if unknown:
            raise RequestError(f"postProcessing[{i}].{unknown[0]}", "unknown key")
    if len(steps) > 1:
        raise RequestError("postProcessing", f"at most one {DISTILLATION_STEP} step, got {len(steps)}")
    return DistillationOption.from_dict(steps[0].get("algorithm") or {})


def result_key(prefix: str, job_id: str) -> str:
    """The result object's key, the reference's ``os.path.join(prefix, job_id.split("/")[-1] + ".geojson")``.

    posixpath is os.path on the runner's platform; naming it keeps keys ``/``-separated everywhere.
    """
    return posixpath.join(prefix, job_id.split("/")[-1] + ".geojson")


@dataclass(frozen=True)
class S3Output:
    bucket: str
    prefix: str = ""
    role: str = ""
    formats: tuple[str, ...] = ("GeoJSON",)
    stac_item: bool = False


    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "S3", "bucket": self.bucket, "prefix": self.prefix}
        if self.role:
            out["role"] = self.role
        if self.formats != ("GeoJSON",):  # the reference's keys only, unless asked for more
            out["formats"] = list(self.formats)
        if self.stac_item:
            out["stacItem"] = True
        return out


@dataclass(frozen=True)
class KinesisOutput:
    stream: str
    batch_size: int = 500
    role: str = ""
    partition_key: str = "jobId"
    features_per_record: int = 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "Kinesis", "stream": self.stream, "batchSize": self.batch_size}
        if self.role:
            out["assumedRole"] = self.role
        if self.partition_key != "jobId":
            out["partitionKey"] = self.partition_key
        if self.features_per_record != 1:
            out["featuresPerRecord"] = self.features_per_record
        return out


Output = S3Output | KinesisOutput


def _resource_name(value: str) -> str:
    """Buckets and streams may be given as ARNs; the APIs take names."""
    return value.rsplit(":", 1)[-1].removeprefix("stream/") if value.startswith("arn:") else value


#: ``featuresPerRecord`` at most this: a record holds at most 1 MiB, and a bigger pack of small features
#: gains nothing once the shard's 1,000 records/s no longer limits (1 MiB/s does).
MAX_FEATURES_PER_RECORD = 10_000


def _formats(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """``format`` (one name) or ``formats`` (a list of names), matched case-insensitively, in the order
    asked, without repeats; GeoJSON when neither is given."""
    if "format" in raw and "formats" in raw:
        raise RequestError(f"{where}.formats", "give either format or formats, not both")
    if "formats" in raw:
        field_name, names = f"{where}.formats", raw["formats"]
        if not isinstance(names, list) or not names:
            raise RequestError(field_name, f"must be a non-empty list of {', '.join(S3_FORMATS)}")
    elif "format" in raw:
        field_name, names = f"{where}.format", [raw["format"]]
    else:
        return ("GeoJSON",)
    known = {name.lower(): name for name in S3_FORMATS}
    chosen: list[str] = []
    for name in names:
        canonical = known.get(name.lower()) if isinstance(name, str) else None
        if canonical is None:
            raise RequestError(field_name, f"must be one of {', '.join(S3_FORMATS)}, got {name!r}")
        if canonical not in chosen:
            chosen.append(canonical)
    return tuple(chosen)


def output_from_dict(raw: Any, where: str) -> Output:
    if not isinstance(raw, Mapping):
        raise RequestError(where, "must be an object")
    kind = raw.get("type")
    if kind == "S3":
        bucket = _resource_name(_str(raw.get("bucket"), f"{where}.bucket", required=True))
        prefix = _str(raw.get("prefix"), f"{where}.prefix")
        stac = raw.get("stacItem", False)
        if not isinstance(stac, bool):
            raise RequestError(f"{where}.stacItem", f"must be true or false, got {stac!r}")
        return S3Output(bucket=bucket, prefix=prefix, role=_role(raw.get("role"), f"{where}.role"),
                        formats=_formats(raw, where), stac_item=stac)
    if kind == "Kinesis":
        stream = _resource_name(_str(raw.get("stream"), f"{where}.stream", required=True))
        if not _STREAM_NAME.match(stream):
            raise RequestError(f"{where}.stream", f"{stream[:80]!r} is not a valid Kinesis stream name")
        batch = raw.get("batchSize")
        # Records per PutRecords call; the service's own limit (500) caps it, as a larger value (the
        # reference's sample asks for 1000) cannot be honoured literally.
        size = 500 if batch in (None, "") else min(500, _int(batch, f"{where}.batchSize", minimum=1))
        key = _choice(raw.get("partitionKey"), f"{where}.partitionKey", PARTITION_KEYS, "jobId")
        packed = raw.get("featuresPerRecord")
        per_record = 1 if packed in (None, "") else _int(packed, f"{where}.featuresPerRecord", minimum=1,
                                                          maximum=MAX_FEATURES_PER_RECORD)
        return KinesisOutput(stream=stream, batch_size=size, role=_role(raw.get("assumedRole"), f"{where}.assumedRole"),
                             partition_key=key, features_per_record=per_record)
    raise RequestError(f"{where}.type", f"must be S3 or Kinesis, got {kind!r}")


def _job_id(raw: Mapping[str, Any]) -> str:
    """``jobId``: required, printable, and short enough for every table key and the Kinesis partition key."""
    job_id = _str(raw.get("jobId"), "jobId", required=True)
    if len(job_id.encode("utf-8")) > MAX_JOB_ID_BYTES:
        raise RequestError("jobId", f"must be at most {MAX_JOB_ID_BYTES} bytes (it is part of every table key "
                                    f"and the Kinesis partition key), got {len(job_id.encode('utf-8'))}")
    if not job_id.isprintable():
        raise RequestError("jobId", "must not contain control characters")
    return job_id


def _image_url(raw: Mapping[str, Any]) -> str:
    """``imageUrls``: exactly one URL (the reference's list form, one image per request)."""
    urls = raw.get("imageUrls")
    if not isinstance(urls, list) or not urls:
        raise RequestError("imageUrls", "must be a non-empty list of image URLs")
    if len(urls) > 1:
        raise RequestError("imageUrls", f"one image per request is supported, got {len(urls)}")
    return _str(urls[0], "imageUrls[0]", required=True)


@dataclass(frozen=True)
class _Model:
    """The model part of a request: ``imageProcessor`` (kept for its role, read last) and its parameters."""

    processor: Mapping[str, Any]
    name: str
    invoke_mode: str
    parameters: dict[str, Any]


def _model(raw: Mapping[str, Any]) -> _Model:
    """``imageProcessor`` and ``imageProcessorParameters``: a model to invoke, an http(s) URL for HTTP_ENDPOINT."""
    processor = raw.get("imageProcessor")
    if not isinstance(processor, Mapping):
        raise RequestError("imageProcessor", "is required and must be an object with name and type")
    model_name = _str(processor.get("name"), "imageProcessor.name", required=True)
    mode = processor.get("type")
    if mode == "NONE":
        raise RequestError("imageProcessor.type", "NONE has no model to invoke; use SM_ENDPOINT or HTTP_ENDPOINT")
    mode = _choice(mode, "imageProcessor.type", INVOKE_MODES, "SM_ENDPOINT")
    if mode == "HTTP_ENDPOINT" and not model_name.startswith(("http://", "https://")):
        raise RequestError("imageProcessor.name", f"must be an http(s) URL for HTTP_ENDPOINT, got {model_name!r}")
    params = raw.get("imageProcessorParameters") or {}
    if not isinstance(params, Mapping):
        raise RequestError("imageProcessorParameters", "must be an object")
    return _Model(processor, model_name, mode, dict(params))


@dataclass(frozen=True)
class _Tiling:
    """How the image is cut for the model: tile size and overlap in pixels, tile format and compression."""

    size: int
    overlap: int
    format: str
    compression: str


def _tiling(raw: Mapping[str, Any]) -> _Tiling:
    """The ``imageProcessorTile*`` fields: an overlap smaller than the tile, a format/compression pair GDAL
    can write (the default overlap shrinks to fit a small tile rather than fail)."""
    size_raw = raw.get("imageProcessorTileSize")
    size = DEFAULT_TILE_SIZE if size_raw in (None, "") else _int(
        size_raw, "imageProcessorTileSize", minimum=1, maximum=MAX_TILE_SIZE)
    overlap_raw = raw.get("imageProcessorTileOverlap")
    overlap = min(DEFAULT_TILE_OVERLAP, size - 1) if overlap_raw in (None, "") else _int(
        overlap_raw, "imageProcessorTileOverlap", minimum=0)
    if overlap >= size:
        raise RequestError("imageProcessorTileOverlap", f"must be smaller than the tile size {size}, got {overlap}")
    tile_format = _choice(raw.get("imageProcessorTileFormat"), "imageProcessorTileFormat", TILE_FORMATS, "NITF")
    tile_compression = _choice(raw.get("imageProcessorTileCompression"), "imageProcessorTileCompression",
                               TILE_COMPRESSIONS, "NONE")
    pair_problem = unsupported_reason(tile_format, tile_compression)
    if pair_problem is not None:
        raise RequestError("imageProcessorTileCompression", pair_problem)
    return _Tiling(size, overlap, tile_format, tile_compression)


def _region(raw: Mapping[str, Any]) -> tuple[str | None, str]:
    """``regionOfInterest`` (WKT or none) and ``georegistration``, which must allow finding its pixels."""
    roi = raw.get("regionOfInterest")
    roi_wkt: str | None = None
    if roi not in (None, ""):
        roi_wkt = _validate_wkt(roi)
    georegistration = _choice(raw.get("georegistration"), "georegistration", GEOREGISTRATIONS, "AUTO")
    if georegistration == "NONE" and roi_wkt:
        raise RequestError("georegistration", "NONE cannot be combined with a regionOfInterest: a lon/lat "
                           "region needs the image's sensor model to find its pixels (use AUTO)")
    return roi_wkt, georegistration


def _outputs(raw: Mapping[str, Any], job_id: str) -> tuple[Output, ...]:
    """``outputs`` (or the legacy ``outputBucket`` / ``outputPrefix``): at least one, each S3 key within
    S3's limit, so a job never fails at the very end for a key it could have refused at once."""
    outputs_raw = raw.get("outputs")
    if not outputs_raw and raw.get("outputBucket") and raw.get("outputPrefix") is not None:
        outputs_raw = [{"type": "S3", "bucket": raw["outputBucket"], "prefix": raw.get("outputPrefix") or ""}]
    if outputs_raw is None:
        outputs_raw = []
    if not isinstance(outputs_raw, list):
        raise RequestError("outputs", "must be a list")
    outputs = tuple(output_from_dict(o, f"outputs[{i}]") for i, o in enumerate(outputs_raw))
    if not outputs:
        raise RequestError("outputs", "at least one S3 or Kinesis output is required")
    for i, output in enumerate(outputs):
        # The longest object an S3 output writes: ``.stac-item.json`` is 7 bytes past ``.geojson``.
        key = result_key(output.prefix, job_id) + ".stac-item" if isinstance(output, S3Output) else ""
        if len(key.encode("utf-8")) > MAX_S3_KEY_BYTES:
            raise RequestError(f"outputs[{i}].prefix", f"prefix + job id make an S3 key longer than "
                                                       f"{MAX_S3_KEY_BYTES} bytes")
    return outputs


def _feature_properties(raw: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """``featureProperties``: a list of objects, copied so the request cannot change them afterwards."""
    props = raw.get("featureProperties") or []
    if not isinstance(props, list) or not all(isinstance(p, Mapping) for p in props):
        raise RequestError("featureProperties", "must be a list of objects")
    return tuple(dict(p) for p in props)


@dataclass(frozen=True)
class ImageRequest:
    """One image to process, as the requester asked for it (validated, defaults filled in)."""

    job_id: str
    image_url: str
    model_name: str
    model_invoke_mode: str = "SM_ENDPOINT"
    model_invocation_role: str = ""
    model_parameters: Mapping[str, Any] = field(default_factory=dict)
    image_read_role: str = ""
    tile_size: int = DEFAULT_TILE_SIZE
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    tile_format: str = "NITF"
    tile_compression: str = "NONE"
    roi_wkt: str | None = None
    georegistration: str = "AUTO"
    outputs: tuple[Output, ...] = ()
    feature_properties: tuple[Mapping[str, Any], ...] = ()
    distillation: DistillationOption = field(default_factory=DistillationOption)
    job_name: str = ""
    job_arn: str = ""

    @property
    def image_id(self) -> str:
        """The key every table, status and feature uses: ``<jobId>:<imageUrls[0]>``."""
        return f"{self.job_id}:{self.image_url}"

    @classmethod
    def from_message(cls, body: str | bytes) -> ImageRequest:
        """Parse an SQS message body. Non-JSON is a RequestError on field ``body``."""
        return cls.from_dict(_json_body(body))

    @classmethod
    def from_dict(cls, raw: Any) -> ImageRequest:
        """Validate a request, one part at a time, in the order its errors are reported (the first wins)."""
        if not isinstance(raw, Mapping):
            raise RequestError("body", "must be a JSON object")
        job_id = _job_id(raw)
        image_url = _image_url(raw)
        model = _model(raw)
        tiling = _tiling(raw)
        roi_wkt, georegistration = _region(raw)
        outputs = _outputs(raw, job_id)
        props = _feature_properties(raw)
        return cls(
            job_id=job_id,
            image_url=image_url,
            model_name=model.name,
            model_invoke_mode=model.invoke_mode,
            model_invocation_role=_role(model.processor.get("assumedRole"), "imageProcessor.assumedRole"),
            model_parameters=model.parameters,
            image_read_role=_role(raw.get("imageReadRole"), "imageReadRole"),
            tile_size=tiling.size,
            tile_overlap=tiling.overlap,
            tile_format=tiling.format,
            tile_compression=tiling.compression,
            roi_wkt=roi_wkt,
            georegistration=georegistration,
            outputs=outputs,
            feature_properties=props,
            distillation=_post_processing(raw.get("postProcessing")),
            job_name=_str(raw.get("jobName"), "jobName"),
            job_arn=_str(raw.get("jobArn"), "jobArn"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form (camelCase), accepted back by :meth:`from_dict`."""
        processor: dict[str, Any] = {"name": self.model_name, "type": self.model_invoke_mode}
        if self.model_invocation_role:
            processor["assumedRole"] = self.model_invocation_role
        out: dict[str, Any] = {
            "jobId": self.job_id,
            "imageUrls": [self.image_url],
            "outputs": [o.to_dict() for o in self.outputs],
            "imageProcessor": processor,
            "imageProcessorTileSize": self.tile_size,
            "imageProcessorTileOverlap": self.tile_overlap,
            "imageProcessorTileFormat": self.tile_format,
            "imageProcessorTileCompression": self.tile_compression,
            "postProcessing": [{"step": DISTILLATION_STEP, "algorithm": self.distillation.to_wire()}],
        }
        if self.job_name:
            out["jobName"] = self.job_name
        if self.job_arn:
            out["jobArn"] = self.job_arn
        if self.model_parameters:
            out["imageProcessorParameters"] = dict(self.model_parameters)
        if self.image_read_role:
            out["imageReadRole"] = self.image_read_role
        if self.roi_wkt:
            out["regionOfInterest"] = self.roi_wkt
        if self.georegistration != "AUTO":
            out["georegistration"] = self.georegistration
        if self.feature_properties:
            out["featureProperties"] = [dict(p) for p in self.feature_properties]
        return out


def _validate_wkt(value: Any) -> str:
    if not isinstance(value, str):
        raise RequestError("regionOfInterest", "must be a WKT string")
    import shapely.wkt  # local: keeps this module import-light
    from shapely.errors import ShapelyError

    try:
        geom = shapely.wkt.loads(value)
    except (ShapelyError, ValueError) as err:
        raise RequestError("regionOfInterest", f"is not valid WKT ({err})") from None
    if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise RequestError("regionOfInterest", f"must be a non-empty POLYGON or MULTIPOLYGON, got {geom.geom_type}")
    return value


# Region requests ----------------------------------------------------------------------------------------

Bounds = tuple[tuple[int, int], tuple[int, int]]  # ((row, col), (width, height)), full-image pixels


def region_id_for(bounds: Bounds, job_id: str) -> str:
    """The reference's region id: Python repr of the two tuples, then ``-<jobId>``."""
    (row, col), (width, height) = bounds
    return f"({row}, {col})({width}, {height})-{job_id}"


@dataclass(frozen=True)
class RegionRequest:
    """One region of an image, as put on the region queue (the reference's key order, plus ours)."""

    job_id: str
    image_url: str
    model_name: str
    region_bounds: Bounds
    model_invoke_mode: str = "SM_ENDPOINT"
    model_invocation_role: str = ""
    image_read_role: str = ""
    tile_size: int = DEFAULT_TILE_SIZE
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    tile_format: str = "NITF"
    tile_compression: str = "NONE"
    image_extension: str = ""
    model_parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        return f"{self.job_id}:{self.image_url}"

    @property
    def region_id(self) -> str:
        return region_id_for(self.region_bounds, self.job_id)

    @classmethod
    def for_image(cls, request: ImageRequest, bounds: Bounds, image_extension: str = "") -> RegionRequest:
        return cls(
            job_id=request.job_id, image_url=request.image_url, model_name=request.model_name,
            region_bounds=bounds, model_invoke_mode=request.model_invoke_mode,
            model_invocation_role=request.model_invocation_role, image_read_role=request.image_read_role,
            tile_size=request.tile_size, tile_overlap=request.tile_overlap, tile_format=request.tile_format,
            tile_compression=request.tile_compression, image_extension=image_extension,
            model_parameters=dict(request.model_parameters),
        )

    def to_dict(self) -> dict[str, Any]:
        (row, col), (width, height) = self.region_bounds
        out: dict[str, Any] = {
            "image_id": self.image_id,
            "job_id": self.job_id,
            "image_url": self.image_url,
            "image_read_role": self.image_read_role,
            "model_name": self.model_name,
            "model_invoke_mode": self.model_invoke_mode,
            "model_invocation_role": self.model_invocation_role,
            "tile_size": [self.tile_size, self.tile_size],
            "tile_overlap": [self.tile_overlap, self.tile_overlap],
            "tile_format": self.tile_format,
            "tile_compression": self.tile_compression,
            "region_bounds": [[row, col], [width, height]],
            "region_id": self.region_id,
            "image_extension": self.image_extension,
        }
        if self.model_parameters:
            out["model_endpoint_parameters"] = dict(self.model_parameters)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Any) -> RegionRequest:
        if not isinstance(raw, Mapping):
            raise RequestError("body", "region request must be a JSON object")
        try:
            (row, col), (width, height) = raw["region_bounds"]
            bounds: Bounds = ((int(row), int(col)), (int(width), int(height)))
        except (KeyError, TypeError, ValueError):
            raise RequestError("region_bounds", "must be [[row, col], [width, height]]") from None
        if bounds[1][0] <= 0 or bounds[1][1] <= 0 or row < 0 or col < 0:
            raise RequestError("region_bounds", f"must have a non-negative origin and positive size, got {bounds}")

        def pair(name: str, minimum: int) -> int:
            value = raw.get(name)
            if isinstance(value, list | tuple):
                if len(value) != 2 or value[0] != value[1]:
                    raise RequestError(name, f"must be a square [n, n], got {value!r}")
                value = value[0]
            return _int(value, name, minimum=minimum)

        mode = _choice(raw.get("model_invoke_mode"), "model_invoke_mode", INVOKE_MODES, "SM_ENDPOINT")
        size = pair("tile_size", 1)
        overlap = pair("tile_overlap", 0)
        if overlap >= size:
            raise RequestError("tile_overlap", f"must be smaller than the tile size {size}")
        params = raw.get("model_endpoint_parameters") or {}
        return cls(
            job_id=_str(raw.get("job_id"), "job_id", required=True),
            image_url=_str(raw.get("image_url"), "image_url", required=True),
            model_name=_str(raw.get("model_name"), "model_name", required=True),
            region_bounds=bounds,
            model_invoke_mode=mode,
            model_invocation_role=_role(raw.get("model_invocation_role"), "model_invocation_role"),
            image_read_role=_role(raw.get("image_read_role"), "image_read_role"),
            tile_size=size,
            tile_overlap=overlap,
            tile_format=_choice(raw.get("tile_format"), "tile_format", TILE_FORMATS, "NITF"),
            tile_compression=_choice(raw.get("tile_compression"), "tile_compression", TILE_COMPRESSIONS, "NONE"),
            image_extension=_str(raw.get("image_extension"), "image_extension"),
            model_parameters=dict(params) if isinstance(params, Mapping) else {},
        )

    @classmethod
    def from_message(cls, body: str | bytes) -> RegionRequest:
        return cls.from_dict(_json_body(body))
