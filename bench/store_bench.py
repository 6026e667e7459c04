"""The durable store's numbers: can SQLite keep up with Live Stream, and does the event loop stall?

Theory of operation
-------------------
Every run uses the real ``DurableLog`` on a real file (``--dir``, default a
temporary directory next to the working tree) with 2.5 KB records and
``synchronous=FULL`` (what the proxy runs with):

1. *Throughput*: one task appends as fast as it can, in segments of 1, 10,
   50 and 200 records (one upstream read each), while ``run`` commits in its
   worker thread. The producer only yields (never blocks) when the disk queue
   holds more than 32 MB, the way the bench measures the writer's ceiling
   rather than a dropped-records count. Retention is 128 MB, so later commits
   also delete old rows, as in steady state. Reported: records/s and MB/s
   from the first append until everything is committed, commit latency
   p50/p99/max (time in the worker thread per transaction).
2. *Paced*: the proxy's target load, 5 x 5,000 hits/s = 25,000 records/s,
   appended every 4 ms in segments of 100 for ``--seconds``. A ticker task
   sleeps 1 ms in a loop and records how late it wakes: that is the event
   loop's scheduling delay while the writer runs (GIL contention included).
   Also reported: the longest single ``append`` call, the largest disk queue,
   records dropped from the disk queue (must be 0), commit latency.
3. *Reading back* from disk (behind the memory tail) in 256 KB reads, as a
   lagging consumer does; and the time to open the resulting file
   (quick_check + index load).

Run: ``python -m bench.store_bench [--dir DIR] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any, cast

import trio
import trio.lowlevel

from lsproxy.hub.durable import DurableLog
from lsproxy.hub.log import MemoryLog
from lsproxy.hub.store import Store

RECORD = 2_500
MB = 1e6


def make_records(count: int) -> list[bytes]:
    """2.5 KB JSON-looking records, each different."""
    body = (b'"evar%d":"value-%d",' * 120)[: RECORD - 60]
    return [b'{"hitIdHigh":%d,"hitIdLow":%d,' % (i * 7919, i) + body + b'"end":1}' for i in range(count)]


def timed_commits(log: DurableLog) -> list[float]:
    """Record how long each commit transaction takes in its worker thread."""
    store: Store = log._store  # the bench looks inside on purpose
    seconds: list[float] = []
    commit = store.commit

    def measured(work: Any) -> Any:
        started = time.perf_counter()
        try:
            return commit(work)
        finally:
            seconds.append(time.perf_counter() - started)

    store.commit = measured  # type: ignore[method-assign]
    return seconds


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))] if values else 0.0


async def open_log(directory: str, name: str, **options: Any) -> DurableLog:
    settings: dict[str, Any] = {
        "retention_bytes": 128 * 1024 * 1024,
        "retention_seconds": 3_600,
        "memory_bytes": 64 * 1024 * 1024,
        "commit_interval": 1.0,
    }
    settings.update(options)
    return await DurableLog.open(os.path.join(directory, f"{name}.sqlite3"), **settings)


async def throughput(directory: str, per_append: int, total_bytes: int) -> dict[str, float]:
    log = await open_log(directory, f"tp{per_append}")
    commits = timed_commits(log)
    pool = make_records(4_096)
    count = total_bytes // RECORD
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        started = time.perf_counter()
        n = 0
        while n < count:
            if cast(int, log.status()["pending_bytes"]) > 32 * 1024 * 1024:
                await trio.sleep(0.001)  # let the writer catch up: measure it, not drops
                continue
            log.append([pool[(n + i) % len(pool)] for i in range(per_append)], time.time())
            n += per_append
            if n % 1_000 < per_append:
                await trio.lowlevel.checkpoint()
        await log.commit_now()  # the rest, then stop the clock
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return {
        "records_s": n / elapsed,
        "mb_s": n * (RECORD + 2) / elapsed / MB,
        "commits": len(commits),
        "p50": pct(commits, 0.5) * 1e3,
        "p99": pct(commits, 0.99) * 1e3,
        "max": max(commits) * 1e3,
    }


async def ticker(delays: list[float], stop: trio.Event) -> None:
    while not stop.is_set():
        before = trio.current_time()
        await trio.sleep(0.001)
        delays.append(trio.current_time() - before - 0.001)


async def paced(
    log: DurableLog | MemoryLog, seconds: float, rate: int = 25_000, per_append: int = 100
) -> dict[str, float]:
    """Append at ``rate``; returns the timings (disk figures only for a DurableLog)."""
    disk = log if isinstance(log, DurableLog) else None
    commits = timed_commits(disk) if disk else []
    pool = make_records(4_096)
    delays: list[float] = []
    appends: list[float] = []
    most_pending = 0
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        if disk:
            nursery.start_soon(disk.run)
        nursery.start_soon(ticker, delays, stop)
        start = trio.current_time()
        n = 0
        while trio.current_time() - start < seconds:
            batch = [pool[(n + i) % len(pool)] for i in range(per_append)]
            t0 = time.perf_counter()
            log.append(batch, time.time())
            appends.append(time.perf_counter() - t0)
            n += per_append
            if disk:
                most_pending = max(most_pending, cast(int, disk.status()["pending_bytes"]))
            await trio.sleep_until(start + n / rate)
        elapsed = trio.current_time() - start
        stop.set()
        result = {
            "records_s": n / elapsed,
            "append_p99_ms": pct(appends, 0.99) * 1e3,
            "append_max_ms": max(appends) * 1e3,
            "tick_p50_ms": pct(delays, 0.5) * 1e3,
            "tick_p99_ms": pct(delays, 0.99) * 1e3,
            "tick_max_ms": max(delays) * 1e3,
        }
        if disk:
            result |= {
                "pending_max_mb": most_pending / MB,
                "behind": float(n - disk.committed_offset),
                "dropped": float(cast(int, disk.status()["dropped_from_disk"])),
                "commit_p50_ms": pct(commits, 0.5) * 1e3,
                "commit_p99_ms": pct(commits, 0.99) * 1e3,
            }
        nursery.cancel_scope.cancel()  # DurableLog.run: final commit and close
    return result


async def read_back(directory: str) -> dict[str, float]:
    """Read the paced run's file from disk (memory tail tiny) as a lagging consumer would."""
    started = time.perf_counter()
    log = await open_log(directory, "paced", memory_bytes=1, retention_seconds=1e9)
    opened = time.perf_counter() - started
    reads: list[float] = []
    offset, total = log.oldest, 0
    started = time.perf_counter()
    while offset < log.next_offset:
        t0 = time.perf_counter()
        batch = await log.read(offset, 256 * 1024)
        reads.append(time.perf_counter() - t0)
        total += len(batch.data)
        offset = batch.end
    elapsed = time.perf_counter() - started
    size = cast(int, log.status()["disk_bytes"])
    await log.aclose()
    return {
        "open_s": opened,
        "file_mb": size / MB,
        "read_mb_s": total / elapsed / MB,
        "read_p50_ms": pct(reads, 0.5) * 1e3,
        "read_p99_ms": pct(reads, 0.99) * 1e3,
    }


