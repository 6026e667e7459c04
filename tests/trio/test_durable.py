"""DurableLog on real files: offsets across reopen, disk reads, retention, crashes, damage,
a full disk, cursors and meta, replay by time."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trio

from lsproxy.hub.durable import DurableLog
from lsproxy.hub.segment import Segment
from lsproxy.hub.store import Connect, connect_sqlite


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def records(first: int, count: int, size: int = 98) -> list[bytes]:
    out = []
    for i in range(first, first + count):
        head = f'{{"n":{i},"pad":"'.encode()
        out.append(head + b"x" * (size - len(head) - 2) + b'"}')
    return out


async def open_log(path: Path, **options: Any) -> DurableLog:
    settings: dict[str, Any] = {
        "retention_bytes": 1 << 30,
        "retention_seconds": 1e9,
        "memory_bytes": 1 << 20,
        "commit_interval": 0.01,
        "clock": Clock(),
    }
    settings.update(options)
    return await DurableLog.open(str(path / "s.sqlite3"), **settings)


async def read_all(
    log: DurableLog, offset: int = 0, max_bytes: int = 1 << 20
) -> tuple[list[bytes], int, int]:
    """Every record from ``offset`` to the tail: (records, first offset read, records skipped)."""
    got: list[bytes] = []
    first, skipped = None, 0
    while offset < log.next_offset:
        batch = await log.read(offset, max_bytes)
        skipped += batch.start - offset
        first = batch.start if first is None else first
        got += batch.data.split(b"\r\n")[:-1]
        offset = batch.end
    return got, offset if first is None else first, skipped


def fill(log: DurableLog, first: int, segments: int, when: float = 1_000.0) -> int:
    """Append segments of 1..7 records; returns the next offset."""
    for _ in range(segments):
        count = 1 + first % 7
        log.append(records(first, count), when)
        first += count
    return first


async def test_offsets_and_records_survive_reopen(tmp_path: Path) -> None:
    log = await open_log(tmp_path)
    assert (log.oldest, log.next_offset, log.committed_offset) == (0, 0, 0)
    end = fill(log, 0, 50)
    assert log.committed_offset == 0 and log.status()["pending_records"] == end
    assert await log.commit_now()
    assert log.committed_offset == end and log.status()["pending_records"] == 0
    await log.aclose()
    log = await open_log(tmp_path)
    assert (log.oldest, log.next_offset) == (0, end)
    log.append(records(end, 3), 1_001.0)
    assert (await read_all(log))[0] == records(0, end + 3)
    assert log.recent_records(4) == records(end - 1, 4)
    await log.aclose()


@pytest.mark.parametrize("max_bytes", [1, 150, 1_000, 300_000])
async def test_reads_behind_the_memory_tail_come_from_disk(tmp_path: Path, max_bytes: int) -> None:
    log = await open_log(tmp_path, memory_bytes=3_000)
    end = 0
    for _ in range(20):
        end = fill(log, end, 10)
        await log.commit_now()
    assert log.status()["tail_bytes"] <= 3_000 < end * 100
    for start in (0, 1, 77, end - 40):
        got, first, skipped = await read_all(log, start, max_bytes)
        assert (got, first, skipped) == (records(start, end - start), start, 0)
    batch = await log.read(0, max_bytes)
    assert isinstance(batch.pieces[0], Segment)  # a whole row: shareable, like MemoryLog's segments
    batch = await log.read(5, max_bytes)
    # Starting inside a row: the rest of that row, then only whole (shareable) rows.
    assert batch.start == 5 and isinstance(batch.pieces[0], bytes)
    assert all(isinstance(piece, Segment) for piece in batch.pieces[1:])
    await log.aclose()
    log = await open_log(tmp_path, memory_bytes=3_000)  # and again from a fresh process's view
    assert (await read_all(log, 0, max_bytes))[0] == records(0, end)
    await log.aclose()


async def test_retention_by_size(tmp_path: Path) -> None:
    log = await open_log(tmp_path, retention_bytes=20_000, memory_bytes=5_000)
    end = 0
    for _ in range(100):
        end = fill(log, end, 5)
        await log.commit_now()
    assert 20_000 - 3_000 < log.retained_bytes <= 20_000
    assert log.trimmed_records == log.oldest > 0 and log.retained_records == end - log.oldest
    got, first, skipped = await read_all(log)
    assert (first, skipped) == (log.oldest, log.oldest) and got == records(first, end - first)
    with closing(sqlite3.connect(tmp_path / "s.sqlite3")) as conn:
        assert conn.execute("SELECT min(first), sum(count) FROM segments").fetchone() == (
            log.oldest,
            end - log.oldest,
        )
    assert log.status()["disk_bytes"] < 4_500_000  # the WAL is checkpointed at 1,000 pages
    await log.aclose()
    assert os.path.getsize(tmp_path / "s.sqlite3") < 60_000  # freed pages were reused
    assert not os.path.exists(tmp_path / "s.sqlite3-wal")


async def test_retention_by_age_keeps_offsets(tmp_path: Path) -> None:
    clock = Clock(100.0)
    log = await open_log(tmp_path, retention_seconds=30, clock=clock)
    for second in range(100):
        log.append(records(second * 2, 2), float(second))
        if second % 10 == 9:
            clock.now = float(second)
            await log.commit_now()
    # Rows are whole commits here: the one holding 60..69 s has a record of 69 s, it stays.
    assert log.oldest == 2 * 60 and log.received_at(log.oldest) == 60.0
    assert log.received_at(log.oldest - 1) is None
    clock.now = 500.0
    await log.commit_now()  # nothing new, yet everything ages out
    assert (log.oldest, log.next_offset, log.retained_bytes) == (200, 200, 0)
    assert await log.read(0, 1_000) == await log.read(200, 1_000)
    await log.aclose()
    log = await open_log(tmp_path, retention_seconds=30, clock=clock)
    assert (log.oldest, log.next_offset) == (200, 200)  # offsets never repeat
    await log.aclose()


async def test_offset_at(tmp_path: Path) -> None:
    log = await open_log(tmp_path, memory_bytes=1_000)
    for second in range(50):
        log.append(records(second * 4, 4), 100.0 + second)
        if second % 5 == 4:
            await log.commit_now()
    assert log.offset_at(0) == 0
    assert log.offset_at(1e12) == 200
    # On disk a row (one commit here: 5 s) counts as received with its newest record.
    assert log.offset_at(120.0) == log.offset_at(124.0) == 80 and log.received_at(80) == 124.0
    assert log.offset_at(124.5) == 100
    for second in range(50, 53):  # not committed: exact
        log.append(records(second * 4, 4), 100.0 + second)
    assert log.offset_at(151.0) == 204 and log.offset_at(150.5) == 204
    await log.aclose()


async def test_cursors_and_meta_persist_with_commits(tmp_path: Path) -> None:
    log = await open_log(tmp_path)
    cursors = {f"consumer-{i}": (i, i % 3, 1.5e9) for i in range(1_000)}
    log.save_cursors(cursors)
    log.set_meta("last_alive_at", "1700000000.5")
    await log.commit_now()
    cursors["consumer-5"] = (55, 1, 1.5e9)
    log.save_cursors(cursors)
    await log.commit_now()
    with pytest.raises(ValueError):
        log.set_meta("_log.next_offset", "1")
    await log.aclose()
    with closing(sqlite3.connect(tmp_path / "s.sqlite3")) as conn:
        stamps = conn.execute("SELECT count(DISTINCT updated_at), count(*) FROM cursors").fetchone()
    assert stamps == (1, 1_000)  # one "last seen"; the unit test checks that only changed ones are written
    log = await open_log(tmp_path)
    assert log.load_cursors() == cursors
    assert log.get_meta("last_alive_at") == "1700000000.5" and log.get_meta("nope") is None
    await log.aclose()


async def test_a_cursor_missing_from_the_snapshot_is_deleted_from_the_store(tmp_path: Path) -> None:
    """An operator deleted it (admin API), or consumer_ttl forgot it; the name may come back."""
    log = await open_log(tmp_path)
    log.save_cursors({"kept": (1, 0, 10.0), "team/deleted": (2, 0, 10.0)})
    await log.commit_now()
    log.save_cursors({"kept": (3, 0, 20.0)})
    await log.commit_now()
    assert log.load_cursors() == {"kept": (3, 0, 20.0)}
    await log.aclose()
    log = await open_log(tmp_path)
    assert log.load_cursors() == {"kept": (3, 0, 20.0)}
    log.save_cursors({"kept": (3, 0, 20.0), "team/deleted": (9, 0, 30.0)})
    await log.commit_now()
    await log.aclose()
    log = await open_log(tmp_path)
    assert log.load_cursors() == {"kept": (3, 0, 20.0), "team/deleted": (9, 0, 30.0)}
    await log.aclose()


async def test_a_cursor_missing_from_the_snapshot_is_deleted(tmp_path: Path) -> None:
    log = await open_log(tmp_path)
    log.save_cursors({"g#0/3": (10, 0, 1.0), "g#1/3": (11, 0, 1.0), "keep": (5, 0, 1.0)})
    await log.commit_now()
    log.save_cursors({"g#0/2": (10, 0, 2.0), "g#1/2": (10, 0, 2.0), "keep": (5, 0, 1.0)})  # the group's size changed
    await log.commit_now()
    await log.aclose()
    log = await open_log(tmp_path)
    assert log.load_cursors() == {"g#0/2": (10, 0, 2.0), "g#1/2": (10, 0, 2.0), "keep": (5, 0, 1.0)}
    await log.aclose()


async def test_run_commits_every_interval_and_once_more_when_cancelled(tmp_path: Path) -> None:
    log = await open_log(tmp_path, commit_interval=0.02)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        end = fill(log, 0, 10)
        await trio.sleep(0.1)
        assert log.committed_offset == end and log.status()["commits"] >= 1
        end = fill(log, end, 10)
        log.set_meta("k", "v")
        nursery.cancel_scope.cancel()
    log = await open_log(tmp_path)
    assert log.next_offset == end and log.get_meta("k") == "v"
    await log.aclose()


async def test_wait_beyond_and_close(tmp_path: Path) -> None:
    log = await open_log(tmp_path)
    with trio.move_on_after(0.05) as scope:
        await log.wait_beyond(0)
    assert scope.cancelled_caught
    log.append([b"a"], 1.0)
    await log.wait_beyond(0)
    log.close()
    await log.wait_beyond(5)
    with pytest.raises(RuntimeError):
        log.append([b"b"], 1.0)
    await log.aclose()


async def test_append_and_tail_reads_never_wait_for_the_disk(tmp_path: Path) -> None:
    log = await open_log(tmp_path, memory_bytes=1_000_000)
    stuck, release = threading.Event(), threading.Event()
    commit = log._store.commit

    def slow_commit(work: Any) -> Any:
        stuck.set()
        release.wait(5)
        return commit(work)

    log._store.commit = slow_commit  # type: ignore[method-assign]
    end = fill(log, 0, 10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.commit_now)
        await trio.to_thread.run_sync(stuck.wait)
        with trio.fail_after(1):  # the commit hangs in its thread; the loop does not
            end = fill(log, end, 1_000)
            assert (await read_all(log, end - 10))[0] == records(end - 10, 10)
        release.set()
    assert await log.commit_now() and log.committed_offset == end
    await log.aclose()


async def test_an_unreadable_row_reads_as_a_skip(tmp_path: Path) -> None:
    log = await open_log(tmp_path, memory_bytes=4_000)
    end = 0
    for _ in range(5):
        end = fill(log, end, 10)
        await log.commit_now()
    with closing(sqlite3.connect(tmp_path / "s.sqlite3")) as conn, conn:
        first, count = conn.execute(
            "SELECT first, count FROM segments ORDER BY first LIMIT 1 OFFSET 1"
        ).fetchone()
        conn.execute("UPDATE segments SET ends = x'01000000' WHERE first = ?", (first,))
    got, start, skipped = await read_all(log)
    assert (start, skipped) == (0, count) and got == records(0, first) + records(
        first + count, end - first - count
    )
    await log.aclose()


# -- crashes ------------------------------------------------------------------
CHILD = """
import sys, time, trio
from lsproxy.hub.durable import DurableLog
from lsproxy.hub.segment import Segment
def records(first, count):
    return [b'{"n":%d}' % i for i in range(first, first + count)]
