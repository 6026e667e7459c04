"""UpstreamJournal: the 60-second rule across proxy restarts.

Theory of operation
-------------------
A proxy started again must not reconnect sooner than ``reconnect_delay`` after
its previous life lost (or was refused) its connection. The durable log's meta
table records three wall-clock moments for the stream:

* ``upstream.attempt_at``: before every attempt, *committed before connecting*,
  so even a proxy killed mid-attempt leaves a trace;
* ``upstream.alive_at``: every ``heartbeat_interval`` while a connection
  streams (committed with the log's regular commits);
* ``upstream.ended_at``: when an attempt or connection ends.

A proxy killed abruptly records nothing at its death, but it was alive at most
``heartbeat_interval`` + ``commit_interval`` after the last durable
``alive_at``. So the first attempt of the next life waits until
``reconnect_delay`` after the latest of: ``attempt_at``, ``ended_at``, and
``alive_at + heartbeat_interval + commit_interval``. Never early, at the price
of waiting up to two seconds more than strictly needed.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import trio

log = logging.getLogger("lsproxy.hub")

ATTEMPT_AT = "upstream.attempt_at"
ALIVE_AT = "upstream.alive_at"
ENDED_AT = "upstream.ended_at"
ATTEMPT_COMMIT_SECONDS = 5.0  # how long an attempt waits for its journal entry to be durable


class MetaStore(Protocol):
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    async def commit_now(self) -> bool: ...


class UpstreamJournal:
    def __init__(self, store: MetaStore, *, heartbeat_interval: float, commit_interval: float) -> None:
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.commit_interval = commit_interval

    def _get(self, key: str) -> float | None:
        value = self.store.get_meta(key)
        try:
            return float(value) if value is not None else None
        except ValueError:
            log.warning(
                "ignoring a malformed %s in the stream store: %r", key, value[:40] if value else value
            )
            return None

    def earliest_attempt(self, reconnect_delay: float) -> float | None:
        """Wall-clock time before which the first attempt of this life must not start."""
        moments = [self._get(ATTEMPT_AT), self._get(ENDED_AT)]
        alive = self._get(ALIVE_AT)
        if alive is not None:
            moments.append(alive + self.heartbeat_interval + self.commit_interval)
        known = [m for m in moments if m is not None]
        return max(known) + reconnect_delay if known else None

    async def attempt_starting(self) -> None:
        """Make the attempt durable before it reaches the network (bounded wait)."""
        self.store.set_meta(ATTEMPT_AT, repr(time.time()))
        with trio.move_on_after(ATTEMPT_COMMIT_SECONDS):
            if not await self.store.commit_now():
                log.error("could not persist the upstream attempt time; a restart may reconnect early")

    def alive(self) -> None:
        self.store.set_meta(ALIVE_AT, repr(time.time()))

    def ended(self) -> None:
        self.store.set_meta(ENDED_AT, repr(time.time()))
