"""Duplicates per restart: named gzip consumers SIGKILLed and restarted, again and again.

Theory of operation
-------------------
Runs the real thing as separate processes: ``lsproxy simulate`` (one stream at
``--rate`` hits/s), ``lsproxy run`` (durable storage, ``--retention-mb``) and
``--consumers`` copies of ``tests/clients/py_consumer.py`` (stdlib http.client
+ zlib, gzip, ``consumer=c<i>``), each printing every record's sequence number
*after* processing it. Every consumer is SIGKILLed after a random
``--kill-min``..``--kill-max`` seconds and started again at once, for
``--seconds``. Then the last lives run until they reach the tail.

Per restart, the *duplicates* are the records a life received that an earlier
life of the same consumer had already processed; a *gap* is a sequence number
missing from the union of a consumer's lives. The proxy's RSS is sampled every
5 s. ``--src DIR`` runs the proxy from another source tree (e.g. an older
commit exported with ``git archive``) to compare before and after;
``--client-buffer N`` sets ``[server] client_buffer_bytes``.

Run: ``python -m bench.replay_bench [--consumers 10 --seconds 180 ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.procs import ROOT, free_port, http_json, spawn, stop, wait_port

TOKEN = "bench-token"
CLIENT = ROOT / "tests" / "clients" / "py_consumer.py"


def proxy_config(port: int, upstream: int, storage: Path, retention: int, client_buffer: int | None) -> str:
    allowance = "" if client_buffer is None else f"client_buffer_bytes = {client_buffer}"
    return f"""
[server]
listen = "127.0.0.1:{port}"
{allowance}
[storage]
dir = "{storage}"
retention_bytes = {retention}
[upstream]
reconnect_delay = 1
[credentials.bench]
token = "{TOKEN}"
[streams.bench]
url = "http://127.0.0.1:{upstream}/api/1/stream/bench"
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Consumer(threading.Thread):
    """One named consumer: lives of py_consumer.py, each killed after a random time."""

    def __init__(self, index: int, url: str, workdir: Path, args: argparse.Namespace, stop_at: float) -> None:
        super().__init__(daemon=True)
        self.name = f"c{index}"
        self.url = f"{url}?consumer={self.name}"
        self.workdir = workdir
        self.rng = random.Random(args.seed * 1000 + index)
        self.kill_min, self.kill_max = args.kill_min, args.kill_max
        self.stop_at = stop_at
        self.lives: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start_life(self) -> None:
        out = self.workdir / f"{self.name}-{len(self.lives)}.txt"
        self.lives.append(out)
        with out.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, str(CLIENT), self.url], stdout=sink, stderr=subprocess.DEVNULL
            )

    def run(self) -> None:
        self.start_life()
        while True:
            wait = self.rng.uniform(self.kill_min, self.kill_max)
            if time.monotonic() + wait > self.stop_at:
                return
            time.sleep(wait)
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.start_life()

    def finish(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def analyse(self) -> tuple[list[int], int, int]:
        """(duplicates per restart, gaps, records processed)."""
        seen: set[int] = set()
        per_restart = []
        for i, path in enumerate(self.lives):
            seqs = [int(x) for x in path.read_bytes().split()]
            if i > 0:
                per_restart.append(sum(1 for s in seqs if s in seen))
            seen.update(seqs)
        if not seen:
            return per_restart, 0, 0
        gaps = (max(seen) - min(seen) + 1) - len(seen)
        return per_restart, gaps, len(seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--consumers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--rate", type=float, default=500.0, help="hits/s of the simulated stream")
    parser.add_argument("--kill-min", type=float, default=10.0)
    parser.add_argument("--kill-max", type=float, default=60.0)
    parser.add_argument("--retention-mb", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--client-buffer", type=int, help="[server] client_buffer_bytes (default: the proxy's)"
    )
    parser.add_argument("--src", type=Path, default=ROOT, help="source tree the proxy runs from")
    parser.add_argument("--label", default="", help="a name for this run in the output")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="replay-bench-", dir=tempfile.gettempdir()))
    sim_port, proxy_port = free_port(), free_port()
    venv_bin = Path(sys.executable).parent
    sim = spawn(
        [str(venv_bin / "lsproxy"), "simulate", "--log-level", "warning", "--listen",
         f"127.0.0.1:{sim_port}", "--stream", f"bench:{args.rate:g}:benchsuite", "--token", TOKEN],
        workdir / "simulator.log",
    )  # fmt: skip
    wait_port(sim_port)
    config = workdir / "proxy.toml"
    config.write_text(
        proxy_config(
            proxy_port, sim_port, workdir / "data", args.retention_mb * 1024 * 1024, args.client_buffer
        )
    )
    env = {**os.environ, "PYTHONPATH": str(args.src.resolve())}
    proxy = spawn(
        [sys.executable, "-m", "lsproxy", "run", "--config", str(config), "--log-level", "info"],
        workdir / "proxy.log",
        env=env,
    )
    wait_port(proxy_port)
    rss: list[tuple[float, int]] = []
    started = time.monotonic()
    stop_at = started + args.seconds
    consumers = [
        Consumer(i, f"http://127.0.0.1:{proxy_port}/api/1/stream/bench", workdir, args, stop_at)
        for i in range(args.consumers)
    ]
    for c in consumers:
        c.start()
    while any(c.is_alive() for c in consumers):
        rss.append((time.monotonic() - started, rss_kb(proxy.pid)))
        time.sleep(5)
    status = http_json(proxy_port, "/status?consumers=all") or {}
    stream = status.get("streams", {}).get("bench", {})
    lags = [c["lag"] for c in stream.get("consumers", []) if c.get("id")]
    skipped = sum(c.get("skipped", 0) for c in stream.get("consumers", []))
    # Let the last lives catch up with the tail (or give up after two minutes).
    catch_up_started = time.monotonic()
    catch_up = None
    while time.monotonic() < catch_up_started + 120:
        now = (http_json(proxy_port, "/status?consumers=all") or {}).get("streams", {}).get("bench", {})
        behind = [c["lag"] for c in now.get("consumers", []) if c.get("id")]
        if len(behind) == len(consumers) and max(behind) <= 2 * args.rate:
            catch_up = round(time.monotonic() - catch_up_started, 1)
            break
        time.sleep(1)
    rss.append((time.monotonic() - started, rss_kb(proxy.pid)))
    for c in consumers:
        c.finish()
    stop(proxy)
    stop(sim)

    per_restart: list[int] = []
    gaps = processed = 0
    for c in consumers:
        d, g, n = c.analyse()
        per_restart += d
        gaps += g
        processed += n
    duplicates = sum(per_restart)
    figures = {
        "label": args.label or str(args.src),
        "consumers": args.consumers,
        "seconds": args.seconds,
        "rate": args.rate,
        "restarts": len(per_restart),
        "duplicates_per_restart_mean": round(statistics.mean(per_restart), 1) if per_restart else 0,
        "duplicates_per_restart_median": statistics.median(per_restart) if per_restart else 0,
        "duplicates_per_restart_max": max(per_restart, default=0),
        "duplicate_share": round(duplicates / max(1, duplicates + processed), 3),
        "gaps": gaps,
        "skipped_in_status": skipped,
        "lag_at_end_max": max(lags, default=0),
        "catch_up_seconds": catch_up if catch_up is not None else "not within 120 s",
        "rss_mb_start_max_end": [
            round(rss[0][1] / 1024),
            round(max(r for _, r in rss) / 1024),
            round(rss[-1][1] / 1024),
        ],
    }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps({**figures, "rss_series_kb": rss}, indent=1))
    print(f"(logs in {workdir})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
