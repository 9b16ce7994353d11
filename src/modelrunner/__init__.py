"""modelrunner: run ML models over very large satellite images, region by region, tile by tile.

The pipeline, as packages: ``requests`` -> ``imagery`` (open, regions, tiles, encode, geolocate) ->
``inference`` (model endpoints, thread pool) -> ``features`` (model output -> features, merge) ->
``sinks`` (S3, Kinesis), with ``state`` (DynamoDB) and ``status`` (SNS) beside it. ``worker`` wires them.
"""

__version__ = "0.1.0"
