"""Setup (Debian packages, the C load generator) and the processes under test.

Every process the bench starts is registered here and ended by its own pid
(SIGTERM, then SIGKILL) when its scenario ends, or at exit whatever happened.
Servers run on core 0 (``taskset -c 0``), the load generator on core 1.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = ROOT / ".venv" / "bin"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
APT_PACKAGES = ["nginx-light", "libnginx-mod-nchan", "gcc", "libc6-dev", "zlib1g-dev", "util-linux"]
SERVER_CPU = "0"
LOAD_CPU = "1"

_live: dict[int, subprocess.Popen] = {}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------- setup


def ensure_packages() -> None:
    """nginx-light + Nchan, gcc and zlib headers, taskset: installed with apt-get when missing."""
    missing = []
    if not shutil.which("nginx") or not NCHAN_MODULE.exists():
        missing += ["nginx-light", "libnginx-mod-nchan"]
    if not shutil.which("gcc") or not Path("/usr/include/zlib.h").exists():
        missing += ["gcc", "libc6-dev", "zlib1g-dev"]
    if not shutil.which("taskset"):
        missing += ["util-linux"]
    if not missing:
        return
    log(f"installing Debian packages: {' '.join(APT_PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", *APT_PACKAGES], check=True, env=env, stdout=subprocess.DEVNULL
    )


def build_loadgen(build: Path) -> Path:
    src = HERE / "loadgen.c"
    exe = build / "lsbench"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        build.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src), "-lz", "-lm"], check=True)
    return exe


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_count_ok() -> bool:
    return len(os.sched_getaffinity(0)) >= 2


# ----------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def spawn(argv: list[str], logfile: Path, **kw) -> subprocess.Popen:
    out = open(logfile, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    out.close()
    _live[proc.pid] = proc
    return proc


def stop(proc: subprocess.Popen | None, grace: float = 8.0, sig: int = signal.SIGTERM) -> int | None:
    """End one process we started (by its pid): ``sig``, then SIGKILL after ``grace``."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    _live.pop(proc.pid, None)
    return proc.returncode


@atexit.register
def _stop_all() -> None:
    for proc in list(_live.values()):
        stop(proc, grace=3)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def http_json(port: int, path: str, timeout: float = 5.0) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return json.loads(r.read())
    except Exception:
        return None


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------- lsproxy


def lsproxy_config(listen_port: int, upstream_port: int, storage: str) -> str:
    durable = "true" if storage == "durable" else "false"
    return f"""# generated by bench/: lsproxy in front of the bench feeder
[server]
listen = "127.0.0.1:{listen_port}"
heartbeat_interval = 0        # off: every consumer's body is then exactly the records (verified)
write_timeout = 30

[storage]
durable = {durable}
dir = "data"

[upstream]
reconnect_delay = 60          # one upstream connection per run, as in production
connect_timeout = 10

[credentials.bench]
token = "bench-token"

[streams.bench]
url = "http://127.0.0.1:{upstream_port}/api/1/stream/bench"
"""


