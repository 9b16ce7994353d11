"""Features kept serialised between merge levels, and their stored form.

A :class:`FeatureSet` holds features as their GeoJSON texts plus the columns a merge reads (pixel boxes,
scores, labels, which are boxes), so the many features no seam touches are never parsed or re-serialised.
A :class:`PackedFeatureSet` is one as it is stored (a region's merged result in the feature table, see
:mod:`~modelrunner.state.features`): its columns are read and its texts stay compressed until iterated;
:class:`JobFeatures` streams a job's merged texts from them. :func:`feature_text` writes a feature's text.

The stored form (what :meth:`PackedFeatureSet.pack` compresses as one zlib stream cut into chunks, and what
:meth:`FeatureSet.from_bytes` reads), all numbers little-endian::

    magic    8 bytes        MAGIC
    version  uint32         FORMAT_VERSION (1)
    n        uint64         feature count
    boxes    n x 4 float64  pixel minx, miny, maxx, maxy
    scores   n float64
    is_box   n uint8
    labels   n uint32       codes into the names
    names    JSON list of the label names (sorted), then a newline
    texts    the n GeoJSON texts, separated by newlines (compact JSON as written here holds no raw newline)

Format versions and rolling upgrades: workers before the header (version 0) wrote the same layout without
magic and version, and such results can still sit in the feature table (region results live a day) while a
new worker completes the job they belong to. They are still read, because failing them would fail every job
in flight during an upgrade, and they cannot be misread: a version-0 set starts with its feature count, and
the magic read as that count is about 1.9e18 features, which no stored set has. The other way round, a
worker before the header reading these bytes takes the magic for that count, finds no head in the stream
and raises (its "truncated FeatureSet stream"): it fails the job clearly rather than misreading it. A
version this code does not know (written by a newer worker) raises :class:`FeatureSetFormatError` naming
it, as do bytes that are neither format.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .distill import box_columns

MAGIC = b"\x89MRFSET\x1a"
"""The first bytes of a stored set: not text (0x89), the name, and a high last byte that makes them an
impossible feature count to a reader of the unversioned format."""
FORMAT_VERSION = 1
"""The stored form written here; 0 is the unversioned form before the header, still read."""
_HEADER = struct.Struct("<8sI")  # MAGIC, FORMAT_VERSION


class FeatureSetFormatError(ValueError):
    """Stored bytes that are not a set this worker can read: an unknown format version, or neither format."""


@dataclass(frozen=True)
class FeatureSet:
    """Features kept serialised: their GeoJSON texts and the columns a merge reads (pixel boxes (n, 4),
    scores, labels, and which are boxes rather than shapes; see :func:`~.distill.box_columns`)."""

    texts: list[str]
    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]
    is_box: np.ndarray

    @classmethod
    def of(cls, features: Sequence[dict[str, Any]], texts: Sequence[str] | None = None) -> FeatureSet:
        boxes, scores, labels, is_box = box_columns(features)
        return cls(list(texts) if texts is not None else [feature_text(f) for f in features],
                   boxes, scores, labels, is_box)

    @classmethod
    def empty(cls) -> FeatureSet:
        return cls([], np.zeros((0, 4)), np.zeros(0), [], np.zeros(0, dtype=bool))

    @classmethod
    def concat(cls, sets: Sequence[FeatureSet]) -> FeatureSet:
        sets = [s for s in sets if len(s)]
        if not sets:
            return cls.empty()
        return cls([t for s in sets for t in s.texts], np.concatenate([s.boxes for s in sets]),
                   np.concatenate([s.scores for s in sets]), [lb for s in sets for lb in s.labels],
                   np.concatenate([s.is_box for s in sets]))

    def take(self, mask_or_index: np.ndarray) -> FeatureSet:
        index = np.flatnonzero(mask_or_index) if mask_or_index.dtype == bool else mask_or_index
        picks = index.tolist()
        return FeatureSet([self.texts[i] for i in picks], self.boxes[index], self.scores[index],
                          [self.labels[i] for i in picks], self.is_box[index])

    def __len__(self) -> int:
        return len(self.texts)

    def features(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.texts]

    def _head(self) -> bytes:
        """The stored form's head (see the module docstring): the header, the columns, then the label names;
        the texts follow, one per line (:meth:`PackedFeatureSet.pack` writes it, :meth:`from_bytes` reads it
        back). GeoJSON text as we write it never holds a raw newline, so newlines separate the features."""
        names = sorted(set(self.labels))
        code = {name: i for i, name in enumerate(names)}
        n = len(self.texts)
        return b"".join([
            _HEADER.pack(MAGIC, FORMAT_VERSION),
            n.to_bytes(8, "little"), self.boxes.astype("<f8").tobytes(), self.scores.astype("<f8").tobytes(),
            self.is_box.astype(np.uint8).tobytes(), np.array([code[lb] for lb in self.labels], dtype="<u4").tobytes(),
            json.dumps(names).encode(), b"\n"])

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureSet:
        """A set from its whole stored form, uncompressed (either format version, see the module docstring)."""
        columns, start = _columns(data)
        if columns is None:
            raise _incomplete(data)
        texts = data[start:].decode().split("\n") if len(columns[1]) else []
        return cls(texts, *columns)


Columns = tuple[np.ndarray, np.ndarray, list[str], np.ndarray]  # boxes, scores, labels, is_box


def _columns(data: bytes) -> tuple[Columns | None, int]:
    """The columns at the start of a stored set (:meth:`FeatureSet._head`) and where the texts begin; (None, 0) when
    ``data`` does not hold all of them yet. Reads version 1 and the unversioned version 0; raises
    :class:`FeatureSetFormatError` for another version."""
    if data[:len(MAGIC)] != MAGIC:
        return _body(data, 0)  # version 0: the count comes first
    if len(data) < _HEADER.size:
        return None, 0
    _, version = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise FeatureSetFormatError(
            f"stored FeatureSet has format version {version}; this worker reads version {FORMAT_VERSION} and the "
            "unversioned version 0 (was it written by a newer worker?)")
    return _body(data, _HEADER.size)


def _body(data: bytes, start: int) -> tuple[Columns | None, int]:
    """:func:`_columns` for the count, columns and names that begin at ``start``."""
    if len(data) < start + 8:
        return None, 0
    n = int.from_bytes(data[start:start + 8], "little")
    at = start + 8 + 45 * n
    end = data.find(b"\n", at)
    if end < 0:
        return None, 0
    try:
        boxes = np.frombuffer(data, dtype="<f8", count=4 * n, offset=start + 8).reshape(n, 4)
        scores = np.frombuffer(data, dtype="<f8", count=n, offset=start + 8 + 32 * n)
        is_box = np.frombuffer(data, dtype=np.uint8, count=n, offset=start + 8 + 40 * n).astype(bool)
        codes = np.frombuffer(data, dtype="<u4", count=n, offset=start + 8 + 41 * n)
        names = json.loads(data[at:end])
        labels = [names[c] for c in codes.tolist()]
    except (ValueError, IndexError, TypeError, KeyError) as error:  # a JSON error is a ValueError
        raise FeatureSetFormatError(f"stored FeatureSet head unreadable ({error}); it starts {data[:16]!r}") from None
    return (boxes, scores, labels, is_box), end + 1


def _incomplete(data: bytes) -> FeatureSetFormatError:
    """The error for bytes that ended before a whole head: a cut stream, or not a stored set at all."""
    return FeatureSetFormatError(
        f"not a whole stored FeatureSet: {len(data)} bytes starting {data[:16]!r} hold no complete head of format "
        f"version {FORMAT_VERSION} (which starts {MAGIC!r}) or of the unversioned version 0")


_INFLATE_STEP = 1 << 20  # bytes of decompressed text handled at a time


class PackedFeatureSet:
    """A stored :class:`FeatureSet` (its head and texts as one zlib stream, in chunks) whose columns
    are read and whose texts stay compressed until they are iterated.

    The job's completion holds every region's result this way: a merge reads only columns and the few texts
    near region seams, and the outputs stream the rest, so a job's features are never all in memory as text.
    """

    def __init__(self, chunks: Sequence[bytes], columns: Columns | None = None, text_start: int = 0) -> None:
        self.chunks = list(chunks)
        self._text_start = text_start
        if columns is None:
            head = b""
            for piece in self._inflate():
                head += piece
                columns, self._text_start = _columns(head)
                if columns is not None:
                    break
        if columns is None:
            raise _incomplete(head)
        self.boxes, self.scores, self.labels, self.is_box = columns

    @classmethod
    def pack(cls, features: FeatureSet, chunk_bytes: int) -> PackedFeatureSet:
        """Compress a set into chunks of at most ``chunk_bytes``, a thousand texts at a time (never one
        copy of all of them)."""
        deflater = zlib.compressobj(1)
        chunks: list[bytes] = []
        pending = bytearray()

        def emit(data: bytes) -> None:
            pending.extend(data)
            while len(pending) >= chunk_bytes:
                chunks.append(bytes(pending[:chunk_bytes]))
                del pending[:chunk_bytes]

        head = features._head()
        emit(deflater.compress(head))
        texts = features.texts
        for start in range(0, len(texts), 1000):
            emit(deflater.compress((("\n" if start else "") + "\n".join(texts[start:start + 1000])).encode()))
        emit(deflater.flush())
        if pending or not chunks:
            chunks.append(bytes(pending))
        columns = (features.boxes, features.scores, features.labels, features.is_box)
        return cls(chunks, columns, len(head))

    def features(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.texts()]

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def nbytes(self) -> int:
        """Compressed size: what the stored chunks hold."""
        return sum(map(len, self.chunks))

    def _inflate(self) -> Iterator[bytes]:
        inflater = zlib.decompressobj()
        for chunk in self.chunks:
            data = chunk
            while data:
                piece = inflater.decompress(data, _INFLATE_STEP)
                data = inflater.unconsumed_tail
                if piece:
                    yield piece
        rest = inflater.flush()
        if rest:
            yield rest

    def texts(self) -> Iterator[str]:
        """Every text, in order, decompressed a piece at a time."""
        if not len(self):
            return
        skip = self._text_start
        partial = b""
        for piece in self._inflate():
            if skip:
                if len(piece) <= skip:
                    skip -= len(piece)
                    continue
                piece, skip = piece[skip:], 0
            lines = (partial + piece).split(b"\n")
            partial = lines.pop()
            for line in lines:
                yield line.decode()
        yield partial.decode()

    def texts_where(self, mask: np.ndarray) -> Iterator[str]:
        """The texts whose ``mask`` entry is true, in order."""
        if not mask.any():
            return
        keep = mask.tolist()
        for text, wanted in zip(self.texts(), keep, strict=True):
            if wanted:
                yield text

    def take(self, mask_or_index: np.ndarray) -> FeatureSet:
        """:meth:`FeatureSet.take`: a boolean mask, or indices (in their order, repeats allowed)."""
        if mask_or_index.dtype == bool:
            index = np.flatnonzero(mask_or_index)
            texts = list(self.texts_where(mask_or_index)) if len(index) else []
        else:
            index = np.asarray(mask_or_index, dtype=np.int64)
            wanted = np.zeros(len(self), dtype=bool)
            wanted[index] = True
            picked = dict(zip(np.flatnonzero(wanted).tolist(), self.texts_where(wanted), strict=True))
            texts = [picked[i] for i in index.tolist()]
        return FeatureSet(texts, self.boxes[index], self.scores[index], [self.labels[i] for i in index.tolist()],
                          self.is_box[index])


class JobFeatures:
    """The job's merged features as GeoJSON texts, streamed from the regions' packed results: the features
    no region seam touched, region by region, then the merged seam features. Sized, and iterable any number
    of times (each output streams it on its own)."""

    def __init__(self, kept: Sequence[tuple[PackedFeatureSet, np.ndarray]], seams: FeatureSet) -> None:
        self.kept = list(kept)
        self.seams = seams
        self._count = sum(int(mask.sum()) for _, mask in self.kept) + len(seams)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        for part, mask in self.kept:
            if mask.any():
                yield from part.texts_where(mask)
        yield from self.seams.texts


def feature_text(feature: dict[str, Any]) -> str:
    """A feature's GeoJSON text: compact, UTF-8 (orjson: several times faster than ``json``). What orjson
    refuses (integers beyond 64 bits, float subclasses, non-string keys) is written by ``json`` in the
    same style."""
    try:
        return orjson.dumps(feature).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(feature, check_circular=False, separators=(",", ":"), ensure_ascii=False)

