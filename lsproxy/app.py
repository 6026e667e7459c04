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
from typing import TYPE_CHECKING

import trio

from lsproxy.config import Config, Credentials, StorageConfig, StreamConfig
from lsproxy.hub.dedup import DedupWindow
from lsproxy.hub.durable import DurableLog
from lsproxy.hub.journal import UpstreamJournal
from lsproxy.hub.journal_rule import upstream_key
from lsproxy.hub.log import MemoryLog, StreamLog
from lsproxy.hub.store_files import (
    LockHandle,
    acquire_storage_lock,
    remove_pid_file,
    stream_db_path,
    write_pid_file,
)
from lsproxy.hub.stream import StreamHub
from lsproxy.serve.auth import AccessControl
from lsproxy.serve.consumer import StreamSettings
from lsproxy.serve.routes import Router
from lsproxy.serve.server import ConsumerServer
from lsproxy.serve.tls import ServerTls
from lsproxy.upstream.connector import stream_once
from lsproxy.upstream.credentials import TokenProvider, make_provider
from lsproxy.upstream.supervisor import ReconnectAnswer, SupervisorControl, supervise

if TYPE_CHECKING:
    from lsproxy.cluster.mode import ClusterMode

log = logging.getLogger("lsproxy")

SEED_STEP = 4096  # records whose ids are scanned between checkpoints


def _upstream_identity(stream: StreamConfig) -> tuple[object, ...]:
    """What, when changed, needs new upstream connections (retention and routes do not)."""
    return (stream.url, stream.credentials, stream.upstream, stream.initial_reset)


