"""Features kept serialised (features/featureset): the stored form round-trips, carries a versioned header,
still reads what workers before the header stored, and refuses anything else by name."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import numpy as np
import pytest

from modelrunner.features.featureset import (
    FORMAT_VERSION,
    MAGIC,
    FeatureSet,
    FeatureSetFormatError,
    JobFeatures,
    PackedFeatureSet,
    feature_text,
)
from tiled_detections import box_feature

# Three features as a worker before the versioned header stored them (format version 0: no magic, no
# version), one zlib chunk as the feature table holds it: a box "a" (ship 0.9, a non-ASCII property), a Point
# "b" (car 0.25) and a LineString "c" (road 0.5, not a box).
VERSION_0_CHUNK = base64.b64decode(
    "eAGVks9KxDAQxlu9iOc97HEZPIalrruiPbgLgl48CB5LDrFNa2A3KWk8lKUP5HN4VfARfAAfwskf2OJi0Tnk+zLMhN8MOYz6cbLy"
    "t3lQEvQq6CjoeFW6GAUdh3z0IyYhf7R6f7PxtfQFH0E/l3EcHYSmGDWDnGkgE9CKFVabJ1EDPd6CaWsOKdxwZp41BwKiwCtDU2tV"
    "c20EbyDdgtiwit9yteFGtzYRGu/Vuq2UxPpcKV0IyYxtyLLsNJkmZIYHJd6fBT/HfN/3a5yntCNQeqLrNWsa9yIyaIFsDp1Akyvk"
    "TZPpZUcJSGXsGDkrX1+g634d7PEfgwlp9sZaIPs5jjQE6Fa945stOjpAlP+Z6E5I/mC0kNUeVmZ37dd7YbeLhIOI/hvsGB3iN2CX"
    "voI=")


def _stored(features: FeatureSet) -> bytes:
    """A set's whole stored form, uncompressed."""
    return zlib.decompress(b"".join(PackedFeatureSet.pack(features, 1 << 20).chunks))


