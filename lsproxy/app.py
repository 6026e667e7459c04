"""The running proxy: one root nursery owning the upstream supervisors and the server.

Shutdown order matters: stop accepting, close the upstream connections, close
every stream log (streaming consumers then end their bodies with the final
chunk), give the handlers ``shutdown_grace`` seconds, cancel what is left.
"""

from __future__ import annotations

import logging

import trio

from lsproxy.config import Config
from lsproxy.hub.stream import StreamHub
from lsproxy.serve.consumer import StreamSettings
from lsproxy.serve.server import ConsumerServer
from lsproxy.upstream.supervisor import supervise

log = logging.getLogger("lsproxy")


class Proxy:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.hubs: dict[str, StreamHub] = {}
        for stream in config.streams:
            hub = StreamHub(stream.name, stream.retention_bytes)
            hub.upstream.extra = {"url": stream.url, "credentials": stream.credentials.source}
            self.hubs[stream.name] = hub
        server = config.server
        self.server = ConsumerServer(
            self.hubs,
            config.routes,
            host=server.host,
            port=server.port,
            request_timeout=server.request_timeout,
            stream_settings=StreamSettings(
                heartbeat_interval=server.heartbeat_interval,
                write_timeout=server.write_timeout,
                replay_window_bytes=server.replay_window_bytes,
            ),
        )
        self._stop = trio.Event()

    def request_shutdown(self) -> None:
        self._stop.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``request_shutdown``; ``task_status`` gets the bound addresses."""
        async with trio.open_nursery() as root:
            upstreams = trio.CancelScope()
            root.start_soon(self._run_upstreams, upstreams)
            addresses = await root.start(self.server.run)
            for host, port in addresses:
                log.info("serving consumers on http://%s:%d", host if ":" not in host else f"[{host}]", port)
            task_status.started(addresses)
            await self._stop.wait()
            log.info("shutting down: closing upstream connections and consumer streams")
            self.server.stop_accepting()
            upstreams.cancel()
            for hub in self.hubs.values():
                hub.close()
            with trio.move_on_after(self.config.server.shutdown_grace):
                await self.server.finished.wait()
            self.server.cancel_handlers()

    async def _run_upstreams(self, scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for stream in self.config.streams:
                    nursery.start_soon(supervise, stream, self.hubs[stream.name])
