"""The synchronous SQLite layer: row format, commits, loading, damage, the lock, the pid file."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lsproxy.hub.segment import CRLF, make_segment
from lsproxy.hub.store import Commit, Damaged, Store, StoreError, describe_error
from lsproxy.hub.store_files import (
    acquire_storage_lock,
    open_store,
    read_pid_file,
    remove_pid_file,
    stream_db_path,
    write_pid_file,
)
from lsproxy.hub.store_rows import coalesce, pack_ends, unpack_ends


def record(i: int, size: int = 98) -> bytes:
    head = f'{{"n":{i},"pad":"'.encode()
    return head + b"x" * (size - len(head) - 2) + b'"}'


def records(first: int, count: int, size: int = 98) -> list[bytes]:
    return [record(i, size) for i in range(first, first + count)]


def split(data: bytes) -> list[bytes]:
    assert data.endswith(CRLF)
    return data.split(CRLF)[:-1]


def work(segments, trim: int = 0, cursors=None, meta=None, now: float = 1.0) -> Commit:  # type: ignore[no-untyped-def]
    nxt = segments[-1].end if segments else 0
    return Commit(segments, trim, nxt, cursors or {}, meta or {}, now)


def fill(path: str, rows: int, per_row: int = 20, size: int = 200) -> Store:
    """A store with ``rows`` rows of ``per_row`` records (one commit each)."""
    store = Store(path)
    store.load(0)
    for first in range(0, rows * per_row, per_row):
        seg = make_segment(first, records(first, per_row, size), float(first))
        store.commit(work([seg], cursors={"c": (seg.end, 0, 5.0)}, meta={"k": str(seg.end)}))
    return store


# -- the row format ----------------------------------------------------------------
def test_ends_pack_round_trip() -> None:
    ends = (5, 70000, 2**32 - 1)
    assert unpack_ends(pack_ends(ends)) == ends
    assert pack_ends([1]) == b"\x01\x00\x00\x00"  # little-endian on every host


def test_coalesce_packs_splits_and_respects_gaps() -> None:
    segs = [make_segment(i * 10, records(i * 10, 10), float(i)) for i in range(10)]  # 100 bytes a record
    rows = list(coalesce(segs, row_bytes=2_500))
    assert [(r.first, r.end) for r in rows] == [(0, 25), (25, 50), (50, 75), (75, 100)]
    assert all(len(r.data) <= 2_500 for r in rows)
    assert [split(r.data) for r in rows] == [records(r.first, r.end - r.first) for r in rows]
    assert [r.received_at for r in rows] == [2.0, 4.0, 7.0, 9.0]  # the newest record's time
    # A gap starts a new row; a record larger than a row is a row of its own.
    big = make_segment(200, [b"y" * 5_000], 20.0)
    rows = list(coalesce([segs[0], segs[2], big], row_bytes=2_500))
    assert [(r.first, r.end) for r in rows] == [(0, 10), (20, 30), (200, 201)]
    assert rows[1].ends[-1] == len(rows[1].data)


def test_coalesce_keeps_whole_small_segments_uncopied() -> None:
    seg = make_segment(0, records(0, 3), 1.0)
    assert next(coalesce([seg])).data is seg.data


# -- commits and loading -----------------------------------------------------------
def test_commit_load_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite3")
    store = fill(path, rows=40)  # 4,040 bytes a row
    store.commit(Commit([], 200, 800, {}, {"last_lost_at": "12.5"}, 2.0))
    store.close()
    loaded = Store(path).load(tail_bytes=10_000)
    assert loaded.index[0][0] == 200 and loaded.next_offset == 800
    assert sum(row[1] for row in loaded.index) == 600
    assert loaded.tail[-1].end == 800 and sum(len(s.data) for s in loaded.tail) <= 10_000
    assert split(b"".join(s.data for s in loaded.tail)) == records(
        loaded.tail[0].first, 800 - loaded.tail[0].first, 200
    )
    assert loaded.cursors == {"c": (800, 0, 5.0)}
    assert loaded.meta == {"k": "800", "last_lost_at": "12.5"}  # the end marker is not meta


def test_end_marker_keeps_offsets_when_every_row_aged_out(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite3")
    store = fill(path, rows=10)
    store.commit(Commit([], 200, 200, {}, {}, 2.0))
    store.close()
    loaded = Store(path).load(0)
    assert (loaded.index, loaded.next_offset) == ([], 200)


def test_a_retried_commit_is_idempotent(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.sqlite3"))
    store.load(0)
    segs = [make_segment(0, records(0, 5), 1.0), make_segment(5, records(5, 5), 2.0)]
    store.commit(work(segs[:1]))
    store.commit(work(segs))  # as if the first one had failed after landing
    assert [r[:2] for r in store.load(0).index] == [(0, 10)]


def test_only_changed_cursors_are_written(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite3")
    store = Store(path)
    store.load(0)
    cursors = {f"consumer-{i}": (i, 0, 1.0) for i in range(1_000)}
    store.commit(Commit([], 0, 0, cursors, {}, 1.0))
    store.commit(Commit([], 0, 0, {"consumer-7": (70, 1, 2.0)}, {}, 2.0))
    store.commit(Commit([], 0, 0, {"consumer-8": (80, 0, 3.0)}, {}, 3.0, forgotten=["consumer-9", "consumer-8"]))
    store.close()
    loaded = Store(path).load(0)
    del cursors["consumer-9"]  # forgotten (consumer_ttl); consumer-8 came back in the same commit
    assert loaded.cursors == {**cursors, "consumer-7": (70, 1, 2.0), "consumer-8": (80, 0, 3.0)}
    with sqlite3.connect(path) as conn:
        stamps = dict(conn.execute("SELECT updated_at, count(*) FROM cursors GROUP BY updated_at").fetchall())
    assert stamps == {1.0: 997, 2.0: 1, 3.0: 1}


def test_read_rows_skips_an_unreadable_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "s.sqlite3")
    store = fill(path, rows=10)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE segments SET ends = x'0100' WHERE first = 40")
    firsts = [r[0] for r in store.load(0).index[:4]]
    assert firsts == [0, 20, 40, 60]
    rows = store.read_rows(firsts)
    assert [r.first for r in rows] == [0, 20, 60]
    assert "row at offset 40 is unreadable" in caplog.text


def test_describe_error_speaks_the_operators_language() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[attr-defined]
    assert describe_error(full, "/d/s.sqlite3") == "disk full (ENOSPC) writing /d/s.sqlite3"
    assert describe_error(OSError(28, "No space left on device"), "/p") == "disk full (ENOSPC) writing /p"
    ro = sqlite3.OperationalError("attempt to write a readonly database")
    ro.sqlite_errorcode, ro.sqlite_errorname = 8, "SQLITE_READONLY"  # type: ignore[attr-defined]
    assert describe_error(ro, "/p").startswith("store is read-only")


# -- damage --------------------------------------------------------------------------
def damaged_db(tmp_path: Path) -> str:
    path = str(tmp_path / "s.sqlite3")
    fill(path, rows=100, per_row=20, size=200).close()  # ~440 KB, WAL checkpointed away
    assert not os.path.exists(path + "-wal")
    return path


def check_recovered(path: str) -> list[tuple[int, int]]:
    """Every recovered record sits at its own offset; returns the kept ranges."""
    store, loaded = open_store(path, tail_bytes=0)
    ranges: list[tuple[int, int]] = []
    for first, count, _, _ in loaded.index:
        for row in store.read_rows([first]):
            assert split(row.data) == records(row.first, row.end - row.first, 200)
        if ranges and ranges[-1][1] == first:
            ranges[-1] = (ranges[-1][0], first + count)
        else:
            ranges.append((first, first + count))
    assert loaded.next_offset == 2000  # the end marker (or cursors) keep offsets from repeating
    store.close()
    return ranges


def test_a_garbled_middle_keeps_prefix_and_suffix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = damaged_db(tmp_path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(3 * 4096))
    with caplog.at_level(logging.ERROR, logger="lsproxy.store"):
        ranges = check_recovered(path)
    kept = sum(b - a for a, b in ranges)
    assert ranges[0][0] == 0 and ranges[-1][1] == 2000 and 1500 < kept < 2000
    corrupt = [n for n in os.listdir(tmp_path) if ".corrupt-" in n]
    assert len(corrupt) == 1 and os.path.getsize(tmp_path / corrupt[0]) == size
    assert (
        "was damaged" in caplog.text and corrupt[0] in caplog.text and "recovered records 0.." in caplog.text
    )


def test_a_truncated_file_keeps_what_can_be_read(tmp_path: Path) -> None:
    path = damaged_db(tmp_path)
    os.truncate(path, os.path.getsize(path) * 6 // 10)
    ranges = check_recovered(path)
    assert ranges[0][0] == 0 and sum(b - a for a, b in ranges) > 800
    assert any(".corrupt-" in n for n in os.listdir(tmp_path))


def test_an_unreadable_file_is_left_alone_with_an_instruction(tmp_path: Path) -> None:
    path = damaged_db(tmp_path)
    with open(path, "r+b") as f:
        f.write(os.urandom(4096))  # the header and the schema page
    with pytest.raises(StoreError, match=f"move {path} away to start this stream empty"):
        open_store(path, tail_bytes=0)
    assert sorted(os.listdir(tmp_path)) == ["s.sqlite3"]


def test_load_reports_quick_check_failures(tmp_path: Path) -> None:
    path = damaged_db(tmp_path)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096)
    with pytest.raises(Damaged):
        Store(path).load(0)


# -- files around the store ----------------------------------------------------------
def test_the_lock_refuses_a_second_proxy(tmp_path: Path) -> None:
    code = "import sys; from lsproxy.hub.store_files import acquire_storage_lock as a; a(sys.argv[1])"
    with acquire_storage_lock(str(tmp_path)) as lock:
        assert (tmp_path / "lsproxy.lock").read_text() == f"{os.getpid()}\n"
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert other.returncode != 0
        assert (
            f"StoreError: storage dir {tmp_path} is in use by another lsproxy (pid {os.getpid()}); "
            "two proxies would open two upstream connections"
        ) in other.stderr
    assert lock.fd is None
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 0


def test_pid_file(tmp_path: Path) -> None:
    assert read_pid_file(str(tmp_path)) is None
    write_pid_file(str(tmp_path))
    assert read_pid_file(str(tmp_path)) == os.getpid()
    remove_pid_file(str(tmp_path))
    assert not (tmp_path / "lsproxy.pid").exists()


def test_stream_db_path_escapes_odd_names() -> None:
    assert stream_db_path("/d", "prod") == "/d/prod.sqlite3"
    assert stream_db_path("/d", "a/b") == "/d/a%2Fb.sqlite3"
    assert "/" not in os.path.basename(stream_db_path("/d", "../x"))
