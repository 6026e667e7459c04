"""Named cursors shared by every node through a KV bucket.

Each node writes the named cursors of a stream that changed, at most once per
``SAVE_INTERVAL``, at their rewind point (``CursorBook.persistent``: a
connected cursor is saved where a successor may resume without loss), under
``<stream>.<consumer>`` in ``lsproxy_cursors``. Each node also watches the
stream's keys and adopts what *other* nodes wrote, unless one of its own
connections holds that cursor. A named group's share cursors (``<id>#<k>/<N>``)
are named cursors and are shared the same way; the anonymous group's shares are
kept in memory on each node (not persisted, so never written here). So a named
consumer that moves from one node to another resumes where the first node last
saved it: duplicates (up to the rewind window plus one save interval), never a
gap. A cursor first seen here (a consumer's first connection) is saved within
``NEW_CURSOR_CHECK``, so a consumer that moves right after its first connection
is known on the other node too.

Forgetting is cluster-wide too. A cursor this node forgot by itself
(``consumer_ttl``, a group's old shares) has its key deleted; a node that sees
the delete forgets the cursor as well, unless one of its connections holds it
(that node writes it again: its consumer is alive). The "last seen" time
travels with the value and a connected cursor is written again whenever it is
refreshed (``CursorBook.persistent``), so ``consumer_ttl`` counts from the last
node that saw the consumer and never forgets one connected elsewhere. An
operator's move or delete is written as an *operation* (``"op"`` in the value):
every node applies it, ending a connection that holds the cursor there, as the
single proxy does; a delete's key is then deleted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import trio

from lsproxy.cluster import names
from lsproxy.cluster.bridge import BridgeClosed, Inbox
from lsproxy.cluster.node import ClusterNode, NatsUnavailable, Watched
from lsproxy.hub.groups import ANONYMOUS
from lsproxy.hub.stream import StreamHub

log = logging.getLogger("lsproxy.cluster")

SAVE_INTERVAL = 1.0
NEW_CURSOR_CHECK = 0.1  # a named cursor first seen here is saved within this


#: (position, skipped, last seen) as last written or adopted here
Saved = tuple[int, int, float]


@dataclass(frozen=True, slots=True)
class SharedCursor:
    """A value of the cursor bucket."""

    name: str
    position: int
    skipped: int
    seen_at: float  # wall clock, when a node last saw its consumer
    node: str  # who wrote it
    op: str | None = None  # an operator's "move" or "delete", applied by every node


def encode_cursor(cursor: SharedCursor) -> bytes:
    body: dict[str, Any] = {
        "name": cursor.name,
        "position": cursor.position,
        "skipped": cursor.skipped,
        "seen": cursor.seen_at,
        "node": cursor.node,
    }
    if cursor.op is not None:
        body["op"] = cursor.op
    return json.dumps(body).encode()


def decode_cursor(raw: bytes, now: float) -> SharedCursor | None:
    """The value, or None when it is not one (another writer's, damaged). A missing or
    future "seen" is ``now``."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    name, position, skipped, node = (body.get(k) for k in ("name", "position", "skipped", "node"))
    seen, op = body.get("seen"), body.get("op")
    if not (isinstance(name, str) and isinstance(node, str)) or op not in (None, "move", "delete"):
        return None
    for n in (position, skipped):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return None
    assert isinstance(position, int) and isinstance(skipped, int)
    if isinstance(seen, bool) or not isinstance(seen, (int, float)) or not seen <= now:
        seen = now
    return SharedCursor(name, position, skipped, float(seen), node, op)


class CursorSync:
    def __init__(self, node: ClusterNode, hub: StreamHub) -> None:
        self.node = node
        self.hub = hub
        self.prefix = names.escape(hub.name)
        self._saved: dict[str, Saved] = {}
        self._operations: list[tuple[str, int | None]] = []  # operator moves (position), deletes (None)

    async def run(self) -> None:
        node, hub = self.node, self.hub
        await node.ready.wait()
        what = f"the shared cursors of stream {hub.name}"
        async with node.watching(names.CURSOR_BUCKET, self.prefix, what) as inbox:
            hub.announce_cursor = self._announce
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._follow, inbox)
                    saved_at = -float("inf")
                    while True:
                        due = trio.current_time() - saved_at >= SAVE_INTERVAL
                        if due or self._operations or self._unsaved_names():
                            saved_at = trio.current_time()
                            await self.save()
                        await trio.sleep(NEW_CURSOR_CHECK)
            finally:
                if hub.announce_cursor == self._announce:
                    hub.announce_cursor = None
                with trio.move_on_after(2, shield=True):
                    try:
                        await self.save()
                    except BridgeClosed:
                        log.debug("stream %s: cursors not saved at shutdown: NATS is gone", hub.name)

    def _announce(self, name: str, position: int | None) -> None:
        """An operator moved (``position``) or deleted (None) a cursor on this node."""
        self._operations.append((name, position))

    # -- what other nodes wrote -------------------------------------------------------
    async def _follow(self, inbox: Inbox[Watched]) -> None:
        prefix = self.prefix + "."
        while True:
            for key, value in await inbox.get_batch():
                if value is not None:
                    found = decode_cursor(value, self.hub.clock())
                    if found is not None and found.node != self.node.name:  # not our own coming back
                        self._take(found)
                elif key.startswith(prefix) and (name := names.unescape(key[len(prefix) :])) is not None:
                    self._deleted(name)

    def _take(self, found: SharedCursor) -> None:
        name, book = found.name, self.hub.book
        if name.startswith(ANONYMOUS + "#"):
            return  # the anonymous group's shares are this node's own (never written)
        if found.op == "delete":
            self.hub.forget_cursor(name, announce=False)
            self._saved.pop(name, None)
        elif found.op == "move":
            self.hub.move_cursor(name, found.position, announce=False)
        elif book.adopt(name, found.position, found.skipped, found.seen_at):
            self._saved[name] = (found.position, found.skipped, found.seen_at)

    def _deleted(self, name: str) -> None:
        """Another node forgot ``name`` (or this one did: then it is gone here already)."""
        self._saved.pop(name, None)  # still here and connected: written again, its consumer is alive
        cursor = self.hub.book.get(name)
        if cursor is not None and not cursor.connected:
            self.hub.book.remove(name)

    # -- what this node writes --------------------------------------------------------
    def _unsaved_names(self) -> bool:
        """A named cursor never saved from here (a consumer's first connection)."""
        return any(name not in self._saved for name in self.hub.book.persistent(self.hub.clock()))

    async def save(self) -> None:
        """Write the operators' moves and deletes, delete the keys of cursors forgotten
        here, and write the named cursors that changed since the last save."""
        node, hub = self.node, self.hub
        try:
            while self._operations:
                name, position = self._operations[0]
                key = names.cursor_key(hub.name, name)
                op = SharedCursor(
                    name,
                    position or 0,
                    0,
                    hub.clock(),
                    node.name,
                    "move" if position is not None else "delete",
                )
                await node.bridge.call(node.a_cursor_put, key, encode_cursor(op))
                if position is None:
                    await node.bridge.call(node.a_cursor_delete, key)
                    self._saved.pop(name, None)
                self._operations.pop(0)
            current = hub.book.persistent(hub.clock())
            for name in [name for name in self._saved if name not in current]:
                await node.bridge.call(node.a_cursor_delete, names.cursor_key(hub.name, name))
                self._saved.pop(name, None)  # (the delete may have come back already)
            for name, state in current.items():
                if self._saved.get(name) == state:
                    continue
                value = encode_cursor(SharedCursor(name, *state, node.name))
                await node.bridge.call(node.a_cursor_put, names.cursor_key(hub.name, name), value)
                self._saved[name] = state
        except NatsUnavailable as exc:
            log.debug("stream %s: cursors not saved: %s", hub.name, exc)  # the next save retries
