"""The per-stream upstream loop: wait as the policy says, attempt, record, repeat.

The policy (backoff.py) is the only authority on when the next attempt may
start; this loop sleeps until then before *every* attempt, whatever ended the
previous one, including bugs: an unexpected exception from an attempt is
logged and counted as a failure, never a reason to retry at once. Nothing a
consumer does reaches this loop.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable

import trio

from lsproxy.config import UpstreamSettings
from lsproxy.hub.journal import AttemptRecord
from lsproxy.hub.stream import UpstreamStatus
from lsproxy.upstream.backoff import Failure, ReconnectPolicy
from lsproxy.upstream.outcome import Outcome, classify_end

log = logging.getLogger("lsproxy.upstream")

#: One connection attempt: given the "connected" callback, stream until the end, say how it ended.
Attempt = Callable[[Callable[[], None]], Awaitable[Outcome]]


async def supervise(
    name: str,
    settings: UpstreamSettings,
    status: UpstreamStatus,
    attempt: Attempt,
    *,
    not_before: float | None = None,
    journal: AttemptRecord | None = None,
    rng: random.Random | None = None,
) -> None:
    """Run one upstream connection of stream ``name`` forever, publishing into ``status``.
    ``not_before`` (trio clock) holds the first attempt back, for a loss this loop did not see;
    ``journal`` records attempts (durably, before connecting) and ends, for the rule across
    reloads and restarts. Every wait, the first one included, shows as "backoff" with its countdown."""
    policy = ReconnectPolicy(
        base=settings.reconnect_delay,
        ceiling=settings.max_reconnect_delay,
        healthy_after=settings.healthy_after,
        rng=rng or random.Random(),
    )
    if not_before is not None:
        policy.hold_until(not_before)

    def connected() -> None:
        policy.on_connected(trio.current_time())
        status.state = "streaming"
        status.connects += 1
        status.connected_since = time.time()
        log.info("stream %s: upstream connected, streaming", name)

    try:
        while True:
            not_before = policy.next_attempt_at()
            wait = not_before - trio.current_time()
            if wait > 0:
                if status.state != "failed":  # a config error stays visible while it waits
                    status.state = "backoff"
                status.next_attempt_at = time.time() + wait
                log.info("stream %s: next upstream attempt in %.1f s", name, wait)
                await trio.sleep_until(not_before)
            status.state = "connecting"
            status.next_attempt_at = None
            if journal is not None:
                await journal.attempt_starting()
            status.attempts += 1
            policy.on_attempt(trio.current_time())
            try:
                outcome = await attempt(connected)
            except Exception as exc:
                log.exception("stream %s: upstream attempt failed unexpectedly", name)
                outcome = classify_end(
                    "network",
                    f"internal error: {type(exc).__name__}",
                    stream=name,
                    streamed=status.state == "streaming",
                )
            finally:
                if journal is not None:
                    journal.ended()  # closed by now, cancelled (reload, shutdown) or not
            policy.on_ended(trio.current_time(), outcome.failure)
            status.connected_since = None
            status.state = "failed" if outcome.failure is Failure.CONFIG else "backoff"
            status.last_error = {
                "status": outcome.status,
                "error": outcome.error,
                "description": outcome.description,
                "message": outcome.message,
                "at": time.time(),
            }
            level = logging.ERROR if outcome.failure is Failure.CONFIG else logging.WARNING
            log.log(level, "%s", outcome.message)
    finally:
        status.state = "stopped"
        status.next_attempt_at = None
