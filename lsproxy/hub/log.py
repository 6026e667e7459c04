"""StreamLog: the per-stream append-only record log that every consumer reads.

Theory of operation
-------------------
The upstream reader appends records in *segments*: one segment per batch of
records framed from one upstream read. A segment stores its records already
joined with their CRLF terminators (``data``) plus the byte end of every
record (``ends``), so a consumer at the tail sends a whole segment as one
bytes object without touching individual records, while a consumer that starts
or resumes mid-segment slices at a record boundary.

Offsets are record numbers: the first record ever appended has offset 0 and
offsets never repeat. Retention trims whole segments from the front once the
retained bytes exceed ``retention_bytes`` (the newest segment always stays);
a reader asking for an offset that was trimmed gets the oldest retained data
and sees ``Slice.start > offset`` (the gap is the number of records skipped).

The log never awaits anybody: ``append`` is synchronous and wakes waiters
through one ``trio.Event`` that is replaced after each wake-up. Readers keep
their own offsets (see ``cursors.py``), so a stalled reader costs nothing here.

The in-memory log is behind this small interface (``append``, ``read``,
``wait_beyond``, ``oldest``, ``next_offset``, ``close``) so that a durable
implementation can replace it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Protocol

import trio

from lsproxy.hub.segment import CRLF, Segment, Slice, make_segment

__all__ = ["CRLF", "MemoryLog", "Segment", "Slice", "StreamLog", "make_segment"]


class StreamLog(Protocol):
    """What the hub needs of a log; ``MemoryLog`` and the durable log both provide it."""

    retention_bytes: int

    @property
    def oldest(self) -> int: ...
    @property
    def next_offset(self) -> int: ...
    @property
    def retained_bytes(self) -> int: ...
    @property
    def trimmed_records(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def append(self, records: Sequence[bytes], received_at: float) -> None: ...
    async def read(self, offset: int, max_bytes: int) -> Slice: ...
    async def wait_beyond(self, offset: int) -> None: ...
    def close(self) -> None: ...
    def offset_at(self, unix_time: float) -> int: ...


class MemoryLog:
    """An in-memory StreamLog bounded by ``retention_bytes``."""

    def __init__(self, retention_bytes: int) -> None:
        if retention_bytes <= 0:
            raise ValueError("retention_bytes must be positive")
        self.retention_bytes = retention_bytes
        # _segments[_head:] are live; the dead prefix is compacted lazily so that
        # trimming one segment does not cost a memmove of the whole list.
        self._segments: list[Segment] = []
        self._firsts: list[int] = []
        self._head = 0
        self._bytes = 0
        self._next = 0
        self._trimmed_records = 0
        self._closed = False
        self._changed = trio.Event()

    # -- properties ---------------------------------------------------------
    @property
    def oldest(self) -> int:
        """Offset of the oldest retained record (== next_offset when empty)."""
        if self._head < len(self._segments):
            return self._segments[self._head].first
        return self._next

    @property
    def next_offset(self) -> int:
        """Offset the next appended record will get (the live tail)."""
        return self._next

    @property
    def retained_bytes(self) -> int:
        return self._bytes

    @property
    def retained_records(self) -> int:
        return self._next - self.oldest

    @property
    def trimmed_records(self) -> int:
        return self._trimmed_records

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_received_at(self) -> float | None:
        if self._head < len(self._segments):
            return self._segments[-1].received_at
        return None

    # -- writing ------------------------------------------------------------
    def append(self, records: Sequence[bytes], received_at: float) -> None:
        """Append records (without terminators). Never blocks, never awaits."""
        if self._closed:
            raise RuntimeError("append to a closed log")
        if not records:
            return
        segment = make_segment(self._next, records, received_at)
        self._segments.append(segment)
        self._firsts.append(segment.first)
        self._bytes += len(segment.data)
        self._next = segment.end
        self._trim()
        self._wake()

    def _trim(self) -> None:
        while self._bytes > self.retention_bytes and len(self._segments) - self._head > 1:
            dead = self._segments[self._head]
            self._bytes -= len(dead.data)
            self._trimmed_records += len(dead.ends)
            self._head += 1
        if self._head > 1024 and self._head * 2 > len(self._segments):
            del self._segments[: self._head]
            del self._firsts[: self._head]
            self._head = 0

    def close(self) -> None:
        """No more records will come: wake every waiter so it can end its response."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- reading ------------------------------------------------------------
    async def read(self, offset: int, max_bytes: int) -> Slice:
        """See ``read_nowait``; async so that a durable log can go to disk here."""
        return self.read_nowait(offset, max_bytes)

    def read_nowait(self, offset: int, max_bytes: int) -> Slice:
        """Records from ``offset`` on, at most ``max_bytes``, cut at record boundaries; but
        always at least one record when any is available, and a whole segment read from its
        start is returned uncut (segments are bounded by one upstream read).
        ``offset`` below ``oldest`` reads from ``oldest``."""
        if offset > self._next:
            raise ValueError(f"offset {offset} is beyond the tail {self._next}")
        start = max(offset, self.oldest)
        if start == self._next:
            return Slice(start, start)
        i = bisect.bisect_right(self._firsts, start, lo=self._head) - 1
        pieces: list[Segment | bytes] = []
        size = 0
        end = start
        while i < len(self._segments):
            seg = self._segments[i]
            from_byte = seg.byte_start(end)
            room = max_bytes - size
            if len(seg.data) - from_byte <= room or (not pieces and from_byte == 0):
                pieces.append(seg if from_byte == 0 else seg.data[from_byte:])
                size += len(seg.data) - from_byte
                end = seg.end
                i += 1
                continue
            # Cut inside this segment at the last record boundary that fits
            # (at least one record overall).
            k = bisect.bisect_right(seg.ends, from_byte + room) - 1
            first_index = end - seg.first
            if k < first_index and not pieces:
                k = first_index
            if k >= first_index:
                pieces.append(seg.data[from_byte : seg.ends[k]])
                end = seg.first + k + 1
            break
        return Slice(start, end, tuple(pieces))

    async def wait_beyond(self, offset: int) -> None:
        """Return once a record at ``offset`` or later exists, or the log is closed."""
        while self._next <= offset and not self._closed:
            await self._changed.wait()

    def offset_at(self, unix_time: float) -> int:
        """The first record received at or after ``unix_time`` (``next_offset`` if none)."""
        i = bisect.bisect_left(self._segments, unix_time, lo=self._head, key=lambda seg: seg.received_at)
        return self._segments[i].first if i < len(self._segments) else self._next

    def received_at(self, offset: int) -> float | None:
        """Arrival time of the segment holding ``offset`` (None if not retained)."""
        if offset < self.oldest or offset >= self._next:
            return None
        i = bisect.bisect_right(self._firsts, offset, lo=self._head) - 1
        return self._segments[i].received_at
