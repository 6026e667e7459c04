"""The DurableLog's in-memory structures: runs of segments and the index of disk rows.

Theory of operation
-------------------
Both are ordered by offset, grow at the back and shrink at the front, and may
have gaps (records dropped from the disk queue, or rows left out by a
salvage). Like ``MemoryLog`` they keep a dead prefix that is compacted lazily,
so popping the front costs no memmove of the whole list.

``find(offset)`` answers "which entry holds ``offset``, or else which is the
first one after it": the caller compares ``first_of(i)`` with the offset to
tell a hit from a skip over a gap. ``slice_segments`` is ``MemoryLog.read``'s
cutting rule (record boundaries, at least one record, a whole segment read
from its start uncut) over any such list; it stops at a gap, so the next read
reports the skip (``Slice.start`` beyond the asked offset).

``RowIndex`` stores four numbers per committed row in ``array`` columns
(32 bytes a row): a stream with a million rows costs 32 MB, and rows are at
least ``ROW_BYTES`` or one commit interval each.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Sequence

from lsproxy.hub.segment import Segment, Slice

COMPACT_AFTER = 1024  # dead entries before the front is compacted


def slice_segments(segs: Sequence[Segment], i: int, offset: int, max_bytes: int) -> Slice:
    """Records from ``offset`` (or from ``segs[i].first`` if later) on, at most ``max_bytes``:
    ``MemoryLog.read_nowait``'s rule (whole segments as shareable pieces, a whole segment
    read from its start uncut, at least one record), stopping at a gap."""
    start = max(offset, segs[i].first)
    pieces: list[Segment | bytes] = []
    size = 0
    end = start
    while i < len(segs):
        seg = segs[i]
        if seg.first > end:
            break  # a gap: stop here, the next read reports the skip
        from_byte = seg.byte_start(end)
        room = max_bytes - size
        if len(seg.data) - from_byte <= room or (not pieces and from_byte == 0):
            pieces.append(seg if from_byte == 0 else seg.data[from_byte:])
            size += len(seg.data) - from_byte
            end = seg.end
            i += 1
            continue
        k = bisect.bisect_right(seg.ends, from_byte + room) - 1
        first_index = end - seg.first
        if k < first_index and not pieces:
            k = first_index  # always at least one record
        if k >= first_index:
            pieces.append(seg.data[from_byte : seg.ends[k]])
            end = seg.first + k + 1
        break
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


class RowIndex:
    """Committed rows: first offset, end offset, bytes, arrival time (parallel arrays)."""

    __slots__ = ("bytes", "ends", "firsts", "head", "sizes", "times")

    def __init__(self, rows: Iterable[tuple[int, int, int, float]] = ()) -> None:
        self.firsts = array("q")
        self.ends = array("q")
        self.sizes = array("q")
        self.times = array("d")
        self.head = 0
        self.bytes = 0
        for row in rows:
            self.append(*row)

    def __len__(self) -> int:
        return len(self.firsts) - self.head

    def append(self, first: int, count: int, size: int, when: float) -> None:
        self.firsts.append(first)
        self.ends.append(first + count)
        self.sizes.append(size)
        self.times.append(when)
        self.bytes += size

    def popleft(self) -> tuple[int, int, int, float]:
        h = self.head
        row = (self.firsts[h], self.ends[h], self.sizes[h], self.times[h])
        self.head += 1
        self.bytes -= row[2]
        if self.head > COMPACT_AFTER and self.head * 2 > len(self.firsts):
            for column in (self.firsts, self.ends, self.sizes, self.times):
                del column[: self.head]
            self.head = 0
        return row

    def find(self, offset: int) -> int | None:
        i = max(bisect.bisect_right(self.firsts, offset, lo=self.head) - 1, self.head)
        if i < len(self.firsts) and self.ends[i] <= offset:
            i += 1
        return i if i < len(self.firsts) else None

    def first_of(self, i: int) -> int:
        return self.firsts[i]
