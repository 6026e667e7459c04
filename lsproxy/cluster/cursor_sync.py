"""Named cursors shared by every node through a KV bucket.

Each node writes the named cursors of a stream that changed, at most once per
``SAVE_INTERVAL``, at their rewind point (``CursorBook.persistent``: a
connected cursor is saved where a successor may resume without loss), under
``<stream>.<consumer>`` in ``lsproxy_cursors``. Each node also watches the
stream's keys and adopts what *other* nodes wrote, unless one of its own
connections holds that cursor. A named group's share cursors (``<id>#<k>/<N>``)
are named cursors and are shared the same way; the anonymous group's shares are
kept in memory on each node (not persisted, so never written here). So a named consumer that moves from one node to
another resumes where the first node last saved it: duplicates (up to the
rewind window plus one save interval), never a gap. A cursor first seen here
(a consumer's first connection) is saved within ``NEW_CURSOR_CHECK``, so a
consumer that moves right after its first connection is known on the other
node too.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from lsproxy.cluster import names
from lsproxy.cluster.node import ClusterNode, NatsUnavailable
from lsproxy.hub.groups import ANONYMOUS
from lsproxy.hub.stream import StreamHub

log = logging.getLogger("lsproxy.cluster")

SAVE_INTERVAL = 1.0
NEW_CURSOR_CHECK = 0.1  # a named cursor first seen here is saved within this


def encode_cursor(name: str, position: int, skipped: int, node: str) -> bytes:
    return json.dumps({"name": name, "position": position, "skipped": skipped, "node": node}).encode()


def decode_cursor(raw: bytes) -> tuple[str, int, int, str] | None:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    name, position, skipped, node = (body.get(k) for k in ("name", "position", "skipped", "node"))
    if not (isinstance(name, str) and isinstance(node, str)):
        return None
    for n in (position, skipped):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return None
    assert isinstance(position, int) and isinstance(skipped, int)
    return name, position, skipped, node


class CursorSync:
    def __init__(self, node: ClusterNode, hub: StreamHub) -> None:
        self.node = node
        self.hub = hub
        self.prefix = names.escape(hub.name)
        self._saved: dict[str, tuple[int, int]] = {}
        self.adopted = 0

    async def run(self) -> None:
        node = self.node
        await node.ready.wait()
        inbox = node.bridge.inbox()

        async def deliver(_key: str, value: bytes) -> None:
            await inbox.put(value)

        watcher: Any = None
        while watcher is None:
            try:
                watcher = await node.bridge.call(node.a_cursor_watch, self.prefix, deliver)
            except NatsUnavailable as exc:
                log.warning("stream %s: cannot watch the shared cursors: %s", self.hub.name, exc)
                await trio.sleep(1.0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._adopt, inbox)
                saved_at = -float("inf")
                while True:
                    if trio.current_time() - saved_at >= SAVE_INTERVAL or self._unsaved_names():
                        saved_at = trio.current_time()
                        await self.save()
                    await trio.sleep(NEW_CURSOR_CHECK)
        finally:
            with trio.move_on_after(2, shield=True):
                await self.save()
                try:
                    await node.bridge.call(node.a_stop_watch, watcher)
                except Exception as exc:
                    log.debug("stream %s: stopping the cursor watch: %s", self.hub.name, exc)

    async def _adopt(self, inbox: Any) -> None:
        while True:
            for raw in await inbox.get_batch():
                found = decode_cursor(raw)
                if found is None:
                    continue
                name, position, skipped, writer = found
                if writer == self.node.name:
                    continue  # our own write coming back
                if name.startswith(ANONYMOUS + "#"):
                    continue  # the anonymous group's shares are this node's own (never written)
                if self.hub.book.adopt(name, position, skipped, self.hub.clock()):
                    self._saved[name] = (position, skipped)
                    self.adopted += 1

    def _unsaved_names(self) -> bool:
        """A named cursor never saved from here (a consumer's first connection)."""
        return any(name not in self._saved for name in self.hub.book.persistent(self.hub.clock()))

    async def save(self) -> None:
        """Write the named cursors that changed since the last save."""
        node = self.node
        for name, (position, skipped, _seen_at) in self.hub.book.persistent(self.hub.clock()).items():
            state = (position, skipped)  # "last seen" is per node: adopting counts as seen
            if self._saved.get(name) == state:
                continue
            value = encode_cursor(name, state[0], state[1], node.name)
            try:
                await node.bridge.call(node.a_cursor_put, names.cursor_key(self.hub.name, name), value)
            except NatsUnavailable as exc:
                log.debug("stream %s: cursor %s not saved: %s", self.hub.name, name, exc)
                return
            self._saved[name] = state
