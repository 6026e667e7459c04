"""``python -m bench``: set up, run every scenario on lsproxy and its peers, print one table.

See bench/README.md for what each number means and how it is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import corpus, procs
from bench.scenarios import Case, Ctx, Run, run_direct, run_lsproxy, run_nchan

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# ---------------------------------------------------------------------- plan


def plan(quick: bool) -> list[tuple[str, Case]]:
    """(systems, case) in run order; systems: 'L' lsproxy, 'N' nchan, 'D' direct."""
    W, D = (1.0, 2.5) if quick else (2.0, 5.0)  # warmup, window of the throughput runs
    LW, LD = (1.0, 3.0) if quick else (2.0, 8.0)  # latency runs
    fan_ns = (1, 10) if quick else (1, 10, 100, 1000)
    out: list[tuple[str, Case]] = [("L", Case("ingest-noconsumer", 0, False, "replay", warmup=W, duration=D))]
    for gz in (True, False):
        for n in fan_ns:
            out.append(
                (
                    "LN",
                    Case(f"fanout-{'gzip' if gz else 'identity'}-{n}", n, gz, "replay", warmup=W, duration=D),
                )
            )
    lat = (
        [(False, 10, 2000), (True, 10, 2000), (True, 20, 200)]
        if quick
        else [(False, 10, 2000), (False, 100, 2000), (True, 10, 2000), (True, 100, 2000), (True, 100, 200)]
    )
    for gz, n, rate in lat:
        out.append(
            (
                "LN",
                Case(
                    f"latency-{'gzip' if gz else 'identity'}-{n}-{rate}",
                    n,
                    gz,
                    "live",
                    rate=rate,
                    warmup=LW,
                    duration=LD,
                ),
            )
        )
    idle_n = 100 if quick else 1000
    out.append(
        (
            "LN",
            Case(
                f"idle-gzip-{idle_n}",
                idle_n,
                True,
                "live",
                rate=20,
                feed_limit=20,
                warmup=3.0,
                duration=2.0 if quick else 3.0,
                sample=min(idle_n, 10),
            ),
        )
    )
    churn_n, churn_s = (100, 10.0) if quick else (1000, 60.0)
    out.append(
        (
            "L",
            Case(
                f"churn-{churn_n}",
                10,
                True,
                "live",
                rate=2000,
                warmup=LW,
                duration=churn_s,
                churn=churn_n,
                sample=10,
            ),
        )
    )
    out.append(
        (
            "D",
            Case(
                f"churn-{churn_n}",
                1,
                True,
                "none",
                rate=2000,
                warmup=LW,
                duration=churn_s,
                churn=churn_n,
                retry_ms=1000,
                sample=1,
            ),
        )
    )
    out.append(
        (
            "D",
            Case(
                "direct-gzip-10-2000",
                10,
                True,
                "none",
                rate=2000,
                warmup=LW,
                duration=LD,
                retry_ms=1000,
                sample=10,
            ),
        )
    )
    return out


# --------------------------------------------------------------------- table


def _fmt(v: Any, kind: str = "n") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if kind == "ms":
        return f"{v:.2f}"
    if kind == "f2":
        return f"{v:.2f}"
    if kind == "f1":
        return f"{v:.1f}"
    if isinstance(v, int) or (kind == "n" and float(v).is_integer() and abs(v) < 1e15):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    return f"{a / b:.2f}x"


def _note(run: Run | None) -> str:
    if run is None:
        return ""
    if run.error:
        return f"{run.system}: ERROR"
    m = run.metrics
    if not m:
        return ""
    v = m["verify"]
    parts = []
    if run.system != "direct" and run.case.n:
        parts.append(f"{run.system[0]}:ok {v['ok']}/{run.case.n}")
        if v["gaps"] or v["dups"] or v["bad_records"]:
            parts.append(f"gaps {v['gaps']} dups {v['dups']} bad {v['bad_records']}")
    parts.append(f"lg {m['loadgen_cpu_pct']:.0f}%")
    return " ".join(parts)


class Table:
    def __init__(self, runs: list[Run]) -> None:
        self.runs = {(r.system, r.case.name): r for r in runs}
        self.rows: list[dict[str, str]] = []

    def get(self, system: str, name: str) -> Run | None:
        return self.runs.get((system, name))

    def m(self, system: str, name: str, key: str) -> Any:
        r = self.get(system, name)
        return r.metrics.get(key) if r and r.metrics else None

    def row(
        self,
        scenario: str,
        metric: str,
        ls: Any,
        peer_name: str,
        peer: Any,
        target: str = "",
        kind: str = "n",
        ratio: str | None = None,
        note: str = "",
    ) -> None:
        self.rows.append(
            {
                "scenario": scenario,
                "metric": metric,
                "lsproxy": _fmt(ls, kind),
                "peer": _fmt(peer, kind),
                "vs": peer_name,
                "ratio": ratio if ratio is not None else _ratio(ls, peer),
                "target": target,
                "notes": note,
            }
        )

    def render(self) -> str:
        cols = ["scenario", "metric", "lsproxy", "peer", "vs", "ratio", "target", "notes"]
        heads = {
            "scenario": "scenario",
            "metric": "metric",
            "lsproxy": "lsproxy",
            "peer": "peer",
            "vs": "peer is",
            "ratio": "lsproxy/peer",
            "target": "target (lsproxy)",
            "notes": "notes",
        }
        width = {c: max(len(heads[c]), *(len(r[c]) for r in self.rows)) for c in cols}
        right = {"lsproxy", "peer", "ratio"}

        def line(r: dict[str, str]) -> str:
            return " | ".join(
                r[c].rjust(width[c]) if c in right else r[c].ljust(width[c]) for c in cols
            ).rstrip()

        out = [line(heads), "-+-".join("-" * width[c] for c in cols)]
        last = None
        for r in self.rows:
            if last is not None and r["scenario"] and r["scenario"] != last:
                pass
            out.append(line(r))
            last = r["scenario"] or last
        return "\n".join(out)


def _cpu(t: Table, system: str, name: str) -> str:
    cpu, sys_ = t.m(system, name, "server_cpu_pct"), t.m(system, name, "server_sys_pct")
    if cpu is None:
        return "-"
    return f"{cpu:.0f}% ({sys_:.0f}%)" if sys_ is not None else f"{cpu:.0f}%"


def build_table(runs: list[Run], quick: bool) -> Table:
    t = Table(runs)
    # ingest
    name = "ingest-noconsumer"
    ls = t.m("lsproxy", name, "log_ingest_rps") or t.m("lsproxy", name, "ingest_rps")
    t.row(
        "ingest, no consumer",
        "records/s into the log",
        ls,
        "-",
        None,
        ">= 80,000",
        note=f"CPU (sys) lsproxy {_cpu(t, 'lsproxy', name)}",
    )
    name = "fanout-identity-1"
    t.row(
        "ingest, 1 identity consumer at tail",
        "records/s into the log",
        t.m("lsproxy", name, "ingest_rps"),
        "nchan",
        t.m("nchan", name, "ingest_rps"),
        ">= 80,000",
        note=f"CPU (sys) lsproxy {_cpu(t, 'lsproxy', name)}",
    )
    # fan-out
    fan_ns = (1, 10) if quick else (1, 10, 100, 1000)
    for gz in (True, False):
        enc = "gzip" if gz else "identity"
        peer = "nchan+gzip" if gz else "nchan"
        for n in fan_ns:
            name = f"fanout-{enc}-{n}"
            sc = f"fan-out {enc} N={n:,}"
            note = " ".join(x for x in (_note(t.get("lsproxy", name)), _note(t.get("nchan", name))) if x)
            tgt_rps = ">= peer" if (not gz and n == 100) else ""
            tgt_cpu = "<= 1.0" if (gz and n == 100) else ("<= peer" if (not gz and n == 100) else "")
            t.row(
                sc,
                "delivered records/s (total)",
                t.m("lsproxy", name, "delivered_rps"),
                peer,
                t.m("nchan", name, "delivered_rps"),
                tgt_rps,
                note=note,
            )
            t.row(
                "",
                "proxy CPU-s / delivered GB",
                t.m("lsproxy", name, "cpu_s_per_GB"),
                peer,
                t.m("nchan", name, "cpu_s_per_GB"),
                tgt_cpu,
                kind="f2",
                note=f"CPU (sys) lsproxy {_cpu(t, 'lsproxy', name)}, nchan {_cpu(t, 'nchan', name)}",
            )
            t.row(
                "",
                "proxy RSS MB",
                t.m("lsproxy", name, "rss_MB"),
                peer,
                t.m("nchan", name, "rss_MB"),
                note=f"lsproxy log {_fmt(t.m('lsproxy', name, 'log_retained_MB'))} MB",
            )
    # latency
    lat = (
        [(False, 10, 2000), (True, 10, 2000), (True, 20, 200)]
        if quick
        else [(False, 10, 2000), (False, 100, 2000), (True, 10, 2000), (True, 100, 2000), (True, 100, 200)]
    )
    for gz, n, rate in lat:
        enc = "gzip" if gz else "identity"
        name = f"latency-{enc}-{n}-{rate}"

        def trio(system: str, name: str = name) -> str | None:
            r = t.get(system, name)
            if not r or not r.metrics or not r.metrics["lat_count"]:
                return None
            m = r.metrics
            return f"{m['lat_p50_ms']:.2f} / {m['lat_p99_ms']:.2f} / {m['lat_max_ms']:.1f}"

        tgt = "p99 <= 10 ms" if (n == 100 and ((gz and rate == 200) or (not gz and rate == 2000))) else ""
        note = " ".join(x for x in (_note(t.get("lsproxy", name)), _note(t.get("nchan", name))) if x)
        note += f"; CPU lsproxy {_cpu(t, 'lsproxy', name)}, nchan {_cpu(t, 'nchan', name)}"
        t.row(
            f"latency {enc} N={n} @{rate:,}/s",
            "write->read ms p50 / p99 / max",
            trio("lsproxy"),
            "nchan+gzip" if gz else "nchan",
            trio("nchan"),
            tgt,
            ratio=_ratio(t.m("lsproxy", name, "lat_p99_ms"), t.m("nchan", name, "lat_p99_ms")) + " (p99)",
            note=note,
        )
    # idle memory
    idle_n = 100 if quick else 1000
    name = f"idle-gzip-{idle_n}"
    t.row(
        f"{idle_n:,} idle gzip consumers",
        "proxy KB per consumer (after traffic)",
        t.m("lsproxy", name, "idle_KB_per_consumer"),
        "nchan+gzip",
        t.m("nchan", name, "idle_KB_per_consumer"),
        "<= 16 KB",
        kind="f1",
        note=" ".join(x for x in (_note(t.get("lsproxy", name)), _note(t.get("nchan", name))) if x),
    )
    t.row(
        "",
        "proxy KB per consumer (connected, no record yet)",
        t.m("lsproxy", name, "connected_KB_per_consumer"),
        "nchan+gzip",
        t.m("nchan", name, "connected_KB_per_consumer"),
        kind="f1",
    )
    # churn
    churn_n, churn_s = (100, 10) if quick else (1000, 60)
    name = f"churn-{churn_n}"
    ls_run, d_run = t.get("lsproxy", name), t.get("direct", name)
    sc = f"churn: {churn_n:,} restarts in {churn_s} s"
    t.row(
        sc,
        "upstream connections opened",
        t.m("lsproxy", name, "upstream_connections"),
        "direct",
        t.m("direct", name, "upstream_connections"),
        f"1 (direct: {churn_n:,})",
        ratio="",
        note=f"lsproxy /status connects {_fmt(t.m('lsproxy', name, 'status_connects'))}",
    )
    d409, d503 = t.m("direct", name, "status_409"), t.m("direct", name, "status_503")
    l409, l503 = t.m("lsproxy", name, "status_409"), t.m("lsproxy", name, "status_503")
    t.row(
        "",
        "409 / 503 answers",
        f"{l409} / {l503}" if l409 is not None else None,
        "direct",
        f"{d409} / {d503}" if d409 is not None else None,
        ratio="",
    )
    base = t.m("lsproxy", "latency-gzip-10-2000", "server_cpu_pct")
    cpu = t.m("lsproxy", name, "server_cpu_s")
    note = ""
    if cpu is not None and base is not None and ls_run is not None:
        extra = cpu - base / 100 * ls_run.metrics["window_s"]
        started = ls_run.metrics["churn"]["started"] or 1
        note = f"~{1000 * extra / started:.1f} ms CPU per restart over streaming to 10 steady consumers"
    t.row(
        "",
        "proxy CPU-s over the window",
        cpu,
        "direct",
        t.m("direct", name, "server_cpu_s"),
        ratio="",
        note=note + (" (direct: the simulator's CPU)" if d_run else ""),
    )
    if ls_run and ls_run.metrics:
        v = ls_run.metrics["verify"]
        t.row(
            "",
            "steady consumers: verified / gaps",
            f"{v['ok']}/{ls_run.case.n} / {v['gaps']}",
            "",
            None,
            ratio="",
            note=f"restarts served 200: {ls_run.metrics['churn']['got_200']}/{ls_run.metrics['churn']['started']}",
        )
    # direct side by side
    name_l, name_d = "latency-gzip-10-2000", "direct-gzip-10-2000"
    sc = "10 gzip consumers @2,000/s, direct"
    t.row(
        sc,
        "delivered records/s (total)",
        t.m("lsproxy", name_l, "delivered_rps"),
        "direct",
        t.m("direct", name_d, "delivered_rps"),
    )
    t.row(
        "",
        "consumers that got records",
        t.m("lsproxy", name_l, "consumers_with_data"),
        "direct",
        t.m("direct", name_d, "consumers_with_data"),
        ratio="",
    )
    t.row(
        "",
        "upstream connections opened",
        t.m("lsproxy", name_l, "upstream_connections"),
        "direct",
        t.m("direct", name_d, "upstream_connections"),
        ratio="",
    )
    d409, d503 = t.m("direct", name_d, "status_409"), t.m("direct", name_d, "status_503")
    t.row(
        "",
        "409 / 503 answers",
        "0 / 0" if t.get("lsproxy", name_l) else None,
        "direct",
        f"{d409} / {d503}" if d409 is not None else None,
        ratio="",
    )
    # the load generator itself
    lg = [(r.metrics.get("loadgen_cpu_pct", 0), f"{r.system}:{r.case.name}") for r in runs if r.metrics]
    if lg:
        worst = max(lg)
        t.row(
            "load generator (core 1)",
            "max CPU % of one core in a window",
            worst[0],
            "",
            None,
            "< 100 (not the bottleneck)",
            ratio="",
            note=worst[1],
        )
    return t


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="~1-2 minute smoke run with small N")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only the cases whose name contains TEXT (repeatable)",
    )
    ap.add_argument("--systems", default="LND", help="L=lsproxy N=nginx+Nchan D=direct (default LND)")
    ap.add_argument(
        "--storage",
        choices=["memory", "durable"],
        default="memory",
        help="lsproxy [storage] durable = false (memory, default) or true",
    )
    ap.add_argument("--keep", action="store_true", help="keep the run directories (configs, logs)")
    ap.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    ap.add_argument("--no-setup", action="store_true", help="skip apt-get (packages already there)")
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    if not procs.cpu_count_ok():
        print("bench: needs 2 cores (server on core 0, load generator on core 1)", file=sys.stderr)
        return 2
    if not args.no_setup:
        procs.ensure_packages()
    build = HERE / "build"
    exe = procs.build_loadgen(build)
    cdir = corpus.ensure_corpus(build, log=procs.log)
    meta = corpus.load_meta(cdir)
    procs.raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="lsbench-"))
    config_mode = procs.check_lsproxy_config(work / "check", args.storage)
    ctx = Ctx(exe, cdir, work, args.storage, config_mode, keep=args.keep)

    runs: list[Run] = []
    todo = plan(args.quick)
    if args.only:
        todo = [(s, c) for s, c in todo if any(o in c.name for o in args.only)]
    runners = {"L": ("lsproxy", run_lsproxy), "N": ("nchan", run_nchan), "D": ("direct", run_direct)}
    for systems, case in todo:
        for key in systems:
            if key not in args.systems:
                continue
            label, fn = runners[key]
            t = time.monotonic()
            procs.log(f"[{time.monotonic() - t_start:6.1f}s] {label:8s} {case.name} ...")
            try:
                run = fn(ctx, case)
            except Exception as exc:  # one broken run must not lose the others
                run = Run(label, case, {}, error=f"{type(exc).__name__}: {exc}")
            runs.append(run)
            m = run.metrics
            if run.error:
                procs.log(f"    ERROR: {run.error}")
            elif m:
                procs.log(
                    f"    {m['delivered_rps']:,.0f} rec/s, server CPU {m['server_cpu_pct']:.0f}%, "
                    f"RSS {m['rss_MB']:.0f} MB, p99 {m['lat_p99_ms']:.2f} ms, "
                    f"verified {m['verify']['ok']}/{case.n}, lg {m['loadgen_cpu_pct']:.0f}% "
                    f"({time.monotonic() - t:.0f} s)"
                )

    table = build_table(runs, args.quick)
    text = table.render()
    print()
    print(text)
    elapsed = time.monotonic() - t_start
    result = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "elapsed_s": round(elapsed, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "nginx": _version(["nginx", "-v"]),
            "lsproxy": _version([str(procs.VENV_BIN / "lsproxy"), "--version"]),
            "git": _version(["git", "-C", str(procs.ROOT), "describe", "--always", "--dirty"]),
        },
        "corpus": meta,
        "lsproxy_storage": args.storage,
        "table": table.rows,
        "table_text": text,
        "runs": [
            {
                "system": r.system,
                "case": dataclasses.asdict(r.case),
                "metrics": r.metrics,
                "error": r.error,
                "extra": r.extra,
                "loadgen": r.lg,
            }
            for r in runs
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nraw results: {args.out}  ({elapsed:.0f} s)")
    if args.keep:
        print(f"run directories kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception:
        return "?"
