"""Cluster mode on one real nats-server: end to end through the simulator, and NATS
unreachable at start."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio

from lsproxy.app import Proxy
from lsproxy.config import Config
from lsproxy.simulator import SimSettings, SimStream
from tests.cluster_harness import free_ports, kv_keys, nats_available, nats_cluster
from tests.harness import ProxyUnderTest, SimUnderTest, StreamReader, proxy_config, running

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not nats_available(), reason="nats-server is not installed (scripts/test installs it)"
    ),
]


def cluster_config(
    sim: SimUnderTest, seeds: list[str], node: str, *, replicas: int = 1, lease_ttl: float = 2.0, **overrides: Any
) -> Config:
    seed_list = ", ".join(f'"{u}"' for u in seeds)
    extra = (
        f'[cluster]\nnats = [{seed_list}]\nnode = "{node}"\nreplicas = {replicas}\n'
        f"lease_ttl = {lease_ttl}\nclock_skew_margin = 0.2\n"
    )
    config = proxy_config(sim, extra=extra, reconnect_delay=1.0, max_reconnect_delay=2.0, **overrides)
    own_dir = tempfile.mkdtemp(prefix=f"lsproxy-{node}-")
    return dataclasses.replace(config, storage=dataclasses.replace(config.storage, dir=own_dir))


def sim_settings(linger: float = 0.8) -> SimSettings:
    # A reconnect sooner than `linger` after a loss is refused (409): an early one shows.
    return SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), linger=linger)


async def get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=15) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def wait_serving(port: int) -> None:
    """/readyz 200 (NATS connected) and stream s1 followed (/readyz comes first)."""
    with trio.fail_after(15):
        while (await get(port, "/readyz")).status_code != 200:
            await trio.sleep(0.1)
        while not (await get(port, "/status")).json()["cluster"]["jetstream"]["s1"]["ready"]:
            await trio.sleep(0.05)


async def test_one_node_end_to_end_records_flow_through_jetstream() -> None:
    with nats_cluster(1) as nats:
        async with running(sim_settings(), start_proxy=False) as (sim, _):
            config = cluster_config(sim, nats.urls, "solo")
            async with trio.open_nursery() as nursery:
                proxy = Proxy(config)
                addresses = await nursery.start(proxy.run)
                p = ProxyUnderTest(proxy, addresses[0][1])
                with trio.fail_after(15):
                    while (await get(p.port, "/readyz")).status_code != 200:
                        await trio.sleep(0.1)
                reader = await StreamReader(p.port, "/api/1/stream/s1?consumer=c1").connect()
                await reader.read_records(300, timeout=15)
                seqs = reader.seqs()
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # in order, no gap, no dup
                status = (await get(p.port, "/status")).json()
                cluster = status["cluster"]
                assert cluster["node"] == "solo" and cluster["nats"]["connected"]
                assert [lease["slot"] for lease in cluster["leases"].values()] == [1]
                js = cluster["jetstream"]["s1"]
                assert js["jetstream_stream"] == "LSPROXY_s1" and js["state"]["last_seq"] >= 1
                assert status["streams"]["s1"]["state"] == "streaming"
                metrics = (await get(p.port, "/metrics")).text
                for line in (
                    'lsproxy_cluster_node_info{node="solo"} 1.0',
                    "lsproxy_cluster_nats_connected 1.0",
                    "lsproxy_cluster_leases_held 1.0",
                    'lsproxy_cluster_lease_held{connection="1",stream="s1"} 1.0',
                    'lsproxy_jetstream_ready{stream="s1"} 1.0',
                ):
                    assert line in metrics, line
                assert 'lsproxy_jetstream_last_sequence{stream="s1"}' in metrics
                # A consumer replaying from the first offset reads older records from JetStream.
                replay = await StreamReader(p.port, "/api/1/stream/s1?reset=smallest").connect()
                await replay.read_records(200, timeout=15)
                first = replay.seqs()[:200]
                assert first == list(range(first[0], first[0] + 200))
                await reader.aclose()
                await replay.aclose()
                assert sim.stream_stats()["accepted"] == 1
                proxy.request_shutdown()
            shutil.rmtree(config.storage.dir, ignore_errors=True)


async def test_nats_unreachable_at_start_healthz_200_readyz_503_no_upstream_connection() -> None:
    (dead_port,) = free_ports(1)
    async with running(sim_settings(), start_proxy=False) as (sim, _):
        config = cluster_config(sim, [f"nats://127.0.0.1:{dead_port}"], "lonely")
        async with trio.open_nursery() as nursery:
            proxy = Proxy(config)
            addresses = await nursery.start(proxy.run)
            port = addresses[0][1]
            await trio.sleep(1.5)
            assert (await get(port, "/healthz")).status_code == 200
            ready = await get(port, "/readyz")
            assert ready.status_code == 503
            assert ready.json()["cluster"]["nats"]["connected"] is False
            assert ready.json()["cluster"]["nats"]["last_error"]
            refused = await StreamReader(port, "/api/1/stream/s1").connect()
            assert refused.status == 503
            await refused.aclose()
            assert sim.stream_stats()["attempts"] == 0
            proxy.request_shutdown()
        shutil.rmtree(config.storage.dir, ignore_errors=True)


async def test_group_membership_is_cluster_wide_across_two_nodes() -> None:
    """maxConnections=2 members on two nodes: a third member on either node gets 409; a
    member leaving frees its share cluster-wide at once (released, not left to expire)."""
    with nats_cluster(1) as nats:
        async with running(sim_settings(), start_proxy=False) as (sim, _):
            # A TTL that a loaded machine cannot miss by accident: nothing here waits for it.
            configs = [cluster_config(sim, nats.urls, name, lease_ttl=6.0) for name in ("node-a", "node-b")]
            async with trio.open_nursery() as nursery:
                proxies = [Proxy(config) for config in configs]
                ports = [(await nursery.start(proxy.run))[0][1] for proxy in proxies]
                for port in ports:
                    await wait_serving(port)
                a, b = ports
                path = "/api/1/stream/s1?consumer=g&maxConnections=2"
                first = await StreamReader(a, path).connect()
                second = await StreamReader(b, path).connect()
                assert (first.status, second.status) == (200, 200)
                for port in (a, b):
                    third = await StreamReader(port, path).connect()
                    assert third.status == 409, (port, third.response_headers)
                    await third.aclose()
                await first.read_records(20, timeout=10)
                await second.read_records(20, timeout=10)
                # The members split the records: no record reaches both.
                assert not set(first.seqs()) & set(second.seqs())
                await first.aclose()
                with trio.fail_after(5):
                    while True:
                        again = await StreamReader(b, path).connect()
                        if again.status == 200:
                            break
                        await again.aclose()
                        await trio.sleep(0.1)
                await again.read_records(10, timeout=10)
                assert not set(again.seqs()) & set(second.seqs())
                for reader in (second, again):
                    await reader.aclose()
                for proxy in proxies:
                    proxy.request_shutdown()
            for config in configs:
                shutil.rmtree(config.storage.dir, ignore_errors=True)


async def test_since_before_a_nodes_tail_is_exact_and_a_new_named_cursor_moves_at_once() -> None:
    """A node started later holds nothing older in memory: since= is still mapped to the
    record JetStream stored at that time (the same offset the first node answers from its
    tail), and a named consumer first seen on one node resumes on the other at once."""
    with nats_cluster(1) as nats:
        async with running(sim_settings(), start_proxy=False) as (sim, _):
            configs = [cluster_config(sim, nats.urls, name) for name in ("node-a", "node-b")]
            async with trio.open_nursery() as nursery:
                proxies = [Proxy(config) for config in configs]
                a = (await nursery.start(proxies[0].run))[0][1]
                await wait_serving(a)
                first = await StreamReader(a, "/api/1/stream/s1").connect()
                await first.read_records(100, timeout=10)
                since = time.time()
                await first.read_records(250, timeout=10)
                await first.aclose()
                b = (await nursery.start(proxies[1].run))[0][1]
                await wait_serving(b)
                offsets = []
                for port in (a, b):
                    reader = await StreamReader(port, f"/api/1/stream/s1?since={since:.3f}").connect()
                    assert reader.status == 200, (port, reader.status, reader._body[:300])
                    offsets.append(int(reader.response_headers["x-lsproxy-offset"]))
                    await reader.aclose()
                # JetStream answers per message; the tail per delivered batch (at most a few
                # records later). Without the JetStream lookup node b answers its oldest (1).
                assert offsets[0] > 50 and offsets[0] - 10 <= offsets[1] <= offsets[0], offsets

                mover = await StreamReader(a, "/api/1/stream/s1?consumer=early").connect()
                await mover.read_records(20, timeout=10)
                await mover.aclose()
                left_at = max(mover.seqs())
                await trio.sleep(0.5)  # less than the cursors' save interval
                moved = await StreamReader(b, "/api/1/stream/s1?consumer=early").connect()
                await moved.read_records(5, timeout=10)
                assert min(moved.seqs()) <= left_at + 1
                await moved.aclose()
                for proxy in proxies:
                    proxy.request_shutdown()
            for config in configs:
                shutil.rmtree(config.storage.dir, ignore_errors=True)


async def _consumers(port: int) -> dict[str, dict[str, Any]]:
    listing = (await get(port, "/admin/consumers")).json()["streams"]["s1"]["consumers"]
    return {c["id"]: c for c in listing if c["id"] is not None}


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.1)


async def test_forgetting_and_operator_moves_and_deletes_are_cluster_wide() -> None:
    """consumer_ttl counts from the last node that saw the consumer: a consumer connected
    on node b is never forgotten on node a; once gone for the ttl, every node forgets it
    and its key leaves the KV bucket. An operator's delete or move on node a applies on
    node b too, ending the connection that holds the cursor there."""
    with nats_cluster(1) as nats:
        async with running(sim_settings(), start_proxy=False) as (sim, _):
            configs = [cluster_config(sim, nats.urls, name, consumer_ttl=3) for name in ("node-a", "node-b")]
            keys = functools.partial(trio.to_thread.run_sync, kv_keys, nats.urls[0], "lsproxy_cursors")
            async with trio.open_nursery() as nursery:
                proxies = [Proxy(config) for config in configs]
                a, b = [(await nursery.start(proxy.run))[0][1] for proxy in proxies]
                for port in (a, b):
                    await wait_serving(port)

                # Connected on b for twice the ttl: neither node forgets it.
                kept = await StreamReader(b, "/api/1/stream/s1?consumer=kept").connect()
                await kept.read_records(20, timeout=10)
                await _until("a adopts kept", lambda: _has(a, "kept"))
                until = trio.current_time() + 6
                while trio.current_time() < until:  # reading on: a stalled reader is dropped
                    await kept.read_records(len(kept.records) + 50, timeout=10)
                assert "kept" in await _consumers(a) and "s1.kept" in await keys()
                # Gone: forgotten everywhere after the ttl, and its key deleted.
                await kept.aclose()
                await _until("kept forgotten", lambda: _gone_everywhere((a, b), "kept", keys), timeout=15)

                # An operator's delete on a ends b's connection and forgets the cursor.
                doomed = await StreamReader(b, "/api/1/stream/s1?consumer=doomed").connect()
                await doomed.read_records(20, timeout=10)
                await _until("a adopts doomed", lambda: _has(a, "doomed"))
                async with httpx.AsyncClient(trust_env=False) as client:
                    deleted = await client.delete(f"http://127.0.0.1:{a}/admin/streams/s1/consumers/doomed")
                assert deleted.status_code == 200, deleted.text
                await doomed.read_until(lambda r: False, timeout=10)
                assert doomed.ended_cleanly
                await _until("doomed forgotten", lambda: _gone_everywhere((a, b), "doomed", keys))

                # An operator's move on a: b's connection ends; it resumes at the new offset.
                moved = await StreamReader(b, "/api/1/stream/s1?consumer=moved").connect()
                await moved.read_records(50, timeout=10)
                await _until("a adopts moved", lambda: _has(a, "moved"))
                target = min(moved.seqs()) + 5
                async with httpx.AsyncClient(trust_env=False) as client:
                    answer = await client.post(
                        f"http://127.0.0.1:{a}/admin/streams/s1/consumers/moved/cursor", json={"offset": target}
                    )
                assert answer.status_code == 200, answer.text
                await moved.read_until(lambda r: False, timeout=10)
                assert moved.ended_cleanly
                again = await StreamReader(b, "/api/1/stream/s1?consumer=moved").connect()
                assert int(again.response_headers["x-lsproxy-offset"]) == target
                await again.aclose()
                for proxy in proxies:
                    proxy.request_shutdown()
            for config in configs:
                shutil.rmtree(config.storage.dir, ignore_errors=True)


async def _has(port: int, consumer: str) -> bool:
    return consumer in await _consumers(port)


async def _gone_everywhere(
    ports: tuple[int, ...], consumer: str, keys: Callable[[], Awaitable[set[str]]]
) -> bool:
    for port in ports:
        if await _has(port, consumer):
            return False
    return f"s1.{consumer}" not in await keys()


async def test_a_group_member_gets_503_not_409_while_nats_is_down() -> None:
    """Nothing says the group is full: the member may come back (Retry-After)."""
    with nats_cluster(1) as nats:
        async with running(sim_settings(), start_proxy=False) as (sim, _):
            config = cluster_config(sim, nats.urls, "solo")
            async with trio.open_nursery() as nursery:
                proxy = Proxy(config)
                port = (await nursery.start(proxy.run))[0][1]
                await wait_serving(port)
                nats.nodes[0].kill()
                with trio.fail_after(20):  # (a 200 would stream on: the reader times out)
                    member = await get(port, "/api/1/stream/s1?consumer=g&maxConnections=2")
                assert member.status_code == 503, member.text[:300]
                assert member.headers["retry-after"] == "2"
                assert "cannot record group membership" in member.json()["error_description"]
                proxy.request_shutdown()
            shutil.rmtree(config.storage.dir, ignore_errors=True)
