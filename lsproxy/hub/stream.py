"""StreamHub: one stream's meeting point between its upstream and its consumers.

The upstream side appends to ``log`` and keeps ``upstream`` (a status snapshot)
current; the consumer side subscribes, reads the log from its lease's start and
reports progress. Neither side ever awaits the other. Takeover of a named
cursor cancels the previous holder's connection through the cancel scope it
registered.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from lsproxy.hub.cursors import CursorBook, Lease, Reset
from lsproxy.hub.log import MemoryLog

log = logging.getLogger("lsproxy.hub")


@dataclass
class UpstreamStatus:
    """What the upstream side publishes about itself; read by /status and /readyz."""

    state: str = "connecting"  # connecting | streaming | backoff | failed | stopped
    attempts: int = 0
    connects: int = 0
    connected_since: float | None = None  # wall clock
    next_attempt_at: float | None = None  # wall clock
    last_error: dict[str, Any] | None = None
    records: int = 0
    last_record_at: float | None = None  # wall clock
    extra: dict[str, Any] = field(default_factory=dict)


class Subscription:
    """One consumer connection's hold on a cursor."""

    def __init__(self, hub: StreamHub, lease: Lease) -> None:
        self.hub = hub
        self.lease = lease

    @property
    def start(self) -> int:
        return self.lease.start

    @property
    def name(self) -> str:
        return self.lease.name

    def sent(self, end_offset: int, wire_bytes: int) -> bool:
        """Book-keep a batch handed to the kernel; False once taken over."""
        return self.hub.book.sent(self.lease, end_offset, wire_bytes)

    def skipped(self, records: int) -> None:
        self.hub.book.skipped(self.lease, records)
        log.warning(
            "stream %s: consumer %s fell out of retention, skipped %d records",
            self.hub.name,
            self.lease.name,
            records,
        )


class StreamHub:
    def __init__(self, name: str, retention_bytes: int) -> None:
        self.name = name
        self.log = MemoryLog(retention_bytes)
        self.book = CursorBook()
        self.upstream = UpstreamStatus()
        self._scopes: dict[str, tuple[int, trio.CancelScope]] = {}

    def subscribe(
        self,
        consumer: str | None,
        *,
        reset: Reset | None,
        window_bytes: int,
        cancel_scope: trio.CancelScope,
    ) -> Subscription:
        lease = self.book.attach(
            consumer,
            reset=reset,
            oldest=self.log.oldest,
            tail=self.log.next_offset,
            window_bytes=window_bytes,
        )
        previous = self._scopes.get(lease.name)
        if previous is not None:
            # The old connection often has not noticed yet that its consumer died.
            previous[1].cancel()
            log.info("stream %s: consumer %s reconnected, took over", self.name, lease.name)
        self._scopes[lease.name] = (lease.generation, cancel_scope)
        return Subscription(self, lease)

    def unsubscribe(self, sub: Subscription) -> None:
        self.book.detach(sub.lease)
        held = self._scopes.get(sub.lease.name)
        if held is not None and held[0] == sub.lease.generation:
            del self._scopes[sub.lease.name]

    def append(self, records: list[bytes]) -> None:
        """The upstream side delivers framed records (never blocks)."""
        now = time.time()
        self.log.append(records, now)
        self.upstream.records += len(records)
        self.upstream.last_record_at = now

    def close(self) -> None:
        """The stream ends (shutdown or removal): consumers finish their responses."""
        self.log.close()

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-able status of this stream. ``now`` is wall-clock time."""
        up = self.upstream
        tail = self.log.next_offset
        consumers = [
            {
                "id": c.name if c.named else None,
                "connected": c.connected,
                "cursor": c.current,
                "lag": tail - c.current,
                "skipped": c.skipped,
                "connections": c.connections,
            }
            for c in self.book.cursors()
        ]
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
            "log": {
                "oldest": self.log.oldest,
                "next": tail,
                "retained_bytes": self.log.retained_bytes,
                "trimmed_records": self.log.trimmed_records,
            },
            "consumers": consumers,
            **up.extra,
        }
