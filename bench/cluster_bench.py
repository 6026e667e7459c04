"""Cluster mode benchmark: ingest into JetStream with de-duplication (R1 and R3), read-back
per node, lease failover. Starts its own nats-servers (temp dirs, free ports).

    .venv/bin/python -m bench.cluster_bench [--records 50000]

Ingest goes through lsproxy's own path: ``JetStreamLog.append`` on the trio side, the
bridge, pipelined publishes with ``Nats-Msg-Id`` on the asyncio side, every ack awaited
(the writing node also follows the stream, as every node does).
Each record is sent twice (the second copy must be dropped as a duplicate: the
stream's message count is checked). Read-back is a fresh node reading the whole
stream through ``JetStreamLog.read`` (pull requests of 1000 records below its tail,
one consumer reused along the replay). Failover
is the three-node test's scenario: the lease holder SIGKILLed.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import trio
import trio.lowlevel

from lsproxy.cluster.mode import ClusterMode
from lsproxy.config import ClusterConfig, Credentials, StorageConfig, StreamConfig, UpstreamSettings
from lsproxy.secret import Secret
from tests.cluster_harness import nats_cluster

RECORD_BYTES = 2500


def records(n: int) -> list[bytes]:
    pad = b"x" * (RECORD_BYTES - 80)
    return [
        b'{"hitIdHigh":%d,"hitIdLow":%d,"pad":"%s"}' % (7_000_000_000_000_000_000 + i, i, pad)
        for i in range(n)
    ]


def stream_config() -> StreamConfig:
    creds = Credentials(
        name="b", kind="static", token=Secret("t"), token_file=None, api_key=None, oauth=None, source="inline"
    )
    return StreamConfig(
        name="bench",
        url="http://127.0.0.1:1/api/1/stream/bench",
        endpoint="bench",
        report_suite=None,
        credentials=creds,
        upstream=UpstreamSettings(),
        retention_bytes=4 * 1024**3,
        retention_seconds=3600.0,
    )


async def ingest_and_read(urls: list[str], replicas: int, n: int) -> tuple[float, float]:
    config = ClusterConfig(nats=tuple(urls), node="bench-a", replicas=replicas, lease_ttl=5.0)
    data = records(n)
    async with trio.open_nursery() as nursery:
        writer = ClusterMode(config)
        await nursery.start(writer.run)
        jslog = writer.open_log(stream_config(), dataclasses.replace(_storage(), memory_bytes=64 * 1024**2))
        nursery.start_soon(jslog.run)
        await jslog.ready.wait()
        start = time.perf_counter()
        for i in range(0, n, 500):
            jslog.append(data[i : i + 500] + data[i : i + 500], time.time())
            await until(lambda: jslog.pending_bytes < 8 * 1024 * 1024, 0.001)  # as an upstream would wait
        await until(lambda: jslog.published >= 2 * n, 0.005)
        ingest = n / (time.perf_counter() - start)
        await trio.sleep(1.2)  # the stream's state is polled every second
        assert jslog.state["messages"] == n, f"de-duplication: {jslog.state['messages']} messages for {n}"

        reader_mode = ClusterMode(dataclasses.replace(config, node="bench-b"))
        await nursery.start(reader_mode.run)
        reader = reader_mode.open_log(stream_config(), _storage())
        nursery.start_soon(reader.run)
        await reader.ready.wait()
        start = time.perf_counter()
        offset, got = reader.oldest, 0
        while offset < reader.next_offset:
            piece = await reader.read(offset, 256 * 1024)
            got += piece.count
            offset = piece.end
        read_back = got / (time.perf_counter() - start)
        assert got == n
        nursery.cancel_scope.cancel()
    return ingest, read_back


async def until(condition: Callable[[], bool], step: float) -> None:
    while not condition():  # noqa: ASYNC110 (polling what another process or thread changes)
        await trio.sleep(step)


def _storage() -> StorageConfig:
    return StorageConfig(dir="/tmp/lsproxy-bench")


def _ingest(distinct_per_second: float) -> str:
    return f"{distinct_per_second:,.0f} ({2 * distinct_per_second:,.0f})"


async def failover() -> tuple[float, float]:
    from tests.integration.test_cluster_three_nodes import three_nodes

    async with three_nodes() as setup:
        holder = await setup.holder()
        await until(lambda: setup.stats()["accepted"] >= 1, 0.05)
        survivors = [n for n in setup.nodes if n is not holder]
        assert holder.proc is not None
        killed = trio.current_time()
        holder.proc.kill()
        holder.proc.wait()
        await setup.holder(survivors, timeout=20)
        took = trio.current_time() - killed
        await until(lambda: setup.stats()["accepted"] >= 2, 0.05)
        return took, setup.stats()["attempt_times"][-1] - killed


async def main(n: int) -> None:
    rows = []
    with nats_cluster(1) as one:
        ingest, read_back = await ingest_and_read(one.urls, 1, n)
        rows.append(
            ("ingest R1, distinct records/s (publishes/s, half duplicates)", _ingest(ingest), ">= 20,000")
        )
        rows.append(("read-back per node, R1 (records/s)", f"{read_back:,.0f}", ">= 50,000"))
    with nats_cluster(3) as three:
        ingest, read_back = await ingest_and_read(three.urls, 3, n)
        rows.append(
            ("ingest R3, distinct records/s (publishes/s, half duplicates)", _ingest(ingest), ">= 12,000")
        )
        rows.append(("read-back per node, R3 (records/s)", f"{read_back:,.0f}", ">= 50,000"))
    took, reconnect = await failover()
    rows.append(
        ("failover: new lease holder after SIGKILL (s), lease_ttl 2", f"{took:.2f}", "<= 4 (ttl + 2)")
    )
    rows.append(
        ("failover: upstream reconnect after SIGKILL (s), delay 1", f"{reconnect:.2f}", ">= 1 (delay)")
    )
    print(f"\n{RECORD_BYTES} B records, {n} distinct, each published twice\n")
    print("| measure | lsproxy cluster | target |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    trio.run(main, parser.parse_args().records)
