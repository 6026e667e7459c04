"""The upstream journal and the supervisor on trio's MockClock.

The journal's clock is trio's mock clock and it writes on the event loop
(``threaded=False``): a worker thread takes real time, which the autojumping
clock would skip. The files are real.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from lsproxy.hub.journal import ATTEMPT_WRITE_SECONDS, UpstreamJournal
from lsproxy.hub.journal_rule import JOURNAL_NAME, Knowledge, parse_journal, upstream_key
from lsproxy.hub.log import MemoryLog
from lsproxy.hub.stream import StreamHub
from lsproxy.upstream.outcome import classify_end, classify_status
from lsproxy.upstream.supervisor import supervise
from tests.trio.test_supervisor import stream_config

DELAY = 60.0
HEARTBEAT = 1.0
URL = "http://127.0.0.1:1/api/1/stream/s"  # test_supervisor's stream_config


def load(directory: Path) -> UpstreamJournal:
    return UpstreamJournal.load(
        str(directory), heartbeat_interval=HEARTBEAT, clock=trio.current_time, threaded=False
    )


def on_disk(directory: Path) -> dict[str, float]:
    moments = parse_journal((directory / JOURNAL_NAME).read_bytes()).upstreams[upstream_key(URL)]
    return {k: v for k, v in vars(moments).items() if v is not None}


async def test_every_wait_shows_backoff_and_its_countdown(autojump_clock: trio.testing.MockClock) -> None:
    async def script(on_connected):  # type: ignore[no-untyped-def]
        on_connected()
        await trio.sleep(100)
        return classify_end("eof", "closed", stream="s", streamed=True)

    stream = stream_config()
    hub = StreamHub("s", MemoryLog(1 << 20))
    async with trio.open_nursery() as nursery:
        # Held back, as after a restart or a reload: the wait is a back-off like any other.
        nursery.start_soon(
            lambda: supervise("s", stream.upstream, hub.upstream, script, not_before=trio.current_time() + 30)
        )
        await trio.sleep(1)
        snap = hub.snapshot(time.time())
        assert snap["state"] == "backoff" and snap["upstream_connections"][0]["state"] == "backoff"
        # The countdown is on the wall clock, which the mock clock does not move: about 30.
        assert 25 < snap["next_attempt_in"] <= 30
        await trio.sleep(30)
        snap = hub.snapshot(time.time())
        assert snap["state"] == "streaming" and snap["next_attempt_in"] is None
        await trio.sleep(100)
        snap = hub.snapshot(time.time())
        assert snap["state"] == "backoff" and DELAY * 0.9 < snap["next_attempt_in"] <= DELAY * 1.1
        nursery.cancel_scope.cancel()


async def test_attempts_are_durable_before_connecting_and_every_end_is_recorded(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    journal = load(tmp_path)
    seen_on_disk: list[dict[str, float]] = []

    async def script(on_connected):  # type: ignore[no-untyped-def]
        seen_on_disk.append(on_disk(tmp_path))
        if len(seen_on_disk) == 1:
            return classify_status(409, b"", stream="s")
        on_connected()
        await trio.sleep(1000)
        return classify_end("eof", "closed", stream="s", streamed=True)

    stream = stream_config()
    hub = StreamHub("s", MemoryLog(1 << 20))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        async with trio.open_nursery() as loop:
            loop.start_soon(
                lambda: supervise("s", stream.upstream, hub.upstream, script, journal=journal.connection(URL))
            )
            await trio.sleep(100)
            loop.cancel_scope.cancel()  # a reload or shutdown closes the streaming connection
        cancelled_at = trio.current_time()
        assert await journal.flush()
        nursery.cancel_scope.cancel()
    first, second = seen_on_disk
    assert first == {"attempt_at": 0.0, "alive_at": 0.0, "open": 1}
    assert second["attempt_at"] >= DELAY and second["ended_at"] == 0.0 and second["open"] == 1
    final = on_disk(tmp_path)
    assert final["ended_at"] == cancelled_at and final["open"] == 0
    assert journal.not_before(URL, DELAY) == cancelled_at + DELAY


async def test_an_attempt_cancelled_before_connecting_is_not_left_open(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    journal = load(tmp_path)  # its writer is not running: the attempt waits for durability
    with trio.move_on_after(1):
        await journal.connection(URL).attempt_starting()
    moments = journal._data.upstreams[upstream_key(URL)]
    assert moments.open == 0 and moments.attempt_at == 0.0 and moments.ended_at == 1.0


@pytest.mark.parametrize("seed", range(12))
async def test_a_killed_proxy_never_lets_the_next_one_attempt_early(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    stream = stream_config(max_reconnect_delay=300)
    events: list[float] = []  # attempt starts and ends: each is a moment Live Stream counts from
    in_attempt = False

    async def chaos(on_connected):  # type: ignore[no-untyped-def]
        nonlocal in_attempt
        events.append(trio.current_time())
        in_attempt = True
        try:
            await trio.sleep(rng.choice([0.0, 0.01, 0.5, 3.0]))
            if rng.random() < 0.3:
                return classify_status(rng.choice([409, 503, 401]), b"", stream="s")
            on_connected()
            await trio.sleep(rng.uniform(0, 400))
            return classify_end("eof", "closed", stream="s", streamed=True)
        finally:
            in_attempt = False
            events.append(trio.current_time())

    for life in range(6):
        journal = load(tmp_path)
        if life == 0:
            assert journal.knowledge is Knowledge.FIRST_RUN
        else:
            # The rule holds, and it costs at most the slack for a death it could not see.
            not_before = journal.not_before(URL, DELAY)
            assert not_before is not None and not_before >= max(events) + DELAY
            assert not_before <= max(events) + DELAY + journal.alive_slack
        hold = journal.not_before(URL, DELAY)
        hub = StreamHub("s", MemoryLog(1 << 20))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.run)
            nursery.start_soon(
                functools.partial(
                    supervise,
                    "s",
                    stream.upstream,
                    hub.upstream,
                    chaos,
                    not_before=hold,
                    journal=journal.connection(URL),
                    rng=random.Random(seed),
                )
            )
            await trio.sleep(rng.uniform(0, 900))
            # kill -9: what is on disk now is all the next life gets.
            raw = (tmp_path / JOURNAL_NAME).read_bytes() if life or events else b""
            killed_at = trio.current_time()
            open_at_death = in_attempt
            nursery.cancel_scope.cancel()
        if raw:
            (tmp_path / JOURNAL_NAME).write_bytes(raw)
        if open_at_death:
            events.append(killed_at)  # the upstream saw the connection go now
        else:
            events[:] = [e for e in events if e <= killed_at]
        assert events, "the first life made no attempt"
        await trio.sleep(rng.choice([0.0, 1.0, 30.0]))  # the restart takes a while


async def test_a_missing_or_unreadable_journal_is_unknown_and_an_empty_dir_a_first_run(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lsproxy")
    await trio.sleep(1000)
    journal = load(tmp_path / "not-yet")
    assert journal.knowledge is Knowledge.FIRST_RUN and journal.not_before(URL, DELAY) is None
    journal = load(tmp_path)
    assert journal.knowledge is Knowledge.FIRST_RUN and journal.not_before(URL, DELAY) is None
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
    assert "a first run" in caplog.records[0].getMessage()

    for trace in ("s.sqlite3", "lsproxy.lock"):
        caplog.clear()
        (tmp_path / trace).write_bytes(b"x")
        journal = UpstreamJournal.load(
            str(tmp_path),
            heartbeat_interval=HEARTBEAT,
            earlier_run=trace == "lsproxy.lock",  # the proxy tells: it takes the lock before loading
            clock=trio.current_time,
            threaded=False,
        )
        assert journal.knowledge is Knowledge.UNKNOWN
        assert journal.not_before(URL, DELAY) == 1000 + DELAY
        assert journal.not_before("http://elsewhere/api/1/stream/x", 5) == 1000 + 5
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "missing" in caplog.text and "unknown" in caplog.text
        (tmp_path / trace).unlink()

    caplog.clear()
    (tmp_path / JOURNAL_NAME).write_bytes(b"\x00garbage")
    journal = load(tmp_path)
    assert journal.knowledge is Knowledge.UNKNOWN and journal.not_before(URL, DELAY) == 1000 + DELAY
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "unreadable (not JSON" in caplog.text
    # It is rewritten whole at the first change.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        await journal.connection(URL).attempt_starting()
        nursery.cancel_scope.cancel()
    assert load(tmp_path).knowledge is Knowledge.KNOWN


async def test_a_store_lost_while_stopped_is_an_error_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = load(tmp_path)
    store, other, gone = tmp_path / "s.sqlite3", tmp_path / "t.sqlite3", tmp_path / "gone.sqlite3"
    store.write_bytes(b"sqlite")
    other.write_bytes(b"sqlite")
    for path, offset in ((store, 42), (other, 7), (gone, 3)):
        journal.note_store(str(path), offset)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        await journal.connection(URL).attempt_starting()  # writes the journal
        nursery.cancel_scope.cancel()
    store.unlink()
    other.write_bytes(b"")

    journal = load(tmp_path)
    with caplog.at_level(logging.ERROR, logger="lsproxy"):
        journal.check_store(str(store), "s")
        journal.check_store(str(other), "t")
        journal.check_store(str(tmp_path / "new.sqlite3"), "new")  # never seen: a new stream
        journal.check_store(str(store), "s")  # told once
    assert len(caplog.records) == 2
    assert all(r.levelno == logging.ERROR and "cursors were lost" in r.getMessage() for r in caplog.records)
    assert f"{store} was deleted" in caplog.records[0].getMessage() and "offset 42" in caplog.text
    assert f"{other} was emptied" in caplog.records[1].getMessage()
    # Neither configured nor on disk: removed on purpose, forgotten.
    journal.forget_stores_except([str(store), str(other)])
    assert journal._data.stores == {}


def test_an_abandoned_older_write_never_replaces_a_newer_journal(tmp_path: Path) -> None:
    journal = UpstreamJournal.load(str(tmp_path), heartbeat_interval=HEARTBEAT)
    assert journal._write_file(2, b"new") is None
    assert journal._write_file(1, b"old") is None  # finished late, after a newer one
    assert (tmp_path / JOURNAL_NAME).read_bytes() == b"new"
    assert os.listdir(tmp_path) == [JOURNAL_NAME]  # no temporary file left


async def test_a_journal_that_cannot_be_written_is_an_error_once_and_attempts_go_on(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("not a directory")
    journal = load(tmp_path / "file" / "dir")
    attempts: list[float] = []

    async def refused(on_connected):  # type: ignore[no-untyped-def]
        attempts.append(trio.current_time())
        return classify_status(503, b"", stream="s")

    stream = stream_config(max_reconnect_delay=60)
    hub = StreamHub("s", MemoryLog(1 << 20))
    with caplog.at_level(logging.ERROR, logger="lsproxy"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.run)
            nursery.start_soon(
                lambda: supervise(
                    "s", stream.upstream, hub.upstream, refused, journal=journal.connection(URL)
                )
            )
            await trio.sleep(1000)
            nursery.cancel_scope.cancel()
    assert attempts[0] == ATTEMPT_WRITE_SECONDS and len(attempts) > 5  # each waited, then went on
    cannot_write = [r for r in caplog.records if "cannot write the upstream journal" in r.getMessage()]
    assert len(cannot_write) == 1
