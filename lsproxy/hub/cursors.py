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
"after the last batch sent". A connection counts the wire bytes it handed to
the kernel and keeps a lower bound, ``confirmed``, of how many of them the
consumer has surely *processed*. Two things raise it:

* a fixed window (``window_bytes``): at most that many bytes can be in flight,
  so ``wire_bytes - window_bytes`` were processed;
* an observation (``observe``) by the I/O layer: "right now at most N of the
  bytes handed over are not processed yet" (the socket's send queue, the
  peer's receive queue when the kernel shows it, plus the client's own read
  buffers). The consumer only ever reads forward, so what was processed at an
  observation stays processed: the best observation so far holds until the end.

When a connection ends, the cursor resumes at the end of the newest batch
whose last byte is within ``confirmed`` (or at the connection's start when
there is none). Every record before that point was processed; records after it
are sent again: a consumer may see duplicates around its reconnects, never gaps.

Retention may trim records a cursor has not reached. Only records that were
never handed to this consumer's socket count as *skipped*: a rewind whose
point was trimmed re-sends less, it does not lose anything the consumer has not
already been sent (``Cursor.sent_from``..``Cursor.delivered`` is the range
handed over so far, the furthest offset last).
An explicit start below the oldest retained record (an exact resume) is not
clamped silently either: the records it asked for and was never sent count as
skipped.

Named cursors are bounded: at most ``max_named`` per book (a new name beyond
it is refused with ``TooManyConsumers``), and one not connected for ``ttl``
seconds is forgotten by ``sweep`` (oldest first, a bounded number per call).
Every named cursor counts, a consumer group's shares included (hub/groups.py
checks a group's N shares against the cap before it creates them); every
mutation that creates or deletes a named cursor keeps ``_named`` and ``_idle``
(the disconnected ones, least recently seen first) in step.

All of this is pure book-keeping: no I/O, no clock (callers pass ``now``), no trio.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Literal

Reset = Literal["smallest", "largest"]


MARKS_PER_WINDOW = 32  # resume-point resolution: ~3 % of the unconfirmed bytes
MAX_MARKS = 128  # hard cap: beyond it every other mark is dropped (only ever coarser, never unsafe)
SEEN_REFRESH_SECONDS = 3600.0  # a connected cursor's persisted "last seen" is at most this old

# A persisted named cursor: (position, skipped, last seen connected: unix time).
SavedCursor = tuple[int, int, float]


class TooManyConsumers(Exception):
    """A new named cursor would exceed ``max_named``."""


