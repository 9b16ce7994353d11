import json

import pytest

from modelrunner.errors import RequestError
from modelrunner.requests import (
    RECOMMENDED_DISTILLATION,
    DistillationOption,
    ImageRequest,
    KinesisOutput,
    RegionRequest,
    S3Output,
)


def body(**over):
    raw = {
        "jobArn": "arn:aws:oversightml:us-east-1:1:ipj/j", "jobName": "j", "jobId": "job-1",
        "imageUrls": ["s3://bucket/image.tif"],
        "outputs": [{"type": "S3", "bucket": "results", "prefix": "job/"},
                    {"type": "Kinesis", "stream": "stream", "batchSize": 100}],
        "imageProcessor": {"name": "ep", "type": "SM_ENDPOINT"},
        "imageProcessorTileSize": 512, "imageProcessorTileOverlap": 128,
        "imageProcessorTileFormat": "GTIFF", "imageProcessorTileCompression": "NONE",
    }
    raw.update(over)
    return raw


def test_reference_sample_parses():
    req = ImageRequest.from_dict(body())
    assert req.image_id == "job-1:s3://bucket/image.tif"
    assert req.tile_size == 512 and req.tile_overlap == 128
    assert req.outputs == (S3Output("results", "job/"), KinesisOutput("stream", 100))
    assert req.distillation == DistillationOption()


def test_round_trip():
    req = ImageRequest.from_dict(body(regionOfInterest="POLYGON ((0 0, 1 0, 1 1, 0 1, 0 0))",
                                      featureProperties=[{"a": 1}],
                                      postProcessing=[{"step": "FEATURE_DISTILLATION",
                                                       "algorithm": {"algorithmType": "SOFT_NMS", "sigma": 0.2}}]))
    again = ImageRequest.from_dict(json.loads(json.dumps(req.to_dict())))
    assert again == req


def test_defaults_and_numeric_strings():
    raw = body(imageProcessorTileSize="1024.7")
    del raw["imageProcessorTileOverlap"], raw["imageProcessorTileFormat"], raw["imageProcessorTileCompression"]
    req = ImageRequest.from_dict(raw)
    assert (req.tile_size, req.tile_overlap, req.tile_format, req.tile_compression) == (1024, 50, "NITF", "NONE")
    assert ImageRequest.from_dict(body(imageProcessorTileOverlap=0)).tile_overlap == 0


def test_legacy_output_fields():
    raw = body(outputBucket="b", outputPrefix="p/")
    del raw["outputs"]
    assert ImageRequest.from_dict(raw).outputs == (S3Output("b", "p/"),)


def test_arn_names_become_resource_names():
    req = ImageRequest.from_dict(body(outputs=[
        {"type": "S3", "bucket": "arn:aws:s3:::results", "prefix": ""},
        {"type": "Kinesis", "stream": "arn:aws:kinesis:us-east-1:1:stream/results"}]))
    assert req.outputs[0].bucket == "results" and req.outputs[1].stream == "results"


