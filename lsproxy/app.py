"""The running proxy: one root nursery owning the streams and the consumer server.

Each stream is a ``StreamRunner``: its hub (log + cursors, shared with the
server), its storage tasks (the durable log's writer, cursor and liveness
persistence) and its upstream connection supervisors, each part in a cancel
scope of its own, so a config reload can stop, start or restart one stream's
upstream without touching the others (``reload``). Credential sets are shared
token providers.

Shutdown order matters: stop accepting, close the upstream connections, close
every stream log (streaming consumers then end their bodies with the final
chunk), give the handlers ``shutdown_grace`` seconds, cancel what is left,
persist the cursors one last time, then let the storage writers make their
final commit.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable

import trio

from lsproxy.config import Config, Credentials, StorageConfig, StreamConfig
from lsproxy.hub.dedup import DedupWindow
from lsproxy.hub.durable import DurableLog
from lsproxy.hub.journal import UpstreamJournal
from lsproxy.hub.log import MemoryLog, StreamLog
from lsproxy.hub.store_files import (
    LockHandle,
    acquire_storage_lock,
    remove_pid_file,
    stream_db_path,
    write_pid_file,
)
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
    return (stream.url, stream.credentials, stream.upstream, stream.initial_reset)


async def open_hub(stream: StreamConfig, storage: StorageConfig) -> StreamHub:
    """The stream's hub on a durable or in-memory log, with its persisted state restored."""
    settings = stream.upstream
    log_: StreamLog
    if storage.durable:
        log_ = await DurableLog.open(
            stream_db_path(storage.dir, stream.name),
            retention_bytes=stream.retention_bytes,
            retention_seconds=stream.retention_seconds,
            memory_bytes=storage.memory_bytes,
            commit_interval=storage.commit_interval,
        )
    else:
        log_ = MemoryLog(stream.retention_bytes)
    dedup = DedupWindow(max_records=settings.dedup_window_records, max_seconds=settings.dedup_window_seconds)
    hub = StreamHub(
        stream.name, log_, connections=settings.connections, dedup=dedup if dedup.enabled else None
    )
    if isinstance(log_, DurableLog):
        hub.book.restore(log_.load_cursors())
        if hub.dedup is not None:
            # Live Stream backfills from where the last life stopped: recognise that overlap.
            hub.dedup.seed(log_.recent_records(settings.dedup_window_records), time.time())
        recovered = log_.status().get("recovered")
        if recovered:
            log.error("stream %s: store recovered: %s", stream.name, recovered)
        log.info(
            "stream %s: store %s opened at offset %d (%d named cursors)",
            stream.name, log_.path, log_.next_offset, len(hub.book),
        )  # fmt: skip
    return hub


