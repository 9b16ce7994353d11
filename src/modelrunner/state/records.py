"""Typed job and region rows: :class:`JobRecord` and :class:`RegionRecord`, read from and written back to
DynamoDB items (the pystac ``from_dict`` / ``to_dict`` idiom, as Powertools' idempotency ``DataRecord``).

One module for both records, apart from the stores (``jobs.py``, ``regions.py``) that write them with
conditional writes: a record is the row's schema, which the runner, the worker, the completion and the CLI
read, and which the stores and those readers would otherwise each spell out as raw attribute names.

The items stay exactly what the reference and older workers write (attribute names, types and values:
other tools read these tables). So that rows of older and newer workers load during a rolling upgrade:

- every attribute a row may lack has a default (``None`` for "absent"), and ``to_item`` leaves ``None``
  out, as :func:`~modelrunner.state.ddb.marshal` does;
- attributes the record does not know (a newer worker's) are kept in ``extra`` and written back as they
  were, so ``from_item(item).to_item() == item`` for every item the stores write.

Plain (non-``None``) defaults only where every writer of a row sets the attribute.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from ..requests import ImageRequest

#: Job row attributes ``delivered:<output>`` hold each output's delivery checkpoint.
CHECKPOINT_PREFIX = "delivered:"

Bounds = tuple[tuple[int, int], tuple[int, int]]


class _Record:
    """What both records share: attributes by field name, unknown attributes kept in ``extra``."""

    extra: dict[str, Any]

    #: Fields that are not attributes of their own (filled and written by the subclass).
    _NOT_ATTRIBUTES: ClassVar[frozenset[str]] = frozenset({"extra"})

    @classmethod
    def _attributes(cls) -> tuple[str, ...]:
        """The field names that are attributes of their own, in field order (computed once per class: a
        completion reads thousands of region rows)."""
        record_type: Any = cls  # a dataclass (each subclass is one), and hashable
        return _attribute_names(record_type)

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Self:
        """The record of an unmarshalled item (:func:`~modelrunner.state.ddb.unmarshal`); attributes it
        does not know go to ``extra``."""
        known = frozenset(cls._attributes())
        values = {k: v for k, v in item.items() if k in known}
        rest = {k: v for k, v in item.items() if k not in known}
        return cls(**values, **cls._split_extra(rest))

    @classmethod
    def _split_extra(cls, rest: dict[str, Any]) -> dict[str, Any]:
        return {"extra": rest}

    def to_item(self) -> dict[str, Any]:
        """The item to marshal: every attribute that is not ``None``, then the kept unknown ones."""
        item = {name: getattr(self, name) for name in self._attributes() if getattr(self, name) is not None}
        item.update(self._extra_attributes())
        return item

    def _extra_attributes(self) -> dict[str, Any]:
        return dict(self.extra)


@functools.cache
def _attribute_names(record_type: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(record_type) if f.name not in record_type._NOT_ATTRIBUTES)


@dataclass
class JobRecord(_Record):
    """The job (image) row: see :mod:`~modelrunner.state.jobs` for who writes what, and when.

    The attributes both of its writers put (:meth:`~modelrunner.state.jobs.JobStore.create` and
    ``create_failed``) are plain values; the others are ``None`` when absent.
    """

    _NOT_ATTRIBUTES: ClassVar[frozenset[str]] = frozenset({"extra", "delivered"})

    image_id: str
    job_id: str = ""
    image_url: str = ""
    # Written when the job starts (JobStore.create); a refused request's FAILED row has none of them.
    runs: list[str] | None = None
    image_read_role: str | None = None
    model_invoke_mode: str | None = None
    model_name: str | None = None
    start_time: int = 0
    end_time: int | None = None
    expire_time: int | None = None
    processing_duration: float = 0
    region_count: int = 0
    region_success: int = 0
    region_error: int = 0
    regions_done: int | None = None  # not on a refused request's FAILED row
    job_status: str | None = None
    status_reason: str | None = None
    tile_size: str | None = None  # "(512, 512)": the reference's tuple string
    tile_overlap: str | None = None
    outputs: str | None = None  # JSON
    feature_properties: str | None = None  # JSON
    feature_distillation_option: str | None = None  # JSON
    roi_wkt: str | None = None
    request: str | None = None  # JSON: the request without featureProperties and regionOfInterest
    # Written once the image is opened (runner/image.py).
    width: int | None = None
    height: int | None = None
    tile_count: int | None = None
    extents: str | None = None  # JSON {"north", "south", "east", "west"}
    image_extension: str | None = None
    sensor_model: str | None = None
    regions_queued: bool | None = None
    tile_radiometry: str | None = None  # JSON TileRadiometry, set once by the first region to measure it
    # The completion's claim and its result.
    completion_worker: str | None = None
    completion_claimed: float | None = None
    completion_attempts: int | None = None
    feature_count: int | None = None
    raw_feature_count: int | None = None
    failed_tile_count: int | None = None
    outputs_written: str | None = None  # JSON list of sink names
    # The final status's publication (see JobStore.end / claim_publish).
    status_published: bool | None = None
    status_publishing: float | None = None
    timeline: list[dict[str, Any]] | None = None
    #: Each output's delivery checkpoint, by output key (attributes ``delivered:<key>``).
    delivered: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _split_extra(cls, rest: dict[str, Any]) -> dict[str, Any]:
        delivered = {k[len(CHECKPOINT_PREFIX):]: str(v) for k, v in rest.items() if k.startswith(CHECKPOINT_PREFIX)}
        return {"delivered": delivered, "extra": {k: v for k, v in rest.items() if not k.startswith(CHECKPOINT_PREFIX)}}

    def _extra_attributes(self) -> dict[str, Any]:
        return {**{CHECKPOINT_PREFIX + k: v for k, v in self.delivered.items()}, **self.extra}

    @property
    def ended(self) -> bool:
        """The final status is written (``end_time`` is the condition of every write that must not reopen)."""
        return self.end_time is not None

    @property
    def publication_pending(self) -> bool:
        """Ended, and its final status not yet taken by SNS (rows without the flag predate it: published)."""
        return self.ended and self.status_published is False

    def image_request(self, *, columns: bool = True) -> ImageRequest:
        """The job's request, rebuilt from the row: the stored ``request`` with the ``featureProperties`` and
        ``regionOfInterest`` that its own columns hold (see :func:`~modelrunner.state.jobs.stored_request`).
        The one way every region and the completion read the job's parameters.

        ``columns=False``: the stored ``request`` alone, as the completion has always read it (it needs
        neither, and its STAC Item's ``modelrunner:request`` shows the request without them)."""
        wire = dict(json.loads(self.request or "{}"))
        if not columns:
            return ImageRequest.from_dict(wire)
        if self.roi_wkt:
            wire["regionOfInterest"] = self.roi_wkt
        properties = json.loads(self.feature_properties) if self.feature_properties else []
        if properties:
            wire["featureProperties"] = properties
        return ImageRequest.from_dict(wire)


@dataclass
class RegionRecord(_Record):
    """A region row (:mod:`~modelrunner.state.regions`): planned (QUEUED), STARTED, then final."""

    image_id: str
    region_id: str
    job_id: str | None = None
    region_index: int | None = None  # absent on a row a region message created before its plan was written
    region_status: str | None = None
    start_time: int | None = None
    last_updated_time: int | None = None
    end_time: int | None = None
    expire_time: int | None = None
    image_read_role: str | None = None
    region_bounds: list[list[int]] | None = None  # [[row, col], [width, height]]
    region_retry_count: int | None = None
    worker: str | None = None
    total_tiles: int | None = None  # absent on a row a region message created before its plan
    succeeded_tile_count: int = 0
    failed_tile_count: int = 0
    tile_size: list[int] | None = None
    tile_overlap: list[int] | None = None
    tile_format: str | None = None
    tile_compression: str | None = None
    # Final fields (RegionStore.finish).
    processing_duration: int | None = None  # ms
    succeeded_tiles: list[Any] | None = None
    failed_tiles: list[Any] | None = None
    succeeded_tiles_omitted: int | None = None
    failed_tiles_omitted: int | None = None
    message: str | None = None
    feature_count: int | None = None
    result_chunks: int | None = None
    result_attempt: str | None = None
    raw_feature_count: int | None = None
    failed_tile_reasons: list[str] | None = None
    # A job re-run's (RegionStore.reopen): the failed tiles to run and the earlier result.
    rerun_tiles: list[Any] | None = None
    prior_attempt: str | None = None
    prior_chunks: int | None = None
    prior_succeeded: list[Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bounds(self) -> Bounds:
        """``region_bounds`` as the requests hold them: ((row, col), (width, height))."""
        if self.region_bounds is None:
            raise ValueError(f"region row {self.region_id} has no region_bounds")
        (row, col), (width, height) = self.region_bounds
        return (int(row), int(col)), (int(width), int(height))

    @property
    def index(self) -> int:
        """``region_index``, 0 for a row without one (the order the readers sorted such rows in)."""
        return int(self.region_index or 0)

    @property
    def is_rerun(self) -> bool:
        """Queued again for its failed tiles only (``runner/rerun.py``)."""
        return self.rerun_tiles is not None
