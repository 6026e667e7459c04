"""A proxy out of file descriptors: a real process with a low RLIMIT_NOFILE, real sockets."""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.test_cli import free_port, wait_until

FD_LIMIT = 40  # the proxy itself holds about 15 at start


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def test_out_of_file_descriptors_logs_once_backs_off_and_recovers(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
request_timeout = 30
[storage]
dir = "state"
[upstream]
reconnect_delay = 60
[credentials.c]
token = "fd-test-token"
[streams.s]
url = "http://127.0.0.1:9/api/1/stream/s"
"""
    )
    log_path = tmp_path / "proxy.log"
    with log_path.open("w") as log_file:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "lsproxy", "run", "--config", str(config)],
            stderr=log_file,
            cwd=tmp_path,
            preexec_fn=_low_fd_limit,
        )
    held: list[socket.socket] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200)
        # Idle connections the proxy keeps (request_timeout 30 s) until its fd table is full;
        # the rest wait in the listen queue, where each makes accept() fail at once.
        for _ in range(2 * FD_LIMIT):
            held.append(socket.create_connection(("127.0.0.1", port)))
        wait_until(lambda: "accept failed" in log_path.read_text())
        time.sleep(2)  # a fixed 0.1 s retry logged 20 lines in this time
        for s in held:
            s.close()
        held.clear()
        wait_until(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200)
        proxy.send_signal(signal.SIGINT)
        assert proxy.wait(timeout=15) == 0
    finally:
        for s in held:
            s.close()
        if proxy.poll() is None:
            proxy.kill()
            proxy.wait()
    lines = [line for line in log_path.read_text().splitlines() if "accept" in line]
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1, lines
    assert "Too many open files" in errors[0]
    assert len(lines) == 2 and "accepting again after" in lines[1], lines
