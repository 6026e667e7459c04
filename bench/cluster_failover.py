"""Lease failover under sustained load (issue 12): the lease holder SIGKILLed while the
simulator streams at a busy suite's rate, consumers reading on the two survivors.

    .venv/bin/python -m bench.cluster_failover [--rate 5000] [--runs 3]

Run by hand; prints a markdown table. Each run is the three-node harness of
``tests/integration/test_cluster_three_nodes.py`` (three nats-servers, R3; three
``lsproxy run`` processes, lease_ttl 2 s, reconnect_delay 1 s, clock_skew_margin 0.2 s;
the simulator in this process, backfill 300, at ``--rate`` records/s of ~2.5 KB):

1. three gzip streaming readers (``StreamReader``, keeping only each record's sequence
   number): an anonymous one on each node that does not hold the lease, and a named one
   (``?consumer=failover``) on the second of them;
2. ``WARMUP`` s, then a ``BEFORE`` s window: consumer lag, publish rate, CPU;
3. SIGKILL of the lease holder; its journal entry (KV ``lsproxy_journal``: the last
   liveness mark) is read right after, before the next holder writes it;
4. new lease holder (``/status`` ``cluster.leases``), the simulator's next attempt,
   catch-up (every consumer within ``LAG_OK`` s of the simulator's production), back to
   the lag before the kill (twice its worst, ``SETTLED_LAG`` at least), then an ``AFTER``
   s window for the new holder's publish rate.

Lag is the simulator's production (in this process, read at the same moment as the
readers) minus the highest sequence number a consumer has, in seconds of records.
Gaps: every reader's sequence numbers must be contiguous from its first record to its
last (the simulator numbers its hits 0, 1, 2, ...; ``assert_no_gap``), duplicates are
numbers seen twice. An early reconnect is a new attempt sooner than reconnect_delay after
the dead holder's last liveness mark, or after the simulator saw its connection close,
or a 409 from the simulator, or two upstream connections open at once.

If the consumers do not keep up before the kill (lag over ``LAG_OK`` s in the last 3 s
before it, or under 95 % of the rate received), the first run is repeated at the next
rate of ``--ladder`` below ``--rate``, and the other runs use the first rate that kept up.
Gaps and early reconnects are printed loudly and make the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import statistics
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import nats
import trio

from lsproxy.cluster.names import JOURNAL_BUCKET
from lsproxy.cluster.slot_policy import decode_moments, takeover_not_before
from lsproxy.simulator.hits import SEQ_BASE
from tests.harness import StreamReader
from tests.integration.test_cluster_three_nodes import (
    LEASE_TTL,
    RECONNECT_DELAY,
    Node,
    Setup,
    assert_no_gap,
    three_nodes,
)

CLOCK_SKEW_MARGIN = 0.2  # the harness's [cluster] clock_skew_margin
BACKFILL = 300  # the harness's simulator backfill
WARMUP = 3.0
BEFORE = 6.0
AFTER = 5.0
LAG_OK = 1.0  # seconds of records: kept up / caught up
SETTLED_LAG = 0.1  # seconds of records: the least "back to the lag before the kill" waits for
SAMPLE = 0.05
CATCH_UP_TIMEOUT = 90.0
PATH = "/api/1/stream/s1"
_HIT_ID_LOW = re.compile(rb'"hitIdLow":(\d+)')


class SeqReader(StreamReader):
    """A ``StreamReader`` that keeps only each record's sequence number and when each read
    brought records: a busy stream's whole body (12 MB/s) is not kept."""

    def __init__(self, port: int, path: str, label: str) -> None:
        super().__init__(port, path)
        self.label = label
        self.seq_list: array[int] = array("q")
        self.top = -1  # highest sequence number received
        self.arrivals: list[float] = []  # trio time of every read that brought records
        self.foreign = 0  # records without a hitIdLow
        self.closed_early = False

    def seqs(self) -> list[int]:
        return self.seq_list.tolist()

    def _decode_chunks(self) -> None:
        buf, pos = self._buf, 0
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(buf[pos:nl].split(b";")[0], 16)
            if size == 0:
                self.ended_cleanly = True
                pos = len(buf)
                break
            end = nl + 2 + size
            if len(buf) < end + 2:
                break
            chunk = buf[nl + 2 : end]
            self._take(self._inflater.decompress(chunk) if self.gzip else chunk)
            pos = end + 2
        self._buf = buf[pos:]

    def _take(self, data: bytes) -> None:
        text = self._tail + data
        cut = text.rfind(b"\r\n")
        if cut < 0:
            self._tail = text
            return
        self._tail = text[cut + 2 :]
        for record in text[:cut].split(b"\r\n"):
            if not record:
                continue
            m = _HIT_ID_LOW.search(record)
            if m is None:
                self.foreign += 1
                continue
            seq = int(m.group(1)) - SEQ_BASE
            self.seq_list.append(seq)
            if seq > self.top:
                self.top = seq

    async def pump(self) -> None:
        assert self.stream is not None
        self._decode_chunks()  # what came with the response head
        while not self.ended_cleanly:
            data = await self.stream.receive_some(256 * 1024)
            if not data:
                self.closed_early = True
                return
            self._buf += data
            before = len(self.seq_list)
            self._decode_chunks()
            if len(self.seq_list) > before:
                self.arrivals.append(trio.current_time())


