"""Real nats-server processes for the cluster tests: one JetStream node, or a three-node
cluster on loopback, each in a temp dir on free ports, ready when the monitor port's
``/healthz?js-enabled-only=true`` says so.

No mocked NATS: the tests skip (with the reason) only when ``nats-server`` is not
installed; ``scripts/test`` installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def nats_available() -> bool:
    return os.access(NATS_SERVER, os.X_OK)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NatsNode:
    name: str
    client_port: int
    monitor_port: int
    cluster_port: int | None
    store_dir: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the process owns it)
        self.proc = subprocess.Popen(
            [NATS_SERVER, *self.args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.tail_log()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} not ready within {timeout} s: {self.tail_log()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def meta_leader(self) -> str | None:
        """The JetStream meta leader this node knows of (monitor ``/jsz``)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/jsz", timeout=0.5) as r:
                body = json.loads(r.read())
        except (OSError, ValueError):
            return None
        leader = (body.get("meta_cluster") or {}).get("leader")
        return leader if isinstance(leader, str) and leader else None

    def tail_log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@dataclass
class NatsCluster:
    nodes: list[NatsNode]
    root: str = field(default="")

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Every node up with JetStream, and (a cluster) a JetStream meta leader elected:
        before that, stream and bucket creation time out."""
        for node in self.nodes:
            node.wait_healthy(timeout)
        if len(self.nodes) > 1:
            deadline = time.monotonic() + timeout
            while not all(n.meta_leader() for n in self.nodes if n.running):
                if time.monotonic() > deadline:
                    raise RuntimeError("no JetStream meta leader elected in time")
                time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.proc.pid, signal.SIGCONT)  # a paused node must be able to die
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(5)
                except subprocess.TimeoutExpired:
                    node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _node(root: str, name: str, ports: list[int], cluster: tuple[str, list[int]] | None) -> NatsNode:
    client, monitor, route = ports
    store = os.path.join(root, name)
    os.makedirs(store, exist_ok=True)
    args = ["-a", "127.0.0.1", "-p", str(client), "-m", str(monitor), "-js", "-sd", store, "-n", name]
    cluster_port = None
    if cluster is not None:
        cluster_name, routes = cluster
        cluster_port = route
        args += [
            "--cluster_name", cluster_name,
            "--cluster", f"nats://127.0.0.1:{route}",
            "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes if p != route),
            "--no_advertise",  # clients use their seeds only: a test can cut one node off
        ]  # fmt: skip
    node = NatsNode(name, client, monitor, cluster_port, store, args)
    node.log_path = os.path.join(root, f"{name}.log")
    return node


@contextlib.contextmanager
def nats_cluster(size: int = 1) -> Iterator[NatsCluster]:
    """``size`` == 1: one JetStream server; otherwise a cluster of ``size`` routed nodes."""
    root = tempfile.mkdtemp(prefix="lsproxy-nats-")
    ports = free_ports(3 * size)
    groups = [ports[3 * i : 3 * i + 3] for i in range(size)]
    routes = [g[2] for g in groups]
    cluster = ("lsproxy-test", routes) if size > 1 else None
    nodes = [_node(root, f"n{i + 1}", g, cluster) for i, g in enumerate(groups)]
    c = NatsCluster(nodes, root)
    try:
        for node in nodes:
            node.start()
        c.wait_healthy()
        yield c
    finally:
        c.stop()


KV_SCRIPT = """
import asyncio, json, sys, nats
async def main(url, bucket, op, key=None):
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        if op == "keys":
            try:
                print(json.dumps(await kv.keys()))
            except Exception as exc:  # no keys: nats-py raises NoKeysError
                if type(exc).__name__ != "NoKeysError":
                    raise
                print("[]")
        elif op == "get":
            entry = await kv.get(key)
            print(json.dumps({"value": entry.value.decode(), "revision": entry.revision}))
        elif op == "delete":
            await kv.delete(key)
            print("null")
    finally:
        await nc.close()
asyncio.run(main(*sys.argv[1:]))
"""


def kv(url: str, bucket: str, op: str, key: str | None = None) -> Any:
    """``op`` ("keys", "get" or "delete") on KV ``bucket``, done by a separate nats-py client
    process (the tests run on trio; nats-py needs asyncio): another party, as a second node
    or an operator's tool would be. Blocking: call it from a thread."""
    args = [sys.executable, "-c", KV_SCRIPT, url, bucket, op, *([key] if key is not None else [])]
    out = subprocess.run(args, capture_output=True, check=True, timeout=20)
    return json.loads(out.stdout)


def kv_keys(url: str, bucket: str) -> set[str]:
    """The live keys of KV ``bucket`` (see ``kv``)."""
    return set(kv(url, bucket, "keys"))
