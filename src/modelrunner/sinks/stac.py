"""One STAC Item per job, next to its results, so that catalogues (STAC APIs, stac-fastapi, pgstac) index
what was detected where, by which model, with which parameters.

The Item (built with pystac) holds:

* ``geometry`` / ``bbox``: the image footprint in WGS84 (the extents the job row keeps, from the image's
  sensor model); no geometry when the image has none (the features are then in pixel coordinates);
* ``datetime``: when the results were produced, with ``start_datetime`` / ``end_datetime`` the job's
  processing span (the image's acquisition time is not known to the runner for every format);
* ``modelrunner:*`` properties: the model (name, invocation mode, parameters), the request as the wire
  form gives it (outputs are the assets), and the feature count;
* one asset per result object with its media type (``application/geo+json``, ``application/vnd.apache.parquet``,
  ``application/vnd.flatgeobuf``), roles ``data`` and ``labels``;
* the label extension (vector labels from an automated detection task, the classes found, the property
  that holds them) and a ``source`` link to the image, as the extension recommends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..requests import ImageRequest
from ..state.records import JobRecord

#: The label extension's schema; its fields are written directly (pystac's wrapper for it is deprecated).
LABEL_EXTENSION = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
#: The most class names listed in the label extension (a model with more lists the first ones, sorted).
MAX_CLASSES = 1000


@dataclass(frozen=True)
class JobDescription:
    """What the Item says about the job: taken from the request and the job row (:meth:`of`)."""

    job_id: str
    image_url: str = ""
    model_name: str = ""
    model_invoke_mode: str = ""
    model_parameters: Mapping[str, Any] = field(default_factory=dict)
    request: Mapping[str, Any] = field(default_factory=dict)
    extents: Mapping[str, float] | None = None  # north, south, east, west (degrees)
    image_size: tuple[int, int] | None = None  # width, height (pixels)
    sensor_model: str = ""
    started: datetime | None = None
    georeferenced: bool = True

    @classmethod
    def of(cls, request: ImageRequest, job: JobRecord) -> JobDescription:
        """From the parsed request and the job row (``extents``, ``sensor_model``, ``width``/``height``,
        ``start_time``, as :mod:`~modelrunner.runner.image` stores them)."""
        extents = json.loads(job.extents) if job.extents else None
        size = (job.width, job.height) if job.width and job.height else None
        start = job.start_time
        sensor = job.sensor_model or ""
        wire = {k: v for k, v in request.to_dict().items() if k != "outputs"}
        return cls(job_id=request.job_id, image_url=request.image_url, model_name=request.model_name,
                   model_invoke_mode=request.model_invoke_mode, model_parameters=dict(request.model_parameters),
                   request=wire, extents=extents, image_size=size, sensor_model=sensor,
                   started=datetime.fromtimestamp(int(start) / 1000, UTC) if start else None,
                   georeferenced=request.georegistration != "NONE" and sensor not in ("", "NONE"))


@dataclass(frozen=True)
class Asset:
    """One result object: its key in the Item's assets, where it is, and its media type."""

    name: str
    href: str
    media_type: str
    title: str


def build_item(job: JobDescription, assets: Sequence[Asset], feature_count: int, classes: Sequence[str],
               produced: datetime | None = None) -> dict[str, Any]:
    """The job's STAC Item as a dict (JSON-serialisable), validated by pystac's object model."""
    produced = produced or datetime.now(UTC)
    geometry: dict[str, Any] | None = None
    bbox: list[float] | None = None
    if job.georeferenced and job.extents:
        west, south = float(job.extents["west"]), float(job.extents["south"])
        east, north = float(job.extents["east"]), float(job.extents["north"])
        bbox = [west, south, east, north]
        geometry = {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                        [west, north], [west, south]]]}
    properties: dict[str, Any] = {
        "title": f"Detections of {job.model_name} on {job.image_url}",
        "created": produced.isoformat().replace("+00:00", "Z"),
        "modelrunner:job_id": job.job_id,
        "modelrunner:model": {"name": job.model_name, "invoke_mode": job.model_invoke_mode,
                              "parameters": dict(job.model_parameters)},
        "modelrunner:request": dict(job.request),
        "modelrunner:feature_count": feature_count,
        "modelrunner:sensor_model": job.sensor_model or "NONE",
    }
    if job.image_size:
        properties["modelrunner:image_size"] = list(job.image_size)
    import pystac  # imported by the first STAC Item, not when the worker starts (it is seldom asked for)

    item = pystac.Item(id=job.job_id, geometry=geometry, bbox=bbox, datetime=produced, properties=properties)
    if job.started is not None:
        item.common_metadata.start_datetime = min(job.started, produced)
        item.common_metadata.end_datetime = produced
    for asset in assets:
        item.add_asset(asset.name, pystac.Asset(href=asset.href, media_type=asset.media_type, title=asset.title,
                                                roles=["data", "labels"]))
    item.stac_extensions.append(LABEL_EXTENSION)
    item.properties.update({
        "label:description": f"Features detected by {job.model_name}", "label:type": "vector",
        "label:properties": ["class"],
        "label:classes": [{"name": "class", "classes": sorted(set(classes))[:MAX_CLASSES]}],
        "label:tasks": ["detection"], "label:methods": ["automated"],
    })
    if job.image_url:
        item.add_link(pystac.Link(rel="source", target=job.image_url, title="source image"))
    return item.to_dict(include_self_link=False, transform_hrefs=False)
