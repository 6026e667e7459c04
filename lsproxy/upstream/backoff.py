"""ReconnectPolicy: when may the next upstream attempt for a stream start?

Theory of operation
-------------------
Live Stream cannot tell a temporary loss from a permanent one: a client that
reconnects at once is still counted against the stream and gets 409/503, and
the churn makes it worse. Adobe's rule is to wait about 60 seconds after a
lost connection before connecting again. This policy is the single authority
for that wait; the supervisor does ``sleep_until(policy.next_attempt_at())``
before every attempt and reports what happened:

    on_attempt(now) -> [on_connected(now)] -> on_ended(now, failure)

``on_ended`` sets ``next_attempt_at = now + delay + jitter`` where ``now`` is
the moment the connection was lost or refused, and

* ``delay = min(ceiling, base * 2 ** (consecutive_failures - 1))``: the first
  failure waits ``base``, each further consecutive failure doubles it;
* a connection that streamed (2xx) for at least ``healthy_after`` seconds
  resets the count first, so its loss waits exactly ``base``; a short-lived
  connection does not reset anything (connect/drop churn keeps growing);
* ``Failure.CONFIG`` (a status only a human can fix) waits ``ceiling``;
* ``jitter`` is ``rng.uniform(0, jitter * delay)``, only ever added: the
  wait is never below the floor, so attempts are always at least ``base``
  seconds after the previous loss.

The 60-second rule itself is the *floor*: ``reconnect_delay`` after the last
loss, raised by ``hold_until`` for losses the policy did not see. The growth
above it (doubling, the ceiling after a configuration error) is caution, which
an operator may cut short: ``expedite(now)`` moves the next attempt to ``now``
if, and only if, the floor allows an attempt at ``now`` (the admin API's
reconnect). Nothing moves an attempt before the floor.

Time is a float passed in by the caller (``trio.current_time()`` in the
app, anything in tests); the policy reads no clock and does no I/O.
"""

from __future__ import annotations

import enum
import math
import random

__all__ = ["Failure", "ReconnectPolicy"]

_MAX_DOUBLINGS = 64  # 2**64 * base is past any ceiling; avoids float overflow


class Failure(enum.Enum):
    """How an attempt or connection ended."""

    LOST = "lost"  # ended after a 2xx (EOF, network error, idle timeout, framing error)
    REFUSED = "refused"  # transient: connect error/timeout, 401, 409, 429, 5xx, unexpected
    CONFIG = "config"  # 400, 404, 405, 406, 505, bad redirect: needs a human


class ReconnectPolicy:
    """Per-stream reconnect timing; see the module docstring."""

    def __init__(
        self,
        *,
        base: float,
        ceiling: float,
        healthy_after: float,
        jitter: float = 0.1,
        rng: random.Random,
    ) -> None:
        if not base > 0:
            raise ValueError(f"base must be > 0, got {base!r}")
        if not ceiling >= base:
            raise ValueError(f"ceiling must be >= base, got {ceiling!r} < {base!r}")
        if not healthy_after >= 0:
            raise ValueError(f"healthy_after must be >= 0, got {healthy_after!r}")
        if not 0 <= jitter < math.inf:
            raise ValueError(f"jitter must be a finite fraction >= 0, got {jitter!r}")
        self._base = float(base)
        self._ceiling = float(ceiling)
        self._healthy_after = float(healthy_after)
        self._jitter = float(jitter)
        self._rng = rng
        self._next_at = -math.inf
        self._floor = -math.inf  # the rule itself: no attempt before this, whatever asks
        self._failures = 0
        self._last_delay = 0.0
        self._attempt_at: float | None = None  # set while an attempt is in progress
        self._connected_at: float | None = None

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def last_delay(self) -> float:
        """Delay chosen by the last ``on_ended``, without jitter (0.0 before any)."""
        return self._last_delay

    @property
    def in_attempt(self) -> bool:
        """True between ``on_attempt`` and ``on_ended``."""
        return self._attempt_at is not None

    def next_attempt_at(self) -> float:
        """Earliest allowed start of the next attempt; ``-inf`` before any failure."""
        return self._next_at

    def hold_until(self, at: float) -> None:
        """No attempt before ``at``: a loss the policy did not see (a connection closed
        for a config reload, or lost before a proxy restart) still counts."""
        self._next_at = max(self._next_at, at)
        self._floor = max(self._floor, at)

    def earliest_allowed(self) -> float:
        """The 60-second rule's floor: ``base`` after the last loss, or a ``hold_until``."""
        return self._floor

    def expedite(self, now: float) -> bool:
        """An operator asks for an attempt at ``now``: granted (True) unless an attempt is
        in progress or the floor forbids one; the back-off growth is kept for later failures."""
        if self._attempt_at is not None or now < self._floor:
            return False
        self._next_at = min(self._next_at, now)
        return True

    def on_attempt(self, now: float) -> None:
        """An attempt starts. Starting early or twice is a caller bug."""
        if now < self._next_at:
            raise ValueError(f"attempt at {now:.3f} is before the allowed time {self._next_at:.3f}")
        if self._attempt_at is not None:
            raise RuntimeError("on_attempt() while an attempt is already in progress")
        self._attempt_at = now
        self._connected_at = None

    def on_connected(self, now: float) -> None:
        """The upstream answered 2xx: the healthy clock starts now."""
        if self._attempt_at is None:
            raise RuntimeError("on_connected() without on_attempt()")
        self._connected_at = now

    def on_ended(self, now: float, failure: Failure) -> float:
        """The attempt or connection is over at ``now``; returns the new ``next_attempt_at``."""
        if self._attempt_at is None:
            raise RuntimeError("on_ended() without on_attempt()")
        connected_at = self._connected_at
        self._attempt_at = self._connected_at = None
        if connected_at is not None and now - connected_at >= self._healthy_after:
            self._failures = 0  # a healthy connection: its loss starts the count afresh
        self._failures += 1
        if failure is Failure.CONFIG:
            delay = self._ceiling
        else:
            doublings = min(self._failures - 1, _MAX_DOUBLINGS)
            delay = min(self._ceiling, self._base * 2.0**doublings)
        self._last_delay = delay
        extra = self._rng.uniform(0.0, self._jitter * delay) if self._jitter else 0.0
        self._next_at = now + delay + max(0.0, extra)
        self._floor = max(self._floor, now + self._base)
        return self._next_at
