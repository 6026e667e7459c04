"""Bounded consumer state and bounded replay, against the real proxy and simulator:
the named-consumer cap (429), consumer_ttl, /status pagination, and how much a killed
named consumer is sent again (the rewind rule with in-flight sampling)."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import struct
from contextlib import closing

import httpx
import pytest
import trio

from lsproxy.hub.store_files import stream_db_path
from lsproxy.serve.consumer import BATCH_BYTES
from lsproxy.simulator import SimSettings, SimStream
from tests.harness import ProxyUnderTest, StreamReader, running


async def named(proxy: ProxyUnderTest, name: str, records: int = 1) -> StreamReader:
    reader = await StreamReader(proxy.port, f"/api/1/stream/s1?consumer={name}").connect()
    assert reader.status == 200, name
    await reader.read_records(records)
    return reader


async def test_a_new_named_consumer_beyond_the_cap_gets_429_known_ones_still_connect() -> None:
    async with running(max_named_consumers=3) as (_sim, proxy):
        assert proxy is not None
        for name in ("a", "b", "c"):
            await (await named(proxy, name)).aclose()
        refused = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=d").connect()
        assert refused.status == 429
        assert refused.response_headers["content-type"] == "application/json"
        await refused.read_until(lambda r: False, timeout=5)  # to the end: the connection closes
        body = json.loads(refused._buf or refused.error_body)
        assert body["error"] == "too_many_consumers" and "max_named_consumers" in body["error_description"]
        await refused.aclose()
        again = await named(proxy, "a", records=5)  # an existing id: served as always
        anonymous = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
        await anonymous.read_records(5)  # anonymous consumers are not capped
        _, status = await proxy.get_json("/status")
        summary = status["streams"]["s1"]["consumer_summary"]
        assert summary["named"] == 3 and summary["count"] == 4 and summary["connected"] == 2
        for r in (again, anonymous):
            await r.aclose()


async def test_a_named_cursor_not_connected_for_the_ttl_is_forgotten_and_removed_from_the_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lsproxy.hub")
    async with running(consumer_ttl=0.6) as (sim, proxy):
        assert proxy is not None
        await (await named(proxy, "gone", records=3)).aclose()
        stays = await named(proxy, "stays")
        path = stream_db_path(sim.storage_dir, "s1")

        def stored() -> set[str]:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                return {name for (name,) in conn.execute("SELECT name FROM cursors")}

        with trio.fail_after(5):
            while "gone" not in stored():
                await trio.sleep(0.05)
        with trio.fail_after(5):  # 0.6 s after it left, plus a storage step (0.2 s)
            while "gone" in stored():
                await trio.sleep(0.05)
        _, status = await proxy.get_json("/status")
        ids = {c["id"] for c in status["streams"]["s1"]["consumers"]}
        assert ids == {"stays"}  # connected for longer than the ttl: kept
        assert "stays" in stored()
        assert any(
            "forgot 1 named consumer(s)" in r.getMessage() and "gone" in r.getMessage()
            for r in caplog.records
        )
        back = await named(proxy, "gone")  # a fresh cursor (at the tail)
        _, status = await proxy.get_json("/status")
        (entry,) = [c for c in status["streams"]["s1"]["consumers"] if c["id"] == "gone"]
        assert entry["connections"] == 1
        for r in (stays, back):
            await r.aclose()


async def test_status_lists_the_most_lagging_200_consumers_with_a_summary_and_pages() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        for i in range(250):
            # Each leaves a cursor at the tail of its moment: the first ones lag the most.
            await (await named(proxy, f"c{i:03d}", records=1)).aclose()
        live = await named(proxy, "live", records=1)
        async with httpx.AsyncClient(trust_env=False) as client:
            base = f"http://127.0.0.1:{proxy.port}/status"
            first = (await client.get(base)).json()["streams"]["s1"]
            everything = (await client.get(f"{base}?consumers=all")).json()["streams"]["s1"]
            rest = (await client.get(f"{base}?offset=200&limit=100")).json()["streams"]["s1"]
            bad = await client.get(f"{base}?limit=lots")
        assert len(first["consumers"]) == 200 and len(everything["consumers"]) == 251
        assert len(rest["consumers"]) == 51
        lags = [c["lag"] for c in everything["consumers"]]
        assert lags == sorted(lags, reverse=True)  # most lagging first
        assert first["consumers"][0]["id"] == "c000"
        summary = first["consumer_summary"]
        assert summary["count"] == 251 and summary["named"] == 251 and summary["connected"] == 1
        # The same snapshot's worst lag (the tail moves between requests).
        assert summary["max_lag"] == first["consumers"][0]["lag"] and summary["listed"] == 200
        ids = [c["id"] for c in everything["consumers"]]
        assert ids[:200] == [c["id"] for c in first["consumers"]] and ids[200:] == [
            c["id"] for c in rest["consumers"]
        ]
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_parameter"
        await live.aclose()


CLIENT_BUFFER = 64 * 1024


async def test_a_killed_named_consumer_is_sent_again_only_what_can_have_been_in_flight(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The consumer read everything; the kernel says so. After a kill (reset) the replay is
    bounded by the client allowance + one batch + the mark resolution, not by the
    system-wide buffer maximum (which, before, made it the whole connection), and no gap."""
    caplog.set_level(logging.INFO, logger="lsproxy.hub")
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 2000.0),))
    async with running(settings, client_buffer_bytes=CLIENT_BUFFER) as (sim, proxy):
        assert proxy is not None
        hub = proxy.proxy.hubs["s1"]
        first = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=k", gzip=False).connect()
        await first.read_records(3000)
        sim.sim.set_rate("s1", 0)
        await trio.sleep(0.2)  # the last batches reach the proxy
        tail = hub.log.next_offset
        cursor = hub.book.get("k")
        assert cursor is not None and cursor.delivery is not None
        expected = tail - cursor.delivery.start
        await first.read_until(lambda r: len(r.records) >= expected)
        assert len(first.records) == expected  # everything up to the tail
        heartbeats = first.empty_records
        await first.read_until(lambda r: r.empty_records >= heartbeats + 2)  # sampled after a heartbeat
        _, status = await proxy.get_json("/status")
        (entry,) = [c for c in status["streams"]["s1"]["consumers"] if c["id"] == "k"]
        assert entry["replay"]["bound_by"] == "peer socket"
        assert entry["replay"]["wire_bytes"] <= CLIENT_BUFFER + BATCH_BYTES + 64 * 1024
        assert first.stream is not None  # killed: the socket is reset, as by a SIGKILL with data unread
        first.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await first.aclose()
        second = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=k", gzip=False).connect()
        await second.read_until(lambda r: r.empty_records >= 2)  # the replay, then nothing new
        replayed = second.seqs()
        assert replayed, "the client allowance is always replayed"
        assert replayed == first.seqs()[-len(replayed) :]  # no gap: exactly the newest ones again
        replay_bytes = sum(len(r) + 2 for r in second.records)
        # Bound: the unprocessed bytes at the last sample (the client allowance: nothing else
        # was unread) + the distance back to the previous batch end (a batch, at most
        # BATCH_BYTES, plus one mark granule, <= 1/32 of the at most 2 MiB then unconfirmed).
        assert replay_bytes <= CLIENT_BUFFER + BATCH_BYTES + 64 * 1024
        assert len(replayed) < len(first.records) / 10  # before: the whole connection again
        line = next(
            r.getMessage()
            for r in caplog.records
            if "consumer k connected at" in r.getMessage() and "resumes" in r.getMessage()
        )
        assert f"replaying {len(replayed)} records sent before" in line
        await second.aclose()
