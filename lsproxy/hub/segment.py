"""Segments and slices: the units records move in, from the upstream to the sockets.

A *segment* is one batch of records as the upstream delivered it (one framed
read): the records joined with their CRLF terminators, plus each record's byte
end, so a reader can start at any record without touching the others. A
segment also carries, computed once on first use and then shared by every gzip
consumer, its raw-deflate compression (independent: ends with a full flush)
and its CRC-32: the "compress once, share" path of serve/encoding.py; and,
for consumer groups, each record's share hash (hub/visitor.py), computed once
for every member of every group. ``Block`` is what the two kinds of shared
bytes have in common: segments, and renderings of them (serve/view.py).

A *slice* is what one read of the log returns: whole segments where possible
(shareable), and plain bytes where a reader starts or stops inside a segment.

Pure: no I/O.
"""

from __future__ import annotations

import array
import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from lsproxy import deflate
from lsproxy.hub.visitor import segment_hashes

CRLF = b"\r\n"
COMPACT_AFTER = 1024  # dead entries before the front of a SegmentRun is compacted


class Block:
    """Bytes sent as they are to many consumers, with their compression made once, on
    first use: a segment, or a rendering of one shared by consumers (serve/view.py)."""

    __slots__ = ("_deflated", "crc", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._deflated: bytes | None = None
        self.crc = 0

    def deflated(self) -> bytes:
        """These bytes as an independent raw-deflate block (computed once, then shared)."""
        if self._deflated is None:
            self._deflated = deflate.deflate_block(self.data)
            self.crc = deflate.crc32(self.data)
        return self._deflated


class Segment(Block):
    __slots__ = ("_hashes", "ends", "first", "received_at")

    def __init__(self, first: int, data: bytes, ends: Sequence[int], received_at: float) -> None:
        self.first = first  # offset of the segment's first record
        self.data = data  # the records, each followed by CRLF
        self.ends = ends  # ends[i]: byte end (exclusive) of record first + i in data
        self.received_at = received_at  # wall-clock time of arrival
        self._deflated = None
        self.crc = 0
        self._hashes: array.array[int] | None = None

    @property
    def end(self) -> int:
        return self.first + len(self.ends)

    def byte_start(self, offset: int) -> int:
        """Byte position in ``data`` where record ``offset`` begins."""
        i = offset - self.first
        return self.ends[i - 1] if i > 0 else 0

    def share_hashes(self) -> array.array[int]:
        """Each record's share hash (hub/visitor.py): computed once, for every group."""
        if self._hashes is None:
            self._hashes = segment_hashes(self.data, self.ends, self.first)
        return self._hashes


def make_segment(first: int, records: Sequence[bytes], received_at: float) -> Segment:
    ends = list(accumulate(map(len, records), lambda total, size: total + size + 2, initial=0))[1:]
    return Segment(first, CRLF.join(records) + CRLF, ends, received_at)


@dataclass(frozen=True, slots=True)
class Slice:
    start: int  # offset of the first record (> the asked offset if records were trimmed)
    end: int  # offset just past the last record
    pieces: tuple[Block | bytes, ...] = ()  # whole segments (or their renderings), or plain bytes

    @property
    def count(self) -> int:
        return self.end - self.start

    @property
    def data(self) -> bytes:
        """The records, each followed by CRLF."""
        if len(self.pieces) == 1:
            piece = self.pieces[0]
            return piece.data if isinstance(piece, Block) else piece
        return b"".join(p.data if isinstance(p, Block) else p for p in self.pieces)


def slice_segments(segs: Sequence[Segment], i: int, offset: int, max_bytes: int) -> Slice:
    """Records from ``offset`` (or from ``segs[i].first`` if later) on: whole segments
    (the rest of the first one when ``offset`` is inside it) until ``max_bytes`` is
    reached or passed, stopping at a gap.

    Never cut inside a segment: a reader that stopped mid-segment would start its
    next batch mid-segment too, and could not share that segment's compression
    (serve/encoding.py). A segment is one upstream read, so the overshoot is bounded."""
    start = max(offset, segs[i].first)
    pieces: list[Block | bytes] = []
    size = 0
    end = start
    while i < len(segs) and size < max_bytes:
        seg = segs[i]
        if seg.first > end:
            break  # a gap: stop here, the next read reports the skip
        from_byte = seg.byte_start(end)
        pieces.append(seg if from_byte == 0 else seg.data[from_byte:])
        size += len(seg.data) - from_byte
        end = seg.end
        i += 1
    return Slice(start, end, tuple(pieces))


class SegmentRun:
    """Segments in offset order, appended at the back, popped at the front."""

    __slots__ = ("_firsts", "_head", "_segs", "bytes", "records")

    def __init__(self, segments: Iterable[Segment] = ()) -> None:
        self._segs: list[Segment] = []
        self._firsts: list[int] = []
        self._head = 0
        self.bytes = 0
        self.records = 0
        for seg in segments:
            self.append(seg)

    def __len__(self) -> int:
        return len(self._segs) - self._head

    @property
    def front(self) -> Segment:
        return self._segs[self._head]

    @property
    def back(self) -> Segment:
        return self._segs[-1]

    def append(self, seg: Segment) -> None:
        self._segs.append(seg)
        self._firsts.append(seg.first)
        self.bytes += len(seg.data)
        self.records += len(seg.ends)

    def popleft(self) -> Segment:
        seg = self._segs[self._head]
        self._head += 1
        self.bytes -= len(seg.data)
        self.records -= len(seg.ends)
        if self._head > COMPACT_AFTER and self._head * 2 > len(self._segs):
            del self._segs[: self._head]
            del self._firsts[: self._head]
            self._head = 0
        return seg

    def take(self, max_bytes: int) -> list[Segment]:
        """The front segments up to ``max_bytes`` (at least one), left in place."""
        taken: list[Segment] = []
        size = 0
        for i in range(self._head, len(self._segs)):
            seg = self._segs[i]
            if taken and size + len(seg.data) > max_bytes:
                break
            taken.append(seg)
            size += len(seg.data)
        return taken

    def find(self, offset: int) -> int | None:
        i = max(bisect.bisect_right(self._firsts, offset, lo=self._head) - 1, self._head)
        if i < len(self._segs) and self._segs[i].end <= offset:
            i += 1
        return i if i < len(self._segs) else None

    def first_of(self, i: int) -> int:
        return self._firsts[i]

    def time_of(self, i: int) -> float:
        return self._segs[i].received_at

    def slice(self, i: int, offset: int, max_bytes: int) -> Slice:
        return slice_segments(self._segs, i, offset, max_bytes)

    def at_time(self, when: float) -> int | None:
        """First offset of the first segment received at or after ``when``."""
        i = bisect.bisect_left(self._segs, when, lo=self._head, key=lambda s: s.received_at)
        return self._segs[i].first if i < len(self._segs) else None

    def recent_records(self, count: int, oldest: int) -> list[bytes]:
        """The newest ``count`` records at or after ``oldest``, oldest first."""
        found: list[list[bytes]] = []
        need = count
        for i in range(len(self._segs) - 1, self._head - 1, -1):
            if need <= 0:
                break
            seg = self._segs[i]
            lo = max(len(seg.ends) - need, oldest - seg.first, 0)
            if lo >= len(seg.ends):
                break
            starts = (seg.ends[lo - 1] if lo else 0, *seg.ends[lo:-1])
            found.append([seg.data[s : e - 2] for s, e in zip(starts, seg.ends[lo:], strict=True)])
            need -= len(seg.ends) - lo
            if seg.first <= oldest:
                break
        return [record for part in reversed(found) for record in part]
