"""The command line as operators use it: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lsproxy import __version__

ROOT = Path(__file__).parent.parent.parent


def lsproxy(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "lsproxy", *args], capture_output=True, text=True, timeout=30, **kwargs
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


def wait_until(predicate, timeout: float = 10):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := predicate():
                return result
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_version() -> None:
    result = lsproxy("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"lsproxy {__version__}"


def test_check_prints_routes_of_the_demo_config() -> None:
    result = lsproxy("check", "--config", str(ROOT / "config" / "demo.toml"))
    assert result.returncode == 0, result.stderr
    assert "/api/1/stream/demo-stream" in result.stdout and "/api/1/stream/simsuite" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nlisten = 8080\n", "bad.toml: server.listen:"),
        ("[streams.a]\nurl = 'http://h/api/1/stream/x'\n", "bad.toml: credentials: no credential sets"),
        ("[server\n", "bad.toml: line 1"),
    ],
)
def test_bad_config_is_one_clear_line_and_exit_1(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = lsproxy("run", "--config", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_run_in_front_of_the_simulator_then_sigterm_exits_0(tmp_path: Path) -> None:
    sim_port, proxy_port = free_port(), free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{proxy_port}"
[upstream]
reconnect_delay = 1
[credentials.sim]
token = "cli-secret-token-xyz"
[streams.demo]
url = "http://127.0.0.1:{sim_port}/api/1/stream/demo-stream"
"""
    )
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lsproxy",
            "simulate",
            "--listen",
            f"127.0.0.1:{sim_port}",
            "--token",
            "cli-secret-token-xyz",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    proxy = None
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{sim_port}/_sim/stats").status_code == 200)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "lsproxy", "run", "--config", str(config), "--log-level", "debug"],
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{proxy_port}"
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200)
        with httpx.stream(
            "GET", f"{base}/api/1/stream/demo", headers={"Accept-Encoding": "gzip"}
        ) as response:
            assert response.headers["content-encoding"] == "gzip"
            lines = []
            for line in response.iter_lines():
                if line:
                    lines.append(json.loads(line))
                if len(lines) == 5:
                    break
        assert all(hit["reportSuite"] for hit in lines)
        proxy.send_signal(signal.SIGTERM)
        _, stderr = proxy.communicate(timeout=15)
        assert proxy.returncode == 0, stderr
        assert "cli-secret-token-xyz" not in stderr
        assert "upstream connected" in stderr and "stopped" in stderr
    finally:
        for p in (proxy, sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "p.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n[credentials.c]\ntoken = "t"\n'
            '[streams.s]\nurl = "http://127.0.0.1:9/api/1/stream/s"\n'
        )
        result = lsproxy("run", "--config", str(config))
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr


def test_readme_demo_command_serves_records_and_stops_on_ctrl_c() -> None:
    """`scripts/demo` (the README's main job) on its fixed ports 8090 and 8080."""
    for port in (8080, 8090):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is busy: stop what uses it first"
    demo = subprocess.Popen(
        [str(ROOT / "scripts" / "demo")], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        wait_until(lambda: httpx.get("http://127.0.0.1:8080/readyz").status_code == 200, timeout=60)
        with httpx.stream(
            "GET", "http://127.0.0.1:8080/api/1/stream/demo", headers={"Accept-Encoding": "gzip"}
        ) as response:
            hits = []
            for line in response.iter_lines():
                if line:
                    hits.append(json.loads(line))
                if len(hits) == 3:
                    break
        assert {hit["reportSuite"] for hit in hits} == {"simsuite"}
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = demo.communicate(timeout=20)
        assert demo.returncode == 0, stderr
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.communicate()


def test_reload_command_and_sighup_apply_a_new_config_and_reject_a_bad_one(tmp_path: Path) -> None:
    sim_port, proxy_port = free_port(), free_port()
    config = tmp_path / "proxy.toml"

    def write(streams: list[str], extra: str = "") -> None:
        text = f"""
[server]
listen = "127.0.0.1:{proxy_port}"
[storage]
dir = "state"
[upstream]
reconnect_delay = 0.5
[credentials.sim]
token = "reload-secret-token"
{extra}
"""
        for name in streams:
            text += f'[streams.{name}]\nurl = "http://127.0.0.1:{sim_port}/api/1/stream/{name}"\n'
        config.write_text(text)

    write(["one"])
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lsproxy",
            "simulate",
            "--listen",
            f"127.0.0.1:{sim_port}",
            "--token",
            "reload-secret-token",
            "--stream",
            "one",
            "--stream",
            "two",
            "--linger",
            "0",
        ],
        stderr=subprocess.DEVNULL,
    )
    proxy = None
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{sim_port}/_sim/stats").status_code == 200)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "lsproxy", "run", "--config", str(config)],
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{proxy_port}"
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200)
        assert (tmp_path / "state" / "lsproxy.pid").read_text().strip() == str(proxy.pid)

        write(["one", "two"])
        result = lsproxy("reload", "--config", str(config))
        assert result.returncode == 0 and f"pid {proxy.pid}" in result.stdout
        wait_until(lambda: set(httpx.get(f"{base}/readyz").json()["streams"]) == {"one", "two"})
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200)

        write(["one", "two"], extra="bogus_key = 1")
        result = lsproxy("reload", "--config", str(config))
        assert result.returncode == 1 and "bogus_key" in result.stderr  # validated before signalling
        proxy.send_signal(signal.SIGHUP)  # a SIGHUP from elsewhere: the proxy rejects it itself
        time.sleep(0.5)
        assert httpx.get(f"{base}/readyz").status_code == 200
        stats = httpx.get(f"http://127.0.0.1:{sim_port}/_sim/stats").json()["streams"]
        assert stats["one"]["attempts"] == 1  # untouched by both reloads
        proxy.send_signal(signal.SIGTERM)
        _, stderr = proxy.communicate(timeout=15)
        assert proxy.returncode == 0
        assert "config reload rejected" in stderr and "bogus_key" in stderr
        assert "reload: stream two: added" in stderr
        assert "reload-secret-token" not in stderr
        assert not (tmp_path / "state" / "lsproxy.pid").exists()
    finally:
        for p in (proxy, sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()


def test_a_second_proxy_on_the_same_storage_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "p.toml"

    def write(port: int) -> None:
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n[credentials.c]\ntoken = "second-proxy-token"\n'
            '[streams.s]\nurl = "http://127.0.0.1:9/api/1/stream/s"\n'
        )

    first_port = free_port()
    write(first_port)
    first = subprocess.Popen(
        [sys.executable, "-m", "lsproxy", "run", "--config", str(config)], stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{first_port}/healthz").status_code == 200)
        write(free_port())  # another port, same storage dir (data/ next to the config)
        result = lsproxy("run", "--config", str(config))
        assert result.returncode == 1
        assert "in use by another lsproxy" in result.stderr and f"pid {first.pid}" in result.stderr
        # The refused proxy left the pid file alone: `lsproxy reload` still finds the first one.
        assert (tmp_path / "data" / "lsproxy.pid").read_text().strip() == str(first.pid)
    finally:
        first.kill()
        first.communicate()