@pytest.mark.parametrize(("change", "field"), [
    ({"jobId": ""}, "jobId"),
    ({"imageUrls": []}, "imageUrls"),
    ({"imageUrls": ["a", "b"]}, "imageUrls"),
    ({"imageProcessor": None}, "imageProcessor"),
    ({"imageProcessor": {"type": "SM_ENDPOINT"}}, "imageProcessor.name"),
    ({"imageProcessor": {"name": "ep", "type": "NONE"}}, "imageProcessor.type"),
    ({"imageProcessor": {"name": "ep", "type": "sm"}}, "imageProcessor.type"),
    ({"imageProcessor": {"name": "ep", "type": "HTTP_ENDPOINT"}}, "imageProcessor.name"),
    ({"imageProcessor": {"name": "ep", "assumedRole": "role"}}, "imageProcessor.assumedRole"),
    ({"imageProcessorTileSize": 0}, "imageProcessorTileSize"),
    ({"imageProcessorTileSize": "big"}, "imageProcessorTileSize"),
    ({"imageProcessorTileOverlap": 512}, "imageProcessorTileOverlap"),
    ({"imageProcessorTileOverlap": -1}, "imageProcessorTileOverlap"),
    ({"imageProcessorTileFormat": "gtiff"}, "imageProcessorTileFormat"),
    ({"imageProcessorTileCompression": "ZSTD"}, "imageProcessorTileCompression"),
    ({"imageReadRole": "nope"}, "imageReadRole"),
    ({"regionOfInterest": "POLYGON ((0 0, 1"}, "regionOfInterest"),
    ({"regionOfInterest": "POINT (1 2)"}, "regionOfInterest"),
    ({"outputs": []}, "outputs"),
    ({"outputs": [{"type": "SQS"}]}, "outputs[0].type"),
    ({"outputs": [{"type": "S3"}]}, "outputs[0].bucket"),
    ({"outputs": [{"type": "Kinesis", "stream": "s", "batchSize": 0}]}, "outputs[0].batchSize"),
    ({"outputs": [{"type": "S3", "bucket": "b", "format": "Shapefile"}]}, "outputs[0].format"),
    ({"outputs": [{"type": "S3", "bucket": "b", "formats": ["GeoJSON", "KML"]}]}, "outputs[0].formats"),
    ({"outputs": [{"type": "S3", "bucket": "b", "formats": []}]}, "outputs[0].formats"),
    ({"outputs": [{"type": "S3", "bucket": "b", "formats": "GeoJSON"}]}, "outputs[0].formats"),
    ({"outputs": [{"type": "S3", "bucket": "b", "format": "GeoJSON", "formats": ["GeoJSON"]}]},
     "outputs[0].formats"),
    ({"outputs": [{"type": "S3", "bucket": "b", "stacItem": "yes"}]}, "outputs[0].stacItem"),
    ({"outputs": [{"type": "Kinesis", "stream": "s", "partitionKey": "shard"}]}, "outputs[0].partitionKey"),
    ({"outputs": [{"type": "Kinesis", "stream": "s", "featuresPerRecord": 0}]}, "outputs[0].featuresPerRecord"),
    ({"outputs": [{"type": "Kinesis", "stream": "s", "featuresPerRecord": 10_001}]},
     "outputs[0].featuresPerRecord"),
    ({"featureProperties": [1]}, "featureProperties"),
    ({"postProcessing": [{"step": "OTHER"}]}, "postProcessing[0].step"),
    ({"postProcessing": [{"step": "FEATURE_DISTILLATION", "algorithm": {"algorithmType": "NMS",
                                                                       "skipBoxThreshold": 0.1}}]},
     "postProcessing[0].algorithm.skipBoxThreshold"),
    ({"postProcessing": [{"step": "FEATURE_DISTILLATION", "algorithm": {"iouThreshold": 2}}]},
     "postProcessing[0].algorithm.iouThreshold"),
    ({"postProcessing": [{"step": "FEATURE_DISTILLATION", "algorithm": {"bogus": 1}}]},
     "postProcessing[0].algorithm.bogus"),
    ({"postProcessing": [{"step": "FEATURE_DISTILLATION"}, {"step": "FEATURE_DISTILLATION"}]}, "postProcessing"),
    ({"postProcessing": [{"step": "FEATURE_DISTILLATION", "algorithm": {"edgeTruncation": "DROP"}}]},
     "postProcessing[0].algorithm.edgeTruncation"),
    ({"postProcessing": [{"step": "FEATURE_DISTILLATION", "algorithm": {"algorithmType": "SOFT_NMS",
                                                                       "edgeTruncation": "MERGE"}}]},
     "postProcessing[0].algorithm.edgeTruncation"),
    ({"postProcessing": [{"step": "FEATURE_DISTILLATION", "algorithm": {"edgeMargin": 3}}]},
     "postProcessing[0].algorithm.edgeMargin"),
    ({"postProcessing": [{"step": "FEATURE_DISTILLATION", "algorithm": {"edgeTruncation": "MERGE",
                                                                       "edgeMargin": -1}}]},
     "postProcessing[0].algorithm.edgeMargin"),
    ({"postProcessing": [{"step": "FEATURE_DISTILLATION", "algorithm": {"edgeTruncation": "MERGE",
                                                                       "edgeMargin": "wide"}}]},
     "postProcessing[0].algorithm.edgeMargin"),
    ({"postProcessing": [{"step": "FEATURE_DISTILLATION", "algorithm": {"algorithmType": "GREEDY_NMM"}}]},
     "postProcessing[0].algorithm.algorithmType"),
])
def test_invalid_requests_name_the_field(change, field):
    with pytest.raises(RequestError) as err:
        ImageRequest.from_dict(body(**change))
    assert err.value.field == field
    assert field in str(err.value)


def test_non_json_body():
    with pytest.raises(RequestError) as err:
        ImageRequest.from_message("not json")
    assert err.value.field == "body"


def test_distillation_stored_form_is_the_references():
    soft = DistillationOption(algorithm_type="SOFT_NMS")
    assert soft.to_dict() == {"algorithm_type": "SOFT_NMS", "iou_threshold": 0.75, "skip_box_threshold": 0.0001,
                              "sigma": 0.1}
    assert DistillationOption().to_dict() == {"algorithm_type": "NMS", "iou_threshold": 0.75}
    assert DistillationOption.from_stored(soft.to_dict()) == soft


