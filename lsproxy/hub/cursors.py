"""Consumer cursors: where each consumer is in its stream, and the rewind rule.

Theory of operation
-------------------
A named consumer (``consumer=<id>``) owns a cursor that outlives its
connections; an anonymous one gets a cursor for the life of one connection.
At most one connection holds a named cursor at a time: it holds a *lease*
(the cursor's generation number). A new connection with the same name takes
the cursor over: the old lease is released on the spot (book-keeping first,
synchronously), and the caller cancels the old connection afterwards. Progress
reported under a stale lease is ignored, so a dying connection can never move
a cursor that someone else now owns.

An operator may move or forget a named cursor (the admin API): the holding
connection's lease goes stale the same way, and the caller ends that
connection. Lease generations are unique within the book, so a lease of a
forgotten cursor never matches a new cursor of the same name.

The delivery rule. ``send_all`` returning only means the kernel took the
bytes; a consumer killed at that moment loses whatever sat in our send buffer,
in its receive buffer and in its own read buffers. So a cursor is not simply
"after the last batch sent". When a connection ends, the cursor resumes at the
end of the newest batch after which at least ``window_bytes`` more wire bytes
were handed to the kernel on that connection (or at the connection's start
position if there is none). At most ``window_bytes`` can still have been in
flight (socket buffers on both sides plus the client's own buffering), so every
record before that point was read by the consumer. Records after it are sent
again: a consumer may see duplicates around its reconnects, never gaps.

All of this is pure book-keeping: no I/O, no clock, no trio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

Reset = Literal["smallest", "largest"]


MARKS_PER_WINDOW = 32  # resume-point resolution: a few % of the window, bounded memory


class Delivery:
    """One connection's progress, in records and wire bytes, for the rewind rule."""

    __slots__ = ("_granule", "_marks", "position", "start", "window_bytes", "wire_bytes")

    def __init__(self, start: int, window_bytes: int) -> None:
        self.start = start
        self.position = start  # offset after the last batch handed to the kernel
        self.window_bytes = window_bytes
        self.wire_bytes = 0
        # (wire bytes handed over after the batch, offset after the batch); the
        # leftmost mark is always the best resume point known so far. Marks closer
        # than a granule are merged into the newer one (a true but later point: the
        # resume point can only move back, never past a record in flight), so a
        # consumer holds at most ~MARKS_PER_WINDOW marks whatever its batch sizes.
        self._granule = max(1, window_bytes // MARKS_PER_WINDOW)
        self._marks: deque[tuple[int, int]] = deque([(0, start)])

    def sent(self, end_offset: int, wire_bytes: int) -> None:
        """A batch (or a heartbeat: ``end_offset`` unchanged) was handed to the kernel."""
        self.wire_bytes += wire_bytes
        if end_offset != self.position:
            self.position = end_offset
            marks = self._marks
            if len(marks) > 1 and self.wire_bytes - marks[-2][0] < self._granule:
                marks[-1] = (self.wire_bytes, end_offset)
            else:
                marks.append((self.wire_bytes, end_offset))
        horizon = self.wire_bytes - self.window_bytes
        while len(self._marks) > 1 and self._marks[1][0] <= horizon:
            self._marks.popleft()

    def resume_offset(self) -> int:
        """Where a successor connection must start so that nothing is lost."""
        wire, offset = self._marks[0]
        return offset if wire <= self.wire_bytes - self.window_bytes else self.start


@dataclass
class Cursor:
    name: str
    named: bool
    position: int  # resume point while no connection holds the cursor
    generation: int = 0
    delivery: Delivery | None = None
    skipped: int = 0  # records lost to retention while this consumer lagged
    connections: int = 0
    persisted: bool = True  # named cursors only; False: kept in memory (an anonymous group's shares)

    @property
    def connected(self) -> bool:
        return self.delivery is not None

    @property
    def current(self) -> int:
        """The live position: the connection's progress while connected, else the cursor."""
        return self.delivery.position if self.delivery is not None else self.position


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    generation: int
    start: int  # offset the new connection starts at
    took_over: bool  # an older connection held this cursor and was released
    skipped: int = 0  # records between the asked start and ``start`` already lost to retention


class CursorBook:
    """Every cursor of one stream."""

    def __init__(self) -> None:
        self._cursors: dict[str, Cursor] = {}
        self._anonymous = 0
        self._generations = 0  # the last lease generation handed out, book-wide

    def __len__(self) -> int:
        return len(self._cursors)

    def cursors(self) -> list[Cursor]:
        return list(self._cursors.values())

    def get(self, name: str) -> Cursor | None:
        return self._cursors.get(name)

    def persistent(self) -> dict[str, tuple[int, int]]:
        """Named cursors as (position, skipped) to persist. A connected cursor is saved at
        its rewind point, so a proxy crash keeps the no-loss rule (see the module doc)."""
        return {
            c.name: (c.delivery.resume_offset() if c.delivery is not None else c.position, c.skipped)
            for c in self._cursors.values()
            if c.named and c.persisted
        }

    def restore(self, saved: dict[str, tuple[int, int]]) -> None:
        """Named cursors persisted by an earlier run (before any connection)."""
        for name, (position, skipped) in saved.items():
            self._cursors.setdefault(name, Cursor(name, named=True, position=position, skipped=skipped))

    def adopt(self, name: str, position: int, skipped: int) -> bool:
        """A named cursor's position as another proxy (a cluster node) left it; ignored
        while a connection here holds the cursor. True when taken."""
        cursor = self._cursors.get(name)
        if cursor is None:
            self._cursors[name] = Cursor(name, named=True, position=position, skipped=skipped)
            return True
        if cursor.connected or not cursor.named:
            return False
        cursor.position, cursor.skipped = position, skipped
        return True

    def attach(
        self,
        name: str | None,
        *,
        reset: Reset | None,
        oldest: int,
        tail: int,
        window_bytes: int,
        start_at: int | None = None,
    ) -> Lease:
        """A connection starts. ``name`` None means an anonymous consumer. ``start_at``
        (a replay by time, an exact resume) overrides the cursor and ``reset``."""
        cursor = self._cursors.get(name) if name is not None else None
        took_over = cursor is not None and cursor.connected
        if cursor is None:
            # A first connection starts at the live tail, as Live Stream's own first
            # connection does, unless it asks for the oldest retained record.
            start = oldest if reset == "smallest" else tail
            if name is None:
                self._anonymous += 1
            key = name if name is not None else f"~anonymous-{self._anonymous}"
            cursor = self._cursors[key] = Cursor(key, named=name is not None, position=start)
        else:
            self._release(cursor)
            if reset == "smallest":
                start = oldest
            elif reset == "largest":
                start = tail
            else:
                start = min(cursor.position, tail)
        if start_at is not None:
            start = min(start_at, tail)
        skipped = max(0, oldest - start)
        if skipped:
            cursor.skipped += skipped
            start = oldest
        self._generations += 1
        cursor.generation = self._generations
        cursor.connections += 1
        cursor.position = start
        cursor.delivery = Delivery(start, window_bytes)
        return Lease(cursor.name, cursor.generation, start, took_over, skipped)

    def remove(self, name: str) -> None:
        """Forget a cursor that no connection holds (a consumer group's old shares)."""
        cursor = self._cursors.get(name)
        if cursor is not None and not cursor.connected:
            del self._cursors[name]

    def is_current(self, lease: Lease) -> bool:
        cursor = self._cursors.get(lease.name)
        return cursor is not None and cursor.generation == lease.generation and cursor.connected

    def sent(self, lease: Lease, end_offset: int, wire_bytes: int) -> bool:
        """Record progress; False when the lease is stale (the caller should stop)."""
        if not self.is_current(lease):
            return False
        delivery = self._cursors[lease.name].delivery
        assert delivery is not None
        delivery.sent(end_offset, wire_bytes)
        return True

    def skipped(self, lease: Lease, records: int) -> None:
        """The connection found its next records trimmed by retention and jumped."""
        if self.is_current(lease):
            self._cursors[lease.name].skipped += records

    def detach(self, lease: Lease) -> None:
        """The connection ended (any way). Stale leases change nothing."""
        if not self.is_current(lease):
            return
        cursor = self._cursors[lease.name]
        self._release(cursor)
        if not cursor.named:
            del self._cursors[lease.name]

    def move(self, name: str, position: int) -> Cursor:
        """An operator sets named cursor ``name`` to ``position`` (creating it if needed).
        A connection holding it loses its lease: the caller ends that connection, and
        the consumer resumes at ``position`` when it reconnects."""
        cursor = self._cursors.get(name)
        if cursor is None:
            cursor = self._cursors[name] = Cursor(name, named=True, position=position)
            return cursor
        if not cursor.named:
            raise ValueError(f"{name!r} is an anonymous consumer's cursor")
        if cursor.delivery is not None:
            cursor.delivery = None
            self._generations += 1
            cursor.generation = self._generations  # the connection's lease is stale now
        cursor.position = position
        return cursor

    def forget(self, name: str) -> Cursor | None:
        """An operator deletes named cursor ``name``; a connection holding it loses its lease."""
        cursor = self._cursors.get(name)
        if cursor is None or not cursor.named:
            return None
        return self._cursors.pop(name)

    @staticmethod
    def _release(cursor: Cursor) -> None:
        if cursor.delivery is not None:
            cursor.position = cursor.delivery.resume_offset()
            cursor.delivery = None
