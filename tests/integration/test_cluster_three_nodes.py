"""Three lsproxy processes on a three-node NATS cluster in front of the simulator.

The simulator refuses (409) a connection made while another is open or closed
less than ``linger`` (0.8 s) ago, and the nodes' reconnect_delay is 1 s: a 409
means two connections at once or an early reconnect. A sampler also records the
most connections the simulator ever had open at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lsproxy.simulator import SimSettings, SimStream
from tests.cluster_harness import NatsCluster, free_ports, nats_available, nats_cluster
from tests.harness import SimUnderTest, StreamReader, running

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not nats_available(), reason="nats-server is not installed (scripts/test installs it)"
    ),
]

LEASE_TTL = 2.0
RECONNECT_DELAY = 1.0


@dataclass
class Node:
    name: str
    port: int
    dir: str
    config: str
    proc: subprocess.Popen[bytes] | None = None

    async def get(self, path: str) -> dict[str, Any]:
        async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
            return (await client.get(f"http://127.0.0.1:{self.port}{path}")).json()  # type: ignore[no-any-return]

    async def holds(self) -> bool:
        try:
            return bool((await self.get("/status"))["cluster"]["leases"])
        except (httpx.HTTPError, KeyError, ValueError):
            return False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail: int = 6000) -> str:
        try:
            with open(os.path.join(self.dir, "log"), "rb") as f:
                return f.read()[-tail:].decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"


@dataclass
class Setup:
    nats: NatsCluster
    sim: SimUnderTest
    nodes: list[Node]
    max_open: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        return self.sim.stream_stats()

    async def holder(self, among: list[Node] | None = None, timeout: float = 20) -> Node:
        with trio.fail_after(timeout):
            while True:
                for node in among or self.nodes:
                    if node.alive and await node.holds():
                        return node
                await trio.sleep(0.1)


def node_config(sim: SimUnderTest, name: str, port: int, seeds: list[str], directory: str) -> str:
    seed_list = ", ".join(f'"{u}"' for u in seeds)
    return f"""
[server]
listen = "127.0.0.1:{port}"
heartbeat_interval = 0.2
shutdown_grace = 1
[storage]
dir = "{directory}"
[upstream]
reconnect_delay = {RECONNECT_DELAY}
max_reconnect_delay = 2
connect_timeout = 2
healthy_after = 0.5
[credentials.sim]
token = "sim-secret-token-123"
[streams.s1]
url = "{sim.url("s1")}"
[cluster]
nats = [{seed_list}]
node = "{name}"
replicas = 3
lease_ttl = {LEASE_TTL}
clock_skew_margin = 0.2
"""


def start_node(node: Node) -> None:
    with open(os.path.join(node.dir, "log"), "ab") as log:
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "lsproxy", "run", "--config", node.config, "--log-level", "info"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def sample_open(setup: Setup) -> None:
    while True:
        opened = setup.stats()["open"]
        setup.max_open = max(setup.max_open, opened)
        await trio.sleep(0.005)


@contextlib.asynccontextmanager
async def three_nodes(*, rate: float = 200.0) -> AsyncIterator[Setup]:
    """``rate``: the simulator's records per second (bench/cluster_failover.py runs it busier)."""
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", rate),), linger=0.8, backfill=300)
    with nats_cluster(3) as nats:
        async with running(settings, start_proxy=False) as (sim, _):
            ports = free_ports(3)
            nodes = []
            for i, port in enumerate(ports):
                directory = tempfile.mkdtemp(prefix=f"lsproxy-node{i}-")
                seeds = nats.urls[i:] + nats.urls[:i]  # its own server first
                path = os.path.join(directory, "lsproxy.toml")
                Path(path).write_text(node_config(sim, f"node-{'abc'[i]}", port, seeds, directory))
                nodes.append(Node(f"node-{'abc'[i]}", port, directory, path))
            setup = Setup(nats, sim, nodes)
            try:
                for node in nodes:
                    start_node(node)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample_open, setup)
                    with trio.fail_after(30):
                        for node in nodes:
                            while True:
                                with contextlib.suppress(httpx.HTTPError, ValueError):
                                    if (await node.get("/readyz"))["ready"]:
                                        break
                                await trio.sleep(0.1)
                    yield setup
                    nursery.cancel_scope.cancel()
            except BaseException:
                # pytest shows this with the failure: the nodes' own account of it.
                for node in nodes:
                    print(f"----- {node.name} log (tail) -----\n{node.log()}")
                raise
            finally:
                for node in nodes:
                    if node.alive:
                        assert node.proc is not None
                        node.proc.send_signal(signal.SIGTERM)
                for node in nodes:
                    if node.proc is not None:
                        try:
                            node.proc.wait(5)
                        except subprocess.TimeoutExpired:
                            node.proc.kill()
                    shutil.rmtree(node.dir, ignore_errors=True)