async def main(directory: str, seconds: float) -> None:
    print(
        f"durable store bench: {RECORD} B records, SQLite WAL synchronous=FULL, {os.cpu_count()} CPUs, dir {directory}"
    )
    print("\n1. append + commit, writer flat out (retention 128 MB: old rows are deleted as well)")
    print(
        f"{'records/append':>14} {'records/s':>10} {'MB/s':>7} {'commits':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
    )
    for per_append in (1, 10, 50, 200):
        r = await throughput(directory, per_append, 300 * 1024 * 1024)
        print(
            f"{per_append:>14} {r['records_s']:>10,.0f} {r['mb_s']:>7.1f} {r['commits']:>7} "
            f"{r['p50']:>7.1f} {r['p99']:>7.1f} {r['max']:>7.1f}"
        )
    print(f"\n2. paced at 25,000 records/s (5 x 5,000 hits/s) for {seconds:g} s, 100 records per append")
    memory = await paced(MemoryLog(128 * 1024 * 1024), seconds)
    durable = await paced(await open_log(directory, "paced"), seconds)
    print(f"  {'':<34} {'MemoryLog':>12} {'DurableLog':>12}")
    rows = [
        ("achieved records/s", "records_s", "{:,.0f}"),
        ("append() p99 ms", "append_p99_ms", "{:.3f}"),
        ("append() max ms", "append_max_ms", "{:.2f}"),
        ("loop delay p50 ms (1 ms ticker)", "tick_p50_ms", "{:.2f}"),
        ("loop delay p99 ms", "tick_p99_ms", "{:.2f}"),
        ("loop delay max ms", "tick_max_ms", "{:.2f}"),
        ("disk queue max MB", "pending_max_mb", "{:.1f}"),
        ("records not committed at the end", "behind", "{:,.0f}"),
        ("dropped from disk", "dropped", "{:.0f}"),
        ("commit p50 ms", "commit_p50_ms", "{:.1f}"),
        ("commit p99 ms", "commit_p99_ms", "{:.1f}"),
    ]
    for label, key, fmt in rows:
        cells = [fmt.format(r[key]) if key in r else "-" for r in (memory, durable)]
        print(f"  {label:<34} {cells[0]:>12} {cells[1]:>12}")
    b = await read_back(directory)
    print("\n3. reading back from disk (memory tail off), 256 KB reads")
    print(f"  {'open (quick_check + load)':<30} {b['open_s'] * 1e3:.0f} ms for a {b['file_mb']:.0f} MB file")
    print(f"  {'read throughput':<30} {b['read_mb_s']:.0f} MB/s")
    print(f"  {'read() p50 / p99':<30} {b['read_p50_ms']:.2f} / {b['read_p99_ms']:.2f} ms")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help="where the databases go (default: a temporary dir under ./bench)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the paced run")
    args = parser.parse_args()
    directory = args.dir or tempfile.mkdtemp(prefix="store-", dir=os.path.dirname(__file__))
    try:
        trio.run(main, directory, args.seconds)
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    cli()
