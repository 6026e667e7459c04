"""Simulator + proxy + consumers over real sockets (real trio clock, short delays)."""

from __future__ import annotations

import itertools
import json
import socket

import httpx
import trio

from lsproxy.simulator import SimSettings, SimStream
from tests.harness import StreamReader, running

DELAY = 0.3  # the tests' reconnect_delay


async def upstream_tail(sim) -> int:  # type: ignore[no-untyped-def]
    return sim.stream_stats()["sent"]


async def test_many_consumers_each_get_the_full_stream_in_order() -> None:
    async with running() as (sim, proxy):
        readers = [
            await StreamReader(proxy.port, "/api/1/stream/s1", gzip=i % 2 == 0).connect() for i in range(30)
        ]
        assert all(r.status == 200 for r in readers)
        assert readers[0].response_headers.get("content-encoding") == "gzip"
        assert "content-encoding" not in readers[1].response_headers
        async with trio.open_nursery() as nursery:
            for r in readers:
                nursery.start_soon(r.read_records, 100)
        # All started at the live tail at about the same moment: compare overlapping parts.
        first_common = max(r.seqs()[0] for r in readers)
        for r in readers:
            seqs = r.seqs()
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, no duplicates
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing skipped
            assert first_common in seqs
        assert sim.stream_stats()["accepted"] == 1
        for r in readers:
            await r.aclose()


async def test_fifty_consumer_restarts_open_no_upstream_connection_and_lose_nothing() -> None:
    async with running() as (sim, proxy):
        seen: list[int] = []
        for _ in range(50):
            r = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=restarter").connect()
            await r.read_records(5)
            seen += r.seqs()
            await r.aclose()
        stats = sim.stream_stats()
        assert stats["attempts"] == 1 and stats["accepted"] == 1
        # Duplicates are allowed around reconnects, gaps are not.
        unique = sorted(set(seen))
        assert unique == list(range(unique[0], unique[-1] + 1))
        first_positions = {}
        for i, s in enumerate(seen):
            first_positions.setdefault(s, i)
        assert [s for s, _ in sorted(first_positions.items(), key=lambda kv: kv[1])] == unique  # order kept


async def test_upstream_drop_is_followed_by_exactly_one_reconnect_after_the_delay() -> None:
    async with running(SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), linger=0.0)) as (
        sim,
        proxy,
    ):
        r = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
        await r.read_records(20)
        assert sim.sim.drop("s1") == 1
        before = len(r.records)
        await r.read_records(before + 50)  # records flow again through the same consumer connection
        stats = sim.stream_stats()
        assert stats["attempts"] == 2 and stats["accepted"] == 2
        gap = stats["attempt_times"][1] - stats["disconnect_times"][0]
        assert gap >= DELAY
        await trio.sleep(3 * DELAY)
        assert sim.stream_stats()["attempts"] == 2  # and no more
        seqs = r.seqs()
        assert seqs == sorted(seqs)  # the simulator resumed where it left off
        await r.aclose()


async def test_load_balancer_linger_409_and_503_are_backed_off_until_the_stream_resumes() -> None:
    # The seed's behaviour: a dropped connection stays counted for `linger` seconds, so a
    # quick reconnect gets 409 or 503. The proxy's waits grow until the slot is free.
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), linger=1.0)
    async with running(settings) as (sim, proxy):
        r = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
        await r.read_records(10)
        sim.sim.drop("s1")
        await r.read_records(len(r.records) + 20, timeout=15)
        stats = sim.stream_stats()
        refused = stats["statuses"].get("409", 0) + stats["statuses"].get("503", 0)
        assert refused >= 1 and stats["accepted"] == 2
        times = stats["attempt_times"]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(later > earlier for earlier, later in itertools.pairwise(gaps))  # growing
        assert times[1] - stats["disconnect_times"][0] >= DELAY
        await r.aclose()


async def test_refusals_back_off_then_stream() -> None:
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), linger=0.0)
    async with running(settings, start_proxy=False) as (sim, _):
        sim.sim.fail_next("s1", 409, 3)
        from lsproxy.app import Proxy
        from tests.harness import proxy_config

        proxy = Proxy(proxy_config(sim))
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(proxy.run)
            r = await StreamReader(addresses[0][1], "/api/1/stream/s1").connect()
            assert r.status == 200  # consumers never see the upstream's 409
            await r.read_records(10, timeout=15)
            stats = sim.stream_stats()
            assert stats["statuses"].get("409") == 3 and stats["accepted"] == 1
            times = stats["attempt_times"]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert gaps[0] >= DELAY and gaps[1] >= 2 * DELAY and gaps[2] >= 4 * DELAY  # doubling
            async with httpx.AsyncClient(trust_env=False) as client:
                status = (await client.get(f"http://127.0.0.1:{addresses[0][1]}/status")).json()
            assert status["streams"]["s1"]["attempts"] == 4
            assert status["streams"]["s1"]["last_error"]["status"] == 409
            await r.aclose()
            proxy.request_shutdown()


async def test_redirect_is_followed_with_credentials_resent() -> None:
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), redirect=True)
    async with running(settings) as (sim, proxy):
        r = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
        await r.read_records(10)
        stats = sim.stream_stats()
        assert stats["redirects"] >= 1 and stats["accepted"] == 1
        assert stats["statuses"].get("401", 0) == 0
        assert stats["last_headers"]["authorization_ok"] is True
        await r.aclose()