class StreamRunner:
    """One stream's background work: storage tasks and upstream supervisors."""

    def __init__(
        self, config: StreamConfig, hub: StreamHub, tokens: TokenProvider, storage: StorageConfig
    ) -> None:
        self.config = config
        self.hub = hub
        self.tokens = tokens
        self.storage = storage
        self.upstream_scope = trio.CancelScope()
        self.storage_scope = trio.CancelScope()
        self.done = trio.Event()  # the upstream connections are closed
        durable = hub.log if isinstance(hub.log, DurableLog) else None
        self.journal = (
            UpstreamJournal(
                durable,
                heartbeat_interval=storage.heartbeat_interval,
                commit_interval=storage.commit_interval,
            )
            if durable is not None
            else None
        )

    async def run_storage(self) -> None:
        """The durable log's writer plus cursor and liveness persistence, until cancelled."""
        durable = self.hub.log
        if not isinstance(durable, DurableLog):
            return
        with self.storage_scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(durable.run)
                    while True:
                        self.persist()
                        await trio.sleep(min(self.storage.heartbeat_interval, self.storage.commit_interval))
            finally:
                self.persist()
                await durable.aclose()

    def persist(self) -> None:
        """Hand the current cursors (and liveness) to the log's next commit."""
        durable = self.hub.log
        if isinstance(durable, DurableLog):
            durable.save_cursors(self.hub.book.persistent())
            if self.journal is not None and any(u.state == "streaming" for u in self.hub.upstreams):
                self.journal.alive()

    async def run_upstream(self, replaces: StreamRunner | None = None) -> None:
        """Supervise every upstream connection of the stream until cancelled. The first
        attempts wait ``reconnect_delay`` after a loss this life did not see: a previous
        proxy's (from the journal), or a replaced runner's closed connections."""
        stream = self.config
        delay = stream.upstream.reconnect_delay
        not_before = None
        try:
            if replaces is not None:
                await replaces.done.wait()
                not_before = trio.current_time() + delay
            elif self.journal is not None and (earliest := self.journal.earliest_attempt(delay)) is not None:
                wait = earliest - time.time()
                if wait > 0:
                    log.info("stream %s: the previous run's connection ended recently", stream.name)
                    not_before = trio.current_time() + wait
            with self.upstream_scope:
                async with trio.open_nursery() as nursery:
                    for i, status in enumerate(self.hub.upstreams):
                        name = stream.name if len(self.hub.upstreams) == 1 else f"{stream.name}#{i + 1}"
                        attempt = functools.partial(stream_once, stream, self.hub, self.tokens, connection=i)
                        nursery.start_soon(
                            functools.partial(
                                supervise,
                                name,
                                stream.upstream,
                                status,
                                attempt,
                                not_before=not_before,
                                journal=self.journal,
                                stream=stream.name,
                                connection=i + 1,
                            )
                        )
        finally:
            self.done.set()


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
            metrics_max_consumers=server.metrics_max_consumers,
        )
        self._stop = trio.Event()
        self._nursery: trio.Nursery | None = None

    def request_shutdown(self) -> None:
        self._stop.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``request_shutdown``; ``task_status`` gets the bound addresses.
        Raises StoreError (storage locked, damaged beyond repair) or BindError before serving."""
        storage_dir = self.config.storage.dir
        # Two proxies on one storage dir would open two upstream connections per stream.
        # The pid file (for `lsproxy reload`) is written only once the lock is ours.
        lock: LockHandle | None = acquire_storage_lock(storage_dir) if self.config.storage.durable else None
        write_pid_file(storage_dir)
        try:
            hubs = {s.name: await open_hub(s, self.config.storage) for s in self.config.streams}
            async with trio.open_nursery() as root:
                self._nursery = root
                addresses = await root.start(self.server.run)
                root.start_soon(self.server.metrics.loop_lag.run)
                for stream in self.config.streams:
                    self._start_stream(stream, hubs[stream.name])
                for host, port in addresses:
                    log.info(
                        "serving consumers on http://%s:%d", host if ":" not in host else f"[{host}]", port
                    )
                task_status.started(addresses)
                await self._stop.wait()
                await self._shutdown()
                root.cancel_scope.cancel()  # token refreshers
        finally:
            remove_pid_file(storage_dir)
            if lock is not None:
                lock.release()

    async def _shutdown(self) -> None:
        log.info("shutting down: closing upstream connections and consumer streams")
        self.server.stop_accepting()
        for runner in self.runners.values():
            runner.upstream_scope.cancel()
        with trio.move_on_after(self.config.server.shutdown_grace):
            for runner in self.runners.values():
                await runner.done.wait()  # no append after the logs close
        for hub in self.hubs.values():
            hub.close()
        with trio.move_on_after(self.config.server.shutdown_grace):
            await self.server.finished.wait()
        self.server.cancel_handlers()
        with trio.move_on_after(self.config.server.shutdown_grace, shield=True):
            await self.server.finished.wait()  # handlers detach their cursors as they go
        for runner in self.runners.values():
            runner.storage_scope.cancel()  # a last persist and a final commit each

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
        self, stream: StreamConfig, hub: StreamHub, replaces: StreamRunner | None = None
    ) -> None:
        tokens = self._provider(stream.credentials)
        hub.info = {"url": stream.url, "credentials": stream.credentials.source}
        hub.token_status = tokens.status
        self.hubs[stream.name] = hub
        runner = StreamRunner(stream, hub, tokens, self.config.storage)
        self.runners[stream.name] = runner
        assert self._nursery is not None
        if replaces is None:
            self._nursery.start_soon(runner.run_storage)
        else:
            runner.storage_scope = replaces.storage_scope  # the log (and its writer) carry on
        self._nursery.start_soon(runner.run_upstream, replaces)

    # -- reload ---------------------------------------------------------------
    async def reload(self, new: Config) -> list[str]:
        """Apply a new config: untouched streams keep their connections; returns what changed."""
        changes = []
        if new.server != self.config.server or new.storage != self.config.storage:
            changes.append("[server] and [storage] changes need a restart; kept the running ones")
            new = _with_running_server(new, self.config)
        old_streams = {s.name: s for s in self.config.streams}
        new_streams = {s.name: s for s in new.streams}
        for name in old_streams.keys() - new_streams.keys():
            runner = self.runners.pop(name)
            runner.upstream_scope.cancel()
            self.hubs.pop(name).close()  # its consumers get a clean end of stream
            runner.storage_scope.cancel()
            changes.append(f"stream {name}: removed")
        for name, stream in new_streams.items():
            old = old_streams.get(name)
            if old is None:
                self._start_stream(stream, await open_hub(stream, new.storage))
                changes.append(f"stream {name}: added")
            elif _upstream_identity(old) != _upstream_identity(stream):
                old_runner = self.runners[name]
                old_runner.upstream_scope.cancel()
                hub = self.hubs[name]
                if stream.upstream.connections != len(hub.upstreams):
                    hub.resize_upstreams(stream.upstream.connections)
                self._start_stream(stream, hub, replaces=old_runner)
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


def _with_running_server(new: Config, running: Config) -> Config:
    return dataclasses.replace(new, server=running.server, storage=running.storage)


async def _run_in_scope(scope: trio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await run()
