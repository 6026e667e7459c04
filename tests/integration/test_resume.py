"""Exact resume (after=, offset=, Last-Event-ID), Server-Sent Events and fields=, through
the real proxy in front of the simulator, read over raw sockets."""

from __future__ import annotations

import json
import re
import socket

import pytest
import trio

from lsproxy.simulator.hits import SEQ_BASE, hit_id_high
from tests.harness import ProxyUnderTest, StreamReader, running, seq_of

HIT_ID = re.compile(rb'"hitIdHigh":(\d+),"hitIdLow":(\d+)')


async def read(proxy: ProxyUnderTest, query: str, n: int, **kw: object) -> StreamReader:
    reader = await StreamReader(proxy.port, f"/api/1/stream/s1?{query}", **kw).connect()  # type: ignore[arg-type]
    assert reader.status == 200, getattr(reader, "error_body", b"")
    await reader.read_records(n)
    await reader.aclose()
    return reader


def sse_events(body: bytes) -> list[dict[str, str]]:
    events = []
    for block in body.decode().split("\n\n")[:-1]:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = fields[name] + "\n" + value if name in fields else value
        if fields:
            events.append(fields)
    return events


@pytest.mark.parametrize("dedup_records", [200_000, 0], ids=["within-dedup-window", "by-scan"])
async def test_after_resumes_right_after_the_named_hit(dedup_records: int) -> None:
    async with running(dedup_window_records=dedup_records) as (_sim, proxy):
        assert proxy is not None
        first = await read(proxy, "reset=smallest", 60)
        high, low = HIT_ID.search(first.records[20]).groups()  # type: ignore[union-attr]
        again = await read(proxy, f"after={high.decode()}:{low.decode()}", 30)
        assert again.response_headers["x-lsproxy-resume"] == "exact"
        assert again.seqs()[:30] == first.seqs()[21:51]  # no duplicate, no gap
        offset = int(again.response_headers["x-lsproxy-offset"])
        assert seq_of(again.records[0]) - offset == first.seqs()[0] - int(
            first.response_headers["x-lsproxy-offset"]
        )


async def test_after_an_unknown_hit_says_not_found_and_starts_as_usual() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        await read(proxy, "consumer=c", 10)
        tail = proxy.proxy.hubs["s1"].log.next_offset
        reader = await read(proxy, "after=1:1&reset=smallest", 5)
        assert reader.response_headers["x-lsproxy-resume"] == "not-found"
        assert int(reader.response_headers["x-lsproxy-offset"]) == 0  # reset=smallest applied
        plain = await read(proxy, "consumer=c&after=1:2", 5)
        assert plain.response_headers["x-lsproxy-resume"] == "not-found"
        assert int(plain.response_headers["x-lsproxy-offset"]) <= tail  # the cursor applied


