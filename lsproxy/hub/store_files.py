"""The files around the stream databases: paths, the storage lock, the pid file, salvage.

Theory of operation
-------------------
One lsproxy owns a storage directory: ``acquire_storage_lock`` takes a
non-blocking ``flock`` on ``<dir>/lsproxy.lock`` for the life of the process
and writes its pid there, so a second proxy on the same directory fails at
start with a message naming the holder (two proxies would mean two upstream
connections per stream, the very thing lsproxy exists to prevent). The lock
dies with the process (kill -9 included), so there is no stale-lock cleanup.
``lsproxy.pid`` is separate: it is for ``lsproxy reload`` to find the process.

``open_store`` opens a stream database; when ``Store.load`` finds it damaged
(quick_check fails, a page is unreadable, rows overlap) it salvages: rows are
copied in offset order into ``<name>.recovering`` until the first unreadable
one, then read backwards from the newest row down to the damage, so both the
prefix and the suffix around a bad page survive (offsets unchanged; the hole
reads as a skip). Cursors and meta are copied when readable. The end marker
is raised to cover every offset seen (rows and cursors), so offsets are never
reused. The damaged file is kept as ``<name>.corrupt-<UTC time>`` and the
fresh one takes its place; the report is logged at ERROR. When nothing at all
can be read, ``StoreError`` tells the operator to move the file away: the
proxy never starts a stream empty on its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from urllib.parse import quote

from lsproxy.hub.store import (
    NEXT_KEY,
    ROW_SQL,
    Connect,
    Damaged,
    Loaded,
    Store,
    StoreError,
    connect_sqlite,
    pack_ends,
    row_segment,
)

log = logging.getLogger("lsproxy.store")

LOCK_NAME = "lsproxy.lock"
PID_NAME = "lsproxy.pid"
SALVAGE_BATCH = 64 * 1024 * 1024  # bytes copied per transaction while salvaging


def stream_db_path(directory: str, stream: str) -> str:
    """``<dir>/<stream>.sqlite3``; unusual characters in the name are %-escaped."""
    safe = stream if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", stream) else quote(stream, safe="")
    return os.path.join(directory, f"{safe}.sqlite3")


# -- the lock and the pid file --------------------------------------------------
@dataclass
class LockHandle:
    path: str
    fd: int | None
    existed: bool = False  # the lock file was there before: an earlier run left it

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> LockHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def acquire_storage_lock(directory: str) -> LockHandle:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    existed = os.path.exists(path)
    # O_CLOEXEC: a child process must not inherit (and so prolong) the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(
            f"storage dir {directory} is in use by another lsproxy (pid {holder}); "
            "two proxies would open two upstream connections"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot lock {path}: {exc.strerror}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return LockHandle(path, fd, existed)


def write_pid_file(directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, PID_NAME)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)  # readers never see a half-written pid
    return path


def read_pid_file(directory: str) -> int | None:
    try:
        with open(os.path.join(directory, PID_NAME)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def remove_pid_file(directory: str) -> None:
    """Remove the pid file if it is ours (a successor may already have replaced it)."""
    if read_pid_file(directory) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, PID_NAME))


# -- opening and salvage --------------------------------------------------------
def open_store(path: str, tail_bytes: int, connect: Connect = connect_sqlite) -> tuple[Store, Loaded]:
    """Open (creating if needed), check, and load; salvage a damaged file first."""
    store = Store(path, connect)
    try:
        return store, store.load(tail_bytes)
    except Damaged as damage:
        store.close()
        report = recover(path, str(damage), connect)
    store = Store(path, connect)
    store.recovered = report
    try:
        return store, store.load(tail_bytes)
    except Damaged as damage:  # the salvaged copy is damaged too: the disk is failing
        store.close()
        raise StoreError(
            f"stream database {path} is still damaged after recovery ({damage}), the disk may be failing; "
            f"move {path} away to start this stream empty"
        ) from None


def _remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def recover(path: str, reason: str, connect: Connect = connect_sqlite) -> str:
    fresh = f"{path}.recovering"
    _remove_db(fresh)
    try:
        source = sqlite3.connect(path, isolation_level=None)
        source.execute("PRAGMA query_only = 1")
        # Lets SQLite read a truncated file (else every query fails): we never write here.
        source.execute("PRAGMA writable_schema = ON")
    except sqlite3.Error as exc:
        raise StoreError(
            f"stream database {path} is damaged ({reason}) and cannot be opened ({exc}); "
            f"move {path} away to start this stream empty"
        ) from exc
    target = Store(fresh, connect)
    try:
        conn = target._writer()
        kept, high, notes = _copy_rows(source, conn)
        cursors = _copy_table(source, conn, "cursors", "name, position, skipped, updated_at", notes)
        meta = _copy_table(source, conn, "meta", "key, value", notes)
        for (position,) in _query(source, "SELECT max(position) FROM cursors"):
            high = max(high, position or 0)
        for (value,) in _query(source, f"SELECT value FROM meta WHERE key = '{NEXT_KEY}'"):
            high = max(high, int(value))
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (NEXT_KEY, str(high)))
    finally:
        source.close()
        target.close()
    if not kept and not cursors and not meta:
        _remove_db(fresh)
        raise StoreError(
            f"stream database {path} is damaged ({reason}) and nothing could be recovered from it; "
            f"move {path} away to start this stream empty"
        )
    damaged = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    os.replace(path, damaged)
    if os.path.exists(path + "-wal"):
        os.replace(path + "-wal", damaged + "-wal")
    _remove_db(path)  # the stale -shm
    os.replace(fresh, path)
    _fsync_dir(os.path.dirname(path) or ".")
    ranges = ", ".join(f"{a}..{b - 1}" for a, b in kept) or "none"
    report = (
        f"stream database {path} was damaged ({reason}); recovered records {ranges} "
        f"({sum(b - a for a, b in kept)} records), {cursors} cursors, {meta} meta keys"
        f"{'; ' + '; '.join(notes) if notes else ''}; the damaged file is kept as {damaged}"
    )
    log.error("%s", report)
    return report


def _fsync_dir(directory: str) -> None:
    # The renames must survive a crash right after recovery.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _query(source: sqlite3.Connection, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    try:
        return source.execute(sql).fetchall()
    except (sqlite3.DatabaseError, ValueError):
        return []


def _copy_rows(
    source: sqlite3.Connection, conn: sqlite3.Connection
) -> tuple[list[tuple[int, int]], int, list[str]]:
    """Copy readable rows; returns the kept offset ranges (ascending), the highest end, notes."""
    kept: list[tuple[int, int]] = []
    notes: list[str] = []

    def keep(row: tuple[int, int, float, bytes, bytes], ranges: list[tuple[int, int]], up: bool) -> None:
        first, count, when, data, ends = row
        seg = row_segment(first, count, when, data, ends, thorough=True)
        conn.execute(
            "INSERT INTO segments VALUES (?, ?, ?, ?, ?)", (first, count, when, data, pack_ends(seg.ends))
        )
        if ranges and ranges[-1][1 if up else 0] == (first if up else seg.end):
            ranges[-1] = (ranges[-1][0], seg.end) if up else (first, ranges[-1][1])
        else:
            ranges.append((first, seg.end))

    conn.execute("BEGIN")
    end = copied = 0
    try:
        for row in source.execute(f"{ROW_SQL} ORDER BY first"):
            if row[0] < end:
                raise ValueError(f"rows overlap at offset {row[0]}")
            keep(row, kept, True)
            end = row[0] + row[1]
            copied += len(row[3])
            if copied > SALVAGE_BATCH:  # bound the transaction (and the WAL) on big files
                conn.execute("COMMIT")
                conn.execute("BEGIN")
                copied = 0
    except (sqlite3.DatabaseError, ValueError) as exc:
        notes.append(f"reading forward stopped at offset {end}: {exc}")
        # The damage may be local: read backwards from the newest row down to it.
        suffix: list[tuple[int, int]] = []
        low: int | None = None
        try:
            for row in source.execute(f"{ROW_SQL} WHERE first >= ? ORDER BY first DESC", (end,)):
                if low is not None and row[0] + row[1] > low:
                    raise ValueError(f"rows overlap at offset {row[0]}")
                keep(row, suffix, False)
                low = row[0]
        except (sqlite3.DatabaseError, ValueError) as back:
            where = "nothing readable" if low is None else f"stopped above offset {low}"
            notes.append(f"reading backward: {where}: {back}")
        kept += reversed(suffix)
    conn.execute("COMMIT")
    return kept, kept[-1][1] if kept else 0, notes


def _copy_table(
    source: sqlite3.Connection, conn: sqlite3.Connection, table: str, cols: str, notes: list[str]
) -> int:
    try:
        rows = source.execute(f"SELECT {cols} FROM {table}").fetchall()
    except sqlite3.DatabaseError as exc:
        notes.append(f"{table} lost: {exc}")
        return 0
    marks = ", ".join("?" * (cols.count(",") + 1))
    conn.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)
    return len([r for r in rows if table != "meta" or r[0] != NEXT_KEY])
