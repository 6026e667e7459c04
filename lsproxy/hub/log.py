"""StreamLog: the per-stream append-only record log that every consumer reads.

Theory of operation
-------------------
The upstream reader appends records in *segments* (segment.py): one per batch
of records framed from one upstream read, joined with their CRLF terminators,
so a consumer at the tail sends whole segments without touching individual
records, while a consumer that starts or resumes mid-segment slices at a
record boundary.

Offsets are record numbers: the first record ever appended has offset 0 and
offsets never repeat. Retention trims whole segments from the front once the
retained bytes exceed ``retention_bytes`` (the newest segment always stays);
a reader asking for an offset that was trimmed gets the oldest retained data
and sees ``Slice.start > offset`` (the gap is the number of records skipped).

The log never awaits anybody: ``append`` is synchronous and wakes waiters
through one ``trio.Event`` that is replaced after each wake-up. Readers keep
their own offsets (see ``cursors.py``), so a stalled reader costs nothing here.

``StreamLog`` is the small interface the hub needs; ``MemoryLog`` (here) and
``DurableLog`` (durable.py, SQLite with the hot tail in memory) implement it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from lsproxy.hub.segment import CRLF, Segment, SegmentRun, Slice, make_segment

__all__ = ["CRLF", "LogUnavailable", "MemoryLog", "Segment", "Slice", "StreamLog", "make_segment"]


class LogUnavailable(Exception):
    """A log cannot read a retained range now (cluster mode: JetStream does not answer).
    The consumer's connection ends; it resumes at its cursor."""


class StreamLog(Protocol):
    """What the hub needs of a log; ``MemoryLog`` and the durable log both provide it.
    ``read`` may raise ``LogUnavailable``."""

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
    def received_at(self, offset: int) -> float | None: ...


class MemoryLog:
    """An in-memory StreamLog bounded by ``retention_bytes``."""

    def __init__(self, retention_bytes: int) -> None:
        if retention_bytes <= 0:
            raise ValueError("retention_bytes must be positive")
        self.retention_bytes = retention_bytes
        self._run = SegmentRun()
        self._next = 0
        self._trimmed_records = 0
        self._closed = False
        self._changed = trio.Event()

    # -- properties ---------------------------------------------------------
    @property
    def oldest(self) -> int:
        """Offset of the oldest retained record (== next_offset when empty)."""
        return self._run.front.first if self._run else self._next

    @property
    def next_offset(self) -> int:
        """Offset the next appended record will get (the live tail)."""
        return self._next

    @property
    def retained_bytes(self) -> int:
        return self._run.bytes

    @property
    def retained_records(self) -> int:
        return self._next - self.oldest

    @property
    def trimmed_records(self) -> int:
        return self._trimmed_records

    @property
    def closed(self) -> bool:
        return self._closed

    # -- writing ------------------------------------------------------------
    def append(self, records: Sequence[bytes], received_at: float) -> None:
        """Append records (without terminators). Never blocks, never awaits."""
        if self._closed:
            raise RuntimeError("append to a closed log")
        if not records:
            return
        segment = make_segment(self._next, records, received_at)
        self._run.append(segment)
        self._next = segment.end
        while self._run.bytes > self.retention_bytes and len(self._run) > 1:
            self._trimmed_records += len(self._run.popleft().ends)
        self._wake()

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
        i = self._run.find(start)
        if i is None:
            return Slice(start, start)
        return self._run.slice(i, start, max_bytes)

    async def wait_beyond(self, offset: int) -> None:
        """Return once a record at ``offset`` or later exists, or the log is closed."""
        while self._next <= offset and not self._closed:
            await self._changed.wait()

    def offset_at(self, unix_time: float) -> int:
        """The first record received at or after ``unix_time`` (``next_offset`` if none)."""
        found = self._run.at_time(unix_time)
        return self._next if found is None else found

    def received_at(self, offset: int) -> float | None:
        """Arrival time of the segment holding ``offset`` (None if not retained)."""
        i = self._run.find(offset)
        if i is None or self._run.first_of(i) > offset:
            return None
        return self._run.time_of(i)
