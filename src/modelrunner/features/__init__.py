"""Detections (GeoJSON features) after the model has answered: merging duplicates across tile overlaps."""
