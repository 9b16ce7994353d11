"""The job's features as GeoParquet 1.1 and FlatGeobuf files, written feature by feature to local files.

Analysts load 100,000-feature results into DuckDB, GeoPandas, Spark or a GIS: GeoParquet is what those
read for bulk vector data (columnar, compressed, range-readable from S3), FlatGeobuf what web maps and GIS
stream (a packed Hilbert R-tree up front, so a viewer fetches only the features in view). Both hold the same
features as the GeoJSON object, with the same columns:

* ``id`` (the feature's ``id`` as text), ``geometry`` (the feature's geometry, WGS84 lon/lat[/height] when
  the image was georeferenced; the image's pixel coordinates, with no CRS, when it was not);
* typed columns for what is filtered and sorted on: ``score`` and ``class`` (the top entry of
  ``featureClasses``), and in GeoParquet ``image_bbox`` (the pixel box: ``imageBBox``, else the bounds of
  ``imageGeometry``) and the ``bbox`` covering column (the geometry's bounds, GeoParquet 1.1's
  ``covering``, so readers skip row groups by location);
* ``properties``: every property of the feature as JSON text, as the GeoJSON has it, so nothing is lost.

The writers see each feature once, in the job's order (region by region, then the seam features), and keep
at most one row group in memory: :data:`ROW_GROUP_FEATURES` features per GeoParquet row group, each a
spatially compact run of the image (its bbox statistics then prune well), a few MB each, the size range
reads want. FlatGeobuf is GDAL/OGR's driver with ``SPATIAL_INDEX=YES``; it sorts the features along the
Hilbert curve when the file is closed (FlatGeobuf's index requires that order).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import shapely
from osgeo import ogr, osr

if TYPE_CHECKING:
    import pyarrow as pa

#: Features per GeoParquet row group: about 1 to 4 MB of compressed columns for the runner's features.
ROW_GROUP_FEATURES = 10_000
GEOPARQUET_VERSION = "1.1.0"
_PARSE_BATCH = 1000
_TYPE_NAMES = {0: "Point", 1: "LineString", 2: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
               6: "MultiPolygon", 7: "GeometryCollection"}

@functools.cache
def schema() -> pa.Schema:
    """The GeoParquet file's columns. pyarrow (about 55 MB resident) is imported by the first GeoParquet
    write, not when the worker starts: most jobs write GeoJSON only, and every worker would carry it."""
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()),
        ("geometry", pa.binary()),
        ("bbox", pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()),
                            ("xmax", pa.float64()), ("ymax", pa.float64())])),
        ("score", pa.float64()),
        ("class", pa.string()),
        ("image_bbox", pa.list_(pa.float64(), 4)),
        ("properties", pa.string()),
    ])


def parse_feature(feature: str | Mapping[str, Any]) -> dict[str, Any]:
    """A feature as a dict (texts are parsed with orjson, several times faster than ``json``)."""
    return orjson.loads(feature) if isinstance(feature, str) else dict(feature)


def feature_id(feature: Mapping[str, Any]) -> str | None:
    ident = feature.get("id")
    return None if ident is None else ident if isinstance(ident, str) else json.dumps(ident)


def top_class(properties: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """(score, class) of the best ``featureClasses`` entry; (None, None) when there is none."""
    classes = properties.get("featureClasses")
    best: tuple[float | None, str | None] = (None, None)
    if isinstance(classes, list):
        for entry in classes:
            if (isinstance(entry, Mapping) and isinstance(entry.get("score"), int | float)
                    and (best[0] is None or entry["score"] > best[0])):
                best = (float(entry["score"]), str(entry.get("iri")) if entry.get("iri") is not None else None)
    return best


def image_bbox(properties: Mapping[str, Any]) -> list[float] | None:
    """The feature's pixel box: ``imageBBox``, else the bounds of ``imageGeometry``."""
    box = properties.get("imageBBox")
    if isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box):
        return [float(v) for v in box]
    geometry = properties.get("imageGeometry")
    if isinstance(geometry, Mapping):
        xs: list[float] = []
        ys: list[float] = []
        _positions(geometry.get("coordinates"), xs, ys)
        if xs:
            return [min(xs), min(ys), max(xs), max(ys)]
    return None


