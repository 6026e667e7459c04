"""The 60-second rule across reloads and restarts, whatever the stream is called.

The simulator lingers: a closed connection keeps its slot for LINGER seconds,
so a reconnect before then is refused with 409/503. LINGER < DELAY, so a proxy
that waits reconnect_delay after the last loss is never refused, and one that
reconnects early always is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from lsproxy.app import Proxy
from lsproxy.simulator import SimSettings, SimStream
from tests.harness import ProxyUnderTest, SimUnderTest, proxy_config, running

DELAY = 1.0  # the proxy's reconnect_delay in these tests
LINGER = 0.8  # the simulator refuses a reconnect sooner than this after a close
# The simulator notices a close a moment after the proxy closed (its EOF).
SLACK = 0.05
JOURNAL = "upstream-journal.json"


def sim_settings(*endpoints: str) -> SimSettings:
    return SimSettings(streams=tuple(SimStream(e, f"suite-{e}", 200.0) for e in endpoints), linger=LINGER)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def connected(sim: SimUnderTest, endpoint: str = "s1", accepted: int = 1) -> Callable[[], bool]:
    def check() -> bool:
        stats = sim.stream_stats(endpoint)
        return bool(stats["accepted"] >= accepted and stats["open"] >= 1)

    return check


def assert_waited(sim: SimUnderTest, endpoint: str = "s1") -> None:
    """Every attempt came at least DELAY after the previous loss, and none was refused."""
    stats = sim.stream_stats(endpoint)
    drops = stats["disconnect_times"]
    for attempt in stats["attempt_times"]:
        before = [d for d in drops if d <= attempt]
        if before:
            assert attempt - max(before) >= DELAY - SLACK, (attempt, max(before))
    assert stats["statuses"].get("409", 0) == 0 and stats["statuses"].get("503", 0) == 0, stats["statuses"]


@asynccontextmanager
async def proxy_running(sim: SimUnderTest, **cfg: Any) -> AsyncIterator[ProxyUnderTest]:
    """A proxy on ``sim``'s storage dir, shut down cleanly (and awaited) on exit."""
    async with trio.open_nursery() as nursery:
        proxy = Proxy(proxy_config(sim, reconnect_delay=DELAY, **cfg))
        addresses = await nursery.start(proxy.run)
        try:
            yield ProxyUnderTest(proxy, addresses[0][1])
        finally:
            proxy.request_shutdown()


async def assert_backoff_countdown(proxy: ProxyUnderTest, stream: str, *, at_least: float) -> None:
    _, status = await proxy.get_json("/status")
    s = status["streams"][stream]
    assert s["state"] == "backoff", s["state"]
    assert s["next_attempt_in"] is not None and at_least <= s["next_attempt_in"] <= DELAY * 1.2
    assert all(c["state"] == "backoff" for c in s["upstream_connections"])


@pytest.mark.parametrize("connections", [1, 2])
async def test_a_reload_renaming_a_stream_waits_the_delay_after_the_old_connection_closed(
    connections: int,
) -> None:
    async with running(sim_settings("s1"), reconnect_delay=DELAY, connections=connections) as (sim, proxy):
        assert proxy is not None
        await wait_for(connected(sim, accepted=connections))
        new = proxy_config(
            sim,
            streams=("renamed",),
            endpoints={"renamed": "s1"},
            reconnect_delay=DELAY,
            connections=connections,
        )
        changes = await proxy.proxy.reload(new)
        assert "stream s1: removed" in changes and "stream renamed: added" in changes
        await trio.sleep(0.1)
        await assert_backoff_countdown(proxy, "renamed", at_least=0.5)
        await wait_for(connected(sim, accepted=2 * connections))
        assert_waited(sim)


async def test_a_stream_removed_then_added_back_waits_the_delay_after_its_removal() -> None:
    async with running(sim_settings("s1", "other"), streams=("s1", "other"), reconnect_delay=DELAY) as (
        sim,
        proxy,
    ):
        assert proxy is not None
        await wait_for(connected(sim))
        changes = await proxy.proxy.reload(proxy_config(sim, streams=("other",), reconnect_delay=DELAY))
        assert "stream s1: removed" in changes
        await wait_for(lambda: sim.stream_stats()["open"] == 0)
        await trio.sleep(0.3)
        # Back, under another name: the upstream is the same.
        config = proxy_config(
            sim, streams=("other", "again"), endpoints={"again": "s1"}, reconnect_delay=DELAY
        )
        assert "stream again: added" in await proxy.proxy.reload(config)
        await assert_backoff_countdown(proxy, "again", at_least=0.3)
        await wait_for(connected(sim, accepted=2))
        assert_waited(sim)
        assert sim.stream_stats("other")["attempts"] == 1  # untouched


