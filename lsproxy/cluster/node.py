"""ClusterNode: this node's NATS connection, its KV buckets, and what /status shows of it.

The NATS client lives on the asyncio bridge's thread; every ``_a_*`` method here
runs there (through ``bridge.call``) and is the one place where nats-py's
exceptions become ours (``NatsUnavailable``, or ``None`` for "someone else has
it"). The trio side never imports nats.

Start-up never waits for NATS: ``run`` reports started at once, then connects,
retrying with a growing pause (0.5 s to 5 s) and logging the first failure and
the recovery. Until the buckets exist, ``ready`` is unset: no lease is tried,
no upstream connection opened, and ``/readyz`` answers 503 while ``/healthz``
stays 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
import trio
from nats.js import api

from lsproxy.cluster import names
from lsproxy.cluster.bridge import AsyncioBridge, Inbox
from lsproxy.config import ClusterConfig
from lsproxy.secret import redact

log = logging.getLogger("lsproxy.cluster")

#: A KV watch's delivery: (key, value), or (key, None) for a delete.
Watched = tuple[str, bytes | None]

RETRY_FIRST, RETRY_MAX = 0.5, 5.0
API_TIMEOUT = 5.0


class NatsUnavailable(Exception):
    """NATS or JetStream could not do what was asked; the message is safe to log."""


class JournalWrite(enum.Enum):
    WRITTEN = "written"
    CONFLICT = "conflict"  # the entry moved on since the chain's revision: someone else wrote
    FAILED = "failed"  # not known to be written (NATS trouble; it may still land)


@dataclass(eq=False)
class JournalChain:
    """One lease holding's writes to its slot's journal entry, kept on the asyncio side:
    one at a time, each conditional on the revision the previous one left (or the one
    read). So a late write of an earlier holder (held up in a stalled server or network)
    is refused once this holder has written, instead of overwriting its record."""

    revision: int
    written: int = 0  # the newest version written
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}")[:200]


class ClusterNode:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.name = config.node
        self.bridge = AsyncioBridge()
        self.ready = trio.Event()  # connected once and the buckets exist
        self.lease_ttl = config.lease_ttl  # the lease bucket's TTL once known (it rules)
        self.connected = False
        self.server: str | None = None
        self.last_error: str | None = None
        self.slots: dict[str, Any] = {}  # slot key -> its SlotRunner (for /status)
        self.logs: dict[str, Any] = {}  # stream name -> its JetStreamLog (for /status)
        self._nc: Any = None
        self._js: Any = None
        self._kv: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.bridge.start()
        task_status.started()
        try:
            await self._retry("connect to NATS", self._a_connect)
            await self._retry("create the cluster KV buckets", self._a_buckets)
            log.info(
                "cluster node %s: connected to NATS at %s, lease_ttl %.1f s",
                self.name, self.server, self.lease_ttl,
            )  # fmt: skip
            self.ready.set()
            await trio.sleep_forever()
        finally:
            with trio.move_on_after(3, shield=True):
                try:
                    await self.bridge.call(self._a_close)
                except Exception as exc:
                    log.debug("closing the NATS connection: %s", _describe(exc))
                await self.bridge.stop()

    async def _retry(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        pause, failures = RETRY_FIRST, 0
        while True:
            try:
                await self.bridge.call(step)
            except Exception as exc:
                self.last_error = _describe(exc)
                if failures == 0:
                    log.error("cluster node %s: cannot %s (%s); retrying", self.name, what, self.last_error)
                failures += 1
                await trio.sleep(pause)
                pause = min(RETRY_MAX, pause * 2)
                continue
            if failures:
                log.info("cluster node %s: could %s after %d failures", self.name, what, failures)
            self.last_error = None
            return

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        return {
            "node": self.name,
            "ready": self.ready.is_set(),
            "nats": {"connected": self.connected, "server": self.server, "last_error": self.last_error},
            "lease_ttl": self.lease_ttl,
            "leases": {key: slot.status(now) for key, slot in sorted(self.slots.items()) if slot.holds(now)},
            "slots": {key: slot.status(now) for key, slot in sorted(self.slots.items())},
            "jetstream": {name: jslog.status() for name, jslog in sorted(self.logs.items())},
        }

    @contextlib.asynccontextmanager
    async def watching(self, bucket: str, prefix: str, what: str) -> AsyncIterator[Inbox[Watched]]:
        """The keys ``<prefix>.>`` of KV ``bucket`` into the inbox yielded: every current
        value first, then each change, as (key, value), or (key, None) for a delete.
        Opening the watch is retried every second while NATS cannot; it is stopped on
        exit (bounded, so a shutdown with NATS gone does not hang). ``what``: for the log."""
        inbox: Inbox[Watched] = self.bridge.inbox()

        async def deliver(key: str, value: bytes | None) -> None:
            await inbox.put((key, value))

        watcher: Any = None
        while watcher is None:
            try:
                watcher = await self.bridge.call(self._a_watch, bucket, prefix, deliver)
            except NatsUnavailable as exc:
                log.warning("cannot watch %s: %s", what, exc)
                await trio.sleep(1.0)
        try:
            yield inbox
        finally:
            with trio.move_on_after(2, shield=True):
                try:
                    await self.bridge.call(self._a_stop_watch, watcher)
                except Exception as exc:
                    log.debug("stopping the watch of %s: %s", what, exc)

    # -- asyncio side: connection and buckets ---------------------------------------------
    async def _a_connect(self) -> None:
        cfg = self.config
        options: dict[str, Any] = {
            "servers": list(cfg.nats),
            "dont_randomize": True,  # seeds in the order given: the nearest first
            "name": f"lsproxy-{cfg.node}",
            "connect_timeout": 2,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "ping_interval": 5,
            "max_outstanding_pings": 2,
            "disconnected_cb": self._a_disconnected,
            "reconnected_cb": self._a_reconnected,
            "error_cb": self._a_error,
        }
        if cfg.token is not None:
            options["token"] = cfg.token.reveal()
        if cfg.user is not None and cfg.password is not None:
            options["user"], options["password"] = cfg.user, cfg.password.reveal()
        if cfg.credentials_file is not None:
            options["user_credentials"] = cfg.credentials_file
        if cfg.tls_ca is not None:
            options["tls"] = ssl.create_default_context(cafile=cfg.tls_ca)
        try:
            nc = await nats.connect(**options)
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None
        self._nc, self._js = nc, nc.jetstream(timeout=API_TIMEOUT)
        self.connected, self.server = True, _server_of(nc)

    async def _a_disconnected(self) -> None:
        if self.connected:
            log.warning("cluster node %s: disconnected from NATS", self.name)
        self.connected = False

    async def _a_reconnected(self) -> None:
        self.connected, self.server = True, _server_of(self._nc)
        log.info("cluster node %s: reconnected to NATS at %s", self.name, self.server)

    async def _a_error(self, exc: Exception) -> None:
        self.last_error = _describe(exc)
        log.debug("cluster node %s: NATS error: %s", self.name, self.last_error)

    async def _a_close(self) -> None:
        self.connected = False  # a deliberate close: no "disconnected" warning
        if self._nc is not None:
            await self._nc.close()

    async def _a_buckets(self) -> None:
        replicas = self.config.replicas
        try:
            leases = await self._a_bucket(names.LEASE_BUCKET, replicas, ttl=self.config.lease_ttl)
            ttl = (await leases.status()).ttl
            if ttl and abs(ttl - self.config.lease_ttl) > 1e-3:
                # The bucket's TTL is what expires keys: a holder must go by it.
                log.warning(
                    "cluster node %s: the lease bucket's TTL is %.1f s, not lease_ttl %.1f s "
                    "(an earlier configuration created it); using %.1f s",
                    self.name, ttl, self.config.lease_ttl, ttl,
                )  # fmt: skip
                self.lease_ttl = ttl
            self._kv[names.LEASE_BUCKET] = leases
            self._kv[names.JOURNAL_BUCKET] = await self._a_bucket(names.JOURNAL_BUCKET, replicas)
            self._kv[names.CURSOR_BUCKET] = await self._a_bucket(names.CURSOR_BUCKET, replicas)
            self._kv[names.MEMBER_BUCKET] = await self._a_bucket(
                names.MEMBER_BUCKET, replicas, ttl=self.lease_ttl
            )
        except NatsUnavailable:
            raise
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

    async def _a_bucket(self, bucket: str, replicas: int, ttl: float | None = None) -> Any:
        try:
            return await self._js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            pass
        return await self._js.create_key_value(
            bucket=bucket, history=1, replicas=replicas, ttl=ttl, storage=api.StorageType.FILE
        )

    # -- asyncio side: leases ---------------------------------------------------------
    async def a_lease_create(self, key: str, value: bytes) -> int | None:
        """The new revision, or None: someone holds the key."""
        try:
            return int(await self._kv[names.LEASE_BUCKET].create(key, value))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

    async def a_lease_update(self, key: str, value: bytes, revision: int) -> int | None:
        """The new revision, or None: the key is not at ``revision`` (someone else's now)."""
        try:
            return int(await self._kv[names.LEASE_BUCKET].update(key, value, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

    async def a_lease_delete(self, key: str, revision: int) -> None:
        try:
            await self._kv[names.LEASE_BUCKET].delete(key, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # not ours any more
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

    # -- asyncio side: the slot journal ----------------------------------------------------
    async def a_journal_get(self, key: str) -> tuple[bytes | None, int]:
        """The slot's journal value (None when there is none) and its revision (0: none)."""
        try:
            entry = await self._kv[names.JOURNAL_BUCKET].get(key)
        except nats.js.errors.KeyNotFoundError as exc:  # also a deleted key (with its entry)
            return None, int(exc.entry.revision) if exc.entry is not None else 0
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None
        return bytes(entry.value or b""), int(entry.revision)

    async def a_journal_put(self, key: str, value: bytes, version: int, chain: JournalChain) -> JournalWrite:
        """Write the slot's journal value as the next link of ``chain``: in ``version`` order
        (an older one is skipped once a newer one is written), and only over the revision
        the chain last saw (CONFLICT: someone else wrote since)."""
        async with chain.lock:
            if version <= chain.written:
                return JournalWrite.WRITTEN
            try:
                chain.revision = int(await self._kv[names.JOURNAL_BUCKET].update(key, value, last=chain.revision))
            except nats.js.errors.KeyWrongLastSequenceError:
                return JournalWrite.CONFLICT
            except Exception as exc:
                log.debug("journal %s: %s", key, _describe(exc))
                return JournalWrite.FAILED
            chain.written = version
            return JournalWrite.WRITTEN

    async def a_journal_refresh(self, key: str, chain: JournalChain) -> bytes | None:
        """Move ``chain`` on to the entry's current revision; its value (None: none)."""
        async with chain.lock:
            value, chain.revision = await self.a_journal_get(key)
            return value

    # -- asyncio side: cursors ---------------------------------------------------------
    async def a_cursor_put(self, key: str, value: bytes) -> None:
        try:
            await self._kv[names.CURSOR_BUCKET].put(key, value)
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

    async def a_cursor_delete(self, key: str) -> None:
        try:
            await self._kv[names.CURSOR_BUCKET].delete(key)
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

    async def _a_watch(
        self, bucket: str, prefix: str, deliver: Callable[[str, bytes | None], Awaitable[None]]
    ) -> Any:
        """Watch ``<prefix>.>`` of ``bucket`` into ``deliver`` (see ``watching``); returns
        the watcher (stop it with ``_a_stop_watch``)."""
        try:
            watcher = await self._kv[bucket].watch(f"{prefix}.>")
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

        async def pump() -> None:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the initial values
                deleted = entry.operation is not None or entry.value is None
                await deliver(entry.key, None if deleted else bytes(entry.value))

        watcher.pump_task = asyncio.get_running_loop().create_task(pump())
        return watcher

    async def _a_stop_watch(self, watcher: Any) -> None:
        watcher.pump_task.cancel()
        try:
            await watcher.stop()
        except Exception as exc:
            log.debug("stopping a KV watch: %s", _describe(exc))

    # -- asyncio side: consumer group shares held (for share_claims.py) -----------------
    async def a_member_claim(self, key: str, value: bytes) -> tuple[int | None, str]:
        """(revision, "") when this node now holds ``key``; (None, holder) when another
        node does. A key left by this node (its member gone without a release) is
        taken back."""
        kv = self._kv[names.MEMBER_BUCKET]
        try:
            try:
                return int(await kv.create(key, value)), ""
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return int(await kv.create(key, value)), ""
            holder = names.member_node(bytes(entry.value or b""))
            if holder != self.name:
                return None, holder
            return int(await kv.update(key, value, last=entry.revision)), ""
        except nats.js.errors.KeyWrongLastSequenceError:
            return None, "?"
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

    async def a_member_renew(self, key: str, value: bytes, revision: int) -> int | None:
        """The new revision, or None: the key is not ours any more."""
        try:
            return int(await self._kv[names.MEMBER_BUCKET].update(key, value, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

    async def a_member_release(self, key: str, revision: int) -> None:
        try:
            await self._kv[names.MEMBER_BUCKET].delete(key, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

    # -- asyncio side: JetStream (for jslog.py) -------------------------------------------
    @property
    def js(self) -> Any:
        return self._js

    @property
    def nc(self) -> Any:
        return self._nc


def _server_of(nc: Any) -> str | None:
    url = getattr(nc, "connected_url", None)
    return None if url is None else f"{url.hostname}:{url.port}"


def wall_to_trio(wall: float) -> float:
    """A wall-clock moment on trio's clock (for deadlines): the same distance from now."""
    return trio.current_time() + (wall - time.time())