def _positions(coordinates: Any, xs: list[float], ys: list[float]) -> None:
    """Collect the x and y of every position of a GeoJSON coordinates array (any nesting)."""
    if not isinstance(coordinates, list) or not coordinates:
        return
    if isinstance(coordinates[0], int | float):
        if len(coordinates) >= 2 and isinstance(coordinates[1], int | float):
            xs.append(float(coordinates[0]))
            ys.append(float(coordinates[1]))
        return
    for part in coordinates:
        _positions(part, xs, ys)


def output_geometry(feature: Mapping[str, Any], georeferenced: bool) -> Mapping[str, Any] | None:
    """The geometry a feature gets in GeoParquet and FlatGeobuf: its own; when it has none (the reference
    leaves a model's ``"geometry": null`` where there is only an ``imageBBox``, or no sensor model), its
    GeoJSON ``bbox`` as a polygon if the job is georeferenced, else its pixel geometry (``imageGeometry``,
    else the ``imageBBox`` box), as the file's coordinates are then pixels. GDAL's FlatGeobuf writer drops
    features without a geometry, so this keeps every feature in every format."""
    geometry = feature.get("geometry")
    if isinstance(geometry, Mapping):
        return geometry
    properties = feature.get("properties") or {}
    box = feature.get("bbox") if georeferenced else None
    if not georeferenced:
        image_geometry = properties.get("imageGeometry")
        if isinstance(image_geometry, Mapping):
            return image_geometry
        box = properties.get("imageBBox")
    if isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box):
        x0, y0, x1, y1 = (float(v) for v in box)
        return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
    return None