def check_lsproxy_config(workdir: Path, storage: str) -> str:
    """Validate the generated config with ``lsproxy check`` (the parser is changing under us);
    adapt when it rejects [storage] keys. Returns the config template's extra note."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "check.toml"
    text = lsproxy_config(18080, 18081, storage)
    cfg.write_text(text)
    res = subprocess.run(
        [str(VENV_BIN / "lsproxy"), "check", "--config", str(cfg)], capture_output=True, text=True
    )
    if res.returncode == 0:
        return "ok"
    # an older parser without [storage]: drop the table
    stripped = re.sub(r"\[storage\]\n(?:[^\[\n].*\n)*", "", text)
    cfg.write_text(stripped)
    res2 = subprocess.run(
        [str(VENV_BIN / "lsproxy"), "check", "--config", str(cfg)], capture_output=True, text=True
    )
    if res2.returncode == 0:
        return "no-storage"
    raise RuntimeError(f"lsproxy check rejects the bench config: {res.stdout}{res.stderr}".strip())


class Lsproxy:
    """lsproxy run, pinned to core 0, upstream = an inherited listening socket of the feeder."""

    def __init__(self, workdir: Path, storage: str, config_mode: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.upstream_port = self.listener.getsockname()[1]
        text = lsproxy_config(self.port, self.upstream_port, storage)
        if config_mode == "no-storage":
            text = re.sub(r"\[storage\]\n(?:[^\[\n].*\n)*", "", text)
        (workdir / "lsproxy.toml").write_text(text)
        self.log = workdir / "lsproxy.log"
        self.proc = spawn(
            [
                "taskset",
                "-c",
                SERVER_CPU,
                str(VENV_BIN / "lsproxy"),
                "run",
                "--config",
                str(workdir / "lsproxy.toml"),
            ],
            self.log,
            cwd=workdir,
        )

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def status(self) -> dict | None:
        return http_json(self.port, "/status")

    def close(self) -> int | None:
        """The load generator already sent SIGTERM (its end of run): let lsproxy finish on its own."""
        self.listener.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return stop(self.proc)


# -------------------------------------------------------------- nginx + Nchan

NGINX_CONF = """# generated by bench/: nginx + Nchan, the peer
load_module {module};
worker_processes 1;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; use epoll; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    nchan_shared_memory_size 2048m;    # its memstore reaps evicted messages lazily
    # raw HTTP streaming: each message followed by "\\r\\n" ("\\r" + Nchan's newline), so the
    # body is exactly the records, CRLF-separated, as Live Stream sends them
    server {{
        listen 127.0.0.1:{raw_port} backlog=4096;
        client_body_buffer_size 4m;
        client_max_body_size 16m;
        location = /pub {{
            nchan_publisher http;
            nchan_channel_id $arg_id;
            nchan_message_buffer_length 256;   # > the feeder's lead (4,096 records = 64 messages)
            nchan_message_timeout 10m;
        }}
        location = /sub {{
            nchan_subscriber http-raw-stream;
            nchan_channel_id $arg_id;
            nchan_subscriber_first_message oldest;
            nchan_subscriber_http_raw_stream_separator "\\r";
        }}
    }}
    # Nchan cannot gzip its own responses: nginx's gzip filter on a proxy of the raw stream,
    # unbuffered so that every message is flushed (Z_SYNC_FLUSH) as it arrives
    server {{
        listen 127.0.0.1:{gz_port} backlog=4096;
        location = /sub {{
            proxy_pass http://127.0.0.1:{raw_port};
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_read_timeout 1h;
            gzip on;
            gzip_types *;
            gzip_proxied any;
            gzip_comp_level 1;
            gzip_min_length 0;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.raw_port = free_port()
        self.gz_port = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(module=NCHAN_MODULE, dir=workdir, raw_port=self.raw_port, gz_port=self.gz_port)
        )
        self.log = workdir / "nginx.log"
        self.proc = spawn(
            ["taskset", "-c", SERVER_CPU, "nginx", "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"],
            self.log,
        )
        wait_port(self.raw_port)
        wait_port(self.gz_port)
        deadline = time.monotonic() + 5
        self.workers: list[int] = []
        while time.monotonic() < deadline and not self.workers:
            self.workers = children(self.proc.pid)
            time.sleep(0.02)

    @property
    def pids(self) -> list[int]:
        return [*self.workers, self.proc.pid]

    def close(self) -> int | None:
        code = stop(self.proc, grace=5, sig=signal.SIGTERM)
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return code


# ----------------------------------------------------------------- simulator


class Simulator:
    def __init__(self, workdir: Path, endpoint: str, rate: float, token: str) -> None:
        self.port = free_port()
        self.endpoint = endpoint
        self.log = workdir / "simulator.log"
        self.proc = spawn(
            [
                "taskset",
                "-c",
                SERVER_CPU,
                str(VENV_BIN / "lsproxy"),
                "simulate",
                "--log-level",
                "warning",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--stream",
                f"{endpoint}:{rate:g}:benchsuite",
                "--token",
                token,
            ],
            self.log,
        )
        wait_port(self.port)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def stats(self) -> dict | None:
        data = http_json(self.port, "/_sim/stats")
        if not data:
            return None
        return data.get("streams", {}).get(self.endpoint)

    def close(self) -> int | None:
        return stop(self.proc)


# ------------------------------------------------------------ load generator


def run_loadgen(
    exe: Path,
    args: list[str],
    out: Path,
    timeout: float,
    pass_fds: tuple[int, ...] = (),
    on_event: Callable[[str], None] | None = None,
    logfile: Path | None = None,
) -> dict:
    """Run lsbench on core 1; ``on_event`` sees its EVENT lines as they happen."""
    argv = ["taskset", "-c", LOAD_CPU, str(exe), *args, "--out", str(out)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, pass_fds=pass_fds
    )
    _live[proc.pid] = proc
    lines: list[str] = []

    def reader() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if line.startswith("EVENT ") and on_event:
                try:
                    on_event(line.split()[1])
                except Exception as exc:  # a failed probe must not kill the run
                    lines.append(f"bench: event hook failed: {exc}")

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop(proc, grace=2)
        raise RuntimeError(f"lsbench did not finish within {timeout:.0f} s") from None
    finally:
        t.join(2)
        _live.pop(proc.pid, None)
    if logfile:
        logfile.write_text("\n".join(lines) + "\n")
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"lsbench failed ({proc.returncode}): {' | '.join(lines[-5:])}")
    data = json.loads(out.read_text())
    data["stderr"] = [x for x in lines if not x.startswith("EVENT ")][-20:]
    return data
