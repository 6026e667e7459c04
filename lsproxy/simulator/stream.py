"""Live state of one simulated stream: generator, slots, shared position, stats.

Theory of operation:
- Every ``batch_interval`` the simulator's one ticker task calls ``tick``,
  which appends the hits owed at ``rate`` hits/s to the ``HitBuffer`` (on
  ``trio.current_time()``, so MockClock works), whether or not anyone is
  connected, and wakes the connection pumps.
- Slots model the load balancer of the seed article: an open connection holds
  a slot; when it closes (either side) the slot stays counted for ``linger``
  seconds. A connect when open + lingering >= its ``maxConnections`` is
  refused, alternately 409 and 503.
- Position: Live Stream keeps one per stream. ``position`` is the highest seq
  handed to any connection. The first connection of a stream starts at the
  tail, at the oldest retained hit for ``reset=smallest``, or, on a reconnect
  within ``resume_window`` of the last disconnect, at ``position - backfill``.
  A connection joining open ones starts at ``position`` (``reset`` ignored).
- With several open connections each takes the hits whose visitor key modulo
  the number of open connections equals its index among them: all hits of a
  visitor go to one connection, and every hit to exactly one connection.
  When a connection joins or leaves, the split changes: all connections go
  back to the lowest cursor among them (``_rebalance``), so no hit is lost to
  the change; the re-read ones are the duplicates Live Stream warns about.
All bookkeeping is synchronous; only ``wait_changed`` awaits.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import count

import trio

from lsproxy.simulator.buffer import HitBuffer
from lsproxy.simulator.hits import HitFactory
from lsproxy.simulator.protocol import Refusal, StreamParams, refusal
from lsproxy.simulator.settings import SimSettings, SimStream

READ_LIMIT = 2000  # hits per send at most
HISTORY = 10_000  # attempt / disconnect times kept for stats
CACHE_SECONDS = 2.0

_conn_ids = count(1)


@dataclass(eq=False)
class Conn:
    """One accepted stream connection."""

    max_connections: int
    cursor: int
    opened: float
    id: int = field(default_factory=lambda: next(_conn_ids))
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    corrupt: bool = False
    closed: bool = False


class StreamState:
    def __init__(self, spec: SimStream, settings: SimSettings) -> None:
        self.endpoint = spec.endpoint
        self.settings = settings
        factory = HitFactory(spec.endpoint, spec.report_suite, settings.seed, settings.run_id or 0)
        self.buffer = HitBuffer(factory, settings.retain)
        self.set_rate(spec.rate)
        self.open: list[Conn] = []
        self.lingering: list[float] = []  # expiry times
        self.position = 0
        self.last_disconnect: float | None = None
        self.stalled_until = float("-inf")
        self.fail_status = 0
        self.fail_count = 0
        self._owed = 0.0  # fractional hits carried to the next tick
        self._changed = trio.Event()
        self.reset_stats()

    def reset_stats(self) -> None:
        self.attempts = 0
        self.accepted = 0
        self.redirects = 0
        self.sent = 0
        self.refusals = 0  # slot refusals; odd ones answer 503
        self.statuses: Counter[int] = Counter()
        self.attempt_times: deque[float] = deque(maxlen=HISTORY)
        self.disconnect_times: deque[float] = deque(maxlen=HISTORY)
        self.max_connections_seen: set[int] = set()
        self.last_headers: dict[str, object] = {}
        self.queries: deque[dict[str, str]] = deque(maxlen=100)  # query parameters of recent attempts

    # --- generation ---------------------------------------------------------
    def tick(self, elapsed: float, epoch: int) -> None:
        """Produce the hits owed for ``elapsed`` seconds at the current rate."""
        self._owed = self._owed + elapsed * self.rate if self.rate > 0 else 0.0
        n = int(self._owed)
        if n > 0:
            self._owed -= n
            self.buffer.append(n, epoch)
            self.poke()

    def poke(self) -> None:
        """Wake every pump waiting for new hits or a control change."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    # --- connections --------------------------------------------------------
    def lingering_count(self, now: float) -> int:
        self.lingering = [t for t in self.lingering if t > now]
        return len(self.lingering)

    def admit(self, params: StreamParams, now: float) -> Conn | Refusal:
        """Slot and state checks for a request that passed the protocol checks."""
        self.max_connections_seen.add(params.max_connections)
        if self.fail_count > 0:
            self.fail_count -= 1
            return refusal(self.fail_status, "failure injected by the simulator")
        if self.rate <= 0:
            return refusal(503, "no hits received from the report suite")
        if self.open and self.open[0].max_connections != params.max_connections:
            return refusal(
                409,
                f"maxConnections mismatch: open connections use "
                f"maxConnections={self.open[0].max_connections}, "
                f"this one {params.max_connections}",
            )
        if len(self.open) + self.lingering_count(now) >= params.max_connections:
            self.refusals += 1
            if self.refusals % 2 == 0:
                return refusal(503, "service temporarily unavailable (connection churn)")
            return refusal(
                409,
                f"too many connections: {len(self.open)} open, "
                f"{len(self.lingering)} recently closed, "
                f"maxConnections={params.max_connections}",
            )
        conn = Conn(params.max_connections, self._start_position(params, now), now)
        if self.open:
            conn.cursor = self._rebalance(conn.cursor)
        self.open.append(conn)
        self.accepted += 1
        self.poke()
        return conn

    def _start_position(self, params: StreamParams, now: float) -> int:
        buf = self.buffer
        if self.open:
            start = self.position
        elif params.reset == "smallest":
            start = buf.oldest
        elif (
            params.reset == "largest"
            or self.last_disconnect is None
            or now - self.last_disconnect > self.settings.resume_window
        ):
            start = buf.newest
        else:
            start = self.position - self.settings.backfill
        start = min(max(start, buf.oldest), buf.newest)
        self.position = max(self.position, start) if self.open else start
        return start

    def release(self, conn: Conn, now: float) -> None:
        """The connection is gone (either side): its slot lingers. Idempotent."""
        if conn.closed:
            return
        conn.closed = True
        self.open.remove(conn)
        if self.open:
            self._rebalance(conn.cursor)
        self.lingering.append(now + self.settings.linger)
        self.last_disconnect = now
        self.disconnect_times.append(now)
        self.poke()

    def _rebalance(self, cursor: int) -> int:
        """The split of hits among connections is about to change: every open connection
        goes back to the lowest cursor, so each hit not yet read by its owner is read
        again under the new split (duplicates, as Live Stream has when connections
        come and go; never a lost hit). Returns that cursor."""
        floor = min([cursor, *(c.cursor for c in self.open)])
        for c in self.open:
            c.cursor = floor
        return floor

    def collect(self, conn: Conn) -> tuple[list[bytes], bool]:
        """This connection's share of the hits after its cursor, and whether the
        cursor moved (False: nothing new, wait)."""
        lines, keys, nxt = self.buffer.read(conn.cursor, READ_LIMIT)
        moved = nxt != conn.cursor
        conn.cursor = nxt
        self.position = max(self.position, nxt)
        n = len(self.open)
        if n > 1 and conn in self.open:
            idx = self.open.index(conn)
            lines = [line for line, key in zip(lines, keys, strict=True) if key % n == idx]
        return lines, moved

    # --- controls -----------------------------------------------------------
    def drop(self, now: float) -> int:
        conns = list(self.open)
        for conn in conns:
            self.release(conn, now)
            conn.cancel_scope.cancel()
        return len(conns)

    def set_rate(self, rate: float) -> None:
        if not rate >= 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate
        # Rendered hits kept: about CACHE_SECONDS of traffic, so connections reading near
        # the tail share one rendering; older positions are rendered again on demand.
        self.buffer.cache_hits = min(max(int(rate * CACHE_SECONDS), 256), 20_000)

    def stall(self, seconds: float, now: float) -> None:
        self.stalled_until = now + seconds
        self.poke()

    def fail_next(self, status: int, count: int) -> None:
        self.fail_status, self.fail_count = status, count

    def corrupt(self) -> int:
        for conn in self.open:
            conn.corrupt = True
        self.poke()
        return len(self.open)

    def stats(self, now: float | None) -> dict[str, object]:
        lingering = self.lingering_count(now) if now is not None else len(self.lingering)
        return {
            "attempts": self.attempts,
            "accepted": self.accepted,
            "open": len(self.open),
            "lingering": lingering,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "attempt_times": list(self.attempt_times),
            "disconnect_times": list(self.disconnect_times),
            "produced": self.buffer.newest,
            "oldest": self.buffer.oldest,
            "position": self.position,
            "sent": self.sent,
            "rate": self.rate,
            "max_connections_seen": sorted(self.max_connections_seen),
            "redirects": self.redirects,
            "last_headers": dict(self.last_headers),
            "queries": list(self.queries),
        }