class GeoParquetWriter:
    """Writes features to a GeoParquet 1.1 file, one row group per :data:`ROW_GROUP_FEATURES` features.

    ``georeferenced`` False: the geometries are pixel coordinates, so the file says its CRS is unknown
    (``"crs": null``) instead of GeoParquet's default, WGS84 lon/lat.
    """

    def __init__(self, path: str, *, georeferenced: bool = True, row_group_features: int = ROW_GROUP_FEATURES) -> None:
        self.path = path
        self.georeferenced = georeferenced
        self.row_group_features = max(1, row_group_features)
        import pyarrow.parquet as pq

        self.writer = pq.ParquetWriter(path, schema(), compression="zstd", write_page_index=True,
                                       write_statistics=True)
        self.rows: list[tuple[str | None, bytes | None, float | None, str | None, list[float] | None, str]] = []
        self.geometries: list[Any] = []
        self.types: set[str] = set()
        self.extent = [float("inf"), float("inf"), float("-inf"), float("-inf")]
        self.count = 0

    def add(self, feature: Mapping[str, Any]) -> None:
        properties = feature.get("properties") or {}
        score, label = top_class(properties)
        geometry = output_geometry(feature, self.georeferenced)
        # As text: orjson's bytes keep their 4 KB buffer, a str is copied to its size.
        self.geometries.append(orjson.dumps(geometry).decode() if isinstance(geometry, Mapping) else None)
        self.rows.append((feature_id(feature), None, score, label, image_bbox(properties),
                          orjson.dumps(properties).decode()))
        if len(self.rows) >= self.row_group_features:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        # GEOS's GeoJSON reader holds several KB per geometry while it parses: a thousand at a time.
        geoms = np.concatenate([shapely.from_geojson(self.geometries[i:i + _PARSE_BATCH], on_invalid="ignore")
                                for i in range(0, len(self.geometries), _PARSE_BATCH)])
        wkb = shapely.to_wkb(geoms, output_dimension=3)
        bounds = shapely.bounds(geoms)
        present = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
        for type_id, has_z in set(zip(shapely.get_type_id(geoms[present]).tolist(),
                                      shapely.has_z(geoms[present]).tolist(), strict=True)):
            self.types.add(_TYPE_NAMES[type_id] + (" Z" if has_z else ""))
        if present.any():
            b = bounds[present]
            self.extent = [min(self.extent[0], float(b[:, 0].min())), min(self.extent[1], float(b[:, 1].min())),
                           max(self.extent[2], float(b[:, 2].max())), max(self.extent[3], float(b[:, 3].max()))]
        import pyarrow as pa

        columns = schema()
        missing = pa.array(~present)
        boxes = pa.StructArray.from_arrays([pa.array(bounds[:, i]) for i in range(4)],
                                           names=["xmin", "ymin", "xmax", "ymax"], mask=missing)
        ids, _, scores, labels, image_boxes, properties = zip(*self.rows, strict=True)
        table = pa.Table.from_arrays([
            pa.array(ids, pa.string()), pa.array(wkb, pa.binary()), boxes,
            pa.array(scores, pa.float64()), pa.array(labels, pa.string()),
            pa.array(image_boxes, columns.field("image_bbox").type), pa.array(properties, pa.string()),
        ], schema=columns)
        self.writer.write_table(table, row_group_size=len(self.rows))
        self.count += len(self.rows)
        self.rows, self.geometries = [], []

    def close(self) -> int:
        """Write the last row group and the ``geo`` metadata; return the number of features."""
        self._flush()
        column: dict[str, Any] = {
            "encoding": "WKB", "geometry_types": sorted(self.types),
            "covering": {"bbox": {"xmin": ["bbox", "xmin"], "ymin": ["bbox", "ymin"],
                                  "xmax": ["bbox", "xmax"], "ymax": ["bbox", "ymax"]}},
        }
        if self.extent[0] <= self.extent[2]:
            column["bbox"] = self.extent
        if not self.georeferenced:
            column["crs"] = None
        self.writer.add_key_value_metadata({"geo": json.dumps({
            "version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}})})
        self.writer.close()
        return self.count


class FlatGeobufWriter:
    """Writes features to a FlatGeobuf file with its spatial index (GDAL/OGR's driver).

    The layer is created at the first feature with a geometry, so that its Z flag follows the features
    (OGR writes Z only into a layer declared 3D, and would add Z = 0 to 2-D pixel geometries otherwise).
    """

    def __init__(self, path: str, *, georeferenced: bool = True) -> None:
        self.path = path
        self.georeferenced = georeferenced
        driver = ogr.GetDriverByName("FlatGeobuf")
        if driver is None:
            raise RuntimeError("this GDAL has no FlatGeobuf driver (GDAL >= 3.1 has)")
        self.dataset = driver.CreateDataSource(path)
        self.layer: Any = None
        self.waiting: list[Mapping[str, Any]] = []  # features before the first geometry (usually none)
        self.count = 0

    def _create_layer(self, has_z: bool) -> None:
        srs = None
        if self.georeferenced:
            srs = osr.SpatialReference()
            srs.ImportFromEPSG(4326)
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)  # lon, lat as GeoJSON has them
        kind = ogr.wkbUnknown | (ogr.wkb25DBit if has_z else 0)
        self.layer = self.dataset.CreateLayer("features", srs, kind, ["SPATIAL_INDEX=YES"])
        for name, field_type in (("id", ogr.OFTString), ("score", ogr.OFTReal), ("class", ogr.OFTString),
                                 ("properties", ogr.OFTString)):
            definition = ogr.FieldDefn(name, field_type)
            if name == "properties":
                definition.SetSubType(ogr.OFSTJSON)
            self.layer.CreateField(definition)
        self.definition = self.layer.GetLayerDefn()
        waiting, self.waiting = self.waiting, []
        for feature in waiting:
            self._write(feature, None)

    def add(self, feature: Mapping[str, Any]) -> None:
        geometry = output_geometry(feature, self.georeferenced)
        ogr_geometry = ogr.CreateGeometryFromJson(orjson.dumps(geometry).decode()) if isinstance(
            geometry, Mapping) else None
        if self.layer is None:
            if ogr_geometry is None:
                self.waiting.append(feature)
                return
            self._create_layer(ogr_geometry.Is3D())
        self._write(feature, ogr_geometry)

    def _write(self, feature: Mapping[str, Any], geometry: Any) -> None:
        properties = feature.get("properties") or {}
        score, label = top_class(properties)
        row = ogr.Feature(self.definition)
        if geometry is not None:
            row.SetGeometryDirectly(geometry)
        # Typed setters by index: SetField by name looks the name up in Python, a third of the write time.
        ident = feature_id(feature)
        if ident is not None:
            row.SetFieldString(0, ident)
        if score is not None:
            row.SetField(1, score)
        if label is not None:
            row.SetFieldString(2, label)
        row.SetFieldString(3, orjson.dumps(properties).decode())
        if self.layer.CreateFeature(row) != 0:
            raise RuntimeError(f"FlatGeobuf: could not write feature {ident!r}")
        self.count += 1

    def close(self) -> int:
        """Sort along the Hilbert curve, write the index (OGR does both on close); return the count."""
        if self.layer is None:
            self._create_layer(False)
        self.dataset.FlushCache()
        self.dataset = None
        self.layer = None
        return self.count
