"""The running proxy: one root nursery owning the streams and the consumer server.

Each stream is a ``StreamRunner``: its hub (log + cursors, shared with the
server) and its upstream connection supervisors, in a cancel scope of its own,
so a config reload can stop, start or restart one stream without touching the
others (``reload``). Credential sets are shared token providers.

Shutdown order matters: stop accepting, close the upstream connections, close
every stream log (streaming consumers then end their bodies with the final
chunk), give the handlers ``shutdown_grace`` seconds, cancel what is left.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import trio

from lsproxy.config import Config, Credentials, StreamConfig
from lsproxy.hub.dedup import DedupWindow
from lsproxy.hub.log import MemoryLog
from lsproxy.hub.stream import StreamHub
from lsproxy.serve.consumer import StreamSettings
from lsproxy.serve.routes import Router
from lsproxy.serve.server import ConsumerServer
from lsproxy.upstream.connector import stream_once
from lsproxy.upstream.credentials import TokenProvider, make_provider
from lsproxy.upstream.supervisor import supervise

log = logging.getLogger("lsproxy")


def _upstream_identity(stream: StreamConfig) -> tuple[object, ...]:
    """What, when changed, needs new upstream connections (retention and routes do not)."""
    return (stream.url, stream.credentials, stream.upstream)


class StreamRunner:
    """One stream's upstream side: its supervisors, in a cancel scope of their own."""

    def __init__(self, config: StreamConfig, hub: StreamHub, tokens: TokenProvider) -> None:
        self.config = config
        self.hub = hub
        self.tokens = tokens
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(self, replaces: StreamRunner | None = None) -> None:
        """Supervise every upstream connection of the stream until cancelled. When this
        runner ``replaces`` a stopped one, its connections count as lost when that one's
        are closed: the first attempts wait ``reconnect_delay`` from then."""
        stream = self.config
        not_before = None
        try:
            if replaces is not None:
                await replaces.done.wait()
                not_before = trio.current_time() + stream.upstream.reconnect_delay
            await self._supervise(not_before)
        finally:
            self.done.set()

    async def _supervise(self, not_before: float | None) -> None:
        stream = self.config
        with self.scope:
            async with trio.open_nursery() as nursery:
                for i, status in enumerate(self.hub.upstreams):
                    name = stream.name if len(self.hub.upstreams) == 1 else f"{stream.name}#{i + 1}"
                    attempt = functools.partial(stream_once, stream, self.hub, self.tokens, connection=i)
                    nursery.start_soon(
                        functools.partial(
                            supervise,
                            f"stream {name}",
                            stream.upstream,
                            status,
                            attempt,
                            not_before=not_before,
                        )
                    )


class Proxy:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.hubs: dict[str, StreamHub] = {}  # shared with the server: it looks streams up per request
        self.runners: dict[str, StreamRunner] = {}
        self.providers: dict[Credentials, tuple[TokenProvider, trio.CancelScope]] = {}
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
        self._nursery: trio.Nursery | None = None

    def request_shutdown(self) -> None:
        self._stop.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``request_shutdown``; ``task_status`` gets the bound addresses."""
        async with trio.open_nursery() as root:
            self._nursery = root
            addresses = await root.start(self.server.run)
            for stream in self.config.streams:
                self._start_stream(stream)
            for host, port in addresses:
                log.info("serving consumers on http://%s:%d", host if ":" not in host else f"[{host}]", port)
            task_status.started(addresses)
            await self._stop.wait()
            log.info("shutting down: closing upstream connections and consumer streams")
            self.server.stop_accepting()
            for runner in self.runners.values():
                runner.scope.cancel()
            for hub in self.hubs.values():
                hub.close()
            with trio.move_on_after(self.config.server.shutdown_grace):
                await self.server.finished.wait()
            self.server.cancel_handlers()
            root.cancel_scope.cancel()  # token refreshers

    # -- streams ------------------------------------------------------------
    def _provider(self, credentials: Credentials) -> TokenProvider:
        """One shared token provider per credential set, refreshing in the background."""
        if credentials not in self.providers:
            provider, scope = make_provider(credentials), trio.CancelScope()
            self.providers[credentials] = (provider, scope)
            assert self._nursery is not None
            self._nursery.start_soon(_run_in_scope, scope, provider.run)
        return self.providers[credentials][0]

    def _start_stream(
        self, stream: StreamConfig, *, hub: StreamHub | None = None, replaces: StreamRunner | None = None
    ) -> None:
        settings = stream.upstream
        if hub is None:
            dedup = DedupWindow(
                max_records=settings.dedup_window_records, max_seconds=settings.dedup_window_seconds
            )
            hub = StreamHub(
                stream.name,
                MemoryLog(stream.retention_bytes),
                connections=settings.connections,
                dedup=dedup if dedup.enabled else None,
            )
            self.hubs[stream.name] = hub
        tokens = self._provider(stream.credentials)
        hub.info = {"url": stream.url, "credentials": stream.credentials.source}
        hub.token_status = tokens.status
        runner = self.runners[stream.name] = StreamRunner(stream, hub, tokens)
        assert self._nursery is not None
        self._nursery.start_soon(runner.run, replaces)

    # -- reload ---------------------------------------------------------------
    def reload(self, new: Config) -> list[str]:
        """Apply a new config: untouched streams keep their connections; returns what changed."""
        changes = []
        if new.server != self.config.server:
            changes.append("[server] changes need a restart; kept the running server settings")
        old_streams = {s.name: s for s in self.config.streams}
        new_streams = {s.name: s for s in new.streams}
        for name in old_streams.keys() - new_streams.keys():
            self.runners.pop(name).scope.cancel()
            self.hubs.pop(name).close()  # its consumers get a clean end of stream
            changes.append(f"stream {name}: removed")
        for name, stream in new_streams.items():
            old = old_streams.get(name)
            if old is None:
                self._start_stream(stream)
                changes.append(f"stream {name}: added")
            elif _upstream_identity(old) != _upstream_identity(stream):
                old_runner = self.runners[name]
                old_runner.scope.cancel()
                hub = self.hubs[name]
                if stream.upstream.connections != len(hub.upstreams):
                    hub.resize_upstreams(stream.upstream.connections)
                self._start_stream(stream, hub=hub, replaces=old_runner)
                changes.append(f"stream {name}: upstream settings changed, reconnecting after the delay")
            elif old != stream:
                self.hubs[name].log.retention_bytes = stream.retention_bytes
                self.runners[name].config = stream
                changes.append(f"stream {name}: updated in place")
        in_use = {stream.credentials for stream in new.streams}
        for credentials in self.providers.keys() - in_use:
            self.providers.pop(credentials)[1].cancel()
        self.server.router = Router(new.routes)
        self.config = new
        return changes


async def _run_in_scope(scope: trio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await run()
