"""Soak: hours of traffic with faults; RSS, fds, event-loop lag and metrics every minute.

Theory of operation
-------------------
Three real processes: the simulator (``lsproxy simulate``, OAuth on, tokens
expiring every ``--token-ttl`` s so refreshes happen all along), the proxy
(``lsproxy run``, durable storage with a retention small enough to be trimming
within minutes, JSON logs to ``proxy.log``), and this driver. The driver runs
``--consumers`` in-process readers (two thirds named gzip readers whose hit
sequence is checked for gaps across every reconnect, a third anonymous identity
readers) plus one real ``tests/clients/py_consumer.py`` process, and injects
faults on schedules:

* upstream drops (``/_sim/drop``), every other one preceded by a 409
  (``/_sim/fail``), so the proxy backs off and grows its wait;
* consumer kills: a random reader's socket reset (SO_LINGER 0) and, every
  few minutes, the py_consumer process SIGKILLed and started again;
* a config reload: retention_bytes flipped between two values, then SIGHUP.

Every ``--sample`` seconds it records the proxy's RSS and open fds (from /proc),
CPU, the event-loop lag the proxy measures itself
(``lsproxy_event_loop_lag_max_seconds``: the worst wake-up delay over the last
minute), the scrape's round trip and the stream's metrics into ``soak.csv``,
and redraws ``soak.png``. Flat lines after the warm-up are the pass criterion;
``summary.json`` has each series' start, end, min, max and slope per hour.

Run by hand (not in the test suite): ``bench/soak --minutes 240`` or
``nice -n 10 python -m bench.soak --minutes 30 --out /tmp/soak``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from lsproxy.simulator.hits import seq_of

ROOT = Path(__file__).resolve().parent.parent
LSPROXY = [sys.executable, "-m", "lsproxy"]
CLIENT_ID = "soak-client"
CLIENT_SECRET = "soak-client-secret-0123456789"
RETENTION = (256 * 1024 * 1024, 240 * 1024 * 1024)  # flipped by each reload
COLUMNS = [
    "minute", "rss_mb", "fds", "cpu_pct", "loop_lag_max_ms", "scrape_ms", "records_in_per_s",
    "records_appended", "records_delivered", "consumers_connected", "lag_records_max", "upstream_connects",
    "upstream_attempts", "streaming", "persisting", "retained_mb", "disk_mb", "token_refreshes",
    "named_gaps", "reader_reconnects", "drops", "kills", "reloads", "sim_rss_mb",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Counters:
    drops: int = 0
    kills: int = 0
    reloads: int = 0
    named_gaps: int = 0  # records a named reader never got (must stay 0)
    reconnects: int = 0


@dataclass
class Reader:
    """An in-process consumer: chunked (+ gzip) decoding, hit sequence checks, no buffering."""

    port: int
    name: str | None
    gzip: bool
    counters: Counters
    scope: trio.CancelScope | None = None
    sock: trio.SocketStream | None = None
    last_seq: int | None = None
    records: int = 0
    _buf: bytes = b""
    _tail: bytes = b""
    _inflater: zlib._Decompress | None = field(default=None, repr=False)

    async def run(self) -> None:
        while True:
            with (
                trio.CancelScope() as self.scope,
                contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError, zlib.error),
            ):
                await self._connection()
            self.counters.reconnects += 1
            await trio.sleep(0.5)

    def kill(self) -> None:
        """The consumer dies: its socket is reset (SO_LINGER 0), its connection ends."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        if self.scope is not None:
            self.scope.cancel()

    async def _connection(self) -> None:
        query = f"?consumer={self.name}" if self.name else ""
        self.sock = await trio.open_tcp_stream("127.0.0.1", self.port)
        try:
            headers = "Accept-Encoding: gzip\r\n" if self.gzip else ""
            await self.sock.send_all(f"GET /api/1/stream/soak{query} HTTP/1.1\r\nHost: soak\r\n{headers}\r\n".encode())
            self._buf, self._tail = b"", b""
            self._inflater = zlib.decompressobj(31) if self.gzip else None
            head_done = False
            if self.name is None:
                self.last_seq = None  # an anonymous reader starts at the tail each time
            while data := await self.sock.receive_some(262144):
                self._buf += data
                if not head_done:
                    if b"\r\n\r\n" not in self._buf:
                        continue
                    head, self._buf = self._buf.split(b"\r\n\r\n", 1)
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise ValueError(head[:100])
                    head_done = True
                self._chunks()
        finally:
            sock, self.sock = self.sock, None
            await sock.aclose()

    def _chunks(self) -> None:
        while b"\r\n" in self._buf:
            size_line, rest = self._buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0 or len(rest) < size + 2:
                return
            chunk, self._buf = rest[:size], rest[size + 2 :]
            data = self._inflater.decompress(chunk) if self._inflater is not None else chunk
            *complete, self._tail = (self._tail + data).split(b"\r\n")
            for record in complete:
                if record:
                    self._record(record)

    def _record(self, record: bytes) -> None:
        self.records += 1
        seq = seq_of(record)
        if self.name is not None and self.last_seq is not None and seq > self.last_seq + 1:
            self.counters.named_gaps += seq - self.last_seq - 1
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq


