"""Consumer group membership cluster-wide: which node's member holds each share.

A named group's share (the share cursor ``<id>#<k>/<N>``) is held by one member
in the whole cluster: the node where that member connects *claims* the share's
key ``<stream>.<share cursor>`` in the ``lsproxy_members`` KV bucket (TTL
``lease_ttl``; create, or compare-and-set on the revision), renews it every
third of the TTL while the member is connected, and deletes it (at its
revision) when the member leaves. A claim that fails means a member on another
node holds the share: the joining member is placed on another share, or gets
409 when all N are held (503 with Retry-After when NATS cannot answer). A node
that cannot renew a claim for ``CLAIM_GIVE_UP`` of the TTL, or finds it taken,
ends its member's connection (that member reconnects and joins again), so a
share never has two members for longer than the TTL's margin.

Each node watches the bucket and tells its ``GroupBook`` which shares other
nodes hold (``held_elsewhere``). NATS 2.9 sends no event when a key expires,
so a remote claim counts only while it was renewed within the TTL: the shares
of a killed node become free after the TTL everywhere.

The anonymous group's shares are node-local (their cursors are in memory and
not shared, see ``cursor_sync``): they are not claimed.
"""

from __future__ import annotations

import logging

import trio

from lsproxy.cluster import names
from lsproxy.cluster.bridge import BridgeClosed, Inbox
from lsproxy.cluster.node import ClusterNode, NatsUnavailable, Watched
from lsproxy.hub.groups import ANONYMOUS, parse_share_name
from lsproxy.hub.stream import ClaimUnavailable, StreamHub

log = logging.getLogger("lsproxy.cluster")

CLAIM_GIVE_UP = 0.8  # of the TTL without a renewal: the member's connection ends


class ShareClaims:
    def __init__(self, node: ClusterNode, hub: StreamHub) -> None:
        self.node = node
        self.hub = hub
        self.prefix = names.escape(hub.name)
        self._remote: dict[str, tuple[str, float]] = {}  # share -> (node, trio time last seen)
        self._mine: dict[str, tuple[int, float]] = {}  # share -> (revision, trio time renewed)
        self._releases: list[tuple[str, int]] = []
        self._wake = trio.Event()
        self.lost = 0

    def install(self) -> None:
        self.hub.groups.held_elsewhere = self.held_elsewhere
        self.hub.share_claims = self

    def uninstall(self) -> None:
        self.hub.groups.held_elsewhere = lambda _share: False
        if self.hub.share_claims is self:
            self.hub.share_claims = None

    @staticmethod
    def _claimed(share: str) -> bool:
        parsed = parse_share_name(share)
        return parsed is not None and parsed[0] != ANONYMOUS

    def held_elsewhere(self, share: str) -> bool:
        seen = self._remote.get(share)
        return seen is not None and trio.current_time() - seen[1] < self.node.lease_ttl

    def held(self) -> list[str]:
        return sorted(self._mine)

    async def claim(self, share: str) -> bool:
        """Claim ``share`` for a member connecting here; False: another node's member
        holds it. ClaimUnavailable when NATS cannot tell (the member gets 503, not 409:
        it may retry, nothing says the group is full)."""
        if not self._claimed(share):
            return True
        node = self.node
        if not node.connected:  # known at once: no need to wait for a request to time out
            raise ClaimUnavailable("the cluster cannot record group membership now: NATS is not connected")
        key = names.cursor_key(self.hub.name, share)
        try:
            revision, holder = await node.bridge.call(node.a_member_claim, key, names.member_value(node.name))
        except NatsUnavailable as exc:
            log.warning("stream %s: cannot claim group share %s: %s", self.hub.name, share, exc)
            raise ClaimUnavailable(f"the cluster cannot record group membership now: {exc}") from None
        now = trio.current_time()
        if revision is None:
            self._remote[share] = (holder, now)
            return False
        self._mine[share] = (revision, now)
        self._remote.pop(share, None)
        return True

    def release(self, share: str) -> None:
        """The member holding ``share`` here left."""
        mine = self._mine.pop(share, None)
        if mine is not None:
            self._releases.append((names.cursor_key(self.hub.name, share), mine[0]))
            self._wake.set()

    # -- the task ---------------------------------------------------------------------
    async def run(self) -> None:
        """Follow the other nodes' claims, renew and release this node's; ``install``
        first (before any consumer can join: a claim needs no watch)."""
        node = self.node
        await node.ready.wait()
        what = f"the group members of stream {self.hub.name}"
        async with node.watching(names.MEMBER_BUCKET, self.prefix, what) as inbox:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._follow, inbox)
                    while True:
                        await self._release_and_renew()
                        with trio.move_on_after(node.lease_ttl / 3):
                            await self._wake.wait()
                        self._wake = trio.Event()
            finally:
                self.uninstall()
                with trio.move_on_after(2, shield=True):
                    for share in list(self._mine):
                        self.release(share)
                    try:
                        await self._release_and_renew()
                    except BridgeClosed:
                        log.debug("stream %s: shares not released at shutdown: NATS is gone", self.hub.name)

    async def _follow(self, inbox: Inbox[Watched]) -> None:
        prefix = self.prefix + "."
        while True:
            for key, value in await inbox.get_batch():
                share = names.unescape(key[len(prefix) :]) if key.startswith(prefix) else None
                if share is None:
                    continue
                if value is None:
                    self._remote.pop(share, None)
                    continue
                holder = names.member_node(value)
                if holder != self.node.name:
                    self._remote[share] = (holder, trio.current_time())

    async def _release_and_renew(self) -> None:
        node = self.node
        releases, self._releases = self._releases, []
        for key, revision in releases:
            try:
                await node.bridge.call(node.a_member_release, key, revision)
            except NatsUnavailable as exc:
                log.debug("stream %s: release of %s: %s", self.hub.name, key, exc)  # expires
        value = names.member_value(node.name)
        for share, (revision, renewed) in list(self._mine.items()):
            key = names.cursor_key(self.hub.name, share)
            try:
                new = await node.bridge.call(node.a_member_renew, key, value, revision)
            except NatsUnavailable as exc:
                if trio.current_time() - renewed < CLAIM_GIVE_UP * node.lease_ttl:
                    continue
                why = f"not renewed for {CLAIM_GIVE_UP * node.lease_ttl:.1f} s ({exc})"
            else:
                if new is not None:
                    if share in self._mine:
                        self._mine[share] = (new, trio.current_time())
                    else:  # released meanwhile, at the revision this renewal replaced
                        self._releases.append((key, new))
                        self._wake.set()
                    continue
                why = "taken by another node"
            if self._mine.pop(share, None) is not None:
                self.lost += 1
                log.warning(
                    "stream %s: group share %s %s: its member is disconnected", self.hub.name, share, why
                )
                self.hub.end_member(share)