async def main(path):
    log = await DurableLog.open(path, retention_bytes=1 << 30, retention_seconds=1e9,
                                memory_bytes=1 << 20, commit_interval=0.003)
    print("start", log.next_offset, flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        n = log.next_offset
        while True:
            count = 1 + n % 7
            log.append(records(n, count), time.time())
            n += count
            log.save_cursors({"c": (n, 0, 1.0)})
            await trio.sleep(0.0005)
            print("committed", log.committed_offset, flush=True)
trio.run(main, sys.argv[1])
"""


def crash_after(path: Path, commits: int) -> tuple[int, int]:
    """Run the child until it reported ``commits`` distinct committed offsets, SIGKILL it."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    start = int(child.stdout.readline().split()[1])
    seen = {start}
    last = start
    for line in child.stdout:
        last = int(line.split()[1])
        seen.add(last)
        if len(seen) > commits:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    return start, last


async def test_sigkill_keeps_exactly_the_completed_commits(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    previous = 0
    for _ in range(2):  # a second crash continues the offsets of the first
        start, committed = crash_after(path, 20)
        assert start == previous
        log = await DurableLog.open(
            str(path), retention_bytes=1 << 30, retention_seconds=1e9, memory_bytes=1 << 20, commit_interval=1
        )
        end = log.next_offset
        assert end >= committed > start
        got, _, skipped = await read_all(log)
        assert skipped == 0 and got == [b'{"n":%d}' % i for i in range(end)]
        # The cursor was saved with the records: both come from the same (last) commit.
        assert log.load_cursors() == {"c": (end, 0, 1.0)}
        await log.aclose()
        previous = end


# -- damage ---------------------------------------------------------------------
async def test_a_damaged_file_is_recovered_at_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = await open_log(tmp_path)
    end = 0
    for _ in range(60):
        end = fill(log, end, 20)
        await log.commit_now()
    await log.aclose()
    path = tmp_path / "s.sqlite3"
    os.truncate(path, os.path.getsize(path) // 2)
    with caplog.at_level(logging.ERROR):
        log = await open_log(tmp_path)
    recovered = log.status()["recovered"]
    assert isinstance(recovered, str) and "was damaged" in recovered and recovered in caplog.text
    got, first, skipped = await read_all(log)
    assert first == 0 and 0 < len(got) < end and got == records(0, len(got))
    assert log.next_offset == end and skipped == end - len(got)
    await log.aclose()


# -- a full disk -----------------------------------------------------------------
class Disk:
    full = False


def faulty(disk: Disk) -> Connect:
    def full() -> sqlite3.OperationalError:
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode, exc.sqlite_errorname = 13, "SQLITE_FULL"  # type: ignore[attr-defined]
        return exc

    class Faulty(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if disk.full and sql.lstrip().upper().startswith(("INSERT", "DELETE", "COMMIT")):
                raise full()
            return super().execute(sql, *args)

        def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if disk.full:
                raise full()
            return super().executemany(sql, *args)

    def connect(path: str) -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=Faulty)

    return connect


async def test_a_full_disk_keeps_serving_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk, clock = Disk(), Clock()
    log = await open_log(tmp_path, memory_bytes=20_000, clock=clock, connect=faulty(disk))
    end = fill(log, 0, 20)
    assert await log.commit_now()
    disk.full = True
    committed = log.committed_offset
    with caplog.at_level(logging.ERROR, logger="lsproxy.store"):
        for _ in range(5):
            end = fill(log, end, 20)
            clock.now += 1
            assert not await log.commit_now()
    status = log.status()
    assert status["persisting"] is False and status["since"] == 1_001.0
    assert status["error"] == f"disk full (ENOSPC) writing {tmp_path / 's.sqlite3'}"
    assert caplog.text.count("cannot persist") == 1  # once, not per commit
    assert log.committed_offset == committed and status["pending_records"] == end - committed
    assert status["pending_bytes"] > 20_000  # beyond memory_bytes, within the hard cap
    assert (await read_all(log, end - 3))[0] == records(end - 3, 3)  # tail consumers are served
    assert (await read_all(log))[0] == records(0, end)
    disk.full = False
    assert await log.commit_now()
    assert log.status()["persisting"] is True and log.committed_offset == end
    await log.aclose()
    log = await open_log(tmp_path)
    assert (await read_all(log))[0] == records(0, end)  # nothing lost
    await log.aclose()


async def test_while_failing_run_retries_once_per_interval(tmp_path: Path) -> None:
    disk = Disk()
    log = await open_log(tmp_path, memory_bytes=1_000, commit_interval=0.02, connect=faulty(disk))
    attempts = 0
    commit = log._store.commit

    def counted(work: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return commit(work)

    log._store.commit = counted  # type: ignore[method-assign]
    disk.full = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        for _ in range(50):  # far past the flush threshold: would commit at once if healthy
            fill(log, log.next_offset, 5)
            await trio.sleep(0.002)
        assert 2 <= attempts <= 8 and log.status()["persisting"] is False
        disk.full = False
        await trio.sleep(0.05)
        assert log.status()["persisting"] is True
        nursery.cancel_scope.cancel()


async def test_past_the_hard_cap_records_are_served_but_not_persisted(tmp_path: Path) -> None:
    disk = Disk()
    log = await open_log(tmp_path, memory_bytes=2_000, connect=faulty(disk))
    disk.full = True
    end = fill(log, 0, 100)  # ~40 KB against a 6 KB disk queue
    assert not await log.commit_now()
    dropped = log.status()["dropped_from_disk"]
    assert isinstance(dropped, int) and 0 < dropped < end
    assert (await read_all(log, end - 5))[0] == records(end - 5, 5)
    disk.full = False
    await log.commit_now()
    end2 = fill(log, end, 5)
    await log.aclose()
    log = await open_log(tmp_path)
    got, first, skipped = await read_all(log)
    assert first == 0 and skipped == dropped and len(got) == end2 - dropped
    assert got[-5:] == records(end2 - 5, 5) and log.next_offset == end2
    await log.aclose()


async def test_a_real_full_filesystem(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]
    if (
        os.geteuid() != 0
        or (await trio.run_process(mount, check=False, stderr=subprocess.DEVNULL)).returncode
    ):
        pytest.skip("needs root and tmpfs")
    try:
        log = await open_log(mnt, memory_bytes=1 << 20)
        end = 0
        while log.status()["persisting"] and end < 20_000:
            end = fill(log, end, 20)
            await log.commit_now()
        assert str(log.status()["error"]).startswith("disk full (ENOSPC)")
        await trio.run_process(["mount", "-o", "remount,size=4m", str(mnt)])  # space comes back
        assert await log.commit_now()
        await log.aclose()
        log = await open_log(mnt)
        assert (await read_all(log))[0] == records(0, end)
        await log.aclose()
    finally:
        await trio.run_process(["umount", "-l", str(mnt)], check=False)


async def test_connect_default_is_the_stdlib(tmp_path: Path) -> None:
    conn = connect_sqlite(str(tmp_path / "x.sqlite3"))
    assert conn.isolation_level is None
    conn.close()
