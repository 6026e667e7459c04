"""UpstreamJournal: the 60-second rule across reloads and restarts, per upstream.

Theory of operation
-------------------
One journal per proxy, in ``<storage dir>/upstream-journal.json``, whatever
``[storage] durable`` says (the rule and the format: ``journal_rule.py``).
The file is small and replaced whole: written to a temporary file, fsynced,
renamed over the old one, directory fsynced; a reader sees the old or the new
journal, never half of one.

Writes never run on the event loop: ``run`` owns a writer task that renders
the journal and hands it to a worker thread whenever something changed.
Attempts and ends wake it at once; an attempt *waits* until its entry is
durable (at most ``ATTEMPT_WRITE_SECONDS``: a failing disk is logged, never a
reason to stop streaming). "Still connected" marks and store offsets are set
every ``heartbeat_interval`` and go out with that tick's write. A write left
behind by a cancelled caller (shutdown) may still finish in its thread; a
lock and a version number there keep an older journal from ever replacing a
newer one.

Within one process the journal is the memory too: a stream added or renamed
in a reload asks ``not_before`` for its upstream, so a loss seen under another
name still counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

from lsproxy.hub.journal_rule import (
    JOURNAL_NAME,
    MAX_JOURNAL_BYTES,
    JournalData,
    JournalUnreadable,
    Knowledge,
    Moments,
    first_attempt_not_before,
    forget_old,
    lost_stores,
    parse_journal,
    render_journal,
    settle,
    upstream_key,
)

log = logging.getLogger("lsproxy.journal")

ATTEMPT_WRITE_SECONDS = 5.0  # how long an attempt waits for its journal entry to be durable
FINAL_WRITE_SECONDS = 5.0
#: A killed proxy lived at most one heartbeat plus the time its last mark took to be written.
WRITE_ALLOWANCE = 1.0


class UpstreamJournal:
    def __init__(
        self,
        directory: str,
        data: JournalData,
        knowledge: Knowledge,
        *,
        heartbeat_interval: float,
        clock: Callable[[], float] = time.time,
        threaded: bool = True,
    ) -> None:
        """``threaded=False`` writes on the event loop: for mock-clock tests only (a worker
        thread takes real time, which an autojumping clock would skip)."""
        self.directory = directory
        self.path = os.path.join(directory, JOURNAL_NAME)
        self.knowledge = knowledge
        self.heartbeat_interval = heartbeat_interval
        self.alive_slack = heartbeat_interval + WRITE_ALLOWANCE
        self._clock = clock
        self.started_at = clock()
        self._data = data
        data.alive_slack = self.alive_slack  # this life's, from its first write on
        self._version = 0  # bumped by every change
        self._written = 0  # the version last made durable
        self._wake = trio.Event()
        self._written_changed = trio.Event()
        self._failing = False
        self._threaded = threaded
        # The thread side: writes in version order, even past an abandoned one.
        self._file_lock = threading.Lock()
        self._file_version = 0

    # -- loading --------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        directory: str,
        *,
        heartbeat_interval: float,
        earlier_run: bool = False,
        clock: Callable[[], float] = time.time,
        threaded: bool = True,
    ) -> UpstreamJournal:
        """Read the journal of ``directory`` (blocking: run it in a thread). Logs once what a
        missing or unreadable journal means; never raises for its content. ``earlier_run``:
        the caller knows of one (the lock file was there before it took the lock)."""
        path = os.path.join(directory, JOURNAL_NAME)
        data, knowledge = JournalData(), Knowledge.KNOWN
        try:
            with open(path, "rb") as f:
                data = parse_journal(f.read(MAX_JOURNAL_BYTES + 1))
            settle(data)
        except FileNotFoundError:
            traces = _earlier_run_traces(directory) or ("a lock file" if earlier_run else None)
            if traces:
                knowledge = Knowledge.UNKNOWN
                log.warning(
                    "upstream journal %s is missing but %s holds %s from an earlier run: when its "
                    "upstream connections ended is unknown, so every stream waits its reconnect_delay "
                    "from now",
                    path, directory, traces,
                )  # fmt: skip
            else:
                knowledge = Knowledge.FIRST_RUN
                log.info("storage dir %s has no upstream journal and no stores: a first run", directory)
        except (OSError, JournalUnreadable) as exc:
            knowledge = Knowledge.UNKNOWN
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            log.warning(
                "upstream journal %s is unreadable (%s): when the upstream connections ended is "
                "unknown, so every stream waits its reconnect_delay from now; it will be rewritten",
                path, reason,
            )  # fmt: skip
        return cls(
            directory, data, knowledge, heartbeat_interval=heartbeat_interval, clock=clock, threaded=threaded
        )

    def check_store(self, path: str, stream: str) -> None:
        """Before a stream's store is opened: a store the journal knew that is gone or
        empty is logged at ERROR (its named cursors are lost), then forgotten."""
        name = os.path.basename(path)
        try:
            size: int | None = os.stat(path).st_size
        except FileNotFoundError:
            size = None
        how = lost_stores(self._data.stores, {name: size}).get(name)
        if how is None:
            return
        known = self._data.stores.pop(name, None)
        held = f" (it reached offset {known})" if known is not None else ""
        log.error(
            "stream %s: store %s was %s while the proxy was stopped%s: its records and named "
            "cursors were lost; starting a fresh store",
            stream, path, how, held,
        )  # fmt: skip
        self._changed()

    def forget_stores_except(self, paths: Iterable[str]) -> None:
        """Drop the entries of stores that are neither configured nor on disk (start-up)."""
        keep = {os.path.basename(p) for p in paths}
        for name in list(self._data.stores):
            if name not in keep and not os.path.exists(os.path.join(self.directory, name)):
                del self._data.stores[name]
                self._changed()

    # -- the rule -------------------------------------------------------------------
    def not_before(self, url: str, reconnect_delay: float) -> float | None:
        """Wall-clock time before which a new connection loop to ``url`` must not attempt."""
        return first_attempt_not_before(
            self._data.upstreams.get(upstream_key(url)),
            self.knowledge,
            started_at=self.started_at,
            reconnect_delay=reconnect_delay,
            alive_slack=self.alive_slack,
        )

    def connection(self, url: str) -> ConnectionRecord:
        """The journal handle of one upstream connection loop."""
        return ConnectionRecord(self, upstream_key(url))

    def note_store(self, path: str, offset: int) -> None:
        """A store exists and its log ends at ``offset`` (written with the next tick)."""
        name = os.path.basename(path)
        if self._data.stores.get(name) != offset:
            self._data.stores[name] = offset
            self._version += 1

    # -- recording (ConnectionRecord's) ------------------------------------------------
    def _moments(self, key: str) -> Moments:
        return self._data.upstreams.setdefault(key, Moments())

    def _changed(self) -> None:
        self._version += 1
        self._wake.set()

    async def _durable(self, timeout: float) -> bool:
        """Wait until everything recorded so far is durable; False if it is not by ``timeout``."""
        target = self._version
        self._wake.set()
        with trio.move_on_after(timeout):
            while self._written < target:
                await self._written_changed.wait()
        return self._written >= target

    # -- writing --------------------------------------------------------------------
    async def run(self) -> None:
        """The writer and the heartbeat, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            while True:
                now = self._clock()
                for moments in self._data.upstreams.values():
                    if moments.open:
                        moments.alive_at = now
                        self._version += 1
                if self._version != self._written:
                    self._wake.set()
                await trio.sleep(self.heartbeat_interval)

    async def flush(self, timeout: float = FINAL_WRITE_SECONDS) -> bool:
        """Make everything recorded so far durable (at shutdown, once the connections are closed)."""
        with trio.CancelScope(shield=True):
            done = await self._durable(timeout)
        return done

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._written == self._version:
                continue
            version = self._version
            forget_old(self._data, self._clock())
            text = render_journal(self._data)
            if self._threaded:
                error = await trio.to_thread.run_sync(self._write_file, version, text, abandon_on_cancel=True)
            else:
                error = self._write_file(version, text)
            if error is None:
                self._written = max(self._written, version)
                self._written_changed.set()
                self._written_changed = trio.Event()
                if self._failing:
                    self._failing = False
                    log.info("upstream journal %s is written again", self.path)
            elif not self._failing:
                self._failing = True
                log.error(
                    "cannot write the upstream journal %s (%s): a restart may reconnect early; retrying",
                    self.path, error,
                )  # fmt: skip
            if error is not None:
                await trio.sleep(self.heartbeat_interval)  # the next tick retries
                self._wake.set()

    def _write_file(self, version: int, text: bytes) -> str | None:
        """(thread) Replace the journal atomically; returns the error, if any."""
        with self._file_lock:
            if version <= self._file_version:
                return None  # a newer journal is already on disk
            tmp = f"{self.path}.tmp"
            try:
                os.makedirs(self.directory, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                try:
                    view = memoryview(text)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
                dir_fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                return exc.strerror or type(exc).__name__
            self._file_version = version
            return None


class AttemptRecord(Protocol):
    """What a connection loop tells a journal: ``ConnectionRecord`` here, or a cluster
    slot's (lsproxy/cluster/slots.py)."""

    async def attempt_starting(self) -> None: ...
    def ended(self) -> None: ...


class ConnectionRecord:
    """What one upstream connection loop tells the journal."""

    def __init__(self, journal: UpstreamJournal, key: str) -> None:
        self._journal = journal
        self.key = key
        self._open = False

    async def attempt_starting(self) -> None:
        """Record the attempt and wait (bounded) until it is durable: only then connect."""
        journal = self._journal
        moments = journal._moments(self.key)
        moments.attempt_at = moments.alive_at = journal._clock()
        if not self._open:
            self._open = True
            moments.open += 1
        journal._changed()
        try:
            durable = await journal._durable(ATTEMPT_WRITE_SECONDS)
        except BaseException:  # cancelled (reload, shutdown) before connecting
            self.ended()
            raise
        if not durable:
            log.error("could not persist the upstream attempt time in time; a restart may reconnect early")

    def ended(self) -> None:
        """The attempt or connection is over (closed, whatever ended it)."""
        journal = self._journal
        moments = journal._moments(self.key)
        moments.ended_at = journal._clock()
        if self._open:
            self._open = False
            moments.open -= 1
        journal._changed()


def _earlier_run_traces(directory: str) -> str | None:
    """What in ``directory`` shows an earlier run (its stores), or None."""
    try:
        stores = [n for n in os.listdir(directory) if ".sqlite3" in n]
    except OSError:
        return None
    return f"{len(stores)} store file{'s' if len(stores) > 1 else ''}" if stores else None