def assert_no_gap(reader: StreamReader) -> None:
    seqs = reader.seqs()
    assert seqs, "no records"
    missing = sorted(set(range(min(seqs), max(seqs) + 1)) - set(seqs))
    assert not missing, f"{len(missing)} records missing, first {missing[:5]}"


async def test_one_upstream_connection_every_node_every_record_and_failover_on_kill() -> None:
    async with three_nodes() as setup:
        holder = await setup.holder()
        with trio.fail_after(10):
            while setup.stats()["accepted"] < 1:
                await trio.sleep(0.05)
        readers = {n.name: await StreamReader(n.port, "/api/1/stream/s1").connect() for n in setup.nodes}
        for reader in readers.values():
            await reader.read_records(200, timeout=15)
            assert_no_gap(reader)
        stats = setup.stats()
        assert stats["accepted"] == 1 and setup.max_open == 1
        # Every node serves the same records at the same offsets.
        tails = [(await n.get("/status"))["streams"]["s1"]["log"]["next"] for n in setup.nodes]
        assert max(tails) - min(tails) < 400

        survivors = [n for n in setup.nodes if n is not holder]
        mover = await StreamReader(survivors[0].port, "/api/1/stream/s1?consumer=mover").connect()
        await mover.read_records(100, timeout=10)
        await mover.aclose()
        moved_at = max(mover.seqs())

        assert holder.proc is not None
        killed_at = trio.current_time()
        holder.proc.kill()
        holder.proc.wait()

        new_holder = await setup.holder(survivors, timeout=LEASE_TTL + 8)
        took = trio.current_time() - killed_at
        with trio.fail_after(LEASE_TTL + RECONNECT_DELAY + 10):
            while setup.stats()["accepted"] < 2:
                await trio.sleep(0.05)
        stats = setup.stats()
        reconnect_after = stats["attempt_times"][-1] - killed_at
        # The dead holder's last liveness mark was before its death: the new connection
        # waited reconnect_delay after it (and the lease TTL for a holder cut off).
        assert reconnect_after >= RECONNECT_DELAY
        assert "409" not in stats["statuses"] and setup.max_open == 1
        print(f"failover: new lease holder after {took:.2f} s, reconnect after {reconnect_after:.2f} s")

        # Consumers on the survivors: no gap across the failover.
        for node in survivors:
            reader = readers[node.name]
            target = max(reader.seqs()) + 300
            await reader.read_records(len(reader.records) + 300, timeout=20)
            assert max(reader.seqs()) >= target - 300
            assert_no_gap(reader)
        # The named consumer moved to the other survivor resumes where it was.
        moved = await StreamReader(survivors[1].port, "/api/1/stream/s1?consumer=mover").connect()
        await moved.read_records(50, timeout=10)
        assert min(moved.seqs()) <= moved_at + 1
        await moved.aclose()
        assert new_holder in survivors
        for reader in readers.values():
            with contextlib.suppress(Exception):
                await reader.aclose()


async def test_nats_node_killed_streaming_continues_and_cut_off_holder_closes_first() -> None:
    async with three_nodes() as setup:
        holder = await setup.holder()
        server = (await holder.get("/status"))["cluster"]["nats"]["server"]
        holder_nats = next(n for n in setup.nats.nodes if server.endswith(f":{n.client_port}"))
        others = [n for n in setup.nats.nodes if n is not holder_nats]
        reader_node = next(n for n in setup.nodes if n is not holder)
        reader = await StreamReader(reader_node.port, "/api/1/stream/s1").connect()
        await reader.read_records(100, timeout=15)

        # A NATS node that is not the holder's dies: records keep coming, without a gap.
        others[0].kill()
        await reader.read_records(len(reader.records) + 400, timeout=25)
        assert_no_gap(reader)
        assert "409" not in setup.stats()["statuses"] and setup.max_open == 1

        # The killed NATS node comes back (R3 needs two of three for a quorum); then the
        # holder's own NATS server stops answering: the holder closes its upstream
        # connection before any other node opens one.
        others[0].start()
        await trio.to_thread.run_sync(setup.nats.wait_healthy)
        holder = await setup.holder()
        server = (await holder.get("/status"))["cluster"]["nats"]["server"]
        holder_nats = next(n for n in setup.nats.nodes if server.endswith(f":{n.client_port}"))
        accepted = setup.stats()["accepted"]
        holder_nats.pause()
        try:
            with trio.fail_after(LEASE_TTL + RECONNECT_DELAY + 20):
                while setup.stats()["accepted"] == accepted or setup.stats()["open"] == 0:
                    await trio.sleep(0.05)
            stats = setup.stats()
            assert "409" not in stats["statuses"] and setup.max_open == 1
            assert stats["attempt_times"][-1] >= stats["disconnect_times"][-1] + RECONNECT_DELAY
        finally:
            holder_nats.resume()
        await reader.aclose()