async def test_offset_starts_at_that_log_offset_and_clamps_to_retention() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        base = await read(proxy, "reset=smallest", 40)
        origin = base.seqs()[0] - int(base.response_headers["x-lsproxy-offset"])
        reader = await read(proxy, "offset=25", 10)
        assert reader.response_headers["x-lsproxy-offset"] == "25" and reader.seqs()[0] == origin + 25
        assert "x-lsproxy-resume" not in reader.response_headers
        beyond = await read(proxy, "offset=999999999", 1)
        assert int(beyond.response_headers["x-lsproxy-offset"]) <= proxy.proxy.hubs["s1"].log.next_offset


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "identity"])
async def test_sse_resumes_exactly_with_last_event_id(gzip: bool) -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        headers = {"Accept": "text/event-stream"}
        first = await StreamReader(
            proxy.port, "/api/1/stream/s1?reset=smallest", gzip=gzip, headers=headers
        ).connect()
        assert first.response_headers["content-type"] == "text/event-stream"
        await first.read_until(lambda r: len(sse_events(bytes(r.decoded))) >= 50)
        await first.aclose()
        seen = sse_events(bytes(first.decoded))
        last = seen[-1]["id"]
        second = StreamReader(
            proxy.port,
            "/api/1/stream/s1?reset=smallest",
            gzip=gzip,
            headers={**headers, "Last-Event-ID": last},
        )
        await second.connect()
        await second.read_until(lambda r: len(sse_events(bytes(r.decoded))) >= 50)
        await second.aclose()
        events = seen + sse_events(bytes(second.decoded))
        ids = [int(e["id"]) for e in events]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # across the reconnect: once each, in order
        seqs = [seq_of(e["data"].encode()) for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert ids[0] == 0 and all(e.get("event") is None for e in events)


async def test_sse_announces_records_lost_to_retention_as_a_gap_event() -> None:
    async with running(stream_keys={"s1": {"retention_bytes": 1024 * 1024}}) as (_sim, proxy):
        assert proxy is not None
        hub = proxy.proxy.hubs["s1"]
        await read(proxy, "", 1)
        hub.log.append([b'{"pad":"%s"}' % (b"x" * 400_000) for _ in range(6)], 0.0)  # pushes the start out
        with trio.fail_after(5):
            while hub.log.oldest <= 1:  # trimmed at the next commit
                await trio.sleep(0.05)
        reader = await StreamReader(proxy.port, "/api/1/stream/s1?format=sse&last_event_id=0").connect()
        await reader.read_until(lambda r: len(sse_events(bytes(r.decoded))) >= 2)
        await reader.aclose()
        gap, record = sse_events(bytes(reader.decoded))[:2]
        skipped = json.loads(gap["data"])["skipped"]
        assert gap["event"] == "gap" and "id" not in gap
        assert int(record["id"]) == 1 + skipped == int(reader.response_headers["x-lsproxy-offset"])


async def test_fields_keeps_ids_above_2_to_the_53_exact() -> None:
    async with running() as (sim, proxy):
        assert proxy is not None
        high = hit_id_high(1, "s1", sim.sim.settings.run_id or 0)  # a run's ids are its own
        for query in ("fields=hitIdHigh,hitIdLow,geoCity", "fields=hitIdHigh,hitIdLow,geoCity&format=sse"):
            reader = await StreamReader(proxy.port, f"/api/1/stream/s1?{query}").connect()
            await reader.read_until(lambda r: len(r.records) >= 20 or len(sse_events(bytes(r.decoded))) >= 20)
            await reader.aclose()
            records = (
                [e["data"].encode() for e in sse_events(bytes(reader.decoded))]
                if "sse" in query
                else reader.records
            )
            for record in records:
                parsed = json.loads(record)
                assert list(parsed) == ["hitIdHigh", "hitIdLow", "geoCity"]
                assert parsed["hitIdHigh"] == high > 2**53
                assert parsed["hitIdLow"] >= SEQ_BASE and b'"hitIdLow":%d' % parsed["hitIdLow"] in record


async def test_group_members_of_two_groups_share_renderings_and_status_shows_them() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        hub = proxy.proxy.hubs["s1"]
        readers = [
            await StreamReader(proxy.port, f"/api/1/stream/s1?maxConnections=2&consumer={g}").connect()
            for g in ("a", "b", "a", "b")
        ]
        for r in readers:
            await r.read_records(30)
        assert hub.block_cache.hits > 0  # group b's members were sent group a's share bytes
        by_offset = {r.response_headers["x-lsproxy-offset"] for r in readers}
        assert len(by_offset) == 1
        assert readers[0].records[:30] == readers[1].records[:30]  # share 0 of both groups
        assert not set(readers[0].records) & set(readers[2].records)
        _code, body = await proxy.get_json("/status")
        groups = {g["id"]: g for g in body["streams"]["s1"]["groups"]}
        assert set(groups) == {"a", "b"} and groups["a"]["members"] == 2
        for r in readers:
            await r.aclose()


async def test_consumer_sockets_get_a_tcp_user_timeout() -> None:
    from lsproxy.serve.consumer import set_user_timeout

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    set_user_timeout(server, 30)
    assert server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
    for s in (client, server, listener):
        await s.aclose()


async def test_an_anonymous_reconnect_with_its_api_key_says_linger_and_continues() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        key = {"x-api-key": "adobe-client-id"}
        first = await read(proxy, "", 30, headers=key)
        assert "x-lsproxy-resume" not in first.response_headers
        with trio.fail_after(5):  # the proxy notices the close (at once on loopback, but not before)
            while not len(proxy.proxy.hubs["s1"].resume_points):
                await trio.sleep(0.01)
        again = await read(proxy, "", 30, headers=key)
        assert again.response_headers["x-lsproxy-resume"] == "linger"
        assert again.seqs()[0] <= first.seqs()[-1] + 1  # duplicates at most, never a gap
        fresh = await read(proxy, "reset=largest", 1, headers=key)  # asks where to start: no linger
        assert "x-lsproxy-resume" not in fresh.response_headers
        other = await read(proxy, "", 1, headers={"x-api-key": "another-client"})
        assert "x-lsproxy-resume" not in other.response_headers


async def test_anonymous_resume_off() -> None:
    async with running(anonymous_resume='"off"') as (_sim, proxy):
        assert proxy is not None
        await read(proxy, "", 5, headers={"x-api-key": "k"})
        await trio.sleep(0.2)
        again = await read(proxy, "", 1, headers={"x-api-key": "k"})
        assert "x-lsproxy-resume" not in again.response_headers
