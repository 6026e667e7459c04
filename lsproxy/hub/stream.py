"""StreamHub: one stream's meeting point between its upstream and its consumers.

The upstream side appends to ``log`` and keeps ``upstream`` (a status snapshot)
current; the consumer side subscribes, reads the log from its lease's start and
reports progress. Neither side ever awaits the other. Takeover of a named
cursor cancels the previous holder's connection through the cancel scope it
registered. An operator's cursor move (``move_cursor``, ``forget_cursor``)
instead asks the holding connection to end its response cleanly
(``Subscription.end``): its consumer sees a normal end of stream and resumes at
the new position when it reconnects. Every connect is logged with where it
resumes and how much it is sent again; every skip is logged and counted the
same way (``cursors.py``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from lsproxy.hub.block_cache import BlockCache
from lsproxy.hub.cursors import Cursor, CursorBook, Lease, Reset
from lsproxy.hub.dedup import DedupWindow
from lsproxy.hub.groups import GroupBook, is_share
from lsproxy.hub.log import StreamLog
from lsproxy.hub.rates import RateRing
from lsproxy.hub.resume_points import ResumePoints

log = logging.getLogger("lsproxy.hub")


RECENT_ERRORS = 10  # per stream in /status (the status page's "last errors")


@dataclass
class UpstreamStatus:
    """What the upstream side publishes about itself; read by /status and /readyz."""

    state: str = "connecting"  # connecting | streaming | backoff | failed | stopped | standby (cluster)
    attempts: int = 0
    connects: int = 0
    connected_since: float | None = None  # wall clock
    next_attempt_at: float | None = None  # wall clock
    last_error: dict[str, Any] | None = None
    records: int = 0
    last_record_at: float | None = None  # wall clock
    bytes_received: int = 0  # body bytes as they came off the wire (gzip)
    outcomes: dict[str, int] = field(default_factory=dict)  # attempts by how they ended (attempt_kind)
    recent_errors: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))


class Subscription:
    """One consumer connection's hold on a cursor (a group member's: its share's)."""

    def __init__(
        self,
        hub: StreamHub,
        lease: Lease,
        *,
        share: int = 0,
        shares: int = 1,
        resumed: str | None = None,
        resume_key: bytes | None = None,
    ) -> None:
        self.hub = hub
        self.lease = lease
        self._position = lease.start  # for the hub's delivered-records count
        self.share = share
        self.shares = shares
        self.resumed = resumed  # "linger": started at its API key's resume point
        self.resume_key = resume_key
        self.ending = False  # an operator moved or forgot the cursor: end the response cleanly
        self.wait_scope: trio.CancelScope | None = None  # the pump's wait for records, if waiting

    def end(self) -> None:
        """Ask the connection to end its response cleanly, waking it if it waits."""
        self.ending = True
        if self.wait_scope is not None:
            self.wait_scope.cancel()

    @property
    def start(self) -> int:
        return self.lease.start

    @property
    def name(self) -> str:
        return self.lease.name

    def sent(self, end_offset: int, wire_bytes: int) -> bool:
        """Book-keep a batch handed to the kernel; False once taken over."""
        hub = self.hub
        hub.delivered_records += end_offset - self._position
        hub.delivered_bytes += wire_bytes
        self._position = end_offset
        return hub.book.sent(self.lease, end_offset, wire_bytes)

    def observe(self, unprocessed_bytes: int, source: str) -> None:
        """An in-flight sample of this connection's socket (see ``Delivery.observe``)."""
        self.hub.book.observe(self.lease, unprocessed_bytes, source)

    def skipped(self, offset: int, resumed_at: int) -> None:
        """The records ``offset``..``resumed_at`` were trimmed before they could be sent."""
        hub = self.hub
        skipped, trimmed = hub.book.skipped(self.lease, offset, resumed_at)
        hub.skipped_records += skipped
        self._position += resumed_at - offset
        hub.log_skip(self.lease.name, skipped, trimmed)


