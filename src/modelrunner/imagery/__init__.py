"""Imagery: open images lazily with GDAL, plan regions and tiles, cut and encode tiles, geolocate pixels.

Nothing outside this package imports ``osgeo``.
"""