def _text_set(n: int, width: int = 300) -> FeatureSet:
    features = [box_feature(i, i % 97 * 10, i // 97 * 10, 8, 8, round(0.5 + (i % 7) / 20, 2), "ab"[i % 2])
                for i in range(n)]
    for i, feature in enumerate(features):
        feature["properties"]["note"] = "é" * (i % 5) + "x" * (width * (i % 3))  # some texts span chunks
    return FeatureSet.of(features)


@pytest.mark.parametrize(("count", "chunk_bytes"), [(0, 1000), (1, 50), (700, 997), (5000, 350_000)])
def test_packed_sets_keep_columns_and_texts(count, chunk_bytes):
    original = _text_set(count)
    packed = PackedFeatureSet.pack(original, chunk_bytes)
    assert all(len(chunk) <= chunk_bytes for chunk in packed.chunks)
    assert len(packed.chunks) >= 1
    read = PackedFeatureSet(packed.chunks)  # as the completion reads them back: columns only
    assert len(read) == count
    assert (read.boxes == original.boxes).all() and (read.scores == original.scores).all()
    assert read.labels == original.labels and (read.is_box == original.is_box).all()
    assert list(read.texts()) == original.texts
    assert list(read.texts()) == original.texts, "iterable again"
    assert FeatureSet.from_bytes(zlib.decompress(b"".join(packed.chunks))).texts == original.texts
    if count:
        mask = np.arange(count) % 3 == 1
        assert read.take(mask).texts == original.take(mask).texts
        assert read.take(np.array([count - 1, 0])).texts == original.take(np.array([count - 1, 0])).texts


def test_the_stored_form_starts_with_the_magic_and_the_version():
    original = _text_set(40)
    data = _stored(original)
    assert data[:8] == MAGIC and struct.unpack_from("<I", data, 8) == (FORMAT_VERSION,) == (1,)
    assert int.from_bytes(data[12:20], "little") == 40, "then the count, as before the header"
    again = FeatureSet.from_bytes(data)
    assert again.texts == original.texts and again.labels == original.labels
    assert (again.boxes == original.boxes).all() and (again.is_box == original.is_box).all()


def test_what_workers_before_the_header_stored_is_still_read():
    read = PackedFeatureSet([VERSION_0_CHUNK])
    assert read.boxes.tolist() == [[10, 20, 14, 30], [5, 6, 5.1, 6.1], [0, 0, 8, 3]]
    assert read.scores.tolist() == [0.9, 0.25, 0.5] and read.labels == ["ship", "car", "road"]
    assert read.is_box.tolist() == [True, True, False]
    features = read.features()
    assert [f["id"] for f in features] == ["a", "b", "c"] and features[0]["properties"]["note"] == "café"
    legacy = zlib.decompress(VERSION_0_CHUNK)
    assert FeatureSet.from_bytes(legacy).texts == list(read.texts())
    # Written again, it is the same bytes behind the header: only the header changed.
    assert _stored(FeatureSet.from_bytes(legacy)) == MAGIC + struct.pack("<I", FORMAT_VERSION) + legacy


def test_a_reader_before_the_header_cannot_misread_the_new_form():
    data = _stored(_text_set(5))
    count = int.from_bytes(data[:8], "little")  # what it took for the feature count
    assert count > 10**18
    assert data.find(b"\n", 8 + 45 * count) == -1, "it finds no end of head, so it raises as for a cut stream"


def test_an_unknown_version_fails_naming_it():
    data = bytearray(_stored(_text_set(3)))
    struct.pack_into("<I", data, 8, 2)
    with pytest.raises(FeatureSetFormatError, match="format version 2; this worker reads version 1"):
        FeatureSet.from_bytes(bytes(data))
    with pytest.raises(FeatureSetFormatError, match="format version 2"):
        PackedFeatureSet([zlib.compress(bytes(data))])


@pytest.mark.parametrize("data", [b"", b"\x00" * 7, MAGIC, MAGIC + b"\x01\x00\x00\x00", b"not a feature set at all",
                                  b"\x01" + b"\x00" * 7 + b"\x00" * 45 + b'["x"]'])
def test_bytes_that_hold_no_whole_head_fail_clearly(data):
    with pytest.raises(FeatureSetFormatError, match="not a whole stored FeatureSet"):
        FeatureSet.from_bytes(data)
    with pytest.raises(FeatureSetFormatError, match="not a whole stored FeatureSet"):
        PackedFeatureSet([zlib.compress(data)])


def test_a_head_that_is_not_a_head_fails_clearly():
    one = b"\x01" + b"\x00" * 7 + b"\x00" * 45  # one feature of label code 0 ...
    with pytest.raises(FeatureSetFormatError, match="head unreadable"):
        FeatureSet.from_bytes(one + b"{not json\n")
    with pytest.raises(FeatureSetFormatError, match="head unreadable"):
        FeatureSet.from_bytes(one + b"[]\n")  # ... but no label names


def test_job_features_stream_the_kept_texts_then_the_seam_features():
    original = _text_set(10)
    packed = PackedFeatureSet.pack(original, 256)
    keep = np.arange(10) % 2 == 0
    seams = original.take(np.array([1, 3]))
    job = JobFeatures([(packed, keep), (packed, np.zeros(10, dtype=bool))], seams)
    expected = [t for t, k in zip(original.texts, keep.tolist(), strict=True) if k] + seams.texts
    assert len(job) == len(expected) == 7
    assert list(job) == expected and list(job) == expected, "iterable again"


def test_feature_text_is_compact_json_and_falls_back_for_what_orjson_refuses():
    feature = {"type": "Feature", "properties": {"name": "é", "score": 1e-06, "n": 3}}
    text = feature_text(feature)
    assert json.loads(text) == feature and ", " not in text
    huge = {"type": "Feature", "properties": {"n": 2 ** 70}}
    assert json.loads(feature_text(huge)) == huge


