"""The durable stream store: one SQLite file per stream (the synchronous layer).

Theory of operation
-------------------
``<dir>/<stream>.sqlite3`` holds three tables. ``segments`` is the log itself:
one row per run of consecutive records (format and sizing: ``store_rows.py``).
``first`` (the offset of its first record) is the INTEGER PRIMARY KEY, i.e. the
rowid, so rows are stored in offset order in the table's own b-tree; there is
no index on ``received_at``: the DurableLog keeps every row's offsets and time
in memory (``RowIndex``, loaded at open from the record headers, blobs
unread), which answers ``offset_at`` and retention without a query.
``cursors`` and ``meta`` hold the named consumers' positions and the stream's
state; a cursor's ``updated_at`` is when its consumer was last seen connected
(for ``consumer_ttl``; stores from before it hold the last change, as close).

One commit is one transaction, run by a worker thread: delete the rows that
retention gave up, insert the new rows, upsert changed cursors and meta keys,
and the log's end marker (``_log.next_offset``, so offsets never repeat even
after every row aged out). Deleting *before* inserting lets the inserts reuse
the pages just freed: in steady state the file stays at about the retention
size and the free list stays short; ``auto_vacuum=INCREMENTAL`` plus a bounded
``incremental_vacuum`` after a commit returns space only when the retention
shrank (config change, traffic drop). WAL mode with ``synchronous=FULL``: a
commit is durable (fsynced WAL) when ``commit`` returns, readers on their own
connections never block the writer, and the WAL stays bounded because the
automatic checkpoint runs after every commit that grew it past 1,000 pages and
``journal_size_limit`` truncates it back.

``load`` (at open) runs ``PRAGMA quick_check``, which reads the whole file,
and raises ``Damaged``; ``store_files.open_store`` then salvages what can be
read into a fresh file. The files around the database (lock, pid file,
salvage) live in ``store_files.py``.

Nothing here knows trio; ``durable.py`` calls these methods in threads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from lsproxy.errors import LsproxyError
from lsproxy.hub.segment import Segment
from lsproxy.hub.store_rows import coalesce, pack_ends, row_segment

log = logging.getLogger("lsproxy.store")

NEXT_KEY = "_log.next_offset"  # reserved meta key: the log's end, so offsets never repeat
JOURNAL_LIMIT = 32 * 1024 * 1024  # the WAL is truncated back to this after a checkpoint
VACUUM_STEP = 8192  # pages given back per commit at most (bounds the commit's latency)
SQLITE_FULL, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_NOTADB = 13, 8, 10, 11, 26

Connect = Callable[[str], sqlite3.Connection]
ROW_SQL = "SELECT first, count, received_at, data, ends FROM segments"

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments(first INTEGER PRIMARY KEY, count INTEGER NOT NULL,
    received_at REAL NOT NULL, data BLOB NOT NULL, ends BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cursors(name TEXT PRIMARY KEY, position INTEGER NOT NULL,
    skipped INTEGER NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(LsproxyError):
    """The durable store cannot be used. The message says what to do about it."""


class Damaged(Exception):
    """The database file is corrupt or truncated (internal: triggers recovery)."""


def connect_sqlite(path: str) -> sqlite3.Connection:
    """The default connection factory (tests pass one that can fail on demand)."""
    # Autocommit mode: we issue BEGIN/COMMIT ourselves. Connections move between
    # trio's worker threads, one thread at a time.
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def is_damage(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    return "malformed" in str(exc) or "not a database" in str(exc)


def describe_error(exc: BaseException, path: str) -> str:
    """One line for logs and /status: what failed, in the operator's words."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if code is not None else None
    if primary == SQLITE_FULL or getattr(exc, "errno", None) == errno.ENOSPC:
        return f"disk full (ENOSPC) writing {path}"
    if primary == SQLITE_READONLY:
        return f"store is read-only ({getattr(exc, 'sqlite_errorname', 'SQLITE_READONLY')}) writing {path}"
    if primary == SQLITE_IOERR:
        return f"I/O error ({getattr(exc, 'sqlite_errorname', 'SQLITE_IOERR')}) writing {path}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} writing {path}"
    return f"{exc} writing {path}"