@pytest.mark.parametrize("storage", ["durable = false", "durable = true"])
async def test_a_restart_waits_the_delay_even_in_memory_and_under_a_new_name(storage: str) -> None:
    async with running(sim_settings("s1"), start_proxy=False) as (sim, _):
        async with proxy_running(sim, extra=storage) as proxy:
            await wait_for(connected(sim))
        assert os.path.exists(os.path.join(sim.storage_dir, JOURNAL))
        stores = [f for f in os.listdir(sim.storage_dir) if f.endswith(".sqlite3")]
        assert bool(stores) == (storage == "durable = true")
        async with proxy_running(
            sim, extra=storage, streams=("renamed",), endpoints={"renamed": "s1"}
        ) as proxy:
            await assert_backoff_countdown(proxy, "renamed", at_least=0.5)
            await wait_for(connected(sim, accepted=2))
            _, status = await proxy.get_json("/status")
            assert status["streams"]["renamed"]["state"] == "streaming"
            assert status["streams"]["renamed"]["next_attempt_in"] is None
        assert_waited(sim)


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
async def test_a_store_lost_while_stopped_is_logged_and_the_wait_still_holds(
    damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(sim_settings("s1"), start_proxy=False) as (sim, _):
        async with proxy_running(sim) as proxy:
            await wait_for(connected(sim))
            await wait_for(lambda: proxy.proxy.hubs["s1"].log.next_offset > 20)
            await trio.sleep(0.3)  # committed
        store = Path(sim.storage_dir) / "s1.sqlite3"
        for extra in ("-wal", "-shm"):
            Path(f"{store}{extra}").unlink(missing_ok=True)
        if damage == "deleted":
            store.unlink()
        else:
            store.write_bytes(b"")
        with caplog.at_level(logging.INFO, logger="lsproxy"):
            async with proxy_running(sim) as proxy:
                await assert_backoff_countdown(proxy, "s1", at_least=0.5)
                await wait_for(connected(sim, accepted=2))
        lost = [r for r in caplog.records if "cursors were lost" in r.getMessage()]
        assert len(lost) == 1 and lost[0].levelno == logging.ERROR
        assert str(store) in lost[0].getMessage()
        assert_waited(sim)


@pytest.mark.parametrize("journal", ["missing", "unreadable"])
async def test_an_unknown_journal_waits_the_full_delay_from_start_up(
    journal: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(sim_settings("s1"), start_proxy=False) as (sim, _):
        async with proxy_running(sim) as proxy:
            await wait_for(connected(sim))
        await trio.sleep(0.5)  # the last loss is well before the restart
        path = Path(sim.storage_dir) / JOURNAL
        if journal == "missing":
            path.unlink()  # the store is still there: not a first run
        else:
            path.write_bytes(b'{"version": 1, "upstreams": {"http://x": {"attempt_at": "soon"')
        with caplog.at_level(logging.INFO, logger="lsproxy"):
            started = trio.current_time()
            async with proxy_running(sim) as proxy:
                await assert_backoff_countdown(proxy, "s1", at_least=0.8)
                await wait_for(connected(sim, accepted=2))
        assert sim.stream_stats()["attempt_times"][1] - started >= DELAY
        unknown = [r for r in caplog.records if "unknown" in r.getMessage() and "journal" in r.getMessage()]
        assert len(unknown) == 1 and unknown[0].levelno == logging.WARNING
        assert_waited(sim)
        assert json.loads(path.read_text())["upstreams"]  # rewritten whole


async def test_a_first_run_in_an_empty_storage_dir_connects_at_once(caplog: pytest.LogCaptureFixture) -> None:
    async with running(sim_settings("s1"), start_proxy=False) as (sim, _):
        with caplog.at_level(logging.INFO, logger="lsproxy"):
            started = trio.current_time()
            async with proxy_running(sim):
                await wait_for(connected(sim))
        assert sim.stream_stats()["attempt_times"][0] - started < DELAY / 2
        assert any("first run" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
        assert not any(r.levelno >= logging.WARNING for r in caplog.records), caplog.text
