"""The DurableLog's in-memory structures: runs of segments and the index of disk rows.

Theory of operation
-------------------
Both are ordered by offset, grow at the back and shrink at the front, and may
have gaps (records dropped from the disk queue, or rows left out by a
salvage). Like ``MemoryLog`` they keep a dead prefix that is compacted lazily,
so popping the front costs no memmove of the whole list.

``find(offset)`` answers "which entry holds ``offset``, or else which is the
first one after it": the caller compares ``first_of(i)`` with the offset to
tell a hit from a skip over a gap. ``SegmentRun`` and ``slice_segments`` live in
segment.py (``MemoryLog`` uses them too); a slice stops at a gap, so the next
read reports the skip (``Slice.start`` beyond the asked offset).

``RowIndex`` stores four numbers per committed row in ``array`` columns
(32 bytes a row): a stream with a million rows costs 32 MB, and rows are at
least ``ROW_BYTES`` or one commit interval each.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable

from lsproxy.hub.segment import COMPACT_AFTER


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
