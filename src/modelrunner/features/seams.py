"""Merging across seams, level by level: tiles into a region, regions into a job.

Features travel between levels as a :class:`FeatureSet` (pixel boxes + GeoJSON texts), so the many features
that no seam touches are never parsed or re-serialised. Each level's parts were already merged inside
themselves, so a feature whose box reaches into no other part's window has no duplicate left among the
parts' results: only the features that do are parsed and merged (:func:`~.merge.distill`). The result is
exactly what merging the union of the parts' results would select.

SOFT_NMS is the exception: its decay is not idempotent, so lower levels pass features through unmerged and
the job level merges everything once.

Edge truncation (``option.edge_truncation``) needs the windows, so it is decided here: a seam feature whose box
an interior edge of its own part's window cuts (another part's window continues beyond that edge) is flagged
for :func:`~.merge.resolve_truncated`. Inside one tile nothing is cut, so the tile level never needs it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson

from ..requests import DistillationOption
from .convert import Relocate
from .merge import box_columns, distill, nms_indices, truncated_at_edges

Window = tuple[float, float, float, float]  # minx, miny, maxx, maxy in full-image pixels


@dataclass(frozen=True)
class FeatureSet:
    """Features kept serialised: their GeoJSON texts and the columns a merge reads (pixel boxes (n, 4),
    scores, labels, and which are boxes rather than shapes; see :func:`~.merge.box_columns`)."""

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
        """The stored form's head: the columns, then the label names; the texts follow, one per line
        (:meth:`PackedFeatureSet.pack` writes it, :meth:`from_bytes` reads it back). GeoJSON text as we
        write it never holds a raw newline, so newlines separate the features."""
        names = sorted(set(self.labels))
        code = {name: i for i, name in enumerate(names)}
        n = len(self.texts)
        return b"".join([
            n.to_bytes(8, "little"), self.boxes.astype("<f8").tobytes(), self.scores.astype("<f8").tobytes(),
            self.is_box.astype(np.uint8).tobytes(), np.array([code[lb] for lb in self.labels], dtype="<u4").tobytes(),
            json.dumps(names).encode(), b"\n"])

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureSet:
        columns, start = _columns(data)
        if columns is None:
            raise ValueError("truncated FeatureSet bytes")
        texts = data[start:].decode().split("\n") if len(columns[1]) else []
        return cls(texts, *columns)


Columns = tuple[np.ndarray, np.ndarray, list[str], np.ndarray]  # boxes, scores, labels, is_box


def _columns(data: bytes) -> tuple[Columns | None, int]:
    """The columns at the start of a stored set (:meth:`FeatureSet._head`) and where the texts begin; (None, 0) when
    ``data`` does not hold all of them yet."""
    if len(data) < 8:
        return None, 0
    n = int.from_bytes(data[:8], "little")
    at = 8 + 45 * n
    end = data.find(b"\n", at)
    if end < 0:
        return None, 0
    boxes = np.frombuffer(data, dtype="<f8", count=4 * n, offset=8).reshape(n, 4)
    scores = np.frombuffer(data, dtype="<f8", count=n, offset=8 + 32 * n)
    is_box = np.frombuffer(data, dtype=np.uint8, count=n, offset=8 + 40 * n).astype(bool)
    codes = np.frombuffer(data, dtype="<u4", count=n, offset=8 + 41 * n)
    names = json.loads(data[at:end])
    return (boxes, scores, [names[c] for c in codes.tolist()], is_box), end + 1


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
            raise ValueError("truncated FeatureSet stream")
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


def _reaching(boxes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Which boxes overlap (with positive area) at least one of the windows."""
    if len(windows) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), dtype=bool)
    return np.asarray(((boxes[:, None, 0] < windows[None, :, 2]) & (boxes[:, None, 2] > windows[None, :, 0])
                       & (boxes[:, None, 1] < windows[None, :, 3]) & (boxes[:, None, 3] > windows[None, :, 1]))
                      .any(axis=1))


def merge_seams(parts: Sequence[tuple[Window, FeatureSet]], option: DistillationOption,
                relocate: Relocate | None = None, *, final: bool = True) -> FeatureSet:
    """Merge parts (each already merged inside itself) across the seams between their windows.

    ``final`` False (a lower level) with SOFT_NMS only concatenates: the job level decays once. With NMS
    and only boxes near the seams, the merge runs on the stored columns and no feature is parsed.
    """
    parts = _by_window(parts)
    if option.algorithm_type == "SOFT_NMS" and not final:
        return FeatureSet.concat([part for _, part in parts])
    near, merged = _merge_near(parts, option, relocate)
    return FeatureSet.concat([*(part.take(~mask) for (_, part), mask in zip(parts, near, strict=True)), merged])