# -- CPU -------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _machine() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class CpuSnapshot:
    at: float
    procs: dict[str, float]
    machine: tuple[float, float]


def cpu_snapshot(pids: dict[str, int]) -> CpuSnapshot:
    return CpuSnapshot(time.monotonic(), {k: _cpu_seconds(p) for k, p in pids.items()}, _machine())


def cpu_usage(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """Per process, % of one core; ``machine``: % of all cores busy."""
    dt = b.at - a.at
    out = {k: 100 * (b.procs[k] - a.procs[k]) / dt for k in a.procs}
    busy, total = b.machine[0] - a.machine[0], b.machine[1] - a.machine[1]
    out["machine"] = 100 * busy / total if total else float("nan")
    return out


# -- the run --------------------------------------------------------------------------
@dataclass
class Sample:
    at: float
    produced: int
    tops: list[int]
    counts: list[int]


@dataclass
class ReaderResult:
    label: str
    records: int
    duplicates: int
    missing: int
    missing_ranges: list[tuple[int, int]]
    pause_before: float
    pause_failover: float
    foreign: int
    closed_early: bool


@dataclass
class Result:
    rate: float
    run: int
    kept_up: bool = False
    lag_before: float = float("nan")  # max over the last 3 s before the kill, seconds of records
    received_before: float = float("nan")  # slowest consumer, records/s
    new_holder: float = float("nan")
    reconnect: float = float("nan")
    margin_mark: float = float("nan")  # attempt - (last liveness mark + reconnect_delay)
    margin_rule: float = float("nan")  # attempt - the product's takeover_not_before
    margin_close: float = float("nan")  # attempt - (simulator saw the close + reconnect_delay)
    caught_up: float = float("nan")
    settled: float = float("nan")  # back to the lag before the kill
    in_flight: int = -1  # records the simulator handed the holder that never reached JetStream
    publish_before: float = float("nan")
    publish_after: float = float("nan")
    drain: float = float("nan")  # new holder's publishes/s from its connection to catch-up
    cpu_before: dict[str, float] = field(default_factory=dict)
    cpu_after: dict[str, float] = field(default_factory=dict)
    readers: list[ReaderResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # gaps, early reconnects, timeouts
    notes: list[str] = field(default_factory=list)

    @property
    def gaps(self) -> int:
        return sum(r.missing for r in self.readers)

    @property
    def pause(self) -> float:
        return max((r.pause_failover for r in self.readers), default=float("nan"))


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        with trio.fail_after(timeout):
            while not condition():  # noqa: ASYNC110 (polling what other processes change)
                await trio.sleep(0.01)
    except trio.TooSlowError:
        raise TimeoutError(f"{what}: not within {timeout:.0f} s") from None


async def status(node: Node) -> dict[str, Any] | None:
    try:
        return await node.get("/status")
    except (httpx.HTTPError, ValueError):
        return None


async def published(node: Node) -> tuple[float, int]:
    """(trio time, the node's JetStream ``published`` count for s1), retried."""
    for _ in range(20):
        body = await status(node)
        if body is not None:
            return trio.current_time(), int(body["cluster"]["jetstream"]["s1"]["published"])
        await trio.sleep(0.1)
    raise TimeoutError(f"{node.name}: no /status")


def read_journal(urls: list[str], key: str) -> bytes | None:
    """The slot's journal value in KV (asyncio, run in a thread)."""

    async def get() -> bytes | None:
        nc = await nats.connect(servers=urls, connect_timeout=2, allow_reconnect=False)
        try:
            kv = await nc.jetstream().key_value(JOURNAL_BUCKET)
            return (await kv.get(key)).value
        finally:
            await nc.close()

    return asyncio.run(get())


def in_jetstream(urls: list[str], lo: int, hi: int) -> tuple[int, list[int]]:
    """How many of hits ``lo..hi`` the JetStream stream holds, and the stream sequences
    where the holes are (read from the start with a pull consumer; asyncio, in a thread)."""

    async def scan() -> tuple[int, list[int]]:
        nc = await nats.connect(servers=urls, connect_timeout=2, allow_reconnect=False)
        try:
            sub = await nc.jetstream().pull_subscribe("lsproxy.records.s1", stream="LSPROXY_s1")
            found, prev = 0, None
            holes: list[int] = []
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=2)
                except nats.errors.TimeoutError:
                    return found, holes
                for msg in msgs:
                    m = _HIT_ID_LOW.search(msg.data)
                    seq = int(m.group(1)) - SEQ_BASE if m else -1
                    if prev is not None and seq != prev + 1 and len(holes) < 5:
                        holes.append(msg.metadata.sequence.stream)
                    prev = seq
                    found += lo <= seq <= hi
                    if seq > hi:
                        return found, holes
        finally:
            await nc.close()

    return asyncio.run(scan())


def lag_seconds(sample: Sample, rate: float) -> float:
    """The worst consumer's lag behind the simulator's production, in seconds of records."""
    return max((sample.produced - 1 - top) / rate for top in sample.tops)


def missing_ranges(seqs: list[int], limit: int = 5) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    ordered = sorted(set(seqs))
    for a, b in itertools.pairwise(ordered):
        if b > a + 1:
            ranges.append((a + 1, b - 1))
            if len(ranges) >= limit:
                break
    return ranges


def longest_pause(arrivals: list[float], start: float, end: float) -> float:
    """The longest time between reads that brought records, over pairs ending in [start, end]."""
    pause = 0.0
    for a, b in itertools.pairwise(arrivals):
        if start < b <= end:
            pause = max(pause, b - a)
    return pause


async def one_run(rate: float, run: int) -> Result:
    result = Result(rate, run)
    async with three_nodes(rate=rate) as setup:
        holder = await setup.holder()
        await until(lambda: setup.stats()["accepted"] >= 1, 10, "first upstream connection")
        survivors = [n for n in setup.nodes if n is not holder]
        readers = [
            SeqReader(survivors[0].port, PATH, f"{survivors[0].name} anonymous"),
            SeqReader(survivors[1].port, PATH, f"{survivors[1].name} anonymous"),
            SeqReader(survivors[1].port, f"{PATH}?consumer=failover", f"{survivors[1].name} named"),
        ]
        for reader in readers:
            await reader.connect()
            if reader.status != 200:
                raise RuntimeError(f"{reader.label}: HTTP {reader.status}")
        pids = {n.name: n.proc.pid for n in setup.nodes if n.proc is not None}
        pids |= {f"nats {n.name}": n.proc.pid for n in setup.nats.nodes if n.proc is not None}
        pids["bench+simulator"] = os.getpid()
        samples: list[Sample] = []

        async def sampler() -> None:
            while True:
                samples.append(
                    Sample(
                        trio.current_time(),
                        setup.stats()["produced"],
                        [r.top for r in readers],
                        [len(r.seq_list) for r in readers],
                    )
                )
                await trio.sleep(SAMPLE)

        async with trio.open_nursery() as nursery:
            for reader in readers:
                nursery.start_soon(reader.pump)
            nursery.start_soon(sampler)
            await trio.sleep(WARMUP)
            await failover(setup, holder, survivors, readers, samples, pids, result)
            nursery.cancel_scope.cancel()
        for reader in readers:
            with trio.move_on_after(2):
                await reader.aclose()
    return result


async def failover(
    setup: Setup,
    holder: Node,
    survivors: list[Node],
    readers: list[SeqReader],
    samples: list[Sample],
    pids: dict[str, int],
    result: Result,
) -> None:
    rate = result.rate
    # Before the kill.
    cpu0 = cpu_snapshot(pids)
    t0, pub0 = await published(holder)
    counts0 = [len(r.seq_list) for r in readers]
    await trio.sleep(BEFORE)
    t1, pub1 = await published(holder)
    counts1 = [len(r.seq_list) for r in readers]
    result.cpu_before = cpu_usage(cpu0, cpu_snapshot(pids))
    result.publish_before = (pub1 - pub0) / (t1 - t0)
    result.received_before = min((c1 - c0) / (t1 - t0) for c0, c1 in zip(counts0, counts1, strict=True))
    lag_window = max(lag_seconds(s, rate) for s in samples if s.at >= t0)
    result.lag_before = max(lag_seconds(s, rate) for s in samples if s.at >= t1 - 3)
    result.kept_up = result.lag_before <= LAG_OK and result.received_before >= 0.95 * rate
    body = await status(survivors[0])
    assert body is not None
    slot_key = next(iter(body["cluster"]["slots"]))
    current = await setup.holder(timeout=10)
    attempts = len(setup.stats()["attempt_times"])
    if current is not holder or attempts > 1:
        result.problems.append(
            f"LEASE MOVED BEFORE THE KILL (no node killed yet): holder {holder.name} at the start, "
            f"{current.name} now, {attempts} upstream attempts"
        )
    if current is not holder:  # the readers are no longer on the non-holders: no failover
        await check_readers(setup, survivors, readers, result, trio.current_time(), -1)
        return

    # The kill.
    assert holder.proc is not None
    position_at_kill = setup.stats()["position"]
    killed = trio.current_time()
    wall_offset = time.time() - killed  # wall = trio time + offset (one host, one clock)
    holder.proc.kill()
    holder.proc.wait()
    try:
        raw = await trio.to_thread.run_sync(read_journal, setup.nats.urls, slot_key)
    except Exception as exc:
        raw = None
        result.problems.append(f"journal not read: {exc!r}")
    moments = decode_moments(raw) if raw is not None else None

    try:
        new_holder = await setup.holder(survivors, timeout=LEASE_TTL + 20)
        result.new_holder = trio.current_time() - killed
        await until(lambda: setup.stats()["accepted"] >= 2, 30, "new upstream connection")
        stats = setup.stats()
        attempt = stats["attempt_times"][-1]
        result.reconnect = attempt - killed
        before_attempt = [s for s in samples if s.at < attempt]
        if before_attempt:
            result.in_flight = position_at_kill - 1 - max(before_attempt[-1].tops)
            if result.in_flight > BACKFILL:
                result.notes.append(
                    f"{result.in_flight} records in flight at the kill, more than the backfill "
                    f"({BACKFILL}): expect a gap"
                )
        closes = [t for t in stats["disconnect_times"] if t < attempt]
        if closes:
            result.margin_close = attempt - (closes[-1] + RECONNECT_DELAY)
        if moments is not None and moments.alive_at is not None:
            result.margin_mark = attempt - (moments.alive_at - wall_offset + RECONNECT_DELAY)
            rule = takeover_not_before(
                moments,
                reconnect_delay=RECONNECT_DELAY,
                lease_ttl=LEASE_TTL,
                clock_skew_margin=CLOCK_SKEW_MARGIN,
            )
            if rule is not None:
                result.margin_rule = attempt - (rule - wall_offset)
            if moments.open != 1:
                result.notes.append(f"journal entry not open at the kill: {moments}")
        early = [
            f"{name} {value:+.3f} s"
            for name, value in (
                ("after the last liveness mark + reconnect_delay", result.margin_mark),
                ("after the simulator saw the close + reconnect_delay", result.margin_close),
            )
            if value < 0
        ]
        if early:
            result.problems.append("EARLY RECONNECT: attempt " + "; ".join(early))
        if "409" in stats["statuses"] or setup.max_open > 1:
            result.problems.append(
                f"EARLY RECONNECT: simulator statuses {stats['statuses']}, max open {setup.max_open}"
            )
        if len(stats["attempt_times"]) > 2:
            result.notes.append(f"{len(stats['attempt_times'])} upstream attempts in all")

        _, pub_reconnect = await published(new_holder)
        at_reconnect = trio.current_time()

        def caught_up() -> bool:
            return bool(samples) and samples[-1].at > attempt and lag_seconds(samples[-1], rate) <= LAG_OK

        await until(caught_up, CATCH_UP_TIMEOUT, f"consumers within {LAG_OK} s of the simulator")
        result.caught_up = samples[-1].at - killed
        t2, pub2 = await published(new_holder)
        result.drain = (pub2 - pub_reconnect) / max(t2 - at_reconnect, 1e-3)
        steady = max(2 * lag_window, SETTLED_LAG)
        await until(
            lambda: lag_seconds(samples[-1], rate) <= steady, CATCH_UP_TIMEOUT, f"lag back to {steady} s"
        )
        result.settled = samples[-1].at - killed
        result.notes.append(
            f"lag back to <= {steady:.2f} s (twice the worst before the kill) after {result.settled:.2f} s"
        )
        t2, pub2 = await published(new_holder)
        alive = {k: v for k, v in pids.items() if k != holder.name}
        cpu2 = cpu_snapshot(alive)
        await trio.sleep(AFTER)
        t3, pub3 = await published(new_holder)
        result.publish_after = (pub3 - pub2) / (t3 - t2)
        result.cpu_after = cpu_usage(cpu2, cpu_snapshot(alive))
        result.notes.append(
            f"new holder {new_holder.name}; simulator position at the kill {position_at_kill}; "
            f"worst lag {max(lag_seconds(s, rate) for s in samples if s.at > killed):.2f} s after the kill"
        )
    except TimeoutError as exc:
        result.problems.append(f"FAILOVER INCOMPLETE: {exc}")
    await check_readers(setup, survivors, readers, result, killed, position_at_kill)


async def check_readers(
    setup: Setup,
    survivors: list[Node],
    readers: list[SeqReader],
    result: Result,
    killed: float,
    position_at_kill: int,
) -> None:
    """Gaps, duplicates and pauses of every reader; a gap is looked for in JetStream too."""
    end = trio.current_time()
    await trio.sleep(0.3)  # the last records in flight
    for reader in readers:
        seqs = reader.seqs()
        unique = len(set(seqs))
        gap_note = ""
        try:
            assert_no_gap(reader)
        except AssertionError as exc:
            gap_note = str(exc)
        span = (max(seqs) - min(seqs) + 1) if seqs else 0
        rr = ReaderResult(
            label=reader.label,
            records=len(seqs),
            duplicates=len(seqs) - unique,
            missing=span - unique,
            missing_ranges=missing_ranges(seqs) if gap_note else [],
            pause_before=longest_pause(reader.arrivals, killed - BEFORE, killed),
            pause_failover=longest_pause(reader.arrivals, killed, end),
            foreign=reader.foreign,
            closed_early=reader.closed_early,
        )
        result.readers.append(rr)
        if gap_note:
            where = ", ".join(f"{a}..{b}" for a, b in rr.missing_ranges)
            result.problems.append(
                f"GAP at {reader.label}: {gap_note}; ranges {where} "
                f"(simulator position at the kill {position_at_kill}, backfill {BACKFILL})"
            )
    gaps = {r for x in result.readers for r in x.missing_ranges}
    for lo, hi in sorted(gaps)[:2]:
        try:
            found, holes = await trio.to_thread.run_sync(in_jetstream, setup.nats.urls, lo, hi)
            result.problems.append(
                f"GAP {lo}..{hi}: JetStream holds {found} of those {hi - lo + 1} hits; the stream's "
                f"hit ids jump at stream sequences {holes}"
            )
        except Exception as exc:
            result.problems.append(f"GAP {lo}..{hi}: JetStream not scanned: {exc!r}")
    for node in survivors:
        body = await status(node)
        if body is not None and gaps:
            js = body["cluster"]["jetstream"]["s1"]
            result.problems.append(
                f"GAP: {node.name} follower_resets {js['follower_resets']}, log {body['streams']['s1']['log']}"
            )
        if reader.closed_early:
            result.problems.append(f"{reader.label}: the proxy closed the stream")
        if reader.foreign:
            result.problems.append(f"{reader.label}: {reader.foreign} records without a hitIdLow")


# -- output ---------------------------------------------------------------------------
def _f(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def _cpu(cpu: dict[str, float]) -> str:
    if not cpu:
        return "-"
    lsproxy = [v for k, v in cpu.items() if k.startswith("node-")]
    nats_total = sum(v for k, v in cpu.items() if k.startswith("nats "))
    return (
        f"machine {cpu['machine']:.0f}%: lsproxy {'/'.join(f'{v:.0f}' for v in lsproxy)}, "
        f"nats {nats_total:.0f}, bench+sim {cpu['bench+simulator']:.0f}"
    )


HEAD = (
    "| rate /s | run | kept up before kill (worst lag s; slowest consumer rec/s) "
    "| new lease holder after kill (s) | upstream reconnect after kill (s) "
    "| margin: attempt - (last mark + delay) (s) | longest pause at survivors (s) "
    "| caught up after kill: lag <= 1 s / back to the lag before (s) | in flight at kill (records; backfill 300) "
    "| duplicates per consumer | gaps per consumer "
    "| JetStream publish rec/s before / after | CPU before kill (% of a core) |"
)


def row(r: Result) -> str:
    kept = f"{'yes' if r.kept_up else 'NO'} ({_f(r.lag_before)}; {r.received_before:,.0f})"
    dups = "/".join(str(x.duplicates) for x in r.readers) or "-"
    gaps = "/".join(str(x.missing) for x in r.readers) or "-"
    return (
        f"| {r.rate:,.0f} | {r.run} | {kept} | {_f(r.new_holder)} | {_f(r.reconnect)} "
        f"| {_f(r.margin_mark)} | {_f(r.pause)} | {_f(r.caught_up)} / {_f(r.settled)} | {r.in_flight} | {dups} | {gaps} "
        f"| {_f(r.publish_before, 0)} / {_f(r.publish_after, 0)} | {_cpu(r.cpu_before)} |"
    )


def median_row(results: list[Result]) -> str:
    def med(get: Callable[[Result], float]) -> float:
        values = [get(r) for r in results if get(r) == get(r)]
        return statistics.median(values) if values else float("nan")

    return (
        f"| **{results[0].rate:,.0f}** | **median of {len(results)}** "
        f"| {sum(r.kept_up for r in results)}/{len(results)} kept up ({_f(med(lambda r: r.lag_before))}) "
        f"| {_f(med(lambda r: r.new_holder))} | {_f(med(lambda r: r.reconnect))} "
        f"| {_f(med(lambda r: r.margin_mark))} | {_f(med(lambda r: r.pause))} "
        f"| {_f(med(lambda r: r.caught_up))} / {_f(med(lambda r: r.settled))} | {max(r.in_flight for r in results)} (max) "
        f"| {_f(med(lambda r: max((x.duplicates for x in r.readers), default=0)), 0)} (worst) "
        f"| {sum(r.gaps for r in results)} (sum) "
        f"| {_f(med(lambda r: r.publish_before), 0)} / {_f(med(lambda r: r.publish_after), 0)} | |"
    )


def details(r: Result) -> None:
    print(f"run {r.run} at {r.rate:,.0f}/s:")
    print(
        f"  reconnect margins: over last mark + delay {_f(r.margin_mark, 3)} s, over the product's "
        f"takeover rule (mark + ttl + delay + skew) {_f(r.margin_rule, 3)} s, over the simulator's "
        f"close + delay {_f(r.margin_close, 3)} s"
    )
    print(f"  new holder drained its backlog at {_f(r.drain, 0)} publishes/s (connection to catch-up)")
    for x in r.readers:
        print(
            f"  {x.label}: {x.records} records, {x.duplicates} duplicates, {x.missing} missing, "
            f"longest pause {x.pause_before:.2f} s before the kill, {x.pause_failover:.2f} s after"
        )
    print(f"  CPU before kill: {', '.join(f'{k} {v:.0f}' for k, v in r.cpu_before.items())}")
    print(f"  CPU after catch-up: {', '.join(f'{k} {v:.0f}' for k, v in r.cpu_after.items())}")
    for note in r.notes:
        print(f"  {note}")
    for problem in r.problems:
        print(f"  !!!!! {problem}")


async def main(rate: float, runs: int, ladder: list[float]) -> int:
    rates = [rate, *sorted((r for r in ladder if r < rate), reverse=True)]
    results: list[Result] = []
    chosen: float | None = None
    for candidate in rates:
        print(f"run 1 at {candidate:,.0f} records/s ...", file=sys.stderr)
        first = await one_run(candidate, 1)
        results.append(first)
        details(first)
        if first.kept_up:
            chosen = candidate
            break
        print(
            f"!!!!! consumers on the survivors did NOT keep up at {candidate:,.0f} records/s before the "
            f"kill (worst lag {first.lag_before:.2f} s, slowest consumer {first.received_before:,.0f}/s)"
        )
    if chosen is not None:
        for run in range(2, runs + 1):
            print(f"run {run} at {chosen:,.0f} records/s ...", file=sys.stderr)
            results.append(await one_run(chosen, run))
            details(results[-1])

    print(
        f"\nlease_ttl {LEASE_TTL} s, reconnect_delay {RECONNECT_DELAY} s, clock_skew_margin "
        f"{CLOCK_SKEW_MARGIN} s, backfill {BACKFILL}; kept up = worst consumer lag <= {LAG_OK} s in the "
        f"last 3 s before the kill and >= 95 % of the rate received; caught up = all consumers "
        f"within {LAG_OK} s again; targets: new holder <= ttl + 2 = {LEASE_TTL + 2} s, margin >= 0, "
        f"gaps 0\n"
    )
    print(HEAD)
    print("|" + "---|" * HEAD.count(" | ") + "---|")
    for r in results:
        print(row(r))
    final = [r for r in results if r.rate == (chosen if chosen is not None else results[-1].rate)]
    print(median_row(final))
    if chosen is None:
        print(f"\n!!!!! the consumers kept up at none of {', '.join(f'{r:,.0f}' for r in rates)} records/s")
    elif chosen != rate:
        print(f"\nhighest rate kept up with: {chosen:,.0f} records/s (not {rate:,.0f})")
    problems = [(r, p) for r in results for p in r.problems]
    for r, p in problems:
        print(f"!!!!! run {r.run} at {r.rate:,.0f}/s: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="simulator records/s")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--ladder", default="2000,1000,500", help="lower rates to try when consumers do not keep up"
    )
    args = parser.parse_args()
    sys.exit(trio.run(main, args.rate, args.runs, [float(x) for x in args.ladder.split(",") if x]))
