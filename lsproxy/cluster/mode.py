"""ClusterMode: what ``app.py`` asks of cluster mode, in one object.

``app.py`` makes its three choices through it when ``[cluster]`` is set: the
stream's log (``open_log``: a ``JetStreamLog`` instead of the SQLite one), the
stream's background work (``run_stream``: following and publishing, plus the
shared named cursors), and each upstream connection slot (``run_slot``: the
supervisor runs only while this node holds the slot's lease). ``status`` and
``ready`` feed ``/status`` and ``/readyz``.
"""

from __future__ import annotations

from typing import Any

import trio

from lsproxy.cluster import names
from lsproxy.cluster.cursor_sync import CursorSync
from lsproxy.cluster.jslog import JetStreamLog
from lsproxy.cluster.node import ClusterNode
from lsproxy.cluster.share_claims import ShareClaims
from lsproxy.cluster.slots import SlotRunner, Supervise
from lsproxy.config import ClusterConfig, StorageConfig, StreamConfig
from lsproxy.hub.journal_rule import upstream_key
from lsproxy.hub.stream import StreamHub, UpstreamStatus


class ClusterMode:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.node = ClusterNode(config)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The NATS connection, until cancelled; started at once (NATS may be down)."""
        await self.node.run(task_status=task_status)

    def open_log(self, stream: StreamConfig, storage: StorageConfig) -> JetStreamLog:
        jslog = JetStreamLog(
            self.node,
            stream,
            memory_bytes=storage.memory_bytes,
            buffer_bytes=self.config.publish_buffer_bytes,
        )
        self.node.logs[stream.name] = jslog
        return jslog

    @staticmethod
    def unavailable(hub: StreamHub) -> str | None:
        """Why consumers of ``hub`` cannot be served yet, or None."""
        jslog = hub.log
        if isinstance(jslog, JetStreamLog) and not jslog.ready.is_set():
            return "the cluster's JetStream stream is not reachable yet"
        return None

    async def run_stream(self, hub: StreamHub) -> None:
        """Follow and publish the stream's JetStream stream, share its named cursors and
        its group members."""
        jslog = hub.log
        assert isinstance(jslog, JetStreamLog)
        claims = ShareClaims(self.node, hub)
        claims.install()  # before consumers are served: every member's share is claimed
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(jslog.run)
                await jslog.ready.wait()
                nursery.start_soon(CursorSync(self.node, hub).run)
                nursery.start_soon(claims.run)
        finally:
            if self.node.logs.get(hub.name) is jslog:
                del self.node.logs[hub.name]

    async def run_slot(
        self,
        stream: StreamConfig,
        slot: int,
        status: UpstreamStatus,
        supervise: Supervise,
        hold: float | None,
    ) -> None:
        """Supervise upstream connection ``slot`` of ``stream`` while holding its lease."""
        status.state = "standby"
        await self.node.ready.wait()  # the lease bucket's TTL is known from here on
        key = names.slot_key(upstream_key(stream.url), slot)
        runner = SlotRunner(
            self.node, stream.name, slot, key, status, reconnect_delay=stream.upstream.reconnect_delay
        )
        await runner.run(supervise, hold)

    def ready(self) -> bool:
        return self.node.ready.is_set() and self.node.connected

    def status(self) -> dict[str, Any]:
        return self.node.status()