def merge_packed(parts: Sequence[tuple[Window, PackedFeatureSet]], option: DistillationOption,
                 relocate: Relocate | None = None) -> JobFeatures:
    """:func:`merge_seams` (final) over stored region results: the same features, in the same order, with
    only the texts near the seams decompressed here; the rest stream to the outputs."""
    parts = _by_window(parts)
    near, merged = _merge_near(parts, option, relocate)
    return JobFeatures([(part, ~mask) for (_, part), mask in zip(parts, near, strict=True)], merged)


PartT = TypeVar("PartT", FeatureSet, PackedFeatureSet)


def _by_window(parts: Sequence[tuple[Window, PartT]]) -> list[tuple[Window, PartT]]:
    """Row-major by window, whatever order the parts finished in: the output order is deterministic too."""
    return sorted(parts, key=lambda part: (part[0][1], part[0][0], part[0][3], part[0][2]))


def _merge_near(parts: Sequence[tuple[Window, FeatureSet | PackedFeatureSet]], option: DistillationOption,
                relocate: Relocate | None) -> tuple[list[np.ndarray], FeatureSet]:
    """Which features of each part reach into another part's window, and those features merged."""
    windows = np.array([window for window, _ in parts], dtype=float).reshape(-1, 4)
    near_masks: list[np.ndarray] = []
    seam: list[FeatureSet] = []
    cut: list[np.ndarray] = []  # per seam part: which of its near features an interior edge of its window cuts
    edges = option.edge_truncation != "NONE"
    for i, (_, part) in enumerate(parts):
        if option.algorithm_type == "SOFT_NMS":
            near = np.ones(len(part), dtype=bool)
        elif not len(part):
            near = np.zeros(0, dtype=bool)
        else:
            finite = np.isfinite(part.boxes).all(axis=1)
            bounds = part.boxes[finite]
            close = np.zeros(len(windows), dtype=bool)
            if len(bounds):
                x0, y0 = bounds[:, 0].min(), bounds[:, 1].min()
                x1, y1 = bounds[:, 2].max(), bounds[:, 3].max()
                close = (windows[:, 0] < x1) & (windows[:, 2] > x0) & (windows[:, 1] < y1) & (windows[:, 3] > y0)
            close[i] = False
            near = _reaching(part.boxes, windows[close]) & finite
        near_masks.append(near)
        if near.any():
            taken = part.take(near)
            seam.append(taken)
            if edges:  # a window that continues this one beyond one of its edges overlaps this one
                own = windows[i]
                overlapping = ((windows[:, 0] < own[2]) & (windows[:, 2] > own[0])
                               & (windows[:, 1] < own[3]) & (windows[:, 3] > own[1]))
                overlapping[i] = False
                cut.append(truncated_at_edges(taken.boxes, own, windows[overlapping], option.edge_margin)
                           & taken.is_box)
    truncated = np.concatenate(cut) if edges and cut else None
    return near_masks, merge_set(FeatureSet.concat(seam), option, relocate, truncated=truncated)


def merge_set(candidates: FeatureSet, option: DistillationOption, relocate: Relocate | None = None,
              features: Sequence[dict[str, Any]] | None = None, *, truncated: np.ndarray | None = None) -> FeatureSet:
    """Merge every feature of one set with every other (:func:`~.merge.distill`'s selection).

    With NMS and boxes only, the merge runs on the stored columns and nothing is parsed; otherwise the
    features (``features`` when the caller has them, else parsed from the texts) go through ``distill``.
    ``truncated`` flags the features an interior tile edge cuts (``option.edge_truncation``).
    """
    if not len(candidates):
        return candidates
    edge_cases = truncated is not None and bool(truncated.any()) and option.edge_truncation != "NONE"
    if option.algorithm_type == "NMS" and candidates.is_box.all() and not edge_cases:
        # Ties beyond score, box and label are broken by the text, never by arrival order.
        by_text = np.argsort(np.array(candidates.texts, dtype=object), kind="stable")
        ordered = candidates.take(by_text)
        labels = None if option.class_agnostic else np.unique(ordered.labels, return_inverse=True)[1]
        kept = nms_indices(ordered.boxes, ordered.scores, labels, option.iou_threshold, option.match_metric)
        return ordered.take(np.sort(kept))
    if features is None:
        return FeatureSet.of(distill(candidates.features(), option, relocate, truncated=truncated))
    text_of = {id(f): t for f, t in zip(features, candidates.texts, strict=True)}
    distilled = distill(features, option, relocate, truncated=truncated)
    return FeatureSet.of(distilled, [text_of.get(id(f)) or feature_text(f) for f in distilled])