# Worst first: the stream's state is its worst connection's.
_STATE_ORDER = ("failed", "backoff", "connecting", "stopped", "standby", "streaming")


class ClaimUnavailable(Exception):
    """A group share cannot be claimed now (cluster mode: NATS unreachable): HTTP 503."""


class ShareClaimer(Protocol):
    """Group shares claimed cluster-wide (lsproxy/cluster/share_claims.py)."""

    async def claim(self, share: str) -> bool:
        """False: another node's member holds ``share``. Raises ClaimUnavailable when
        nobody can tell (the member must not stream: it might share with another)."""
        ...

    def release(self, share: str) -> None: ...


class StreamHub:
    def __init__(
        self,
        name: str,
        log: StreamLog,
        *,
        connections: int = 1,
        dedup: DedupWindow | None = None,
        book: CursorBook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.log = log
        self.book = book if book is not None else CursorBook()
        self.clock = clock  # wall clock for cursor "last seen" times (consumer_ttl)
        self.dedup = dedup
        self.upstreams = [UpstreamStatus() for _ in range(connections)]
        self.records = 0  # records appended (after de-duplication)
        self.last_record_at: float | None = None
        self.rates = RateRing()  # records appended per second, for the status page's chart
        self.delivered_records = 0  # handed to consumers' sockets, all connections ever
        self.delivered_bytes = 0  # wire bytes (after gzip and chunk framing)
        self.skipped_records = 0  # consumers jumped over these when retention overtook them
        self.info: dict[str, Any] = {}  # static facts for /status (url, credentials source)
        self.token_status: Callable[[], dict[str, Any]] | None = None  # the credential set's, for /status
        #: Why consumers cannot be served yet (cluster mode before JetStream answers), or None.
        self.unavailable: Callable[[StreamHub], str | None] | None = None
        self.share_claims: ShareClaimer | None = None  # cluster mode: group membership cluster-wide
        #: Cluster mode: told of an operator's cursor move (the position) or delete (None),
        #: so every node applies it (lsproxy/cluster/cursor_sync.py).
        self.announce_cursor: Callable[[str, int | None], None] | None = None
        self._scopes: dict[str, tuple[int, trio.CancelScope]] = {}
        self._subscriptions: dict[str, Subscription] = {}  # named cursor -> its connection
        self.groups = GroupBook(self.book)
        self.resume_points = ResumePoints()  # anonymous consumers' by API key; linger 0: off
        self.block_cache = BlockCache()  # renderings shared by consumers (serve/view.py)

    def resize_upstreams(self, connections: int) -> None:
        """A reload changed the number of upstream connections (their loops are restarted)."""
        self.upstreams = [UpstreamStatus() for _ in range(connections)]

    @property
    def upstream(self) -> UpstreamStatus:
        """The first (usually only) upstream connection's status."""
        return self.upstreams[0]

    @property
    def state(self) -> str:
        return min((u.state for u in self.upstreams), key=_STATE_ORDER.index)

    def subscribe(
        self,
        consumer: str | None,
        *,
        reset: Reset | None,
        window_bytes: int | None,
        cancel_scope: trio.CancelScope,
        start_at: int | None = None,
        shares: int = 1,
        resume_key: bytes | None = None,
    ) -> Subscription:
        """A consumer connects. ``shares`` > 1: a consumer group member (GroupRefused when
        it may not join). ``resume_key``: an anonymous consumer's API key digest; with no
        ``reset`` or ``start_at`` it starts at the key's resume point, if one lingers.
        Raises ``TooManyConsumers`` for a new name beyond ``max_named_consumers``."""
        oldest, tail, now = self.log.oldest, self.log.next_offset, self.clock()
        if shares > 1:
            member = self.groups.join(
                consumer,
                shares,
                reset=reset,
                oldest=oldest,
                tail=tail,
                window_bytes=window_bytes,
                now=now,
                start_at=start_at,
            )
            lease = member.lease
            log.info("stream %s: group member %s connected at offset %d%s", self.name, lease.name, lease.start,
                     _describe_start(lease, tail), extra={"stream": self.name, "consumer": lease.name})  # fmt: skip
            self._count_skip(lease)
            self._scopes[lease.name] = (lease.generation, cancel_scope)
            return Subscription(self, lease, share=member.share, shares=shares)
        resumed = None
        if consumer is None and resume_key is not None and reset is None and start_at is None:
            start_at = self.resume_points.take(resume_key, now)
            resumed = "linger" if start_at is not None else None
        if consumer is not None:
            self.groups.check_single(consumer, now)
        lease = self.book.attach(
            consumer, reset=reset, oldest=oldest, tail=tail, window_bytes=window_bytes, now=now, start_at=start_at
        )
        log.info("stream %s: consumer %s connected at offset %d%s", self.name, lease.name, lease.start,
                 _describe_start(lease, tail), extra={"stream": self.name, "consumer": lease.name})  # fmt: skip
        self._count_skip(lease)
        previous = self._scopes.get(lease.name)
        if previous is not None:
            # The old connection often has not noticed yet that its consumer died.
            previous[1].cancel()
            log.info(
                "stream %s: consumer %s reconnected, took over",
                self.name,
                lease.name,
                extra={"stream": self.name, "consumer": lease.name},
            )
        self._scopes[lease.name] = (lease.generation, cancel_scope)
        sub = Subscription(self, lease, resumed=resumed, resume_key=resume_key if consumer is None else None)
        if consumer is not None:
            self._subscriptions[lease.name] = sub
        return sub

    async def offset_since(self, unix_time: float) -> int:
        """since=: the first offset received at or after ``unix_time``. A log that can look
        beyond what it holds in memory (cluster mode: JetStream) is asked to."""
        deep = getattr(self.log, "offset_at_deep", None)
        if deep is not None:
            return int(await deep(unix_time))
        return self.log.offset_at(unix_time)

    async def claim_share(self, sub: Subscription) -> bool:
        """Cluster mode: claim a group member's share cluster-wide; False when a member on
        another node holds it (unsubscribe, and subscribe again for another share).
        Raises ClaimUnavailable when the claim cannot be made now."""
        if self.share_claims is None or sub.shares <= 1:
            return True
        return await self.share_claims.claim(sub.lease.name)

    def end_member(self, share: str) -> None:
        """End the connection of the member holding ``share`` here (its claim was lost)."""
        held = self._scopes.get(share)
        if held is not None:
            held[1].cancel()

    def unsubscribe(self, sub: Subscription) -> None:
        if self.share_claims is not None and sub.shares > 1:
            self.share_claims.release(sub.lease.name)
        cursor = self.book.get(sub.lease.name)
        if sub.resume_key is not None and cursor is not None and cursor.delivery is not None:
            self.resume_points.leave(sub.resume_key, cursor.delivery.resume_offset(), self.clock())
        self.book.detach(sub.lease, self.clock())
        if sub.shares > 1:
            self.groups.left(sub.lease, self.clock())
        held = self._scopes.get(sub.lease.name)
        if held is not None and held[0] == sub.lease.generation:
            del self._scopes[sub.lease.name]
        if self._subscriptions.get(sub.lease.name) is sub:
            del self._subscriptions[sub.lease.name]

    def move_cursor(self, name: str, position: int, *, announce: bool = True) -> bool:
        """An operator sets named cursor ``name`` (created if new) to ``position``,
        clamped to the retained records. True when a connection held it: that
        connection ends its response cleanly, its consumer resumes there. ``announce``:
        tell the other cluster nodes (not when applying one of theirs)."""
        position = min(max(position, self.log.oldest), self.log.next_offset)
        self.book.move(name, position, self.clock())
        if announce and self.announce_cursor is not None:
            self.announce_cursor(name, position)
        return self._end_connection(name)

    def forget_cursor(self, name: str, *, announce: bool = True) -> bool | None:
        """An operator deletes named cursor ``name``: None if there is none, else whether
        a connection held it (that connection ends cleanly)."""
        if self.book.forget(name) is None:
            return None
        if announce and self.announce_cursor is not None:
            self.announce_cursor(name, None)
        return self._end_connection(name)

    def _end_connection(self, name: str) -> bool:
        sub = self._subscriptions.get(name)
        if sub is None:
            return False
        sub.end()
        return True

    def _count_skip(self, lease: Lease) -> None:
        self.skipped_records += lease.skipped
        self.log_skip(lease.name, lease.skipped, lease.rewind_trimmed)

    def log_skip(self, consumer: str, skipped: int, trimmed: int) -> None:
        extra = {"stream": self.name, "consumer": consumer}
        if skipped:
            log.warning(
                "stream %s: consumer %s fell out of retention, skipped %d records",
                self.name,
                consumer,
                skipped,
                extra=extra,
            )
        if trimmed:
            log.info(
                "stream %s: consumer %s: %d records of its replay were trimmed by retention "
                "(they had been sent to it before; not counted as skipped)", self.name, consumer, trimmed,
                extra=extra,
            )  # fmt: skip

    def forget_idle_consumers(self, limit: int) -> list[Cursor]:
        """Forget (and log) up to ``limit`` named cursors not connected for consumer_ttl."""
        forgotten = self.book.sweep(self.clock(), limit)
        if forgotten:
            names = ", ".join(c.name for c in forgotten[:10])
            more = f" and {len(forgotten) - 10} more" if len(forgotten) > 10 else ""
            log.info(
                "stream %s: forgot %d named consumer(s) not connected for %g s (consumer_ttl): %s%s",
                self.name, len(forgotten), self.book.ttl, names, more,
            )  # fmt: skip
        return forgotten

    def append(self, records: list[bytes], connection: int = 0) -> None:
        """An upstream connection delivers framed records (never blocks, never awaits)."""
        if self.log.closed:
            return  # shutting down or removed: a read that completed as its task was cancelled
        now = time.time()
        status = self.upstreams[connection]
        status.records += len(records)
        status.last_record_at = now
        if self.dedup is not None:
            records = self.dedup.filter(records, now, self.log.next_offset)
            if (run := self.dedup.take_warning(now)) is not None:
                log.warning(
                    "stream %s: %d consecutive duplicates dropped: the upstream is replaying or ids repeat",
                    self.name,
                    run,
                )
        if records:
            self.log.append(records, now)
            self.records += len(records)
            self.last_record_at = now
            self.rates.add(now, len(records))

    def close(self) -> None:
        """The stream ends (shutdown or removal): consumers finish their responses."""
        self.log.close()

    def snapshot(
        self, now: float, offset: int = 0, limit: int | None = None, *, prefix: str | None = None
    ) -> dict[str, Any]:
        """JSON-able status of this stream. ``now`` is wall-clock time. Consumers are
        listed most lagging first, ``offset``/``limit`` of them (None: all), with a summary;
        ``prefix``: only the named cursors and groups whose names start so (a non-admin's
        own)."""
        tail = self.log.next_offset
        cursors = [c for c in self.book.cursors() if not is_share(c)]  # shares: under "groups"
        if prefix is not None:
            cursors = [c for c in cursors if c.named and c.name.startswith(prefix)]
        cursors.sort(key=lambda c: c.current)  # most lagging first
        page = cursors[offset:] if limit is None else cursors[offset : offset + limit]
        consumers = [
            {**_consumer_snapshot(c, tail), "lag_seconds": self._lag_seconds(c.current, tail, now)} for c in page
        ]
        summary = {
            "count": len(cursors),
            # against max_named_consumers, group shares included (a non-admin: its own)
            "named": self.book.named if prefix is None else len(cursors),
            "connected": sum(1 for c in cursors if c.connected),
            "max_lag": tail - cursors[0].current if cursors else 0,
            "offset": offset,
            "listed": len(consumers),
        }
        connections = [_connection_snapshot(u, now) for u in self.upstreams]
        errors = [c["last_error"] for c in connections if c["last_error"]]
        waits = [c["next_attempt_in"] for c in connections if c["next_attempt_in"] is not None]
        return {
            "state": self.state,
            "attempts": sum(u.attempts for u in self.upstreams),
            "connects": sum(u.connects for u in self.upstreams),
            "last_error": max(errors, key=lambda e: e["at"]) if errors else None,
            "next_attempt_in": min(waits) if waits else None,
            "records_received": self.records,
            "last_record_at": self.last_record_at,
            "duplicates_dropped": self.dedup.dropped if self.dedup is not None else 0,
            "consecutive_duplicates": self.dedup.consecutive if self.dedup is not None else 0,
            "records_delivered": self.delivered_records,
            "bytes_delivered": self.delivered_bytes,
            "records_skipped": self.skipped_records,
            "upstream_connections": connections,
            "recent_errors": sorted(
                ({**e, "connection": i + 1} for i, u in enumerate(self.upstreams) for e in u.recent_errors),
                key=lambda e: e["at"],
                reverse=True,
            )[:RECENT_ERRORS],
            "log": {
                "oldest": self.log.oldest,
                "next": tail,
                "retained_bytes": self.log.retained_bytes,
                "trimmed_records": self.log.trimmed_records,
            },
            "consumers": consumers,
            "consumer_summary": summary,
            "groups": self.groups.snapshot(tail, prefix),
            **({"storage": status()} if (status := getattr(self.log, "status", None)) else {}),
            **self.info,
            **({"token": self.token_status()} if self.token_status is not None else {}),
        }

    def _lag_seconds(self, position: int, tail: int, now: float) -> float:
        """How long the consumer's next record has waited (0 at the tail)."""
        if position >= tail:
            return 0.0
        received_at = getattr(self.log, "received_at", None)
        arrived = received_at(max(position, self.log.oldest)) if received_at is not None else None
        return round(max(0.0, now - arrived), 3) if arrived is not None else 0.0


def _consumer_snapshot(c: Cursor, tail: int) -> dict[str, Any]:
    replay = None
    if c.delivery is not None:
        records, wire_bytes = c.delivery.replay()
        replay = {"records": records, "wire_bytes": wire_bytes, "bound_by": c.delivery.source}
    return {
        "id": c.name if c.named else None,
        "connected": c.connected,
        "cursor": c.current,
        "lag": tail - c.current,
        "skipped": c.skipped,
        "connections": c.connections,
        "replay": replay,  # what a reconnect now would be sent again (rewind rule)
    }


def _describe_start(lease: Lease, tail: int) -> str:
    """The rest of the connect log line: where the consumer resumes and what it replays."""
    if lease.created:
        return (
            " (new cursor)" if lease.start == tail else f" (new cursor, {tail - lease.start} records behind)"
        )
    replay = ""
    if lease.replayed:
        replay = (
            f", replaying {lease.replayed} records sent before: "
            f"{lease.replayed_bytes} wire bytes its last connection could not confirm as read"
        )
    return f" (resumes its cursor{replay}; {tail - lease.start} records behind the tail)"


def _connection_snapshot(up: UpstreamStatus, now: float) -> dict[str, Any]:
    return {
        "state": up.state,
        "attempts": up.attempts,
        "connects": up.connects,
        "connected_since": up.connected_since,
        "next_attempt_in": (
            max(0.0, round(up.next_attempt_at - now, 3))
            if up.next_attempt_at is not None and up.state in ("backoff", "failed")
            else None
        ),
        "last_error": up.last_error,
        "records_received": up.records,
        "last_record_at": up.last_record_at,
        "bytes_received": up.bytes_received,
        "outcomes": dict(up.outcomes),
    }
