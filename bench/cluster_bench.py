"""Cluster mode benchmark: ingest into JetStream with de-duplication (R1 and R3), read-back
per node, lease failover. Starts its own nats-servers (temp dirs, free ports).

    .venv/bin/python -m bench.cluster_bench [--records 50000] [--runs 3]

Ingest goes through lsproxy's own path: ``JetStreamLog.append`` on the trio side, the
bridge, pipelined publishes with ``Nats-Msg-Id`` on the asyncio side, every ack awaited
(the writing node also follows the stream, as every node does). Two traffic shapes:
every record once (what an upstream sends; its duplicates are a few hundred per
reconnect) and every record twice (the second copy must be dropped: the worst case).
The stream's message count is checked after each. The ceiling is measured in the same
run: a plain asyncio nats-py publisher (no trio, no bridge), the same records, ids, ack
window and follower. Read-back is a fresh node reading the whole stream through
``JetStreamLog.read`` (pull requests of 1000 records below its tail, one consumer reused
along the replay). Failover is the three-node test's scenario: the lease holder
SIGKILLed. Each figure is the median of ``--runs`` runs (range in brackets).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
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


async def ingest_and_read(urls: list[str], replicas: int, n: int, copies: int = 2) -> tuple[float, float]:
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
            jslog.append(data[i : i + 500] * copies, time.time())
            await until(lambda: jslog.pending_bytes < 8 * 1024 * 1024, 0.001)  # as an upstream would wait
        await until(lambda: jslog.published >= copies * n, 0.005)
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


def _figure(values: list[float]) -> str:
    """Median, with the range when there is more than one run."""
    middle = f"{statistics.median(values):,.0f}"
    return middle if len(values) == 1 else f"{middle} ({min(values):,.0f}-{max(values):,.0f})"


async def raw_publisher(urls: list[str], replicas: int, n: int, copies: int) -> float:
    """Distinct records/s of plain nats-py on asyncio (its own thread), as lsproxy publishes."""
    return await trio.to_thread.run_sync(lambda: asyncio.run(_raw(urls, replicas, n, copies)))


async def _raw(urls: list[str], replicas: int, n: int, copies: int) -> float:
    import nats
    from nats.js import api

    from lsproxy.cluster import jslog, names

    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream()
        subject = "lsproxy.records.raw"
        await js.add_stream(
            api.StreamConfig(
                name="RAW", subjects=[subject], num_replicas=replicas, storage=api.StorageType.FILE, duplicate_window=120
            )
        )
        followed = 0

        async def follow(_msg: object) -> None:
            nonlocal followed
            followed += 1

        await js.subscribe(subject, stream="RAW", cb=follow, ordered_consumer=True)
        window = asyncio.Semaphore(jslog.PUBLISH_PIPELINE * jslog.PUBLISH_BATCH)
        all_acked = asyncio.Event()
        acked = 0

        async def on_ack(_msg: object) -> None:
            nonlocal acked
            acked += 1
            window.release()
            if acked == copies * n:
                all_acked.set()

        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_ack, pending_msgs_limit=1_000_000)
        data = records(n)
        start = time.perf_counter()
        for i in range(0, n, 500):
            for _ in range(copies):
                for record in data[i : i + 500]:
                    await window.acquire()
                    headers = {names.MSG_ID_HEADER: names.msg_id(record) or ""}
                    await nc.publish(subject, record, reply=inbox, headers=headers)
        await all_acked.wait()
        rate = n / (time.perf_counter() - start)
        info = await js.stream_info("RAW")
        assert info.state.messages == n, f"de-duplication: {info.state.messages} messages for {n}"
        return rate
    finally:
        await nc.close()


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


async def main(n: int, runs: int) -> None:
    rows = []
    for replicas, target in ((1, ">= 20,000"), (3, ">= 12,000")):
        figures: dict[str, list[float]] = {}
        for _ in range(runs):
            for copies in (1, 2):
                with nats_cluster(replicas) as nats:
                    ingest, read_back = await ingest_and_read(nats.urls, replicas, n, copies)
                figures.setdefault(f"ingest {copies}", []).append(ingest)
                figures.setdefault("read", []).append(read_back)
                with nats_cluster(replicas) as nats:
                    figures.setdefault(f"raw {copies}", []).append(await raw_publisher(nats.urls, replicas, n, copies))
        for copies, shape in ((1, "every record once"), (2, "every record twice")):
            ours, raw = figures[f"ingest {copies}"], figures[f"raw {copies}"]
            ratio = statistics.median(ours) / statistics.median(raw)
            rows.append(
                (f"ingest R{replicas}, {shape}: distinct records/s", _figure(ours), _figure(raw), f"{ratio:.2f}x",
                 target if copies == 1 else "")
            )  # fmt: skip
        rows.append((f"read-back per node, R{replicas} (records/s)", _figure(figures["read"]), "", "", ">= 50,000"))
    took, reconnect = await failover()
    rows.append(("failover: new lease holder after SIGKILL (s), lease_ttl 2", f"{took:.2f}", "", "", "<= 4 (ttl + 2)"))
    rows.append(("failover: upstream reconnect after SIGKILL (s), delay 1", f"{reconnect:.2f}", "", "", ">= 1 (delay)"))
    print(f"\n{RECORD_BYTES} B records, {n} distinct, {runs} run(s): median (range)\n")
    print("| measure | lsproxy cluster | plain nats-py publisher | lsproxy / plain | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.records, args.runs)
