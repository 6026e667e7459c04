"""The Live Stream simulator over real sockets, driven with httpx."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio

from lsproxy.simulator import SimSettings, SimStream, Simulator, seq_of

AUTH = {"Authorization": "Bearer demo-token"}
PATH = "/api/1/stream/s1"


async def start(nursery: trio.Nursery, **kw: Any) -> tuple[Simulator, str]:
    settings = SimSettings(**{"streams": (SimStream("s1", rate=2000),), "linger": 0.3, **kw})
    sim = Simulator(settings)
    host, port = await nursery.start(sim.serve)
    return sim, f"http://{host}:{port}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False, timeout=5) as c:
        yield c


class Records:
    """Reads a stream response the way a Live Stream client must: gunzip, split on CRLF."""

    def __init__(self, response: httpx.Response) -> None:
        self.raw = response.aiter_raw()
        self.inflate = zlib.decompressobj(wbits=31)
        self.buf = b""
        self.lines: list[bytes] = []
        self.empty = 0

    async def take(self, n: int) -> list[bytes]:
        """The next n non-empty records."""
        out: list[bytes] = []
        with trio.fail_after(3):
            while len(out) < n:
                if not self.lines:
                    self.buf += self.inflate.decompress(await self.raw.__anext__())
                    *self.lines, self.buf = self.buf.split(b"\r\n")
                    continue
                line = self.lines.pop(0)
                if line:
                    out.append(line)
                else:
                    self.empty += 1
        return out


async def wait_for(pred: Callable[[], bool], timeout: float = 1.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


def st(sim: Simulator, name: str = "s1") -> dict[str, Any]:
    return sim.stats()["streams"][name]


async def test_stream_is_gzip_chunked_crlf_json_in_sequence(nursery, client) -> None:
    sim, base = await start(nursery)
    async with client.stream("GET", base + PATH, headers=AUTH) as r:
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["transfer-encoding"] == "chunked"
        reader = Records(r)
        records = await reader.take(450)
    seqs = [seq_of(x) for x in records]
    assert seqs == list(range(seqs[0], seqs[0] + 450))
    assert reader.empty >= 2  # one bare CRLF every 200 hits
    first = json.loads(records[0])
    assert first["hitIdLow"] == 2**60 + seqs[0] and first["hitIdHigh"] > 2**53
    assert first["reportSuite"] == "simsuite"
    assert st(sim)["sent"] >= 450


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "needle"),
    [
        ("GET", "/api/1/stream/nope", AUTH, 404, "unknown"),
        ("POST", PATH, AUTH, 405, "GET"),
        ("GET", PATH, {}, 401, "missing"),
        ("GET", PATH, {"Authorization": "Bearer wrong"}, 401, "invalid"),
        ("GET", PATH, {"Authorization": "Basic demo-token"}, 401, "invalid"),
        ("GET", PATH, {**AUTH, "Accept-Encoding": "identity"}, 406, "gzip"),
        ("GET", PATH, {**AUTH, "Accept-Encoding": "gzip;q=0"}, 406, "gzip"),
        ("GET", PATH + "?maxConnections=9", AUTH, 400, "maxConnections"),
        ("GET", PATH + "?maxConnections=0", AUTH, 400, "maxConnections"),
        ("GET", PATH + "?maxConnections=two", AUTH, 400, "maxConnections"),
        ("GET", PATH + "?smoothingBucketSize=0", AUTH, 400, "smoothingBucketSize"),
        ("GET", PATH + "?smoothingBucketSize=7201", AUTH, 400, "smoothingBucketSize"),
        ("GET", PATH + "?reset=middle", AUTH, 400, "reset"),
        ("GET", "/elsewhere", AUTH, 404, "no such path"),
    ],
)
async def test_refusals(nursery, client, method, path, headers, status, needle) -> None:
    _, base = await start(nursery)
    r = await client.request(method, base + path, headers=headers)
    assert r.status_code == status
    assert "content-encoding" not in r.headers
    assert int(r.headers["content-length"]) == len(r.content)
    body = r.json()
    assert set(body) == {"error", "error_description"} and needle in body["error_description"]


async def test_api_key(nursery, client) -> None:
    _, base = await start(nursery, api_key="client-id")
    assert (await client.get(base + PATH, headers=AUTH)).status_code == 401
    bad = {**AUTH, "x-api-key": "other"}
    assert (await client.get(base + PATH, headers=bad)).status_code == 401
    async with client.stream("GET", base + PATH, headers={**AUTH, "x-api-key": "client-id"}) as r:
        assert r.status_code == 200


async def test_http_1_0_gets_505(nursery) -> None:
    sim, _ = await start(nursery)
    assert sim.address is not None
    sock = await trio.open_tcp_stream(*sim.address)
    async with sock:
        await sock.send_all(
            b"GET /api/1/stream/s1 HTTP/1.0\r\nAuthorization: Bearer demo-token"
            b"\r\nAccept-Encoding: gzip\r\n\r\n"
        )
        data = b""
        with trio.fail_after(2):
            while chunk := await sock.receive_some():
                data += chunk
    assert data.split(b"\r\n")[0].split(b" ")[1] == b"505"


async def test_linger_then_409_503_alternate_then_reconnect(nursery, client) -> None:
    sim, base = await start(nursery, linger=0.3)
    async with client.stream("GET", base + PATH, headers=AUTH) as r:
        await Records(r).take(5)
    await wait_for(lambda: st(sim)["open"] == 0)
    assert st(sim)["lingering"] == 1
    statuses = [(await client.get(base + PATH, headers=AUTH)).status_code for _ in range(3)]
    assert statuses == [409, 503, 409]
    r = await client.get(base + PATH, headers=AUTH)
    assert r.json()["error"] == "service_unavailable"
    await trio.sleep(0.35)
    async with client.stream("GET", base + PATH, headers=AUTH) as r:
        assert r.status_code == 200
    assert st(sim)["statuses"] == {"200": 2, "409": 2, "503": 2}


async def test_max_connections_mismatch(nursery, client) -> None:
    _, base = await start(nursery)
    async with client.stream("GET", base + PATH + "?maxConnections=2", headers=AUTH) as r:
        assert r.status_code == 200
        other = await client.get(base + PATH + "?maxConnections=3", headers=AUTH)
        assert other.status_code == 409
        assert "maxConnections mismatch" in other.json()["error_description"]


async def test_rate_zero_is_503_no_hits(nursery, client) -> None:
    sim, base = await start(nursery, streams=(SimStream("s1", rate=0),))
    r = await client.get(base + PATH, headers=AUTH)
    assert r.status_code == 503
    assert r.json()["error_description"] == "no hits received from the report suite"
    sim.set_rate("s1", 1000)
    async with client.stream("GET", base + PATH, headers=AUTH) as r:
        assert r.status_code == 200
        await Records(r).take(3)


async def test_redirect_is_cross_origin_and_node_needs_auth(nursery, client) -> None:
    sim, base = await start(nursery, redirect=True)
    port = base.rsplit(":", 1)[1]
    r = await client.get(base + "/api/2/stream/s1?maxConnections=1", headers=AUTH)
    assert r.status_code == 302
    location = r.headers["location"]
    assert location == f"http://localhost:{port}/_sim/node/2/stream/s1?maxConnections=1"
    r = await client.get(f"http://localhost:{port}{PATH}", headers=AUTH)
    assert r.headers["location"].startswith(f"http://127.0.0.1:{port}/_sim/node/1/")
    assert (await client.get(location)).status_code == 401
    async with client.stream("GET", location, headers=AUTH) as r:
        assert r.status_code == 200
        await Records(r).take(3)
    stats = st(sim)
    assert stats["redirects"] == 2 and stats["statuses"]["302"] == 2
    assert stats["last_headers"]["authorization"] == "Bearer ***"
    assert stats["last_headers"]["authorization_ok"] is True


async def read_then_leave(client, base: str, query: str = "", n: int = 50) -> list[int]:
    async with client.stream("GET", base + PATH + query, headers=AUTH) as r:
        assert r.status_code == 200
        return [seq_of(x) for x in await Records(r).take(n)]


async def test_resume_with_backfill(nursery, client) -> None:
    sim, base = await start(nursery, linger=0, backfill=7)
    first = await read_then_leave(client, base)
    await wait_for(lambda: st(sim)["open"] == 0)
    position = st(sim)["position"]
    assert position > first[-1]
    second = await read_then_leave(client, base)
    assert second[0] == position - 7


async def test_reconnect_after_resume_window_starts_at_tail(nursery, client) -> None:
    sim, base = await start(nursery, linger=0, resume_window=0.2)
    await read_then_leave(client, base)
    await wait_for(lambda: st(sim)["open"] == 0)
    position = st(sim)["position"]
    await trio.sleep(0.3)
    produced = st(sim)["produced"]
    second = await read_then_leave(client, base)
    assert second[0] >= produced > position


async def test_reset_smallest_and_largest(nursery, client) -> None:
    sim, base = await start(nursery, linger=0, retain=300)
    await wait_for(lambda: st(sim)["produced"] > 700)
    sim.set_rate("s1", 0.001)  # effectively stop producing, but keep accepting connections
    oldest = st(sim)["oldest"]
    assert oldest > 0
    assert (await read_then_leave(client, base, "?reset=smallest"))[0] == oldest
    await wait_for(lambda: st(sim)["open"] == 0)
    sim.set_rate("s1", 2000)
    produced = st(sim)["produced"]
    assert (await read_then_leave(client, base, "?reset=largest"))[0] >= produced


async def test_reset_is_ignored_while_a_connection_is_open(nursery, client) -> None:
    sim, base = await start(nursery, retain=300)
    await wait_for(lambda: st(sim)["produced"] > 500)
    q = "?maxConnections=2"
    async with client.stream("GET", base + PATH + q, headers=AUTH) as r:
        await Records(r).take(5)
        later = await read_then_leave(client, base, q + "&reset=smallest", n=5)
        assert later[0] > st(sim)["oldest"]


async def test_connections_share_the_stream_by_visitor(nursery, client) -> None:
    _, base = await start(nursery, streams=(SimStream("s1", rate=5000),))
    q = "?maxConnections=2"
    async with client.stream("GET", base + PATH + q, headers=AUTH) as ra:
        a = Records(ra)
        await a.take(5)
        async with client.stream("GET", base + PATH + q, headers=AUTH) as rb:
            b = Records(rb)  # keep a reference: a collected aiter_raw() closes the response
            b_recs = await b.take(300)
            b_first = seq_of(b_recs[0])
            a_recs = [x for x in await a.take(1000) if seq_of(x) >= b_first]

    def visitors(recs: list[bytes]) -> set[tuple[int, int]]:
        return {(r["visIdHigh"], r["visIdLow"]) for r in map(json.loads, recs)}

    assert a_recs and b_recs
    assert not {seq_of(x) for x in a_recs} & {seq_of(x) for x in b_recs}
    assert not visitors(a_recs) & visitors(b_recs)


async def test_client_leaving_is_noticed(nursery, client) -> None:
    sim, base = await start(nursery)
    await read_then_leave(client, base, n=3)
    await wait_for(lambda: st(sim)["open"] == 0)
    stats = st(sim)
    assert stats["lingering"] == 1 and len(stats["disconnect_times"]) == 1
    assert stats["accepted"] == 1 and stats["attempts"] == 1


async def test_drop_control(nursery, client) -> None:
    sim, base = await start(nursery)
    async with client.stream("GET", base + PATH, headers=AUTH) as r:
        reader = Records(r)
        await reader.take(5)
        ctl = await client.post(base + "/_sim/drop?stream=s1")
        assert ctl.json()["dropped"] == 1
        with pytest.raises(httpx.HTTPError):
            await reader.take(100_000)
    stats = st(sim)
    assert stats["open"] == 0 and stats["lingering"] == 1
    assert len(stats["disconnect_times"]) == 1
    assert (await client.get(base + PATH, headers=AUTH)).status_code == 409


async def test_stall_control(nursery, client) -> None:
    sim, base = await start(nursery)
    async with client.stream("GET", base + PATH, headers=AUTH) as r, trio.open_nursery() as inner:
        reader = Records(r)

        async def keep_reading() -> None:
            while True:
                await reader.take(1)

        inner.start_soon(keep_reading)  # a stalled *reader* would stall the sender too
        await wait_for(lambda: st(sim)["sent"] > 0)
        assert (await client.post(base + "/_sim/stall?stream=s1&seconds=0.4")).status_code == 200
        sent = st(sim)["sent"]
        await trio.sleep(0.3)
        assert st(sim)["sent"] == sent and st(sim)["open"] == 1
        await wait_for(lambda: st(sim)["sent"] > sent + 100)
        inner.cancel_scope.cancel()


async def test_fail_control(nursery, client) -> None:
    sim, base = await start(nursery)
    ctl = await client.post(base + "/_sim/fail?stream=s1&status=500&count=2")
    assert ctl.status_code == 200
    for _ in range(2):
        r = await client.get(base + PATH, headers=AUTH)
        assert r.status_code == 500 and "error_description" in r.json()
    async with client.stream("GET", base + PATH, headers=AUTH) as r:
        assert r.status_code == 200
    sim.fail_next("s1", 404)
    assert (await client.get(base + PATH, headers=AUTH)).status_code == 404


async def test_corrupt_control(nursery, client) -> None:
    sim, base = await start(nursery)
    async with client.stream("GET", base + PATH, headers=AUTH) as r:
        reader = Records(r)
        await reader.take(5)
        sim.corrupt("s1")
        with pytest.raises((zlib.error, httpx.HTTPError)) as info:
            await reader.take(100_000)
        assert info.type is zlib.error


async def test_stats_reset_and_bad_controls(nursery, client) -> None:
    sim, base = await start(nursery)
    await client.get(base + PATH, headers={"Authorization": "Bearer nope", "X-Custom": "1"})
    await wait_for(lambda: st(sim)["produced"] > 0)
    stats = (await client.get(base + "/_sim/stats")).json()["streams"]["s1"]
    assert stats["attempts"] == 1 and stats["statuses"] == {"401": 1}
    assert stats["last_headers"]["authorization"] == "Bearer ***"
    assert stats["last_headers"]["authorization_ok"] is False
    assert stats["last_headers"]["x-custom"] == "1"
    assert len(stats["attempt_times"]) == 1 and stats["attempt_times"][0] <= trio.current_time()
    assert stats["produced"] > 0
    assert (await client.post(base + "/_sim/reset")).status_code == 200
    assert st(sim)["attempts"] == 0 and st(sim)["statuses"] == {}
    assert (await client.post(base + "/_sim/drop?stream=zz")).status_code == 404
    assert (await client.post(base + "/_sim/rate?stream=s1&rate=x")).status_code == 400
    assert (await client.get(base + "/_sim/drop?stream=s1")).status_code == 405
    assert (await client.post(base + "/_sim/rate?stream=s1&rate=5")).json()["rate"] == 5
    assert st(sim)["rate"] == 5


async def test_many_connections_across_streams(nursery) -> None:
    streams = tuple(SimStream(f"s{i}", rate=500) for i in range(25))
    sim, base = await start(nursery, streams=streams)
    got: dict[str, int] = {}

    async def consume(name: str, tag: int) -> None:
        url = f"{base}/api/1/stream/{name}?maxConnections=4"
        async with client.stream("GET", url, headers=AUTH) as r:
            assert r.status_code == 200
            got[f"{name}/{tag}"] = len(await Records(r).take(3))

    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=5) as client, trio.open_nursery() as inner:
        for s in streams:
            for tag in range(4):
                inner.start_soon(consume, s.endpoint, tag)
    assert len(got) == 100
    assert sum(s["accepted"] for s in sim.stats()["streams"].values()) == 100


async def test_generation_follows_the_trio_clock(nursery, autojump_clock) -> None:
    sim, _ = await start(nursery, streams=(SimStream("s1", rate=100),))
    await trio.sleep(10)  # virtual seconds
    assert 990 <= st(sim)["produced"] <= 1010
    sim.set_rate("s1", 0)
    before = st(sim)["produced"]
    await trio.sleep(5)
    assert st(sim)["produced"] == before
