"""`lsproxy run --log-format json` as an operator runs it: a real process whose
upstream refuses connections, a consumer coming and going; every stderr line is
a JSON object with the structured fields, and no secret appears."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
SECRET = "json-log-secret-token-0042"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


def run_proxy(tmp_path: Path, *flags: str, server_keys: str = "") -> str:
    """Run the proxy for a moment against a closed upstream port; its stderr."""
    port, closed = free_port(), free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
{server_keys}
[storage]
dir = "{tmp_path / "data"}"
[upstream]
reconnect_delay = 0.3
max_reconnect_delay = 0.6
[credentials.c]
token = "{SECRET}"
[streams.s1]
url = "http://127.0.0.1:{closed}/api/1/stream/s1"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lsproxy", "run", "--config", str(config), *flags],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with httpx.stream(
                    "GET", f"http://127.0.0.1:{port}/api/1/stream/s1?consumer=c1", timeout=2, trust_env=False
                ) as response:
                    assert response.status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.05)
        time.sleep(1.0)  # a few refused attempts and waits
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    return stderr


def test_json_lines_carry_time_level_logger_message_and_fields(tmp_path: Path) -> None:
    stderr = run_proxy(tmp_path, "--log-format", "json")
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    attempts = [x for x in lines if x["message"].startswith("stream s1: upstream attempt")]
    assert attempts and all(x["stream"] == "s1" and x["connection"] == 1 for x in attempts)
    refusals = [x for x in lines if x["level"] == "WARNING" and x.get("reason") == "network"]
    assert len(refusals) >= 2
    for refusal in refusals:
        assert refusal["stream"] == "s1" and refusal["status"] == "network" and refusal["connection"] == 1
        assert 0 < refusal["wait"] <= 0.6 * 1.1
        assert "Next attempt in" in refusal["message"] and refusal["message"].endswith("Z.")
    consumer = [x for x in lines if x.get("consumer") == "c1"]
    assert {x["message"].split("consumer c1 ")[1].split(" ")[0] for x in consumer} >= {"connected", "disconnected"}
    assert all(x["stream"] == "s1" for x in consumer)
    assert SECRET not in stderr


def test_log_format_from_the_config_and_the_flag_overriding_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    from_config = run_proxy(tmp_path / "a", server_keys='log_format = "json"')
    assert all(json.loads(line) for line in from_config.splitlines())
    overridden = run_proxy(tmp_path / "b", "--log-format", "text", server_keys='log_format = "json"')
    assert not overridden.lstrip().startswith("{") and " INFO    lsproxy" in overridden
    assert SECRET not in from_config + overridden