def test_greedy_nmm_and_edge_truncation_parse_store_and_round_trip():
    algorithm = {"algorithmType": "GREEDYNMM", "matchMetric": "IOS", "iouThreshold": 0.5,
                 "edgeTruncation": "SUPPRESS", "edgeMargin": 3}
    req = ImageRequest.from_dict(body(postProcessing=[{"step": "FEATURE_DISTILLATION", "algorithm": algorithm}]))
    option = req.distillation
    assert option == DistillationOption(algorithm_type="GREEDYNMM", iou_threshold=0.5, match_metric="IOS",
                                        edge_truncation="SUPPRESS", edge_margin=3.0)
    assert option.to_dict() == {"algorithm_type": "GREEDYNMM", "iou_threshold": 0.5, "match_metric": "IOS",
                                "edge_truncation": "SUPPRESS", "edge_margin": 3.0}
    assert DistillationOption.from_stored(option.to_dict()) == option
    assert ImageRequest.from_dict(req.to_dict()).distillation == option
    snake = DistillationOption.from_dict({"algorithm_type": "NMM", "edge_truncation": "MERGE"})
    assert (snake.edge_truncation, snake.edge_margin) == ("MERGE", 2.0)


def test_the_recommended_merge_is_a_valid_request_and_not_the_default():
    wire = RECOMMENDED_DISTILLATION.to_wire()
    assert DistillationOption.from_dict(wire) == RECOMMENDED_DISTILLATION
    assert DistillationOption() != RECOMMENDED_DISTILLATION
    assert ImageRequest.from_dict(body()).distillation == DistillationOption(algorithm_type="NMS", iou_threshold=0.75)


def test_region_request_wire_format():
    req = ImageRequest.from_dict(body(jobId="j1", imageUrls=["s3://b/k.tif"]))
    region = RegionRequest.for_image(req, ((0, 524), (774, 806)), "TIFF")
    wire = region.to_dict()
    assert list(wire) == ["image_id", "job_id", "image_url", "image_read_role", "model_name", "model_invoke_mode",
                          "model_invocation_role", "tile_size", "tile_overlap", "tile_format", "tile_compression",
                          "region_bounds", "region_id", "image_extension"]
    assert wire["region_id"] == "(0, 524)(774, 806)-j1"
    assert wire["region_bounds"] == [[0, 524], [774, 806]]
    assert wire["tile_size"] == [512, 512]
    assert RegionRequest.from_message(region.to_json()) == region


def test_region_request_rejects_bad_bounds():
    with pytest.raises(RequestError) as err:
        RegionRequest.from_dict({"job_id": "j", "image_url": "u", "model_name": "m", "region_bounds": [[0, 0], [0, 5]],
                                 "tile_size": [512, 512], "tile_overlap": [0, 0]})
    assert err.value.field == "region_bounds"


def test_kinesis_batch_size_is_capped_at_the_service_limit():
    req = ImageRequest.from_dict(body(outputs=[{"type": "Kinesis", "stream": "s", "batchSize": 1000}]))
    assert req.outputs[0].batch_size == 500


def test_output_options_default_to_the_references_and_round_trip():
    req = ImageRequest.from_dict(body())
    assert req.outputs[0].formats == ("GeoJSON",) and not req.outputs[0].stac_item
    assert req.outputs[1].partition_key == "jobId" and req.outputs[1].features_per_record == 1
    # Defaults add no keys: the job row and the region messages stay the reference's.
    assert [o.to_dict() for o in req.outputs] == body()["outputs"]


def test_output_formats_stac_partition_key_and_packing_parse():
    req = ImageRequest.from_dict(body(outputs=[
        {"type": "S3", "bucket": "b", "prefix": "p/", "formats": ["geoparquet", "FlatGeobuf", "GeoParquet"],
         "stacItem": True},
        {"type": "S3", "bucket": "b", "format": "GeoParquet"},
        {"type": "Kinesis", "stream": "s", "partitionKey": "tile", "featuresPerRecord": "50"},
    ]))
    assert req.outputs[0] == S3Output("b", "p/", formats=("GeoParquet", "FlatGeobuf"), stac_item=True)
    assert req.outputs[1].formats == ("GeoParquet",)
    assert req.outputs[2] == KinesisOutput("s", 500, partition_key="tile", features_per_record=50)
    assert ImageRequest.from_dict(req.to_dict()) == req