def write_config(path: Path, data: Path, sim_port: int, proxy_port: int, retention: int) -> None:
    path.write_text(
        f"""# written by bench/soak
[server]
listen = "127.0.0.1:{proxy_port}"
heartbeat_interval = 5
log_format = "json"
[storage]
dir = "{data}"
retention_bytes = {retention}
memory_bytes = 33554432
[upstream]
reconnect_delay = 5
max_reconnect_delay = 30
healthy_after = 20
[credentials.ims]
kind = "oauth"
client_id = "{CLIENT_ID}"
client_secret_env = "LSPROXY_SOAK_CLIENT_SECRET"
scopes = ["openid", "AdobeID"]
token_url = "http://127.0.0.1:{sim_port}/ims/token/v3"
[streams.soak]
url = "http://127.0.0.1:{sim_port}/api/1/stream/soak"
report_suite = "soaksuite"
"""
    )


def metric_values(text: str) -> dict[str, float]:
    """Sample name (with labels but ``stream`` and ``connection``) -> value, summed."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k not in ("stream", "connection", "consumer")}
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else "")
            if s.name.endswith(("_max_seconds", "_lag_records_max")):
                out[key] = max(out.get(key, 0.0), s.value)
            else:
                out[key] = out.get(key, 0.0) + s.value
    return out


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.rng = random.Random(args.seed)
        self.counters = Counters()
        self.sim_port, self.proxy_port = free_port(), free_port()
        self.config = self.out / "soak.toml"
        self.retention_flip = 0
        self.rows: list[dict[str, float]] = []
        self.readers: list[Reader] = []
        self.sim: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self.py_consumer: trio.Process | None = None

    # -- processes ----------------------------------------------------------------
    def start_processes(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_config(self.config, self.out / "data", self.sim_port, self.proxy_port, RETENTION[0])
        self.sim = subprocess.Popen(
            [*LSPROXY, "simulate", "--listen", f"127.0.0.1:{self.sim_port}", "--stream", f"soak:{self.args.rate}:soaksuite",
             "--linger", "3", "--oauth-client-id", CLIENT_ID, "--oauth-client-secret", CLIENT_SECRET,
             "--token-ttl", str(self.args.token_ttl), "--log-level", "warning"],
            stderr=(self.out / "sim.log").open("wb"),
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{self.sim_port}/_sim/stats")
        env = {**os.environ, "LSPROXY_SOAK_CLIENT_SECRET": CLIENT_SECRET}
        self.proxy = subprocess.Popen(
            [*LSPROXY, "run", "--config", str(self.config)], stderr=(self.out / "proxy.log").open("wb"), env=env
        )
        wait_http(f"http://127.0.0.1:{self.proxy_port}/healthz")

    def stop_processes(self) -> None:
        if self.py_consumer is not None and self.py_consumer.poll() is None:
            self.py_consumer.kill()
        for proc in (self.proxy, self.sim):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # -- faults ---------------------------------------------------------------------
    async def every(self, seconds: float, action: str) -> None:
        await trio.sleep(seconds * self.rng.uniform(0.5, 1.0))
        while True:
            await getattr(self, action)()
            await trio.sleep(seconds * self.rng.uniform(0.8, 1.2))

    async def drop_upstream(self) -> None:
        async with httpx.AsyncClient(trust_env=False, base_url=f"http://127.0.0.1:{self.sim_port}") as sim:
            if self.counters.drops % 2:
                await sim.post("/_sim/fail", params={"stream": "soak", "status": 409, "count": 1})
            await sim.post("/_sim/drop", params={"stream": "soak"})
        self.counters.drops += 1

    async def kill_reader(self) -> None:
        self.rng.choice(self.readers).kill()
        self.counters.kills += 1

    async def kill_py_consumer(self) -> None:
        if self.py_consumer is not None:
            self.py_consumer.kill()
            await self.py_consumer.wait()
            self.counters.kills += 1
        self.py_consumer = await trio.lowlevel.open_process(
            [sys.executable, str(ROOT / "tests" / "clients" / "py_consumer.py"),
             f"http://127.0.0.1:{self.proxy_port}/api/1/stream/soak?consumer=py-consumer"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def reload(self) -> None:
        self.retention_flip ^= 1
        write_config(self.config, self.out / "data", self.sim_port, self.proxy_port, RETENTION[self.retention_flip])
        assert self.proxy is not None
        self.proxy.send_signal(signal.SIGHUP)
        self.counters.reloads += 1

    # -- sampling -----------------------------------------------------------------------
    async def sample(self, started: float, previous: dict[str, float]) -> dict[str, float]:
        assert self.proxy is not None and self.sim is not None
        pid = self.proxy.pid
        async with httpx.AsyncClient(trust_env=False) as client:
            t0 = time.perf_counter()
            text = (await client.get(f"http://127.0.0.1:{self.proxy_port}/metrics", timeout=30)).text
            scrape_ms = (time.perf_counter() - t0) * 1000
        m = metric_values(text)
        now = time.monotonic()
        cpu = proc_cpu_seconds(pid)
        appended = m.get("lsproxy_records_appended_total", 0.0)
        elapsed = now - previous.get("_at", started)
        row = {
            "minute": round((now - started) / 60, 2),
            "rss_mb": round(proc_rss_mb(pid), 1),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "cpu_pct": round(100 * (cpu - previous.get("_cpu", 0.0)) / elapsed, 1),
            "loop_lag_max_ms": round(1000 * m.get("lsproxy_event_loop_lag_max_seconds", float("nan")), 2),
            "scrape_ms": round(scrape_ms, 2),
            "records_in_per_s": round((appended - previous.get("records_appended", 0.0)) / elapsed, 1),
            "records_appended": appended,
            "records_delivered": m.get("lsproxy_records_delivered_total", 0.0),
            "consumers_connected": m.get("lsproxy_consumers_connected", 0.0),
            "lag_records_max": m.get("lsproxy_consumer_lag_records_max", 0.0),
            "upstream_connects": m.get("lsproxy_upstream_connects_total", 0.0),
            "upstream_attempts": sum(v for k, v in m.items() if k.startswith("lsproxy_upstream_attempts_total")),
            "streaming": m.get("lsproxy_upstream_state{state=streaming}", 0.0),
            "persisting": m.get("lsproxy_storage_persisting", 0.0),
            "retained_mb": round(m.get("lsproxy_log_retained_bytes", 0.0) / 2**20, 1),
            "disk_mb": round(m.get("lsproxy_storage_disk_bytes", 0.0) / 2**20, 1),
            "token_refreshes": m.get("lsproxy_token_refreshes_total", 0.0),
            "named_gaps": self.counters.named_gaps,
            "reader_reconnects": self.counters.reconnects,
            "drops": self.counters.drops,
            "kills": self.counters.kills,
            "reloads": self.counters.reloads,
            "sim_rss_mb": round(proc_rss_mb(self.sim.pid), 1),
        }
        return {**row, "_at": now, "_cpu": cpu}

    async def sampler(self, started: float) -> None:
        previous: dict[str, float] = {"_cpu": proc_cpu_seconds(self.proxy.pid) if self.proxy else 0.0}
        csv_path = self.out / "soak.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            while True:
                await trio.sleep(self.args.sample)
                previous = await self.sample(started, previous)
                self.rows.append(previous)
                writer.writerow(previous)
                f.flush()
                print(" ".join(f"{k}={previous[k]}" for k in COLUMNS[:8]), flush=True)
                await trio.to_thread.run_sync(plot, self.rows, self.out / "soak.png")

    async def run(self) -> None:
        self.start_processes()
        try:
            started = time.monotonic()
            with trio.move_on_after(self.args.minutes * 60):
                async with trio.open_nursery() as nursery:
                    for i in range(self.args.consumers):
                        named = i % 3 != 2
                        reader = Reader(self.proxy_port, f"soak-{i}" if named else None, gzip=named, counters=self.counters)
                        self.readers.append(reader)
                        nursery.start_soon(reader.run)
                    await self.kill_py_consumer()  # starts it
                    self.counters.kills = 0
                    nursery.start_soon(self.every, self.args.drop_every, "drop_upstream")
                    nursery.start_soon(self.every, self.args.kill_every, "kill_reader")
                    nursery.start_soon(self.every, self.args.kill_every * 6, "kill_py_consumer")
                    nursery.start_soon(self.every, self.args.reload_every, "reload")
                    nursery.start_soon(self.sampler, started)
        finally:
            self.stop_processes()
        summary = summarize(self.rows, warmup_minutes=self.args.warmup)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if self.rows:
            plot(self.rows, self.out / "soak.png")
        print(json.dumps(summary, indent=1))


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in {timeout} s")
        time.sleep(0.1)


def summarize(rows: list[dict[str, float]], warmup_minutes: float) -> dict[str, object]:
    """Per series, after the warm-up: first, last, min, max and the least-squares slope per hour."""
    steady = [r for r in rows if r["minute"] >= warmup_minutes] or rows
    out: dict[str, object] = {"minutes": rows[-1]["minute"] if rows else 0, "samples": len(rows)}
    for key in ("rss_mb", "fds", "loop_lag_max_ms", "cpu_pct", "scrape_ms", "records_in_per_s", "lag_records_max", "sim_rss_mb"):
        values = [float(r[key]) for r in steady]
        xs = [float(r["minute"]) / 60 for r in steady]
        slope = 0.0
        if len(values) > 1:
            mx, my = sum(xs) / len(xs), sum(values) / len(values)
            var = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, values, strict=True)) / var if var else 0.0
        out[key] = {
            "first": values[0] if values else None,
            "last": values[-1] if values else None,
            "min": min(values, default=None),
            "max": max(values, default=None),
            "per_hour": round(slope, 3),
        }
    if rows:
        last = rows[-1]
        out["totals"] = {k: last[k] for k in ("records_appended", "records_delivered", "upstream_connects",
                                               "upstream_attempts", "token_refreshes", "named_gaps",
                                               "reader_reconnects", "drops", "kills", "reloads")}  # fmt: skip
    return out


def plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["minute"] for r in rows]
    panels = [
        ("proxy RSS (MB)", ["rss_mb"]),
        ("open fds", ["fds"]),
        ("event-loop lag, worst per minute (ms)", ["loop_lag_max_ms"]),
        ("proxy CPU (%)", ["cpu_pct"]),
        ("records/s into the log", ["records_in_per_s"]),
        ("consumers connected / max lag (records)", ["consumers_connected", "lag_records_max"]),
    ]
    fig, axes = plt.subplots(3, 2, figsize=(12, 9), sharex=True)
    for ax, (title, keys) in zip(axes.flat, panels, strict=True):
        ax.plot(minutes, [r[keys[0]] for r in rows], marker=".", label=keys[0])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        if len(keys) > 1:  # a second series on its own scale
            twin = ax.twinx()
            twin.plot(minutes, [r[keys[1]] for r in rows], marker=".", color="tab:orange", label=keys[1])
            twin.set_ylim(bottom=0)
            ax.legend(handles=ax.get_lines() + twin.get_lines(), fontsize=8, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    last = rows[-1]
    fig.suptitle(
        f"lsproxy soak: {last['minute']:.0f} min, {int(last['drops'])} upstream drops, {int(last['kills'])} consumer kills, "
        f"{int(last['reloads'])} reloads, named-consumer gaps: {int(last['named_gaps'])}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description="lsproxy soak test (by hand; see bench/soak.py)")
    parser.add_argument("--minutes", type=float, default=240)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / time.strftime("soak-%Y%m%d-%H%M%S"))
    parser.add_argument("--rate", type=float, default=200, help="simulator records per second")
    parser.add_argument("--consumers", type=int, default=9, help="in-process readers (2/3 named gzip)")
    parser.add_argument("--sample", type=float, default=60, help="seconds between samples")
    parser.add_argument("--drop-every", type=float, default=300, help="seconds between upstream drops")
    parser.add_argument("--kill-every", type=float, default=20, help="seconds between consumer kills")
    parser.add_argument("--reload-every", type=float, default=600, help="seconds between SIGHUP reloads")
    parser.add_argument("--token-ttl", type=float, default=120, help="simulated IMS token lifetime")
    parser.add_argument("--warmup", type=float, default=5, help="minutes left out of the summary's slopes")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    trio.run(Soak(args).run)


if __name__ == "__main__":
    main()
