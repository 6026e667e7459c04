"""The command line as operators use it: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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


def _default_signals() -> None:
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


@dataclass
class Demo:
    """`scripts/demo` (the README's main job) on free ports, its config and data in a temp dir."""

    dir: Path
    proxy_port: int
    sim_port: int
    process: subprocess.Popen[str] | None = None

    @classmethod
    def prepare(cls, tmp_path: Path) -> Demo:
        proxy_port, sim_port = free_port(), free_port()
        text = (ROOT / "config" / "demo.toml").read_text()
        for old, new in (
            ("127.0.0.1:8080", f"127.0.0.1:{proxy_port}"),
            ("127.0.0.1:8090", f"127.0.0.1:{sim_port}"),
        ):
            assert old in text
            text = text.replace(old, new)
        (tmp_path / "demo.toml").write_text(text)
        return cls(tmp_path, proxy_port, sim_port)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def log(self) -> str:
        return (self.dir / "demo.log").read_text()

    def start(self) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "LSPROXY_DEMO_CONFIG": str(self.dir / "demo.toml"),
            "LSPROXY_SIM_PORT": str(self.sim_port),
        }
        with open(self.dir / "demo.log", "w") as log:
            # Its own session, as in a terminal: the test can send "Ctrl-C" to the group.
            # Default signal dispositions, as from a terminal: a test run under nohup (HUP
            # ignored) or as a background job (INT ignored) would hand its own to the
            # script, and bash cannot trap a signal ignored when it starts.
            self.process = subprocess.Popen(
                [str(ROOT / "scripts" / "demo")],
                stderr=log,
                env=env,
                text=True,
                start_new_session=True,
                preexec_fn=_default_signals,
            )
        return self.process

    def wait_ready(self) -> None:
        wait_until(lambda: httpx.get(f"{self.base}/readyz").status_code == 200, timeout=60)

    def children(self) -> dict[str, int]:
        """The script's lsproxy processes by command: ``simulate`` and ``run``."""
        assert self.process is not None
        found = {}
        for pid in children_of(self.process.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            except OSError:
                continue
            if "lsproxy" in " ".join(argv):
                found[next(a for a in argv if a in ("simulate", "run"))] = pid
        return found

    def finish(self, timeout: float = 20) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def read_hits(url: str, n: int) -> list[dict[str, object]]:
    with httpx.stream("GET", url, headers={"Accept-Encoding": "gzip"}, timeout=30) as response:
        hits = []
        for line in response.iter_lines():
            if line:
                hits.append(json.loads(line))
            if len(hits) == n:
                return hits
    raise AssertionError(f"stream ended after {len(hits)} hits")


def data_state(directory: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in directory.rglob("*")} if directory.exists() else {}


def test_readme_demo_command_serves_records_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """`scripts/demo` as a new user runs it; its state in a temp dir, never in the checkout."""
    checkout_data = data_state(ROOT / "config" / "data")
    demo = Demo.prepare(tmp_path)
    demo.start()
    try:
        demo.wait_ready()
        hits = read_hits(f"{demo.base}/api/1/stream/demo", 3)
        assert {hit["reportSuite"] for hit in hits} == {"simsuite"}
        assert demo.process is not None
        os.killpg(demo.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert demo.finish() == 0, demo.log
    finally:
        demo.kill()
    assert (tmp_path / "data" / "demo.sqlite3").exists()
    assert data_state(ROOT / "config" / "data") == checkout_data
    # Each process says it once, under its own name (the demo passes the signal on too).
    assert demo.log.count("lsproxy: received SIGINT") == 1, demo.log
    assert demo.log.count("[simulator] ") >= 2 and demo.log.count("lsproxy.simulator: received SIGINT") == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_demo_passes_a_signal_to_its_own_pid_on_to_both_processes(tmp_path: Path, signum: int) -> None:
    """`kill -INT` / `kill -TERM` to the script alone (not its group): both processes stop,
    the ports and the storage lock are free, exit status 0. HUP reloads the proxy."""
    demo = Demo.prepare(tmp_path)
    process = demo.start()
    try:
        demo.wait_ready()
        children = list(demo.children().values())
        assert len(children) == 2
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload: nothing changed" in demo.log)
        assert process.poll() is None and all(not gone(pid) for pid in children)
        process.send_signal(signum)
        assert demo.finish() == 0, demo.log
        wait_until(lambda: all(gone(pid) for pid in children))
        assert port_free(demo.proxy_port) and port_free(demo.sim_port)
        assert not (tmp_path / "data" / "lsproxy.pid").exists()  # the proxy stopped cleanly
        name = signal.Signals(signum).name
        assert f"lsproxy: received {name}" in demo.log and f"lsproxy.simulator: received {name}" in demo.log
    finally:
        demo.kill()


def test_demo_ends_when_either_process_dies(tmp_path: Path) -> None:
    demo = Demo.prepare(tmp_path)
    demo.start()
    try:
        demo.wait_ready()
        pids = demo.children()
        os.kill(pids["run"], signal.SIGKILL)
        assert demo.finish() not in (0, None)
        wait_until(lambda: gone(pids["simulate"]))
        assert port_free(demo.sim_port)
        assert "scripts/demo: the proxy exited (status 137); stopped the other" in demo.log, demo.log
    finally:
        demo.kill()


def test_simulate_on_a_busy_port_is_one_clear_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = lsproxy("simulate", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"simulator cannot serve on 127.0.0.1:{port}: Address already in use" in lines[0]


def test_demo_aborts_when_another_simulator_holds_its_port(tmp_path: Path) -> None:
    """The old demo went on against whatever answered on the port; it must use its own."""
    demo = Demo.prepare(tmp_path)
    other = subprocess.Popen(
        [sys.executable, "-m", "lsproxy", "simulate", "--listen", f"127.0.0.1:{demo.sim_port}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{demo.sim_port}/_sim/stats").status_code == 200)
        demo.start()
        assert demo.finish(timeout=30) == 1, demo.log
        assert f"simulator cannot serve on 127.0.0.1:{demo.sim_port}" in demo.log
        assert "Traceback" not in demo.log and "serving consumers" not in demo.log
        assert "scripts/demo: the simulator did not start" in demo.log
        assert port_free(demo.proxy_port)
        assert httpx.get(f"http://127.0.0.1:{demo.sim_port}/_sim/stats").json()["pid"] == other.pid
    finally:
        demo.kill()
        other.kill()
        other.wait()


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
