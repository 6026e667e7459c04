"""One upstream connection slot in cluster mode: its lease, its journal, its supervisor.

``SlotRunner.run`` loops: wait for the lease (polling KV create, as NATS 2.9
sends no expiry events), read the slot's journal, then run the single-node
supervisor inside a cancel scope whose deadline is the lease's validity
(``slot_policy.LeasePolicy``). A renewal task moves that deadline on with every
successful renew-and-mark cycle; a refused renewal cancels the scope at once.
So the upstream connection is closed when the lease may be lost, whatever the
renewal task is doing. On a clean stop the slot's end is written to the
journal first, then the lease is released (deleted with its revision), so the
next holder waits from the recorded end.

``SlotRecord`` is the supervisor's journal handle (``hub/journal.AttemptRecord``):
an attempt is in KV before connecting (never without: the next holder's wait
is computed from it), ends and liveness marks follow. Writes of one holding go
out in order, each over the revision the one before left (``node.JournalChain``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from lsproxy.cluster.node import ClusterNode, JournalChain, JournalWrite, NatsUnavailable, wall_to_trio
from lsproxy.cluster.slot_policy import (
    LeasePolicy,
    decode_moments,
    default_margin,
    encode_moments,
    journal_node,
    takeover_not_before,
)
from lsproxy.hub.journal_rule import Moments
from lsproxy.hub.stream import UpstreamStatus

log = logging.getLogger("lsproxy.cluster")

ATTEMPT_RETRY_PAUSE = 0.2  # between tries to record an attempt (each waits for its answer)
RELEASE_SECONDS = 3.0

#: ``supervise`` with everything but these keyword arguments bound.
Supervise = Callable[..., Awaitable[None]]


class SlotRecord:
    """The journal of one slot, written by its lease holder: ``holding`` says whether
    this node holds the lease still. Writes are conditional (``JournalChain``): one
    refused because the entry moved on (a late write of an earlier holder, or our own
    whose answer was lost) is written again over the current revision while we hold
    the lease, since our record is the one that rules; once we do not, it is dropped."""

    def __init__(
        self, node: ClusterNode, key: str, moments: Moments, revision: int, holding: Callable[[], bool]
    ) -> None:
        self.node = node
        self.key = key
        self.moments = moments
        self.holding = holding
        self._chain = JournalChain(revision)
        self._version = 0

    def _value(self) -> tuple[bytes, int]:
        self._version += 1
        return encode_moments(self.moments, self.node.name), self._version

    async def write(self) -> bool:
        """True once the moments as they are now are in KV (or newer ones are)."""
        node = self.node
        value, version = self._value()
        try:
            for _ in range(2):
                result = await node.bridge.call(node.a_journal_put, self.key, value, version, self._chain)
                if result is not JournalWrite.CONFLICT:
                    return result is JournalWrite.WRITTEN
                if not self.holding():
                    log.info("slot %s: journal entry moved on and the lease is gone; our write dropped", self.key)
                    return False
                found = await node.bridge.call(node.a_journal_refresh, self.key, self._chain)
                log.info(
                    "slot %s: journal entry moved on since our last write (last written by %s); writing ours again",
                    self.key, journal_node(found),
                )  # fmt: skip
        except Exception as exc:
            log.debug("slot %s: journal write failed: %s", self.key, exc)
        return False

    def post(self) -> None:
        value, version = self._value()
        try:
            self.node.bridge.post(self.node.a_journal_put, self.key, value, version, self._chain)
        except Exception as exc:
            log.debug("slot %s: journal write not sent: %s", self.key, exc)

    async def attempt_starting(self) -> None:
        """Connect only once the attempt is in KV: the next holder's wait is computed from
        it. Retried until written; the lease deadline (the caller's cancel scope) bounds it."""
        self.moments.open = 1
        failures = 0
        while True:
            self.moments.attempt_at = self.moments.alive_at = time.time()
            if await self.write():
                if failures:
                    log.info("slot %s: upstream attempt recorded after %d failed writes", self.key, failures)
                return
            if failures == 0:
                log.warning("slot %s: cannot record the upstream attempt in the cluster journal; retrying", self.key)
            failures += 1
            await trio.sleep(ATTEMPT_RETRY_PAUSE)

    def ended(self) -> None:
        self.moments.ended_at = time.time()
        self.moments.open = 0
        self.post()

    async def mark_alive(self, wall: float) -> bool:
        self.moments.alive_at = wall
        return await self.write()


class SlotRunner:
    def __init__(
        self,
        node: ClusterNode,
        stream: str,
        slot: int,
        key: str,
        status: UpstreamStatus,
        *,
        reconnect_delay: float,
    ) -> None:
        self.node = node
        self.stream = stream
        self.slot = slot
        self.key = key
        self.upstream_status = status
        self.reconnect_delay = reconnect_delay
        ttl = node.lease_ttl
        self.policy = LeasePolicy(ttl=ttl, margin=default_margin(ttl))
        self.record: SlotRecord | None = None
        self.acquired = 0
        self.lost = 0

    @property
    def label(self) -> str:
        return f"{self.stream}#{self.slot + 1}"

    def holds(self, now: float) -> bool:
        return self.policy.held(now)

    def status(self, now: float) -> dict[str, Any]:
        held = self.policy.held(now)
        return {
            "stream": self.stream,
            "slot": self.slot + 1,
            "held": held,
            "valid_for": round(self.policy.valid_until - now, 3) if held else None,
            "acquired": self.acquired,
            "lost": self.lost,
        }

    def _lease_value(self) -> bytes:
        return json.dumps({"node": self.node.name, "stream": self.stream, "at": time.time()}).encode()

    async def run(self, supervise: Supervise, hold: float | None = None) -> None:
        """Hold the slot's lease whenever possible and stream while holding it, until
        cancelled. ``hold`` (trio clock): no attempt before it (a loss this node saw)."""
        self.node.slots[self.key] = self
        try:
            while True:
                self.upstream_status.state, self.upstream_status.next_attempt_at = "standby", None
                await self._acquire()
                self.acquired += 1
                log.info("slot %s: lease acquired by node %s", self.label, self.node.name)
                await self._lead(supervise, hold)
                self.lost += 1
                log.warning("slot %s: lease lost; the upstream connection is closed", self.label)
        finally:
            self.upstream_status.state = "stopped"
            with trio.move_on_after(RELEASE_SECONDS, shield=True):
                await self._release()
            self.node.slots.pop(self.key, None)

    async def _acquire(self) -> None:
        policy, node = self.policy, self.node
        failing = False
        while True:
            await node.ready.wait()
            sent = trio.current_time()
            revision = None
            try:
                with trio.move_on_after(policy.ttl - policy.margin):
                    revision = await node.bridge.call(node.a_lease_create, self.key, self._lease_value())
                failing = False
            except NatsUnavailable as exc:
                if not failing:
                    log.warning("slot %s: cannot try the lease: %s", self.label, exc)
                failing = True
            if revision is not None:
                policy.written(sent, revision)
                return
            await trio.sleep(policy.poll_interval)

    async def _lead(self, supervise: Supervise, hold: float | None) -> None:
        policy = self.policy
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope(deadline=policy.valid_until)
            with scope:
                record = await self._read_journal()
                nursery.start_soon(self._renew, scope, record)
                not_before = takeover_not_before(
                    record.moments,
                    reconnect_delay=self.reconnect_delay,
                    lease_ttl=policy.ttl,
                    clock_skew_margin=self.node.config.clock_skew_margin,
                )
                first = max(
                    hold if hold is not None else -float("inf"),
                    wall_to_trio(not_before) if not_before is not None else -float("inf"),
                )
                if first > trio.current_time():
                    log.info(
                        "slot %s: waiting %.1f s after the slot's last connection before connecting",
                        self.label, first - trio.current_time(),
                    )  # fmt: skip
                await supervise(not_before=first if first > -float("inf") else None, journal=record)
            nursery.cancel_scope.cancel()
        if not scope.cancelled_caught:
            return
        policy.lost()

    async def _read_journal(self) -> SlotRecord:
        """The slot's journal as the previous holders left it. Unreadable or unknown
        (NATS trouble): the loss may have been just now, so the wait runs from now."""
        node = self.node
        while True:
            try:
                raw, revision = await node.bridge.call(node.a_journal_get, self.key)
            except NatsUnavailable as exc:
                log.warning("slot %s: cannot read the cluster journal: %s", self.label, exc)
                await trio.sleep(self.policy.poll_interval)
                continue
            break
        moments = Moments() if raw is None else decode_moments(raw)
        if moments is None:
            log.warning("slot %s: unreadable journal entry; waiting reconnect_delay from now", self.label)
            moments = Moments(ended_at=time.time())
        self.record = SlotRecord(
            node, self.key, moments, revision, holding=lambda: self.policy.held(trio.current_time())
        )
        return self.record

    async def _renew(self, scope: trio.CancelScope, record: SlotRecord) -> None:
        """Renew the lease and mark the slot alive, together; only a cycle where both
        succeeded moves the deadline on (see slot_policy)."""
        policy, node = self.policy, self.node
        failing = False
        next_at = policy.next_renewal()
        while True:
            await trio.sleep_until(next_at)
            sent, wall = trio.current_time(), time.time()
            renewed, marked = None, False
            try:
                with trio.move_on_after(policy.renewal_timeout(sent)):
                    assert policy.revision is not None
                    renewed = await node.bridge.call(
                        node.a_lease_update, self.key, self._lease_value(), policy.revision
                    )
                    if renewed is None:
                        log.error("slot %s: the lease was taken by another node", self.label)
                        scope.cancel()
                        return
                    policy.revision = renewed
                    marked = await record.mark_alive(wall)
            except NatsUnavailable as exc:
                if not failing:
                    log.warning("slot %s: cannot renew the lease: %s", self.label, exc)
            if renewed is not None and marked:
                policy.written(sent, renewed)
                scope.deadline = policy.valid_until
                if failing:
                    log.info("slot %s: lease renewed again", self.label)
                failing = False
                next_at = policy.next_renewal()
            else:
                failing = True
                next_at = sent + policy.renew_interval / 2  # retry sooner while it still helps

    async def _release(self) -> None:
        """Clean stop: the end into the journal, then the lease back."""
        revision = self.policy.revision
        if revision is None or not self.policy.held(trio.current_time()):
            return
        if self.record is not None:
            await self.record.write()
        try:
            await self.node.bridge.call(self.node.a_lease_delete, self.key, revision)
            log.info("slot %s: lease released", self.label)
        except Exception as exc:
            log.warning("slot %s: could not release the lease (it expires by itself): %s", self.label, exc)
        self.policy.lost()