async def test_stalled_consumer_does_not_slow_the_others() -> None:
    async with running(write_timeout=30) as (sim, proxy):
        # A consumer that never reads: its socket buffers fill, its pump blocks.
        stalled = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await stalled.send_all(b"GET /api/1/stream/s1?consumer=stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        sim.sim.set_rate("s1", 3000)
        fast = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
        await fast.read_records(6000, timeout=20)
        seqs = fast.seqs()
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        _, status = await proxy.get_json("/status")
        consumers = {c["id"]: c for c in status["streams"]["s1"]["consumers"]}
        assert consumers["stuck"]["lag"] > 1000  # it really is stuck, and it held nobody up
        await stalled.aclose()
        await fast.aclose()


async def test_takeover_closes_the_old_connection_and_continues_from_the_cursor() -> None:
    async with running() as (_sim, proxy):
        old = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=dup").connect()
        await old.read_records(20)
        new = await StreamReader(proxy.port, "/api/1/stream/s1", headers={"X-Consumer-Id": "dup"}).connect()
        await new.read_records(20)
        await old.read_until(lambda r: False, timeout=5)  # returns when the old one is closed
        assert new.seqs()[0] <= old.seqs()[-1] + 1  # no gap between the two connections
        await old.aclose()
        await new.aclose()


async def test_bad_requests_get_clear_errors_and_the_stream_keeps_flowing() -> None:
    async with running() as (sim, proxy):
        good = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
        await good.read_records(5)

        async def raw(request: bytes, read_timeout: float = 5) -> bytes:
            s = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            await s.send_all(request)
            out = b""
            with trio.move_on_after(read_timeout):
                while data := await s.receive_some(65536):
                    out += data
            await s.aclose()
            return out

        assert (await raw(b"GARBAGE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await raw(b"GET /api/1/stream/nope HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        assert (
            await raw(b"POST /api/1/stream/s1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        ).startswith(b"HTTP/1.1 405 ")
        assert (await raw(b"GET /api/1/stream/s1 HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 505 ")
        bad_param = await raw(b"GET /api/1/stream/s1?maxConnections=9 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert bad_param.startswith(b"HTTP/1.1 400 ")
        body = json.loads(bad_param.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "invalid_parameter" and "maxConnections" in body["error_description"]
        big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        assert (await raw(big)).startswith(b"HTTP/1.1 431 ")
        # Slowloris: half a request head, then nothing (request_timeout is 1 s in tests).
        assert (await raw(b"GET /api/1/stream/s1 HT", read_timeout=5)).startswith(b"HTTP/1.1 408 ")
        before = len(good.records)
        await good.read_records(before + 50)
        assert sim.stream_stats()["attempts"] == 1
        await good.aclose()


async def test_broken_upstream_chunk_reconnects_after_the_delay_and_consumers_stay() -> None:
    async with running(SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), linger=0.0)) as (
        sim,
        proxy,
    ):
        r = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
        await r.read_records(10)
        sim.sim.corrupt("s1")
        await r.read_records(len(r.records) + 100, timeout=10)
        stats = sim.stream_stats()
        assert stats["accepted"] == 2
        _, status = await proxy.get_json("/status")
        assert status["streams"]["s1"]["state"] == "streaming"
        await r.aclose()


async def test_heartbeats_keep_consumers_alive_while_the_upstream_is_down() -> None:
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 0.0),))  # no traffic: 503
    async with running(settings) as (sim, proxy):
        r = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
        assert r.status == 200
        await r.read_until(lambda r: r.empty_records >= 3, timeout=5)  # heartbeat_interval 0.2 s
        assert r.records == []
        code, ready = await proxy.get_json("/readyz")
        assert code == 503 and ready["streams"]["s1"] != "streaming"
        code, health = await proxy.get_json("/healthz")
        assert code == 200 and health == {"status": "ok"}
        assert sim.stream_stats()["statuses"].get("503", 0) >= 1
        await r.aclose()


async def test_status_shows_state_and_never_a_secret() -> None:
    async with running() as (_sim, proxy):
        r = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=watcher").connect()
        await r.read_records(10)
        code, ready = await proxy.get_json("/readyz")
        assert code == 200 and ready["ready"] is True
        async with httpx.AsyncClient(trust_env=False) as client:
            text = (await client.get(f"http://127.0.0.1:{proxy.port}/status")).text
        assert "sim-secret-token-123" not in text
        status = json.loads(text)["streams"]["s1"]
        assert status["state"] == "streaming" and status["connects"] == 1
        assert status["records_received"] >= 10
        assert any(c["id"] == "watcher" and c["connected"] for c in status["consumers"])
        await r.aclose()


async def test_shutdown_ends_streams_cleanly() -> None:
    async with running() as (_sim, proxy):
        r = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
        await r.read_records(5)
        proxy.proxy.request_shutdown()
        await r.read_until(lambda r: r.ended_cleanly, timeout=5)
        assert r.ended_cleanly
        await r.aclose()


async def test_a_consumer_that_accepts_nothing_is_cut_after_write_timeout_and_keeps_its_cursor() -> None:
    async with running(write_timeout=0.5) as (sim, proxy):
        stuck = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        stuck.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await stuck.send_all(b"GET /api/1/stream/s1?consumer=sleepy HTTP/1.1\r\nHost: x\r\n\r\n")
        sim.sim.set_rate("s1", 3000)
        with trio.fail_after(20):
            while True:
                _, status = await proxy.get_json("/status")
                sleepy = [c for c in status["streams"]["s1"]["consumers"] if c["id"] == "sleepy"]
                if sleepy and not sleepy[0]["connected"]:
                    break
                await trio.sleep(0.1)
        assert sleepy[0]["lag"] > 0  # cut, and its cursor waits for it
        await stuck.aclose()
        again = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=sleepy").connect()
        await again.read_records(10)
        await again.aclose()
