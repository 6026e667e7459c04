"""The per-stream upstream loop: wait as the policy says, attempt, record, repeat.

The policy (backoff.py) is the only authority on when the next attempt may
start; this loop sleeps until then before *every* attempt, whatever ended the
previous one, including bugs: an unexpected exception from an attempt is
logged and counted as a failure, never a reason to retry at once. Nothing a
consumer does reaches this loop.

An operator reaches it through ``SupervisorControl.reconnect`` (the admin API).
While the loop waits, an attempt starts at once if the policy's floor (the
60 s rule) allows one (``ReconnectPolicy.expedite``); otherwise the request is
refused with the time left. While the connection streams, it is closed and the
next attempt waits as after any loss (at least ``reconnect_delay``). While an
attempt is connecting, the request is refused.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import trio

from lsproxy.config import UpstreamSettings
from lsproxy.hub.journal import AttemptRecord
from lsproxy.hub.stream import UpstreamStatus
from lsproxy.upstream.backoff import Failure, ReconnectPolicy
from lsproxy.upstream.outcome import Outcome, attempt_kind, classify_end

log = logging.getLogger("lsproxy.upstream")

#: One connection attempt: given the "connected" callback, stream until the end, say how it ended.
Attempt = Callable[[Callable[[], None]], Awaitable[Outcome]]


@dataclass(frozen=True)
class ReconnectAnswer:
    result: Literal["scheduled", "closing", "refused"]
    next_attempt_in: float | None  # refused: seconds until the rule allows an attempt
    reason: str


class SupervisorControl:
    """An operator's handle on one ``supervise`` loop; see the module docstring."""

    def __init__(self) -> None:
        self._name = ""
        self._policy: ReconnectPolicy | None = None
        self._status: UpstreamStatus | None = None
        self._waiting: trio.CancelScope | None = None  # the sleep before the next attempt
        self._attempt: trio.CancelScope | None = None  # the attempt in progress

    def reconnect(self) -> ReconnectAnswer:
        policy, status = self._policy, self._status
        if policy is None or status is None:
            return ReconnectAnswer("refused", None, "the upstream connection is not running")
        if self._attempt is not None:
            if status.state != "streaming":
                return ReconnectAnswer("refused", None, "an attempt is in progress")
            log.info("stream %s: closing the upstream connection, as an operator asked", self._name)
            self._attempt.cancel()
            return ReconnectAnswer(
                "closing", None, "closing the connection; the next attempt waits as after any loss"
            )
        now = trio.current_time()
        if not policy.expedite(now):
            wait = policy.earliest_allowed() - now
            return ReconnectAnswer(
                "refused", round(wait, 3), f"the reconnect rule allows the next attempt in {wait:.1f} s"
            )
        log.info("stream %s: attempting now, as an operator asked", self._name)
        if self._waiting is not None:
            self._waiting.cancel()
        return ReconnectAnswer("scheduled", None, "attempting now")


async def supervise(
    name: str,
    settings: UpstreamSettings,
    status: UpstreamStatus,
    attempt: Attempt,
    *,
    not_before: float | None = None,
    journal: AttemptRecord | None = None,
    rng: random.Random | None = None,
    control: SupervisorControl | None = None,
    stream: str | None = None,
    connection: int = 1,
) -> None:
    """Run one upstream connection of stream ``name`` forever, publishing into ``status``.
    ``not_before`` (trio clock) holds the first attempt back, for a loss this loop did not see;
    ``journal`` records attempts (durably, before connecting) and ends, for the rule across
    reloads and restarts. Every wait, the first one included, shows as "backoff" with its countdown.
    ``control`` lets an operator ask for an attempt (never before the rule allows one).
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
    control = control or SupervisorControl()
    control._name, control._policy, control._status = name, policy, status

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
                if status.state != "failed":  # a config error stays visible while it waits
                    status.state = "backoff"
                status.next_attempt_at = time.time() + wait
                if not announced:
                    log.info(
                        "stream %s: next upstream attempt in %.1f s at %s (the previous connection ended recently)",
                        name, wait, _clock_time(status.next_attempt_at),
                        extra={**fields, "wait": round(wait, 3)},
                    )  # fmt: skip
                with trio.CancelScope() as control._waiting:
                    await trio.sleep_until(not_before)
                control._waiting = None
                if policy.next_attempt_at() > trio.current_time():
                    continue  # defensive: only an expedited policy wakes the sleep early
            status.state = "connecting"
            status.next_attempt_at = None
            if journal is not None:
                await journal.attempt_starting()
            status.attempts += 1
            log.info("stream %s: upstream attempt %d", name, status.attempts, extra=fields)
            policy.on_attempt(trio.current_time())
            try:
                ended: Outcome | None = None
                with trio.CancelScope() as control._attempt:
                    ended = await attempt(connected)
                # None: closed through the control (an outer cancellation propagates).
                outcome = ended or classify_end("operator", "", stream=name, streamed=True)
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
                control._attempt = None
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
        control._policy = None
        status.state = "stopped"
        status.next_attempt_at = None


def _clock_time(unix: float) -> str:
    """UTC wall-clock time of day for log lines, e.g. ``09:31:02Z``."""
    return time.strftime("%H:%M:%SZ", time.gmtime(unix))
