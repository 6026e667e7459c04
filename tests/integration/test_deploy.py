"""What ships in deploy/ and the Containerfile: alert rules (promtool check and unit
tests), the Grafana dashboard, the systemd unit (systemd-analyze verify), the
container recipe, and that every metric they name is one a running proxy exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import StreamReader, running

ROOT = Path(__file__).parent.parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "lsproxy.json"
UNIT = ROOT / "deploy" / "systemd" / "lsproxy.service"
CONTAINERFILE = ROOT / "Containerfile"
# On PATH, or where scripts/test puts it (beside this venv's python).
PROMTOOL = shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool (scripts/test installs Debian's prometheus)")
METRIC = re.compile(r"\b(?:lsproxy|process)_[a-z0-9_]+")


def alert_rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"]}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in doc["panels"] for target in panel["targets"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


# -- alert rules --------------------------------------------------------------------


def test_alert_rules_cover_what_an_operator_must_hear_about() -> None:
    rules = alert_rules()
    assert {
        "LsproxyUpstreamNotStreaming",
        "LsproxyConsumerLagging",
        "LsproxyStorageNotPersisting",
        "LsproxyTokenRefreshFailing",
    } <= set(rules)
    assert rules["LsproxyUpstreamNotStreaming"]["for"] == "5m"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert METRIC.search(rule["expr"]), name


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def _render(template: str, labels: dict[str, str], value: float) -> str:
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], template)
    return text.replace("{{ $value }}", f"{value:g}")


def _expect(alert: str, labels: dict[str, str], value: float) -> dict[str, Any]:
    rule = alert_rules()[alert]
    return {
        "exp_labels": {**labels, **rule["labels"]},
        "exp_annotations": {k: _render(v, labels, value) for k, v in rule["annotations"].items()},
    }


@needs_promtool
def test_alert_rules_fire_when_they_should_and_not_before(tmp_path: Path) -> None:
    s1 = {"stream": "s1"}
    conn = {**s1, "connection": "1", "state": "streaming"}
    lagger = {**s1, "consumer": "archiver"}
    series = [
        ('lsproxy_upstream_state{stream="s1",connection="1",state="streaming"}', "1 1 0x20"),
        ('lsproxy_upstream_state{stream="s2",connection="1",state="streaming"}', "1x22"),
        ('lsproxy_consumer_lag_seconds{stream="s1",consumer="archiver"}', "400x22"),
        ('lsproxy_consumer_lag_seconds{stream="s1",consumer="dashboard"}', "2x22"),
        ('lsproxy_records_skipped_total{stream="s1"}', "0x10 500x12"),
        ('lsproxy_storage_persisting{stream="s1"}', "1 1 0x20"),
        ('lsproxy_token_refresh_failures_total{stream="s1"}', "0+1x22"),
        ('lsproxy_token_expires_in_seconds{stream="s1"}', "3600-300x22"),
    ]
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [
                    # not streaming since minute 2: pending until 7m
                    {"eval_time": "6m", "alertname": "LsproxyUpstreamNotStreaming", "exp_alerts": []},
                    {
                        "eval_time": "8m",
                        "alertname": "LsproxyUpstreamNotStreaming",
                        "exp_alerts": [_expect("LsproxyUpstreamNotStreaming", conn, 0)],
                    },
                    {"eval_time": "4m", "alertname": "LsproxyConsumerLagging", "exp_alerts": []},
                    {
                        "eval_time": "6m",
                        "alertname": "LsproxyConsumerLagging",
                        "exp_alerts": [_expect("LsproxyConsumerLagging", lagger, 400)],
                    },
                    {"eval_time": "9m", "alertname": "LsproxyRecordsSkipped", "exp_alerts": []},
                    {
                        "eval_time": "12m",
                        "alertname": "LsproxyRecordsSkipped",
                        "exp_alerts": [_expect("LsproxyRecordsSkipped", s1, 500)],
                    },
                    {"eval_time": "3m", "alertname": "LsproxyStorageNotPersisting", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "LsproxyStorageNotPersisting",
                        "exp_alerts": [_expect("LsproxyStorageNotPersisting", s1, 0)],
                    },
                    {
                        "eval_time": "12m",
                        "alertname": "LsproxyTokenRefreshFailing",
                        "exp_alerts": [_expect("LsproxyTokenRefreshFailing", s1, 15)],
                    },
                    # 3600 - 300/min: below 600 from minute 11, firing from 16
                    {"eval_time": "15m", "alertname": "LsproxyTokenExpiringSoon", "exp_alerts": []},
                    {
                        "eval_time": "16m",
                        "alertname": "LsproxyTokenExpiringSoon",
                        "exp_alerts": [_expect("LsproxyTokenExpiringSoon", s1, -1200)],
                    },
                ],
            }
        ],
    }
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(json.dumps(tests))  # JSON is YAML
    result = promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr


# -- the dashboard ----------------------------------------------------------------------


def test_dashboard_loads_and_shows_state_countdown_and_every_consumers_lag() -> None:
    doc = json.loads(DASHBOARD.read_text())
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"  # import picks the Prometheus source
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
    exprs = " ".join(dashboard_exprs())
    for needed in ("lsproxy_upstream_state", "lsproxy_upstream_next_attempt_seconds", "lsproxy_consumer_lag_records"):
        assert needed in exprs


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files: every query becomes a recording rule.
    grafana = {"$__rate_interval": "5m", "$__interval": "1m", "$instance": ".*", "$stream": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


async def test_alerts_and_dashboard_name_only_metrics_the_proxy_exports() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        reader = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=named").connect()
        await reader.read_records(5)
        async with httpx.AsyncClient(trust_env=False) as client:
            text = (await client.get(f"http://127.0.0.1:{proxy.port}/metrics")).text
        await reader.aclose()
    exported = set()
    for family in text_string_to_metric_families(text):
        exported |= {family.name + suffix for suffix in ("", "_total", "_bucket", "_count", "_sum")}
        exported |= {sample.name for sample in family.samples}
    used = set(METRIC.findall(ALERTS.read_text())) | set(METRIC.findall(" ".join(dashboard_exprs())))
    assert used and not used - exported, f"not exported: {sorted(used - exported)}"


# -- systemd ---------------------------------------------------------------------------


def unit_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(value)
    return directives


def test_systemd_unit_reloads_restarts_slowly_and_is_hardened() -> None:
    unit = unit_directives()
    assert unit["Type"] in (["simple"], ["notify"])
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ExecStart"][0].split()[1:4] == ["run", "--config", "/etc/lsproxy/lsproxy.toml"]
    assert unit["Restart"] == ["on-failure"] and float(unit["RestartSec"][0]) >= 60  # the 60-second rule
    for key, value in (
        ("DynamicUser", "yes"),
        ("StateDirectory", "lsproxy"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
    ):
        assert unit[key] == [value], key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze on this machine")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's installed lsproxy.
    installed = Path(sys.executable).parent / "lsproxy"
    assert installed.exists()
    unit = tmp_path / "lsproxy.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/lsproxy", str(installed)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )


# -- the container recipe ----------------------------------------------------------------


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            instructions.append((keyword.upper(), " ".join(args.split())))
            pending = ""
    assert not pending, "dangling line continuation"
    return instructions


def test_containerfile_is_slim_non_root_with_a_state_volume_and_a_health_check() -> None:
    steps = containerfile()
    known = {"FROM", "ENV", "COPY", "RUN", "USER", "WORKDIR", "VOLUME", "EXPOSE", "STOPSIGNAL"}
    known |= {"HEALTHCHECK", "ENTRYPOINT", "CMD"}
    assert {keyword for keyword, _ in steps} <= known
    assert steps[0][0] == "FROM" and re.fullmatch(r"python:3\.1[1-9]-slim", steps[0][1])
    args = {keyword: a for keyword, a in steps}  # the last of each
    assert args["USER"] not in ("root", "0") and "useradd" in args["RUN"] and args["USER"] in args["RUN"]
    assert json.loads(args["VOLUME"]) == ["/var/lib/lsproxy"] and args["EXPOSE"] == "8080"
    assert json.loads(args["ENTRYPOINT"]) == ["lsproxy"] and json.loads(args["CMD"])[0] == "run"
    assert "/healthz" in args["HEALTHCHECK"]
    for keyword, a in steps:
        if keyword == "COPY":
            for source in a.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_the_copied_sources_install_with_the_status_page(tmp_path: Path) -> None:
    """What the Containerfile copies is enough for `pip install`, and the package data
    (the status page) comes along: build the package from a copy of exactly that."""
    src = tmp_path / "src"
    src.mkdir()
    for keyword, a in containerfile():
        if keyword == "COPY":
            for source in a.split()[:-1]:
                path = ROOT / source
                if path.is_dir():
                    shutil.copytree(path, src / source, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(path, src / source)
    build = tmp_path / "build"
    result = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py", "--build-lib", str(build)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("index.html", "app.js", "style.css"):
        assert (build / "lsproxy" / "serve" / "static" / name).stat().st_size > 100, name
    assert (build / "lsproxy" / "__main__.py").exists()  # python -m lsproxy


def _healthcheck_command(port: int) -> list[str]:
    args = dict(containerfile())["HEALTHCHECK"]
    command = json.loads(args[args.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    return [sys.executable, *(part.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for part in command[1:])]


async def test_the_health_check_command_passes_on_a_running_proxy_and_fails_without_one() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        # run_process, not subprocess.run: the proxy answering it runs on this event loop
        ok = await trio.run_process(_healthcheck_command(proxy.port), capture_stderr=True, check=False)
        port = proxy.port
    assert ok.returncode == 0, ok.stderr
    down = await trio.run_process(_healthcheck_command(port), capture_stderr=True, check=False)
    assert down.returncode != 0
