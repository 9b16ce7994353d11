"""S3 output formats read back with their own readers (pyarrow for GeoParquet, GDAL/OGR for FlatGeobuf) and
compared with the GeoJSON object of the same write; the STAC Item read back with pystac."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import orjson
import pyarrow.parquet as pq
import pystac
import pytest
import shapely
from moto import mock_aws
from osgeo import ogr

from modelrunner.errors import SinkError
from modelrunner.local.job_features import job_feature_texts
from modelrunner.requests import ImageRequest, S3Output
from modelrunner.sinks import write_s3
from modelrunner.sinks.formats import GeoParquetWriter
from modelrunner.sinks.stac import JobDescription
from modelrunner.state.records import JobRecord

REGION = "us-east-1"
BUCKET = "results"
JOB = "job-7"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client


def odd_features() -> list[dict[str, Any]]:
    """What else a model may send: an imageBBox-only feature, a numeric id, no classes, a point, unicode."""
    return [
        {"type": "Feature", "id": 17, "geometry": {"type": "Point", "coordinates": [5.1, 50.1, 12.5]},
         "properties": {"imageBBox": [1.0, 2.0, 3.0, 4.0], "note": "ünïcødé ✓", "nested": {"a": [1, None]}}},
        {"type": "Feature", "id": "no-classes",
         "geometry": {"type": "MultiPolygon",
                      "coordinates": [[[[5, 50, 0], [5.1, 50, 0], [5.1, 50.1, 0], [5, 50, 0]]]]},
         "properties": {"imageGeometry": {"type": "Point", "coordinates": [7.5, 8.25]},
                        "featureClasses": [{"iri": "a", "score": 0.2}, {"iri": "b", "score": 0.7}]}},
    ]


def download(s3: Any, key: str, folder: str) -> str:
    path = os.path.join(folder, os.path.basename(key))
    s3.download_file(BUCKET, key, path)
    return path


def as_shape(geometry: dict[str, Any]) -> Any:
    return shapely.from_geojson(orjson.dumps(geometry))


def test_every_format_reads_back_as_the_geojson(s3: Any, tmp_path: Any) -> None:
    features = [json.loads(t) for t in job_feature_texts(2500, seed=3, image_size=9000, region_size=4096)]
    features += odd_features()
    output = S3Output(bucket=BUCKET, prefix="out/", formats=("GeoJSON", "GeoParquet", "FlatGeobuf"))

    result = write_s3(s3, output, JOB, (orjson.dumps(f).decode() for f in features))

    assert result.features_written == len(features)
    assert result.sink == f"s3://{BUCKET}/out/{JOB}.geojson"
    assert result.locations == [f"s3://{BUCKET}/out/{JOB}{ext}" for ext in (".geojson", ".parquet", ".fgb")]
    heads = {ext: s3.head_object(Bucket=BUCKET, Key=f"out/{JOB}{ext}")["ContentType"]
             for ext in (".geojson", ".parquet", ".fgb")}
    assert heads == {".geojson": "application/geo+json", ".parquet": "application/vnd.apache.parquet",
                     ".fgb": "application/vnd.flatgeobuf"}
    geojson = json.loads(s3.get_object(Bucket=BUCKET, Key=f"out/{JOB}.geojson")["Body"].read())["features"]
    assert geojson == features
    by_id = {str(f["id"]) if isinstance(f["id"], str) else json.dumps(f["id"]): f for f in geojson}

    # GeoParquet, with pyarrow: the geo metadata, then every row against its GeoJSON feature.
    path = download(s3, f"out/{JOB}.parquet", str(tmp_path))
    parquet = pq.ParquetFile(path)
    geo = json.loads(parquet.metadata.metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert column["encoding"] == "WKB" and "crs" not in column, "no crs: WGS84 lon/lat (OGC:CRS84)"
    assert column["geometry_types"] == ["MultiPolygon Z", "Point Z", "Polygon Z"]
    assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    rows = parquet.read().to_pylist()
    assert [r["id"] for r in rows] == list(by_id), "the GeoJSON's order"
    for row in rows:
        f = by_id[row["id"]]
        shape = shapely.from_wkb(row["geometry"])
        assert shapely.equals_exact(shape, as_shape(f["geometry"]), tolerance=0)
        assert shapely.get_coordinates(shape, include_z=True).tolist() == \
            shapely.get_coordinates(as_shape(f["geometry"]), include_z=True).tolist()
        assert json.loads(row["properties"]) == f["properties"]
        assert [row["bbox"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == list(shape.bounds)
        if "bbox" in f:
            assert [row["bbox"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == f["bbox"]
        classes = f["properties"].get("featureClasses")
        best = max(classes, key=lambda c: c["score"]) if classes else {"score": None, "iri": None}
        assert (row["score"], row["class"]) == (best["score"], best["iri"])
    assert rows[0]["image_bbox"] == features[0]["properties"]["imageBBox"]
    assert rows[-1]["image_bbox"] == [7.5, 8.25, 7.5, 8.25], "from imageGeometry when there is no imageBBox"
    extent = column["bbox"]
    assert extent == [min(r["bbox"]["xmin"] for r in rows), min(r["bbox"]["ymin"] for r in rows),
                      max(r["bbox"]["xmax"] for r in rows), max(r["bbox"]["ymax"] for r in rows)]

    # FlatGeobuf, with GDAL/OGR: spatial index, WGS84, and every feature (in Hilbert order) against GeoJSON.
    path = download(s3, f"out/{JOB}.fgb", str(tmp_path))
    dataset = ogr.Open(path)
    layer = dataset.GetLayer()
    assert layer.GetFeatureCount() == len(features)
    assert layer.TestCapability(ogr.OLCFastSpatialFilter), "the packed R-tree is there"
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "4326"
    seen = set()
    for row in layer:
        f = by_id[row.GetField("id")]
        seen.add(row.GetField("id"))
        shape = shapely.from_wkb(bytes(row.GetGeometryRef().ExportToIsoWkb()))
        assert shapely.equals_exact(shape, as_shape(f["geometry"]), tolerance=0)
        assert shapely.has_z(shape)
        assert json.loads(row.GetField("properties")) == f["properties"]
    assert seen == set(by_id)
    # A spatial filter reads only the features in view.
    west, south, east, north = features[0]["bbox"]
    layer.SetSpatialFilterRect(west, south, east, north)
    hits = {row.GetField("id") for row in layer}
    assert features[0]["id"] in hits and len(hits) < 50


def test_stac_item_points_at_every_format_with_footprint_and_request(s3: Any) -> None:
    request = ImageRequest.from_dict({
        "jobId": JOB, "imageUrls": ["s3://images/scene.tif"], "imageProcessor": {"name": "flood"},
        "imageProcessorParameters": {"threshold": 0.5},
        "outputs": [{"type": "S3", "bucket": BUCKET, "prefix": "out/", "formats": ["GeoJSON", "GeoParquet"],
                     "stacItem": True}]})
    job = JobRecord(image_id=request.image_id, width=9000, height=9000, start_time=1_796_000_000_000,
                    extents=json.dumps({"north": 50.2, "south": 50.1, "east": 5.2, "west": 5.0}), sensor_model="AFFINE")
    texts = list(job_feature_texts(300, seed=1, image_size=9000, region_size=4096))

    result = write_s3(s3, request.outputs[0], JOB, texts, job=JobDescription.of(request, job))

    key = f"out/{JOB}.stac-item.json"
    assert result.locations[-1] == f"s3://{BUCKET}/{key}"
    raw = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    item = pystac.Item.from_dict(raw)
    assert item.id == JOB
    assert item.bbox == [5.0, 50.1, 5.2, 50.2]
    assert shapely.from_geojson(json.dumps(item.geometry)).bounds == (5.0, 50.1, 5.2, 50.2)
    assert item.datetime is not None and item.common_metadata.start_datetime.year == 2026
    assets = {name: (a.href, a.media_type) for name, a in item.assets.items()}
    assert assets == {"geojson": (f"s3://{BUCKET}/out/{JOB}.geojson", "application/geo+json"),
                      "geoparquet": (f"s3://{BUCKET}/out/{JOB}.parquet", "application/vnd.apache.parquet")}
    props = item.properties
    assert props["modelrunner:model"] == {"name": "flood", "invoke_mode": "SM_ENDPOINT",
                                          "parameters": {"threshold": 0.5}}
    assert props["modelrunner:request"]["imageUrls"] == ["s3://images/scene.tif"]
    assert "outputs" not in props["modelrunner:request"]
    assert props["modelrunner:feature_count"] == 300
    assert any("label" in url for url in item.stac_extensions)
    assert props["label:type"] == "vector" and props["label:properties"] == ["class"]
    found = {json.loads(t)["properties"]["featureClasses"][0]["iri"] for t in texts}
    assert props["label:classes"] == [{"name": "class", "classes": sorted(found)}]
    assert [link.target for link in item.links if link.rel == "source"] == ["s3://images/scene.tif"]


def test_pixel_coordinate_results_say_their_crs_is_unknown(s3: Any, tmp_path: Any) -> None:
    feature = {"type": "Feature", "id": "p", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9],
                                                                                           [0, 0]]]},
               "properties": {"imageBBox": [0, 0, 9, 9]}}
    output = S3Output(bucket=BUCKET, formats=("GeoParquet", "FlatGeobuf"), stac_item=True)

    write_s3(s3, output, JOB, [feature], job=JobDescription(job_id=JOB, georeferenced=False))

    geo = json.loads(pq.ParquetFile(download(s3, f"{JOB}.parquet", str(tmp_path))).metadata.metadata[b"geo"])
    assert geo["columns"]["geometry"]["crs"] is None
    assert geo["columns"]["geometry"]["geometry_types"] == ["Polygon"]
    dataset = ogr.Open(download(s3, f"{JOB}.fgb", str(tmp_path)))  # kept: its layer dies with it
    layer = dataset.GetLayer()
    assert layer.GetSpatialRef() is None and not shapely.has_z(
        shapely.from_wkb(bytes(layer.GetNextFeature().GetGeometryRef().ExportToIsoWkb())))
    item = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{JOB}.stac-item.json")["Body"].read())
    assert item["geometry"] is None and "bbox" not in item


def test_no_features_still_write_valid_files(s3: Any, tmp_path: Any) -> None:
    write_s3(s3, S3Output(bucket=BUCKET, formats=("GeoParquet", "FlatGeobuf")), JOB, [])

    assert pq.read_table(download(s3, f"{JOB}.parquet", str(tmp_path))).num_rows == 0
    dataset = ogr.Open(download(s3, f"{JOB}.fgb", str(tmp_path)))
    assert dataset.GetLayer().GetFeatureCount() == 0
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 2, "no GeoJSON unless asked"


def test_a_feature_that_is_not_json_fails_before_anything_is_written(s3: Any) -> None:
    with pytest.raises(SinkError, match="'f1'|#1"):
        write_s3(s3, S3Output(bucket=BUCKET, formats=("GeoParquet",)), JOB, ['{"id": "f0"}', "{not json"])
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_row_groups_follow_the_stream_and_prune_by_bbox(tmp_path: Any) -> None:
    path = str(tmp_path / "r.parquet")
    writer = GeoParquetWriter(path, row_group_features=1000)
    for text in job_feature_texts(4500, seed=2, image_size=20_000, region_size=5000):
        writer.add(orjson.loads(text))
    assert writer.close() == 4500

    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000] * 4 + [500]
    # Region-ordered features make each row group a compact area: its bbox statistics let a reader skip it.
    names = [meta.row_group(0).column(i).path_in_schema for i in range(meta.row_group(0).num_columns)]
    xmin = names.index("bbox.xmin")
    spans = [(meta.row_group(i).column(xmin).statistics.min, meta.row_group(i).column(xmin).statistics.max)
             for i in range(meta.num_row_groups)]
    assert all(high - low < 0.1 for low, high in spans[:4]), spans


@pytest.mark.parametrize("georeferenced", [True, False])
def test_a_feature_without_geometry_gets_its_box_in_every_format(s3: Any, tmp_path: Any, georeferenced: bool) -> None:
    # The reference leaves a model's "geometry": null where the model sent only an imageBBox; GDAL's
    # FlatGeobuf writer would drop such a feature, so both files give it its lon/lat bbox (georeferenced)
    # or its pixel box (not), and the GeoJSON stays as it was.
    features = [{"type": "Feature", "id": "none", "geometry": None, "bbox": [5.0, 50.0, 5.1, 50.1],
                 "properties": {"imageBBox": [1, 2, 3, 4]}},
                {"type": "Feature", "id": "pt", "geometry": {"type": "Point", "coordinates": [5.0, 50.0]},
                 "properties": {}}]
    box = [5.0, 50.0, 5.1, 50.1] if georeferenced else [1.0, 2.0, 3.0, 4.0]

    write_s3(s3, S3Output(bucket=BUCKET, formats=("GeoJSON", "GeoParquet", "FlatGeobuf")), JOB, features,
             job=JobDescription(job_id=JOB, georeferenced=georeferenced))

    assert json.loads(s3.get_object(Bucket=BUCKET, Key=f"{JOB}.geojson")["Body"].read())["features"] == features
    rows = pq.read_table(download(s3, f"{JOB}.parquet", str(tmp_path))).to_pylist()
    assert list(shapely.from_wkb(rows[0]["geometry"]).bounds) == box
    assert rows[0]["image_bbox"] == [1.0, 2.0, 3.0, 4.0]
    assert rows[1]["bbox"] == {"xmin": 5.0, "ymin": 50.0, "xmax": 5.0, "ymax": 50.0}
    dataset = ogr.Open(download(s3, f"{JOB}.fgb", str(tmp_path)))
    bounds = {row.GetField("id"): row.GetGeometryRef().GetEnvelope() for row in dataset.GetLayer()}
    assert set(bounds) == {"none", "pt"}
    assert bounds["none"] == (box[0], box[2], box[1], box[3])


def test_starting_a_worker_imports_neither_pyarrow_nor_pystac() -> None:
    """pyarrow (about 55 MB resident) and pystac are imported by the first GeoParquet file or STAC Item,
    not by every worker at start-up (peak RSS is a target of the benchmark)."""
    import subprocess
    import sys

    code = "import sys, modelrunner.worker, modelrunner.cli; print(sorted({'pyarrow', 'pystac'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