class Delivery:
    """One connection's progress, in records and wire bytes, for the rewind rule."""

    __slots__ = ("_marks", "confirmed", "position", "source", "start", "window_bytes", "wire_bytes")

    def __init__(self, start: int, window_bytes: int | None) -> None:
        self.start = start
        self.position = start  # offset after the last batch handed to the kernel
        self.window_bytes = window_bytes  # a fixed bound on the bytes in flight, if any
        self.wire_bytes = 0
        self.confirmed = 0  # wire bytes the consumer has surely processed
        self.source = "window" if window_bytes is not None else "none"  # what set ``confirmed``
        # (wire bytes handed over after the batch, offset after the batch); the
        # leftmost mark is the best resume point known so far (its wire bytes are
        # within ``confirmed``). A new mark closer than a granule (~1/32 of the bytes
        # not yet confirmed) to the one before replaces the newest one instead (a true
        # but later point: the resume point can only move back, never past a record
        # in flight), so a connection holds a few dozen marks whatever its batch sizes.
        self._marks: deque[tuple[int, int]] = deque([(0, start)])

    def sent(self, end_offset: int, wire_bytes: int) -> None:
        """A batch (or a heartbeat: ``end_offset`` unchanged) was handed to the kernel."""
        self.wire_bytes += wire_bytes
        if self.window_bytes is not None and self.wire_bytes - self.window_bytes > self.confirmed:
            self.confirmed = self.wire_bytes - self.window_bytes
            self.source = "window"
        if end_offset != self.position:
            self.position = end_offset
            marks = self._marks
            granule = max(1, (self.wire_bytes - self.confirmed) // MARKS_PER_WINDOW)
            if len(marks) > 1 and self.wire_bytes - marks[-2][0] < granule:
                marks[-1] = (self.wire_bytes, end_offset)
            else:
                marks.append((self.wire_bytes, end_offset))
                if len(marks) > MAX_MARKS:
                    kept = list(marks)
                    self._marks = deque([kept[0], *kept[2:-1:2], kept[-1]])
        self._advance()

    def observe(self, unprocessed_bytes: int, source: str) -> None:
        """At most ``unprocessed_bytes`` of the bytes handed over so far are not yet
        processed by the consumer (sampled by the I/O layer, named by ``source``)."""
        if self.wire_bytes - unprocessed_bytes > self.confirmed:
            self.confirmed = self.wire_bytes - unprocessed_bytes
            self.source = source
            self._advance()

    def _advance(self) -> None:
        marks, confirmed = self._marks, self.confirmed
        while len(marks) > 1 and marks[1][0] <= confirmed:
            marks.popleft()

    def resume_offset(self) -> int:
        """Where a successor connection must start so that nothing is lost."""
        return self._marks[0][1]

    def replay(self) -> tuple[int, int]:
        """(records, wire bytes) a successor connection would be sent again."""
        wire, offset = self._marks[0]
        return self.position - offset, self.wire_bytes - wire


@dataclass
class Cursor:
    name: str
    named: bool
    position: int  # resume point while no connection holds the cursor
    generation: int = 0
    delivery: Delivery | None = None
    skipped: int = 0  # records lost to retention (never sent to this consumer)
    connections: int = 0
    seen_at: float = 0.0  # last seen connected (unix time; for the ttl)
    delivered: int = 0  # furthest offset ever handed to this consumer's socket
    sent_from: int = 0  # ... and where that sending began (a new cursor's first start)
    last_replay: tuple[int, int] = (0, 0)  # (records, wire bytes) its last connection left unconfirmed
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
    created: bool = False  # a new cursor (first connection of this name, or anonymous)
    replayed: int = 0  # records from ``start`` on that were sent before (the rewind)
    replayed_bytes: int = 0  # the wire bytes the previous connection left unconfirmed
    skipped: int = 0  # records trimmed by retention before this connection could be sent them
    rewind_trimmed: int = 0  # records of the rewind that retention trimmed (sent before: not skips)


class CursorBook:
    """Every cursor of one stream. ``max_named`` caps the named cursors; ``ttl``
    (seconds, 0 = never) is how long a disconnected named cursor is kept."""

    def __init__(self, *, max_named: int = 10_000, ttl: float = 0.0) -> None:
        self.max_named = max_named
        self.ttl = ttl
        self._cursors: dict[str, Cursor] = {}
        self._anonymous = 0
        self._named = 0
        self._generations = 0  # the last lease generation handed out, book-wide
        # Disconnected named cursors, least recently seen first (detach order): the
        # sweep looks at the front only, so it costs O(forgotten), never O(cursors).
        self._idle: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cursors)

    @property
    def named(self) -> int:
        return self._named

    def cursors(self) -> list[Cursor]:
        return list(self._cursors.values())

    def get(self, name: str) -> Cursor | None:
        return self._cursors.get(name)

    def persistent(self, now: float) -> dict[str, SavedCursor]:
        """Named cursors to persist. A connected cursor is saved at its rewind point, so a
        proxy crash keeps the no-loss rule (see the module doc), and as seen at most
        ``SEEN_REFRESH_SECONDS`` (or ttl/8) ago, so a crash does not age it either."""
        refresh = min(SEEN_REFRESH_SECONDS, self.ttl / 8) if self.ttl > 0 else SEEN_REFRESH_SECONDS
        saved = {}
        for c in self._cursors.values():
            if not c.named or not c.persisted:
                continue
            if c.delivery is not None:
                if now - c.seen_at >= refresh:
                    c.seen_at = now
                saved[c.name] = (c.delivery.resume_offset(), c.skipped, c.seen_at)
            else:
                saved[c.name] = (c.position, c.skipped, c.seen_at)
        return saved

    def restore(self, saved: dict[str, SavedCursor]) -> None:
        """Named cursors persisted by an earlier run (before any connection)."""
        for name, (position, skipped, seen_at) in sorted(saved.items(), key=lambda item: item[1][2]):
            if name in self._cursors:
                continue
            self._add_idle(Cursor(name, named=True, position=position, skipped=skipped, seen_at=seen_at))

    def adopt(self, name: str, position: int, skipped: int, seen_at: float) -> bool:
        """A named cursor's position as another proxy (a cluster node) left it; ignored
        while a connection here holds the cursor. True when taken. ``seen_at``: when that
        node last saw its consumer (the ttl counts from there)."""
        cursor = self._cursors.get(name)
        if cursor is None:
            self._add_idle(Cursor(name, named=True, position=position, skipped=skipped, seen_at=seen_at))
            return True
        if cursor.connected or not cursor.named:
            return False
        cursor.position, cursor.skipped, cursor.seen_at = position, skipped, seen_at
        if position > cursor.delivered:
            cursor.sent_from = cursor.delivered = position
        self._idle.move_to_end(name)  # newest last
        return True

    def _add_idle(self, cursor: Cursor) -> None:
        """A new disconnected named cursor (restored, adopted, created by an operator)."""
        cursor.sent_from = cursor.delivered = cursor.position  # what happened before is unknown
        self._cursors[cursor.name] = cursor
        self._named += 1
        self._idle[cursor.name] = None

    def attach(
        self,
        name: str | None,
        *,
        reset: Reset | None,
        oldest: int,
        tail: int,
        window_bytes: int | None,
        now: float = 0.0,
        start_at: int | None = None,
        capped: bool = True,
    ) -> Lease:
        """A connection starts. ``name`` None means an anonymous consumer. ``start_at``
        (a replay by time, an exact resume) overrides the cursor and ``reset``. Raises
        TooManyConsumers (changing nothing) for a new name beyond ``max_named`` (unless
        ``capped`` is False: a group's share, checked by the GroupBook)."""
        cursor = self._cursors.get(name) if name is not None else None
        took_over = cursor is not None and cursor.connected
        created = cursor is None
        if cursor is None:
            if name is not None and capped and self._named >= self.max_named:
                raise TooManyConsumers(f"{self._named} named consumers already (max_named_consumers)")
            # A first connection starts at the live tail, as Live Stream's own first
            # connection does, unless it asks for the oldest retained record.
            start = oldest if reset == "smallest" else tail
            if name is None:
                self._anonymous += 1
            else:
                self._named += 1
            key = name if name is not None else f"~anonymous-{self._anonymous}"
            cursor = self._cursors[key] = Cursor(key, named=name is not None, position=start)
        else:
            self._release(cursor)
            self._idle.pop(cursor.name, None)
            if reset == "smallest":
                start = oldest
            elif reset == "largest":
                start = tail
            else:
                start = min(cursor.position, tail)
        if start_at is not None:
            start = min(start_at, tail)
        if created:
            cursor.sent_from = cursor.delivered = start  # nothing sent: all asked for and trimmed is a skip
        skipped = trimmed = 0
        if start < oldest:
            skipped = _unsent(cursor, start, oldest)
            trimmed = oldest - start - skipped
            cursor.skipped += skipped
            start = oldest
        replayed = max(0, min(cursor.delivered, tail) - max(start, cursor.sent_from))
        self._generations += 1
        cursor.generation = self._generations
        cursor.connections += 1
        cursor.position = start
        cursor.seen_at = now
        cursor.delivery = Delivery(start, window_bytes)
        return Lease(
            cursor.name,
            cursor.generation,
            start,
            took_over,
            created=created,
            replayed=replayed,
            replayed_bytes=cursor.last_replay[1] if replayed else 0,
            skipped=skipped,
            rewind_trimmed=trimmed,
        )

    def remove(self, name: str) -> None:
        """Forget a cursor that no connection holds (a consumer group's old shares)."""
        cursor = self._cursors.get(name)
        if cursor is not None and not cursor.connected:
            self._delete(cursor)

    def is_current(self, lease: Lease) -> bool:
        cursor = self._cursors.get(lease.name)
        return cursor is not None and cursor.generation == lease.generation and cursor.connected

    def sent(self, lease: Lease, end_offset: int, wire_bytes: int) -> bool:
        """Record progress; False when the lease is stale (the caller should stop)."""
        if not self.is_current(lease):
            return False
        cursor = self._cursors[lease.name]
        delivery = cursor.delivery
        assert delivery is not None
        delivery.sent(end_offset, wire_bytes)
        if delivery.start > cursor.delivered or delivery.start < cursor.sent_from <= end_offset:
            cursor.sent_from = delivery.start  # a jump ahead starts a new range; a replay extends it
        if end_offset > cursor.delivered:
            cursor.delivered = end_offset
        return True

    def observe(self, lease: Lease, unprocessed_bytes: int, source: str) -> None:
        """An in-flight sample for the rewind rule (see ``Delivery.observe``)."""
        if self.is_current(lease):
            delivery = self._cursors[lease.name].delivery
            assert delivery is not None
            delivery.observe(unprocessed_bytes, source)

    def skipped(self, lease: Lease, offset: int, resumed_at: int) -> tuple[int, int]:
        """The connection found ``offset``..``resumed_at`` trimmed by retention and jumped.
        Returns (skipped: never sent to this consumer, counted; trimmed rewind: sent before)."""
        if not self.is_current(lease):
            return 0, 0
        cursor = self._cursors[lease.name]
        skipped = _unsent(cursor, offset, resumed_at)
        cursor.skipped += skipped
        return skipped, resumed_at - offset - skipped

    def detach(self, lease: Lease, now: float = 0.0) -> None:
        """The connection ended (any way). Stale leases change nothing."""
        if not self.is_current(lease):
            return
        cursor = self._cursors[lease.name]
        self._release(cursor)
        if not cursor.named:
            del self._cursors[lease.name]
            return
        cursor.seen_at = now
        self._idle[cursor.name] = None  # newest last

    def sweep(self, now: float, limit: int) -> list[Cursor]:
        """Forget up to ``limit`` named cursors not connected for ``ttl`` seconds (oldest
        first) and return them. A clock that stepped back only delays the ones behind."""
        if self.ttl <= 0:
            return []
        forgotten: list[Cursor] = []
        cutoff = now - self.ttl
        while self._idle and len(forgotten) < limit:
            name = next(iter(self._idle))
            cursor = self._cursors[name]
            if cursor.seen_at > cutoff:
                break
            self._delete(cursor)
            forgotten.append(cursor)
        return forgotten

    def move(self, name: str, position: int, now: float = 0.0) -> Cursor:
        """An operator sets named cursor ``name`` to ``position`` (creating it if needed,
        beyond ``max_named`` too: an operator's decision). A connection holding it loses
        its lease: the caller ends that connection, and the consumer resumes at
        ``position`` when it reconnects."""
        cursor = self._cursors.get(name)
        if cursor is None:
            cursor = Cursor(name, named=True, position=position, seen_at=now)
            self._add_idle(cursor)
            return cursor
        if not cursor.named:
            raise ValueError(f"{name!r} is an anonymous consumer's cursor")
        if cursor.delivery is not None:
            cursor.delivery = None
            self._generations += 1
            cursor.generation = self._generations  # the connection's lease is stale now
            cursor.seen_at = now
            self._idle[name] = None  # newest last
        cursor.position = position
        return cursor

    def forget(self, name: str) -> Cursor | None:
        """An operator deletes named cursor ``name``; a connection holding it loses its lease."""
        cursor = self._cursors.get(name)
        if cursor is None or not cursor.named:
            return None
        self._delete(cursor)
        return cursor

    def _delete(self, cursor: Cursor) -> None:
        del self._cursors[cursor.name]
        if cursor.named:
            self._named -= 1
            self._idle.pop(cursor.name, None)

    @staticmethod
    def _release(cursor: Cursor) -> None:
        if cursor.delivery is not None:
            cursor.position = cursor.delivery.resume_offset()
            cursor.last_replay = cursor.delivery.replay()
            cursor.delivery = None


def _unsent(cursor: Cursor, start: int, end: int) -> int:
    """Records in ``start``..``end`` never handed to ``cursor``'s consumer."""
    sent = max(0, min(end, cursor.delivered) - max(start, cursor.sent_from))
    return max(0, end - start - sent)
