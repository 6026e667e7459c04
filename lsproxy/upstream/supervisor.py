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
from lsproxy.hub.journal import UpstreamJournal
from lsproxy.hub.stream import UpstreamStatus
from lsproxy.upstream.backoff import Failure, ReconnectPolicy
from lsproxy.upstream.outcome import Outcome, attempt_kind, classify_end

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
    journal: UpstreamJournal | None = None,
    rng: random.Random | None = None,
    stream: str | None = None,
    connection: int = 1,
) -> None:
    """Run one upstream connection of stream ``name`` forever, publishing into ``status``.
    ``not_before`` (trio clock) holds the first attempt back, for a loss this loop did not see;
    ``journal`` records attempts and ends durably, for the rule across restarts.
    ``stream`` and ``connection`` (1-based) label the log lines' structured fields."""
    fields = {"stream": stream or name, "connection": connection}
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
        log.info("stream %s: upstream connected, streaming", name, extra={**fields, "status": "2xx"})

    announced = False  # the wait was already logged with the end that caused it
    try:
        while True:
            not_before = policy.next_attempt_at()
            wait = not_before - trio.current_time()
            if wait > 0:
                status.next_attempt_at = time.time() + wait
                if not announced:
                    log.info(
                        "stream %s: next upstream attempt in %.1f s at %s (the previous connection ended recently)",
                        name, wait, _clock_time(status.next_attempt_at),
                        extra={**fields, "wait": round(wait, 3)},
                    )  # fmt: skip
                await trio.sleep_until(not_before)
            status.state = "connecting"
            status.next_attempt_at = None
            if journal is not None:
                await journal.attempt_starting()
            status.attempts += 1
            log.info("stream %s: upstream attempt %d", name, status.attempts, extra=fields)
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
            policy.on_ended(trio.current_time(), outcome.failure)
            if journal is not None:
                journal.ended()
            status.connected_since = None
            status.state = "failed" if outcome.failure is Failure.CONFIG else "backoff"
            status.last_error = {
                "status": outcome.status,
                "error": outcome.error,
                "description": outcome.description,
                "message": outcome.message,
                "at": time.time(),
            }
            status.recent_errors.append(status.last_error)
            kind = attempt_kind(outcome)
            status.outcomes[kind] = status.outcomes.get(kind, 0) + 1
            wait = max(0.0, policy.next_attempt_at() - trio.current_time())
            level = logging.ERROR if outcome.failure is Failure.CONFIG else logging.WARNING
            log.log(
                level,
                "%s Next attempt in %.1f s at %s.",
                outcome.message, wait, _clock_time(time.time() + wait),
                extra={**fields, "status": kind, "reason": outcome.error, "wait": round(wait, 3)},
            )  # fmt: skip
            announced = True
    finally:
        status.state = "stopped"
        status.next_attempt_at = None


def _clock_time(unix: float) -> str:
    """UTC wall-clock time of day for log lines, e.g. ``09:31:02Z``."""
    return time.strftime("%H:%M:%SZ", time.gmtime(unix))
