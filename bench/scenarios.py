"""One measured run per (system, scenario): lsproxy, nginx + Nchan, or direct (the simulator).

Every run gets fresh server processes (so memory and CPU belong to that run
alone), the same record corpus and the same load generator (``lsbench``).
``derive`` turns the load generator's JSON into the numbers the table shows.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs

LSPROXY_PATH = "/api/1/stream/bench?reset=smallest"  # every consumer starts at the first record
CHURN_PATH = "/api/1/stream/bench"  # churners are named consumers (consumer=churn-K): restarts
DIRECT_ENDPOINT = "bench-direct"
DIRECT_TOKEN = "bench-token"


@dataclass
class Ctx:
    exe: Path
    corpus: Path
    work: Path
    storage: str
    config_mode: str
    keep: bool = False
    seq: int = 0

    def rundir(self, name: str) -> Path:
        self.seq += 1
        d = self.work / f"{self.seq:02d}-{name}"
        d.mkdir(parents=True, exist_ok=True)
        return d


@dataclass
class Case:
    """What the consumers and the feeder do; the same case runs on each system."""

    name: str
    n: int
    gzip: bool
    feed: str = "replay"  # replay | live
    rate: float = 0.0
    warmup: float = 2.0
    duration: float = 5.0
    sample: int | None = None
    lead: int | None = None
    feed_limit: int = 0
    settle: float | None = None
    churn: int = 0
    churn_hold_ms: int = 500
    churn_ids: int = 100
    retry_ms: int = 0

    def lg_args(self, feeder: bool = True) -> list[str]:
        n = self.n
        # saturation runs decode 2 consumers fully (the others: gzip trailer / exact byte count);
        # latency runs decode up to 20 (every decoded record is a latency sample)
        sample = self.sample if self.sample is not None else min(n, 2 if self.feed == "replay" else 20)
        lead = self.lead if self.lead is not None else max(512, min(4096, 600_000 // max(n, 1)))
        settle = self.settle if self.settle is not None else 0.5 + n * 0.001
        args = [
            "-n",
            str(n),
            "--sample",
            str(sample),
            "--warmup",
            f"{self.warmup:g}",
            "--duration",
            f"{self.duration:g}",
            "--settle",
            f"{settle:g}",
            "--lead",
            str(lead),
            "--max-inflight",
            "256",
            "--drain",
            "20",
            "--end-wait",
            "12",
        ]
        if self.gzip:
            args.append("--gzip")
        if feeder and self.feed != "none":
            args += ["--feed", self.feed]
        if feeder and self.rate:
            args += ["--rate", f"{self.rate:g}"]
        if feeder and self.feed_limit:
            args += ["--feed-limit", str(self.feed_limit)]
        if self.churn:
            args += [
                "--churn",
                str(self.churn),
                "--churn-hold-ms",
                str(self.churn_hold_ms),
                "--churn-ids",
                str(self.churn_ids),
            ]
        if self.retry_ms:
            args += ["--retry-ms", str(self.retry_ms)]
        return args

    def timeout(self) -> float:
        return self.warmup + self.duration + 120


@dataclass
class Run:
    system: str
    case: Case
    lg: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _finish(ctx: Ctx, rd: Path) -> None:
    if not ctx.keep:
        shutil.rmtree(rd / "data", ignore_errors=True)


def run_lsproxy(ctx: Ctx, case: Case) -> Run:
    rd = ctx.rundir(f"lsproxy-{case.name}")
    px = procs.Lsproxy(rd, ctx.storage, ctx.config_mode)
    extra: dict[str, Any] = {"status": {}}

    def on_event(name: str) -> None:
        if name in ("T0", "T1"):
            t = time.monotonic()
            st = px.status()
            extra["status"][name] = _status_summary(st, time.monotonic() - t)

    args = [
        "--mode",
        "proxy",
        "--target",
        f"127.0.0.1:{px.port}",
        "--path",
        LSPROXY_PATH,
        "--upstream-fd",
        str(px.listener.fileno()),
        "--watch",
        str(px.proc.pid),
        "--end-pid",
        str(px.proc.pid),
        "--corpus",
        str(ctx.corpus),
        *case.lg_args(),
    ]
    if case.churn:
        args += ["--churn-path", CHURN_PATH]
    try:
        lg = procs.run_loadgen(
            ctx.exe,
            args,
            rd / "lsbench.json",
            case.timeout(),
            pass_fds=(px.listener.fileno(),),
            on_event=on_event,
            logfile=rd / "lsbench.log",
        )
        err = None
    except RuntimeError as exc:
        lg, err = {}, str(exc)
    finally:
        extra["exit_code"] = px.close()
    extra["log_tail"] = [
        ln for ln in procs.tail(px.log, 200).splitlines() if "WARNING" in ln or "ERROR" in ln
    ][-8:]
    if lg.get("error") or (extra["exit_code"] not in (0, None)):
        err = (
            (err or "")
            + f" {lg.get('error', '')}; lsproxy exit {extra['exit_code']}: "
            + " | ".join(procs.tail(px.log, 6).splitlines())
        )
    _finish(ctx, rd)
    run = Run("lsproxy", case, lg, extra, error=err)
    run.metrics = derive(run)
    return run


def _status_summary(st: dict | None, took: float) -> dict[str, Any]:
    if not st:
        return {"ok": False, "took_s": round(took, 3)}
    streams = st.get("streams", st)
    s = streams.get("bench", {}) if isinstance(streams, dict) else {}
    log = s.get("log", {}) if isinstance(s, dict) else {}
    return {
        "ok": True,
        "took_s": round(took, 3),
        "state": s.get("state"),
        "connects": s.get("connects"),
        "attempts": s.get("attempts"),
        "records_received": s.get("records_received"),
        "retained_bytes": log.get("retained_bytes") if isinstance(log, dict) else None,
        "consumers": len(s.get("consumers", []) or []),
    }


def run_nchan(ctx: Ctx, case: Case) -> Run:
    rd = ctx.rundir(f"nchan-{case.name}")
    ng = procs.Nginx(rd)
    port = ng.gz_port if case.gzip else ng.raw_port
    args = [
        "--mode",
        "nchan",
        "--target",
        f"127.0.0.1:{port}",
        "--path",
        "/sub?id=bench",
        "--publish",
        f"127.0.0.1:{ng.raw_port}",
        "--pub-path",
        "/pub?id=bench",
        "--end-delete",
        "--corpus",
        str(ctx.corpus),
        *case.lg_args(),
    ]
    for pid in ng.pids:
        args += ["--watch", str(pid)]
    try:
        lg = procs.run_loadgen(ctx.exe, args, rd / "lsbench.json", case.timeout(), logfile=rd / "lsbench.log")
        err = None
    except RuntimeError as exc:
        lg, err = {}, str(exc)
    finally:
        code = ng.close()
    extra = {"exit_code": code, "log_tail": procs.tail(rd / "error.log", 8).splitlines()}
    if lg.get("error"):
        err = (err or "") + lg["error"]
    run = Run("nchan", case, lg, extra, error=err)
    run.metrics = derive(run)
    return run


def run_direct(ctx: Ctx, case: Case) -> Run:
    """The status quo: every consumer opens its own Live Stream connection (to the simulator)."""
    rd = ctx.rundir(f"direct-{case.name}")
    sim = procs.Simulator(rd, DIRECT_ENDPOINT, case.rate, DIRECT_TOKEN)
    args = [
        "--mode",
        "direct",
        "--target",
        f"127.0.0.1:{sim.port}",
        "--path",
        f"/api/1/stream/{DIRECT_ENDPOINT}",
        "--header",
        f"Authorization: Bearer {DIRECT_TOKEN}",
        "--watch",
        str(sim.proc.pid),
        *case.lg_args(feeder=False),
    ]
    if "--gzip" not in args:
        args.append("--gzip")  # Live Stream requires it
    if case.churn:
        args += ["--churn-path", f"/api/1/stream/{DIRECT_ENDPOINT}"]
    try:
        lg = procs.run_loadgen(ctx.exe, args, rd / "lsbench.json", case.timeout(), logfile=rd / "lsbench.log")
        err = None
    except RuntimeError as exc:
        lg, err = {}, str(exc)
    stats = sim.stats() or {}
    code = sim.close()
    extra = {
        "exit_code": code,
        "sim": {
            k: stats.get(k) for k in ("attempts", "accepted", "statuses", "sent", "produced", "lingering")
        },
    }
    run = Run("direct", case, lg, extra, error=err)
    run.metrics = derive(run)
    return run


def derive(run: Run) -> dict[str, Any]:
    lg = run.lg
    if not lg or lg.get("error"):
        return {}
    tl = lg["timeline"]
    win = tl["window_s"] or 1e-9
    cons = lg["consumers"]
    w = cons["window"]
    clk = lg.get("clk_tck", 100)
    cpu = 0.0
    sys_cpu = 0.0
    rss_t1 = rss_pre = rss_conn = 0
    for p in lg["watch"]:
        if p["t1"]["ticks"] >= 0 and p["t0"]["ticks"] >= 0:
            cpu += (p["t1"]["ticks"] - p["t0"]["ticks"]) / clk
            sys_cpu += (p["t1"].get("sticks", 0) - p["t0"].get("sticks", 0)) / clk
        rss_t1 += max(p["t1"]["rss_kb"], 0)
        rss_pre += max(p["pre_connect"]["rss_kb"], 0)
        rss_conn += max(p["connected"]["rss_kb"], 0)
    ubytes = w["ubytes"]
    n = cons["steady"] or 1
    lat = lg["latency_ns"]
    statuses = cons["statuses"]
    m: dict[str, Any] = {
        "window_s": win,
        "delivered_rps": w["records"] / win,
        "delivered_MBps": ubytes / win / 1e6,
        "per_consumer_rps_min": w["per_consumer_min"] / win,
        "per_consumer_rps_max": w["per_consumer_max"] / win,
        "ingest_rps": lg["feeder"]["records_window"] / win,
        "server_cpu_s": cpu,
        "server_cpu_pct": 100 * cpu / win,
        "server_sys_pct": 100 * sys_cpu / win,
        "cpu_s_per_GB": cpu / (ubytes / 1e9) if ubytes > 0 else None,
        "rss_MB": rss_t1 / 1024,
        "rss_pre_MB": rss_pre / 1024,
        "idle_KB_per_consumer": (rss_t1 - rss_pre) / n,
        "connected_KB_per_consumer": (rss_conn - rss_pre) / n,
        "loadgen_cpu_pct": 100 * lg["loadgen"]["cpu_s_window"] / win,
        "feeder_cpu_pct": 100 * lg["loadgen"]["feeder_cpu_s_window"] / win,
        "credit_blocked_pct": 100 * lg["feeder"]["credit_blocked_s"] / win,
        "transport_blocked_pct": 100 * lg["feeder"]["transport_blocked_s"] / win,
        "lat_count": lat["count"],
        "lat_p50_ms": lat["p50"] / 1e6,
        "lat_p99_ms": lat["p99"] / 1e6,
        "lat_max_ms": lat["max"] / 1e6,
        "verify": cons["verify"],
        "verified_all": cons["verify"]["ok"] == cons["steady"] and cons["steady"] > 0,
        "consumers_with_data": cons["with_data"],
        "status_409": statuses.get("409", 0),
        "status_503": statuses.get("503", 0),
        "status_200": statuses.get("200", 0),
        "upstream_connections": lg["feeder"]["upstream_accepts"],
        "attempts": cons["attempts"] + cons["churn"]["started"],
        "churn": cons["churn"],
    }
    if run.system == "direct":
        sim = run.extra.get("sim", {})
        m["upstream_connections"] = sim.get("attempts") or m["attempts"]
        m["produced"] = sim.get("produced")
    st = run.extra.get("status", {})
    if st.get("T0", {}).get("ok") and st.get("T1", {}).get("ok"):
        a, b = st["T0"]["records_received"], st["T1"]["records_received"]
        if a is not None and b is not None:
            m["log_ingest_rps"] = (b - a) / win  # approximate: the probes' own timing
        m["status_connects"] = st["T1"].get("connects")
        m["log_retained_MB"] = (st["T1"].get("retained_bytes") or 0) / 1e6
    return m
