"""RefreshSchedule: when must the access token of one credential set be fetched?

Theory of operation
-------------------
An OAuth access token (Adobe IMS, client-credentials grant) lives
``expires_in`` seconds, about 24 h. Live Stream only looks at it when a
connection is opened, but a reconnect can happen at any moment, so the proxy
keeps a token that is valid *now* at all times: it refreshes well ahead of
expiry, and when a refresh fails it keeps the current token and retries.

The schedule is told what happened and answers when the next fetch is due::

    on_fetch_started(now) -> on_success(now, issued_at=..., expires_in=...)
                          or on_failure(now)
                          or on_abandoned()        # cancelled
    invalidate(now)            # the upstream answered 401 to the current token

and keeps these times (all on the caller's monotonic clock, e.g.
``trio.current_time()``; the schedule reads no clock and does no I/O):

* ``refresh_at = issued_at + refresh_fraction * expires_in`` (80 %): from
  then on the background refresher fetches a new token while the current one
  is still in use.
* ``usable_until = issued_at + expires_in - margin`` with
  ``margin = min(expiry_margin, 10 % of expires_in)``: after that the token
  counts as expired and ``get()`` must fetch before answering. ``issued_at``
  should be the moment the request was *sent*, so clock skew and latency err
  on the early side.
* On failure, retry at ``now + min(retry_cap, retry_base * 2 ** (n - 1))``
  after the n-th consecutive failure (1, 2, 4, ... 60 s); while a token is
  still usable, a retry is never scheduled after ``usable_until`` (one last
  try just before the token runs out). A success resets the count.
* ``invalidate()`` marks the token unusable and makes a fetch due at once.
* A floor over everything: a fetch never starts less than ``min_interval``
  (1 s) after the previous one started, whoever asks (refresher, ``get()``,
  a storm of 401s). ``next_fetch_at()`` and ``fetch_allowed_at()`` include
  it; ``on_fetch_started`` refuses to break it (a caller bug).

Two consumers read the schedule: the background refresher sleeps until
``next_fetch_at()`` (refresh point or back-off retry, whichever applies);
``get()`` fetches only when ``token_usable(now)`` is false, waiting at most
for the floor (``fetch_allowed_at()``), never for the back-off: a caller with
no usable token gets a fresh attempt or a fresh error.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_EXPIRES_IN", "RefreshSchedule"]

DEFAULT_EXPIRES_IN = 86_400.0  # assumed when the token response has no expires_in
_MAX_DOUBLINGS = 64  # 2**64 * base is past any cap; avoids float overflow
_MARGIN_FRACTION = 0.1


class RefreshSchedule:
    """Refresh timing of one token; see the module docstring."""

    def __init__(
        self,
        *,
        refresh_fraction: float = 0.8,
        min_interval: float = 1.0,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        expiry_margin: float = 30.0,
    ) -> None:
        if not 0 < refresh_fraction <= 1 - _MARGIN_FRACTION:
            raise ValueError(f"refresh_fraction must be in (0, 0.9], got {refresh_fraction!r}")
        if not 0 <= min_interval < math.inf:
            raise ValueError(f"min_interval must be finite and >= 0, got {min_interval!r}")
        if not 0 < retry_base <= retry_cap < math.inf:
            raise ValueError(f"need 0 < retry_base <= retry_cap < inf, got {retry_base!r}, {retry_cap!r}")
        if not 0 <= expiry_margin < math.inf:
            raise ValueError(f"expiry_margin must be finite and >= 0, got {expiry_margin!r}")
        self._fraction = float(refresh_fraction)
        self._min_interval = float(min_interval)
        self._retry_base = float(retry_base)
        self._retry_cap = float(retry_cap)
        self._expiry_margin = float(expiry_margin)
        self._last_start = -math.inf
        self._in_fetch = False
        self._failures = 0
        self._issued_at: float | None = None
        self._expires_at: float | None = None
        self._usable_until = -math.inf
        self._invalid = False
        self._invalidated_at: float | None = None
        self._due = -math.inf  # refresh point, retry point, or -inf (at once)

    # --- queries ------------------------------------------------------------
    @property
    def min_interval(self) -> float:
        return self._min_interval

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def has_token(self) -> bool:
        """A fetch has succeeded at least once (the token may be stale or invalidated)."""
        return self._expires_at is not None

    @property
    def invalidated(self) -> bool:
        return self._invalid

    @property
    def invalidated_at(self) -> float | None:
        """When the last ``invalidate()`` happened, None if never."""
        return self._invalidated_at

    @property
    def in_fetch(self) -> bool:
        """True between ``on_fetch_started`` and ``on_success``/``on_failure``."""
        return self._in_fetch

    @property
    def issued_at(self) -> float | None:
        return self._issued_at

    @property
    def expires_at(self) -> float | None:
        """When the current token expires (``issued_at + expires_in``), None before any."""
        return self._expires_at

    @property
    def usable_until(self) -> float:
        """After this the token counts as expired; ``-inf`` before any."""
        return self._usable_until

    def token_usable(self, now: float) -> bool:
        """There is a token, not invalidated, not (nearly) expired."""
        return self._expires_at is not None and not self._invalid and now < self._usable_until

    def expires_in(self, now: float) -> float | None:
        """Seconds until the current token expires (negative once expired); None before any."""
        return None if self._expires_at is None else self._expires_at - now

    def fetch_allowed_at(self) -> float:
        """Earliest start of the next fetch (the floor); ``-inf`` before any fetch."""
        return self._last_start + self._min_interval

    def next_fetch_at(self) -> float:
        """When the background refresher should fetch: the refresh or retry point, floored."""
        return max(self._due, self.fetch_allowed_at())

    # --- events -------------------------------------------------------------
    def on_fetch_started(self, now: float) -> None:
        """A fetch starts at ``now``. Breaking the floor or overlapping fetches is a caller bug."""
        if self._in_fetch:
            raise RuntimeError("on_fetch_started() while a fetch is in progress")
        if now < self.fetch_allowed_at():
            raise ValueError(f"fetch at {now:.3f} is before the allowed time {self.fetch_allowed_at():.3f}")
        self._in_fetch = True
        self._last_start = now

    def on_success(self, now: float, *, issued_at: float, expires_in: float) -> None:
        """The fetch that started at ``issued_at`` (at the latest) got a token for ``expires_in`` s."""
        self._end_fetch()
        if not (0 < expires_in < math.inf):
            raise ValueError(f"expires_in must be a finite number > 0, got {expires_in!r}")
        if issued_at > now:
            raise ValueError(f"issued_at {issued_at:.3f} is after now {now:.3f}")
        margin = min(self._expiry_margin, _MARGIN_FRACTION * expires_in)
        self._failures = 0
        self._invalid = False
        self._issued_at = issued_at
        self._expires_at = issued_at + expires_in
        self._usable_until = self._expires_at - margin
        self._due = issued_at + self._fraction * expires_in

    def on_failure(self, now: float) -> float:
        """The fetch failed at ``now``; returns when the refresher should retry (before the floor)."""
        self._end_fetch()
        self._failures += 1
        doublings = min(self._failures - 1, _MAX_DOUBLINGS)
        retry_at = now + min(self._retry_cap, self._retry_base * 2.0**doublings)
        if self.token_usable(now) and retry_at > self._usable_until:
            # One more try just before the token runs out rather than after it.
            retry_at = self._usable_until
        self._due = retry_at
        return retry_at

    def on_abandoned(self) -> None:
        """The fetch was cancelled (shutdown): no result, nothing learned. The floor still
        counts from its start; the due time and failure count are unchanged."""
        self._end_fetch()

    def invalidate(self, now: float) -> None:
        """The upstream refused the current token at ``now``: it is unusable, a fetch is due
        at once (the floor still applies)."""
        self._invalid = True
        self._invalidated_at = now
        self._due = -math.inf

    def _end_fetch(self) -> None:
        if not self._in_fetch:
            raise RuntimeError("fetch result without on_fetch_started()")
        self._in_fetch = False