async def open_hub(
    stream: StreamConfig, storage: StorageConfig, journal: UpstreamJournal, cluster: ClusterMode | None = None
) -> StreamHub:
    """The stream's hub on a durable, in-memory or (cluster mode) JetStream log, with its
    persisted state restored."""
    settings = stream.upstream
    log_: StreamLog
    if cluster is not None:
        log_ = cluster.open_log(stream, storage)
    elif storage.durable:
        path = stream_db_path(storage.dir, stream.name)
        journal.check_store(path, stream.name)  # a store lost while stopped is an ERROR, not a fresh start
        log_ = await DurableLog.open(
            path,
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
    if cluster is not None:
        hub.unavailable = cluster.unavailable
    if isinstance(log_, DurableLog):
        hub.book.restore(log_.load_cursors())
        if hub.dedup is not None:
            # Live Stream backfills from where the last life stopped: recognise that overlap.
            await _seed_dedup(hub.dedup, log_, settings.dedup_window_records)
        recovered = log_.status().get("recovered")
        if recovered:
            log.error("stream %s: store recovered: %s", stream.name, recovered)
        log.info(
            "stream %s: store %s opened at offset %d (%d named cursors)",
            stream.name, log_.path, log_.next_offset, len(hub.book),
        )  # fmt: skip
    return hub


async def _seed_dedup(dedup: DedupWindow, log_: DurableLog, count: int) -> None:
    """Seed ``dedup`` with the newest ``count`` stored records without stalling the event
    loop (a reload opens stores while serving): the records are copied out in a worker
    thread (nothing else uses this log yet), their ids scanned in steps."""
    records = await trio.to_thread.run_sync(log_.recent_records, count)
    now = time.time()
    for start in range(0, len(records), SEED_STEP):
        dedup.seed(records[start : start + SEED_STEP], now)
        await trio.lowlevel.checkpoint()


class StreamRunner:
    """One stream's background work: storage tasks and upstream supervisors."""

    def __init__(
        self,
        config: StreamConfig,
        hub: StreamHub,
        tokens: TokenProvider,
        storage: StorageConfig,
        journal: UpstreamJournal,
        cluster: ClusterMode | None = None,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.hub = hub
        self.tokens = tokens
        self.storage = storage
        self.journal = journal
        self.upstream_scope = trio.CancelScope()
        self.storage_scope = trio.CancelScope()
        self.done = trio.Event()  # the upstream connections are closed
        self.controls = [SupervisorControl() for _ in hub.upstreams]  # the admin API's reconnect

    @property
    def upstream(self) -> str:
        return upstream_key(self.config.url)

    async def run_storage(self) -> None:
        """The durable log's writer plus cursor and liveness persistence, until cancelled."""
        durable = self.hub.log
        if self.cluster is not None:
            with self.storage_scope:
                await self.cluster.run_stream(self.hub)
            return
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
        """Hand the current cursors to the log's next commit."""
        durable = self.hub.log
        if isinstance(durable, DurableLog):
            durable.save_cursors(self.hub.book.persistent())
            self.note_store()

    def note_store(self) -> None:
        """Tell the journal the store exists and how far its log reaches (a lost one is told)."""
        if isinstance(self.hub.log, DurableLog):
            self.journal.note_store(self.hub.log.path, self.hub.log.next_offset)

    async def run_upstream(self, closing: list[StreamRunner], replaces: StreamRunner | None = None) -> None:
        """Supervise every upstream connection of the stream until cancelled. The first
        attempts wait until ``reconnect_delay`` after the last loss of this upstream, under
        any name: ``closing`` runners (removed or replaced in a reload) are waited for first,
        then the journal says (this life's losses, or a previous proxy's). A replaced runner's
        close counts even if it connected elsewhere (a url change)."""
        stream = self.config
        delay = stream.upstream.reconnect_delay
        hold = None
        try:
            if closing:
                for status in self.hub.upstreams:  # closing takes a moment; the wait follows
                    status.state, status.next_attempt_at = "backoff", time.time() + delay
                for runner in closing:
                    await runner.done.wait()
            not_before = self.journal.not_before(stream.url, delay)
            if replaces is not None:
                not_before = max(not_before or 0.0, time.time() + delay)
            if not_before is not None and (wait := not_before - time.time()) > 0:
                log.info(
                    "stream %s: waiting out reconnect_delay after its upstream's last connection", stream.name
                )
                hold = trio.current_time() + wait
            with self.upstream_scope:
                async with trio.open_nursery() as nursery:
                    for i, status in enumerate(self.hub.upstreams):
                        name = stream.name if len(self.hub.upstreams) == 1 else f"{stream.name}#{i + 1}"
                        attempt = functools.partial(stream_once, stream, self.hub, self.tokens, connection=i)
                        run = functools.partial(
                            supervise,
                            name,
                            stream.upstream,
                            status,
                            attempt,
                            control=self.controls[i],
                            stream=stream.name,
                            connection=i + 1,
                        )
                        if self.cluster is not None:  # only while this node holds the slot's lease
                            nursery.start_soon(self.cluster.run_slot, stream, i, status, run, hold)
                            continue
                        nursery.start_soon(
                            functools.partial(
                                run, not_before=hold, journal=self.journal.connection(stream.url)
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
        self.closing: list[StreamRunner] = []  # removed or replaced runners, until their connections close
        self.journal: UpstreamJournal | None = None
        self.cluster = _cluster_mode(config)
        server = config.server
        self.access = AccessControl(config.consumers)
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
                tcp_user_timeout=server.tcp_user_timeout,
                anonymous_resume=server.anonymous_resume == "api_key",
                cors_allow_origins=frozenset(server.cors_allow_origins),
            ),
            access=self.access,
            # The files were checked when the config loaded; a TlsFileError here means they changed since.
            tls=ServerTls(server.tls_cert, server.tls_key) if server.tls_cert and server.tls_key else None,
            reconnect=self.reconnect,
            metrics_max_consumers=server.metrics_max_consumers,
        )
        if self.cluster is not None:
            self.server.cluster = self.cluster
        self._stop = trio.Event()
        self._nursery: trio.Nursery | None = None

    def request_shutdown(self) -> None:
        self._stop.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``request_shutdown``; ``task_status`` gets the bound addresses.
        Raises StoreError (storage locked, damaged beyond repair) or BindError before serving."""
        storage = self.config.storage
        # Two proxies on one storage dir would open two upstream connections per stream (and
        # share one journal), durable or not. The pid file (for `lsproxy reload`) is written
        # only once the lock is ours.
        lock: LockHandle = acquire_storage_lock(storage.dir)
        write_pid_file(storage.dir)
        try:
            journal = self.journal = await trio.to_thread.run_sync(
                functools.partial(
                    UpstreamJournal.load,
                    storage.dir,
                    heartbeat_interval=storage.heartbeat_interval,
                    earlier_run=lock.existed,  # every earlier run took the lock
                )
            )
            hubs = {s.name: await open_hub(s, storage, journal, self.cluster) for s in self.config.streams}
            if storage.durable and self.cluster is None:
                journal.forget_stores_except(stream_db_path(storage.dir, s.name) for s in self.config.streams)
            async with trio.open_nursery() as root:
                self._nursery = root
                root.start_soon(journal.run)
                if self.cluster is not None:
                    await root.start(self.cluster.run)  # started at once: NATS may be down
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
            remove_pid_file(storage.dir)
            lock.release()

    async def _shutdown(self) -> None:
        log.info("shutting down: closing upstream connections and consumer streams")
        self.server.stop_accepting()
        for runner in self.runners.values():
            runner.upstream_scope.cancel()
        with trio.move_on_after(self.config.server.shutdown_grace):
            for runner in [*self.runners.values(), *self.closing]:
                await runner.done.wait()  # no append after the logs close
        assert self.journal is not None
        for runner in self.runners.values():
            runner.note_store()
        await self.journal.flush()  # the ends: the next start waits from them exactly
        for hub in self.hubs.values():
            hub.close()
        with trio.move_on_after(self.config.server.shutdown_grace):
            await self.server.finished.wait()
        self.server.cancel_handlers()
        with trio.move_on_after(self.config.server.shutdown_grace, shield=True):
            await self.server.finished.wait()  # handlers detach their cursors as they go
        for runner in self.runners.values():
            # The last persist must precede the cancellation: the log's writer makes its final
            # commit as soon as it is cancelled, and a snapshot handed over later is never written.
            runner.persist()
            runner.storage_scope.cancel()  # a final commit each

    def reconnect(self, stream: str) -> list[ReconnectAnswer]:
        """The admin API asks for an upstream attempt now (each connection decides by the rule)."""
        runner = self.runners.get(stream)
        return [control.reconnect() for control in runner.controls] if runner is not None else []

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
        assert self.journal is not None
        tokens = self._provider(stream.credentials)
        hub.info = {"url": stream.url, "credentials": stream.credentials.source}
        hub.token_status = tokens.status
        hub.groups.anonymous_linger = self.config.server.anonymous_group_linger
        hub.resume_points.linger = self.config.server.anonymous_resume_linger
        self.hubs[stream.name] = hub
        runner = StreamRunner(stream, hub, tokens, self.config.storage, self.journal, self.cluster)
        self.runners[stream.name] = runner
        assert self._nursery is not None
        if replaces is None:
            self._nursery.start_soon(runner.run_storage)
        else:
            runner.storage_scope = replaces.storage_scope  # the log (and its writer) carry on
        self.closing = [r for r in self.closing if not r.done.is_set()]
        closing = [r for r in self.closing if r.upstream == runner.upstream or r is replaces]
        self._nursery.start_soon(runner.run_upstream, closing, replaces)

    # -- reload ---------------------------------------------------------------
    async def reload(self, new: Config) -> list[str]:
        """Apply a new config: untouched streams keep their connections; returns what changed."""
        changes = []
        if (new.server, new.storage, new.cluster) != (
            self.config.server,
            self.config.storage,
            self.config.cluster,
        ):
            changes.append("[server], [storage] and [cluster] changes need a restart; kept the running ones")
            new = _with_running_server(new, self.config)
        old_streams = {s.name: s for s in self.config.streams}
        new_streams = {s.name: s for s in new.streams}
        assert self.journal is not None
        for name in old_streams.keys() - new_streams.keys():
            runner = self.runners.pop(name)
            runner.upstream_scope.cancel()
            self.closing.append(runner)
            self.hubs.pop(name).close()  # its consumers get a clean end of stream
            runner.storage_scope.cancel()
            changes.append(f"stream {name}: removed")
        for name, stream in new_streams.items():
            old = old_streams.get(name)
            if old is None:
                self._start_stream(stream, await open_hub(stream, new.storage, self.journal, self.cluster))
                changes.append(f"stream {name}: added")
            elif _upstream_identity(old) != _upstream_identity(stream):
                old_runner = self.runners[name]
                old_runner.upstream_scope.cancel()
                self.closing.append(old_runner)
                hub = self.hubs[name]
                if stream.upstream.connections != len(hub.upstreams):
                    hub.resize_upstreams(stream.upstream.connections)
                self._start_stream(stream, hub, replaces=old_runner)
                changes.append(f"stream {name}: upstream settings changed, reconnecting after the delay")
            elif old != stream:
                self.hubs[name].log.retention_bytes = stream.retention_bytes
                self.runners[name].config = stream
                changes.append(f"stream {name}: updated in place")
        changes += self._reload_access(new)
        in_use = {stream.credentials for stream in new.streams}
        for credentials in self.providers.keys() - in_use:
            self.providers.pop(credentials)[1].cancel()
        self.server.router = Router(new.routes)
        self.config = new
        return changes

    def _reload_access(self, new: Config) -> list[str]:
        """New consumer tables apply at once; certificates are re-read from the same files."""
        changes = []
        if self.server.tls is not None:
            changes.append(self.server.tls.reload())
        server = self.config.server  # the running one: [server] changes wait for a restart
        if new.consumers == self.access.consumers:
            return changes
        if not new.consumers and not server.loopback and not server.allow_unauthenticated:
            changes.append(
                "consumers: kept the running [consumers] tables: without them this listener "
                "would serve everyone (allow_unauthenticated is not set)"
            )
            return changes
        self.access.replace_consumers(new.consumers)
        changes.append(f"consumers: {len(new.consumers)} [consumers] tables apply to new requests")
        return changes


def _with_running_server(new: Config, running: Config) -> Config:
    return dataclasses.replace(new, server=running.server, storage=running.storage, cluster=running.cluster)


def _cluster_mode(config: Config) -> ClusterMode | None:
    if config.cluster is None:
        return None
    from lsproxy.cluster.mode import ClusterMode  # nats-py is imported only in cluster mode

    return ClusterMode(config.cluster)


async def _run_in_scope(scope: trio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await run()