@dataclass
class Loaded:
    """What a store holds at open, for the DurableLog to start from."""

    index: list[tuple[int, int, int, float]]  # per row: first, count, bytes, received_at
    tail: list[Segment]  # the newest rows, up to the requested bytes
    cursors: dict[str, tuple[int, int, float]]  # name -> (position, skipped, last seen)
    meta: dict[str, str]
    next_offset: int
    disk_bytes: int = 0


@dataclass
class Commit:
    """One transaction's work, prepared on the event loop."""

    segments: Sequence[Segment]
    trim_below: int  # rows starting below this offset are gone
    next_offset: int  # the end marker
    cursors: Mapping[str, tuple[int, int, float]]  # changed ones only
    meta: Mapping[str, str]  # changed ones only
    now: float
    forgotten: Sequence[str] = ()  # cursors to delete


@dataclass
class Committed:
    rows: list[tuple[int, int, int, float]] = field(default_factory=list)  # as Loaded.index
    seconds: float = 0.0
    disk_bytes: int = 0


class Store:
    """One stream's database. The writer methods (``load``, ``commit``, ``close``) run
    in one thread at a time; ``read_rows`` may run in several threads at once, each on a
    pooled reader connection (WAL: readers see the last commit and never block it)."""

    def __init__(self, path: str, connect: Connect = connect_sqlite) -> None:
        self.path = path
        self.recovered: str | None = None  # the recovery report, when open had to repair
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    # -- connections --------------------------------------------------------
    def _writer(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = self._connect(self.path)
            try:
                # auto_vacuum only takes effect before the first table exists (a new file).
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
                conn.execute("PRAGMA synchronous = FULL")  # a finished commit survives power loss
                conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_LIMIT}")
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.executescript(SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_writer(self) -> None:
        # After a failed commit the connection may be in any state: start afresh.
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    # -- open ---------------------------------------------------------------
    def load(self, tail_bytes: int) -> Loaded:
        """Check the file and read what the log needs; ``Damaged`` if it is corrupt."""
        try:
            conn = self._writer()
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise Damaged("quick_check: " + "; ".join(problems).replace("\n", " "))
            # length(data) comes from the record header: the blobs are not read here.
            index: list[tuple[int, int, int, float]] = []
            end = 0
            for first, count, size, when in conn.execute(
                "SELECT first, count, length(data), received_at FROM segments ORDER BY first"
            ):
                if first < end or count < 1:
                    raise Damaged(f"segments overlap at offset {first}")
                index.append((first, count, size, when))
                end = first + count
            start, budget = len(index), tail_bytes
            while start > 0 and index[start - 1][2] <= budget:
                start -= 1
                budget -= index[start][2]
            tail = []
            if start < len(index):
                for row in conn.execute(f"{ROW_SQL} WHERE first >= ? ORDER BY first", (index[start][0],)):
                    tail.append(row_segment(*row))
            cursors = {
                n: (p, s, t)
                for n, p, s, t in conn.execute("SELECT name, position, skipped, updated_at FROM cursors")
            }
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except (sqlite3.DatabaseError, ValueError) as exc:
            if isinstance(exc, ValueError) or is_damage(exc):
                raise Damaged(str(exc)) from exc
            raise StoreError(
                f"cannot open stream database {self.path}: {describe_error(exc, self.path)}"
            ) from exc
        next_offset = max(end, int(meta.pop(NEXT_KEY, 0)))
        return Loaded(index, tail, cursors, meta, next_offset, self.disk_bytes())

    # -- writing ------------------------------------------------------------
    def commit(self, work: Commit) -> Committed:
        """One transaction. Raises sqlite3.Error/OSError on failure (nothing written)."""
        started = time.perf_counter()
        rows: list[tuple[int, int, int, float]] = []

        def params() -> Iterator[tuple[int, int, float, bytes, bytes]]:
            for r in coalesce(work.segments):
                rows.append((r.first, len(r.ends), len(r.data), r.received_at))
                yield r.first, len(r.ends), r.received_at, r.data, pack_ends(r.ends)

        conn = self._writer()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM segments WHERE first < ?", (work.trim_below,))
            if work.segments:
                # A commit that failed in its last fsync may still have landed: make the
                # retry idempotent (nothing at or above the batch is committed otherwise).
                conn.execute("DELETE FROM segments WHERE first >= ?", (work.segments[0].first,))
                conn.executemany("INSERT INTO segments VALUES (?, ?, ?, ?, ?)", params())
            conn.executemany("DELETE FROM cursors WHERE name = ?", [(name,) for name in work.forgotten])
            conn.executemany(
                "INSERT INTO cursors VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "position = excluded.position, skipped = excluded.skipped, updated_at = excluded.updated_at",
                [(name, pos, skipped, seen) for name, (pos, skipped, seen) in work.cursors.items()],
            )
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [*work.meta.items(), (NEXT_KEY, str(work.next_offset))],
            )
            conn.execute("COMMIT")
        except BaseException:
            self._drop_writer()
            raise
        self._give_back_space(conn)
        return Committed(
            rows,
            time.perf_counter() - started,
            self.disk_bytes(),
        )

    def _give_back_space(self, conn: sqlite3.Connection) -> None:
        # Free pages are reused by later inserts; give them back only when a large
        # share of the file is free (retention shrank), a bounded step per commit.
        try:
            free = conn.execute("PRAGMA freelist_count").fetchall()[0][0]
            pages = conn.execute("PRAGMA page_count").fetchall()[0][0]
            if free > 1024 and free * 4 > pages:
                conn.execute(f"PRAGMA incremental_vacuum({min(free - pages // 8, VACUUM_STEP)})").fetchall()
        except sqlite3.Error as exc:  # the data is committed; the next commit will tell
            log.debug("%s: incremental vacuum failed: %s", self.path, exc)

    def disk_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(self.path + suffix).st_size
        return total

    # -- reading ------------------------------------------------------------
    def read_rows(self, firsts: Sequence[int]) -> list[Segment]:
        """The rows starting at ``firsts`` (consecutive rows of the index). A row that
        cannot be read is logged and left out: the reader sees a skip, not a stall."""
        conn = self._reader()
        try:
            try:
                # fetchall: the read transaction ends here, before any row is examined
                # (an open one would keep the checkpoint from resetting the WAL).
                raw = conn.execute(
                    f"{ROW_SQL} WHERE first BETWEEN ? AND ? ORDER BY first", (firsts[0], firsts[-1])
                )
                return [row_segment(*row) for row in raw.fetchall()]
            except (sqlite3.DatabaseError, ValueError):
                return self._read_rows_one_by_one(conn, firsts)
        finally:
            with self._readers_lock:
                if self._closed:  # closed while this read was running
                    conn.close()
                else:
                    self._readers.append(conn)

    def _read_rows_one_by_one(self, conn: sqlite3.Connection, firsts: Sequence[int]) -> list[Segment]:
        rows = []
        for first in firsts:
            try:
                rows += [
                    row_segment(*got)
                    for got in conn.execute(f"{ROW_SQL} WHERE first = ?", (first,)).fetchall()
                ]
            except (sqlite3.DatabaseError, ValueError) as exc:
                log.error("%s: row at offset %d is unreadable (%s); readers skip it", self.path, first, exc)
        return rows

    def _reader(self) -> sqlite3.Connection:
        with self._readers_lock:
            if self._readers:
                return self._readers.pop()
        conn = self._connect(self.path)
        conn.execute("PRAGMA query_only = 1")
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    # -- closing ------------------------------------------------------------
    def close(self) -> None:
        """Checkpoint the WAL into the file (leaving it empty) and close everything."""
        with self._readers_lock:
            readers, self._readers, self._closed = self._readers, [], True
        for conn in readers:
            conn.close()
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:  # committed data is safe in the WAL anyway
                log.warning("%s: final checkpoint failed: %s", self.path, exc)
            self._drop_writer()
