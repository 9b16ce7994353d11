"""One open image with its sensor model: the only way the runner opens a request's image.

"Credentials -> open -> geolocator" happens in one place (``Services.open_image`` builds an
:class:`ImageContext`), and what it opened is closed on every path, as rio-tiler's readers own their
datasets: the GDAL dataset, the read credentials of its ``/vsis3/`` bucket (see :mod:`.source`), and the
geolocator's transformer and elevation model. A geolocator that outlived its image would keep the dataset
(and, for RPC images, the DEM) open behind the context's back, so closing the context closes it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..config import DEFAULT_IMAGE_DRIVERS
from .geolocate import Geolocator, Georeference
from .source import ImageSource


class ImageContext:
    """An open :class:`ImageSource`, its :class:`Georeference` and its :class:`Geolocator` (None when the
    image has no usable sensor model), closed together by :meth:`close` or ``with``."""

    def __init__(self, source: ImageSource, geolocator: Geolocator | None) -> None:
        self.source = source
        self.geolocator = geolocator
        self.georef = Georeference.of(source.dataset)

    @classmethod
    def open(cls, url: str, *, drivers: Sequence[str] = DEFAULT_IMAGE_DRIVERS,
             credentials: Mapping[str, str] | None = None, dem_location: str | None = None,
             dem_extension: str | None = None) -> ImageContext:
        """Open ``url`` (see :meth:`ImageSource.open`) and build its geolocator over the DEM at
        ``dem_location`` when given; the image is closed again when the geolocator cannot be built (an
        unusable DEM is an error)."""
        source = ImageSource.open(url, drivers=drivers, credentials=credentials)
        try:
            return cls(source, Geolocator.for_dataset(source.dataset, dem_location, dem_extension))
        except BaseException:
            source.close()
            raise

    def close(self) -> None:
        """Close the geolocator, then the image (and release its read credentials). Idempotent."""
        if self.geolocator is not None:
            self.geolocator.close()
        self.source.close()

    def __enter__(self) -> ImageContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
