"""The durable stream store: one SQLite file per stream (the synchronous layer).

Theory of operation
-------------------
``<dir>/<stream>.sqlite3`` holds three tables. ``segments`` is the log itself:
one row per run of consecutive records, ``first`` (the offset of its first
record) is the INTEGER PRIMARY KEY, i.e. the rowid, so rows are stored in
offset order in the table's own b-tree and need no second index. A row is a
``log.Segment``: the records joined with their CRLFs (``data``) plus the end
of every record (``ends``, little-endian uint32) and the arrival time. Rows
are coalesced/split to about ``ROW_BYTES`` (one consumer batch), so that a
disk read touches one or two rows and the row count stays small (at most
about one row per commit when traffic is light). ``cursors`` and ``meta`` hold
the named consumers' positions and the stream's state.

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

import array
import bisect
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lsproxy.errors import LsproxyError
from lsproxy.hub.log import CRLF, Segment

log = logging.getLogger("lsproxy.store")

ROW_BYTES = 256 * 1024  # = the consumers' BATCH_BYTES: a disk read is one or two rows
NEXT_KEY = "_log.next_offset"  # reserved meta key: the log's end, so offsets never repeat
JOURNAL_LIMIT = 32 * 1024 * 1024  # the WAL is truncated back to this after a checkpoint
VACUUM_STEP = 8192  # pages given back per commit at most (bounds the commit's latency)
SQLITE_FULL, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_NOTADB = 13, 8, 10, 11, 26

Connect = Callable[[str], sqlite3.Connection]

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
    if primary == SQLITE_FULL or getattr(exc, "errno", None) == 28:
        return f"disk full (ENOSPC) writing {path}"
    if primary == SQLITE_READONLY:
        return f"store is read-only ({getattr(exc, 'sqlite_errorname', 'SQLITE_READONLY')}) writing {path}"
    if primary == SQLITE_IOERR:
        return f"I/O error ({getattr(exc, 'sqlite_errorname', 'SQLITE_IOERR')}) writing {path}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} writing {path}"
    return f"{exc} writing {path}"


def pack_ends(ends: Sequence[int]) -> bytes:
    packed = array.array("I", ends)
    if sys.byteorder == "big":  # the file format is little-endian everywhere
        packed.byteswap()
    return packed.tobytes()


def unpack_ends(blob: bytes) -> tuple[int, ...]:
    packed = array.array("I")
    packed.frombytes(blob)
    if sys.byteorder == "big":
        packed.byteswap()
    return tuple(packed)


def row_segment(
    first: int, count: int, received_at: float, data: bytes, ends_blob: bytes, *, thorough: bool = False
) -> Segment:
    """A stored row as a Segment; ValueError when it is inconsistent."""
    ends = unpack_ends(ends_blob)
    if count < 1 or len(ends) != count or ends[-1] != len(data) or not data.endswith(CRLF):
        raise ValueError(f"row at offset {first} is inconsistent")
    if thorough and any(data[e - 2 : e] != CRLF or e <= s for s, e in zip((0, *ends), ends, strict=False)):
        raise ValueError(f"row at offset {first} has broken record boundaries")
    return Segment(first, data, ends, received_at)


def coalesce(segments: Iterable[Segment], row_bytes: int = ROW_BYTES) -> list[Segment]:
    """Pack consecutive segments into rows of at most ``row_bytes``, cut at record
    boundaries (a larger record is a row of its own). A gap in offsets (records
    dropped from the disk queue) starts a new row. A row's ``received_at`` is that
    of its newest record: ``offset_at`` then errs towards replaying a little more."""
    rows: list[Segment] = []
    parts: list[bytes] = []
    ends: list[int] = []
    first, size, when = 0, 0, 0.0
    for seg in segments:
        if parts and seg.first != first + len(ends):
            rows.append(Segment(first, b"".join(parts), tuple(ends), when))
            parts, ends, size = [], [], 0
        i, pos = 0, 0
        while i < len(seg.ends):
            k = bisect.bisect_right(seg.ends, pos + row_bytes - size, lo=i)
            if k == i and parts:  # the next record does not fit: close this row
                rows.append(Segment(first, b"".join(parts), tuple(ends), when))
                parts, ends, size = [], [], 0
                continue
            k = max(k, i + 1)
            if not parts:
                first = seg.first + i
            stop = seg.ends[k - 1]
            parts.append(seg.data if pos == 0 and stop == len(seg.data) else seg.data[pos:stop])
            ends.extend(e - pos + size for e in seg.ends[i:k])
            size += stop - pos
            when = seg.received_at
            i, pos = k, stop
    if parts:
        rows.append(Segment(first, b"".join(parts), tuple(ends), when))
    return rows


@dataclass
class Loaded:
    """What a store holds at open, for the DurableLog to start from."""

    index: list[tuple[int, int, int, float]]  # per row: first, count, bytes, received_at
    tail: list[Segment]  # the newest rows, up to the requested bytes
    cursors: dict[str, tuple[int, int]]
    meta: dict[str, str]
    next_offset: int


@dataclass
class Commit:
    """One transaction's work, prepared on the event loop."""

    segments: Sequence[Segment]
    trim_below: int  # rows starting below this offset are gone
    next_offset: int  # the end marker
    cursors: Mapping[str, tuple[int, int]]  # changed ones only
    meta: Mapping[str, str]  # changed ones only
    now: float


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

    # -- connections --------------------------------------------------------
    def _writer(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = self._connect(self.path)
            try:
                # auto_vacuum only takes effect before the first table exists (a new file).
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
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
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    # -- open ---------------------------------------------------------------
    def load(self, tail_bytes: int) -> Loaded:
        """Check the file and read what the log needs; ``Damaged`` if it is corrupt."""
        try:
            conn = self._writer()
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise Damaged("quick_check: " + "; ".join(problems))
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
                for row in conn.execute(
                    "SELECT first, count, received_at, data, ends FROM segments WHERE first >= ? ORDER BY first",
                    (index[start][0],),
                ):
                    tail.append(row_segment(*row))
            cursors = {n: (p, s) for n, p, s in conn.execute("SELECT name, position, skipped FROM cursors")}
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except (sqlite3.DatabaseError, ValueError) as exc:
            if isinstance(exc, ValueError) or is_damage(exc):
                raise Damaged(str(exc)) from exc
            raise StoreError(
                f"cannot open stream database {self.path}: {describe_error(exc, self.path)}"
            ) from exc
        next_offset = max(end, int(meta.pop(NEXT_KEY, 0)))
        return Loaded(index, tail, cursors, meta, next_offset)

    # -- writing ------------------------------------------------------------
    def commit(self, work: Commit) -> Committed:
        """One transaction. Raises sqlite3.Error/OSError on failure (nothing written)."""
        started = time.perf_counter()
        rows = coalesce(work.segments)
        conn = self._writer()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM segments WHERE first < ?", (work.trim_below,))
            if rows:
                # A commit that failed in its last fsync may still have landed: make the
                # retry idempotent (nothing at or above the batch is committed otherwise).
                conn.execute("DELETE FROM segments WHERE first >= ?", (rows[0].first,))
                conn.executemany(
                    "INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                    [(r.first, len(r.ends), r.received_at, r.data, pack_ends(r.ends)) for r in rows],
                )
            conn.executemany(
                "INSERT INTO cursors VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "position = excluded.position, skipped = excluded.skipped, updated_at = excluded.updated_at",
                [(name, pos, skipped, work.now) for name, (pos, skipped) in work.cursors.items()],
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
            [(r.first, len(r.ends), len(r.data), r.received_at) for r in rows],
            time.perf_counter() - started,
            self.disk_bytes(),
        )

    def _give_back_space(self, conn: sqlite3.Connection) -> None:
        # Free pages are reused by later inserts; give them back only when a large
        # share of the file is free (retention shrank), a bounded step per commit.
        try:
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            if free > 1024 and free * 4 > pages:
                conn.execute(f"PRAGMA incremental_vacuum({min(free - pages // 8, VACUUM_STEP)})").fetchall()
        except sqlite3.Error as exc:  # the data is committed; the next commit will tell
            log.debug("%s: incremental vacuum failed: %s", self.path, exc)

    def disk_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(self.path + suffix).st_size
            except OSError:
                pass
        return total

    # -- reading ------------------------------------------------------------
    def read_rows(self, firsts: Sequence[int]) -> list[Segment]:
        """The rows starting at ``firsts`` (consecutive rows of the index). A row that
        cannot be read is logged and left out: the reader sees a skip, not a stall."""
        conn = self._reader()
        try:
            try:
                return [
                    row_segment(*row)
                    for row in conn.execute(
                        "SELECT first, count, received_at, data, ends FROM segments "
                        "WHERE first BETWEEN ? AND ? ORDER BY first",
                        (firsts[0], firsts[-1]),
                    )
                ]
            except (sqlite3.DatabaseError, ValueError):
                return self._read_rows_one_by_one(conn, firsts)
        finally:
            with self._readers_lock:
                self._readers.append(conn)

    def _read_rows_one_by_one(self, conn: sqlite3.Connection, firsts: Sequence[int]) -> list[Segment]:
        rows = []
        for first in firsts:
            try:
                got = conn.execute(
                    "SELECT first, count, received_at, data, ends FROM segments WHERE first = ?", (first,)
                ).fetchone()
                if got is not None:
                    rows.append(row_segment(*got))
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
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:  # committed data is safe in the WAL anyway
                log.warning("%s: final checkpoint failed: %s", self.path, exc)
            self._drop_writer()
