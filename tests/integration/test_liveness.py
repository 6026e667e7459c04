"""Liveness never depends on input: /healthz answers within 100 ms whatever comes in.

A hostile upstream (a raw trio HTTP server in the test: 200, gzip, chunked, then
whatever the test gives it) costs CPU, never liveness; nor does a reload that
opens a large store. /healthz is probed from another process with its own
clock, as a liveness probe would: a blocked event loop shows up in the probe's
timings however it is blocked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from lsproxy.app import Proxy
from lsproxy.deflate import GZIP_HEADER
from lsproxy.hub.durable import DurableLog
from lsproxy.hub.store_files import stream_db_path
from lsproxy.simulator import SimSettings, SimStream
from tests.harness import proxy_config, running

HEALTHZ_BOUND = 0.1  # the requirement: every /healthz answer within 100 ms
CHUNK = 64 * 1024  # raw bytes per HTTP chunk (one read of the proxy's HTTP client)
MARK = b'{"hitIdHigh":1,"hitIdLow":2,"after":"the bomb"}'

pytestmark = pytest.mark.slow


def deflate_run(unit: bytes, repeat: int, level: int = 9) -> bytes:
    """Raw deflate of ``unit * repeat`` ending with a full flush: can be repeated and concatenated."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(unit * repeat) + compressor.flush(zlib.Z_FULL_FLUSH)


def bomb_body(unit: bytes, total: int) -> Iterator[bytes]:
    """One gzip member that inflates to ``total`` bytes of ``unit``, then MARK (member left open)."""
    block = deflate_run(unit, (1 << 20) // len(unit))
    yield GZIP_HEADER
    for _ in range(total >> 20):
        yield block
    yield deflate_run(MARK + b"\r\n", 1)


def garbage_body(total: int) -> Iterator[bytes]:
    """Not gzip at all: random bytes."""
    for _ in range(total // CHUNK):
        yield os.urandom(CHUNK)


def endless_line_body(total: int) -> Iterator[bytes]:
    """Valid gzip of one line that never ends (far over max_record_bytes)."""
    block = deflate_run(b"x", 1 << 20)
    yield GZIP_HEADER
    for _ in range(total >> 20):
        yield block


class HostileUpstream:
    """Once ``go`` is set, answers every request with a 200 gzip chunked body made by
    ``body()``, then keeps the connection open."""

    def __init__(self, body: Callable[[], Iterator[bytes]]) -> None:
        self.body = body
        self.go = trio.Event()
        self.port = 0
        self.connections = 0
        self.storage_dir = tempfile.mkdtemp(prefix="lsproxy-test-")

    def url(self, endpoint: str = "s1") -> str:  # what tests.harness.proxy_config asks of a "sim"
        return f"http://127.0.0.1:{self.port}/api/1/stream/{endpoint}"

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(4096)
                if not data:
                    return
                head += data
            await self.go.wait()
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            pending = b""
            for part in self.body():
                pending += part
                while len(pending) >= CHUNK:
                    await stream.send_all(b"%x\r\n%s\r\n" % (CHUNK, pending[:CHUNK]))
                    pending = pending[CHUNK:]
            if pending:
                await stream.send_all(b"%x\r\n%s\r\n" % (len(pending), pending))
            await trio.sleep_forever()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the proxy gave up on this connection (a framing error)
        finally:
            await trio.aclose_forcefully(stream)


# The probe runs in a process of its own, as a liveness probe does: a thread of this
# process would measure its own wait for the GIL as much as the proxy's answer.
PROBE_SCRIPT = r"""
import socket, sys, time
port = int(sys.argv[1])
while True:
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            answer = b""
            while data := sock.recv(4096):
                answer += data
    except OSError as exc:
        print("fail", type(exc).__name__, exc, flush=True)
        continue
    took = time.perf_counter() - started
    if answer.startswith(b"HTTP/1.1 200 "):
        print("ok", took, flush=True)
    else:
        print("fail", repr(answer[:80]), flush=True)
    time.sleep(0.01)
"""


class HealthProbe:
    """GET /healthz over a fresh connection, again and again, from another process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.timings: list[float] = []
        self.failures: list[str] = []

    async def run(self) -> None:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", PROBE_SCRIPT, str(self.port)], stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        try:
            buffer = b""
            while data := await process.stdout.receive_some(4096):
                *lines, buffer = (buffer + data).split(b"\n")
                for line in lines:
                    verdict, _, detail = line.decode().partition(" ")
                    if verdict == "ok":
                        self.timings.append(float(detail))
                    else:
                        self.failures.append(detail)
        finally:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def start_probe(nursery: trio.Nursery, port: int) -> HealthProbe:
    """A probe of the proxy at ``port`` for the nursery's life, once it has answered once."""
    probe = HealthProbe(port)
    nursery.start_soon(probe.run)
    await wait_for(lambda: bool(probe.timings or probe.failures), timeout=10)
    return probe


@asynccontextmanager
async def proxy_in_front_of(upstream: HostileUpstream) -> AsyncIterator[tuple[Proxy, HealthProbe]]:
    """The proxy (in this process, on this trio loop) in front of ``upstream``, with /healthz
    probed for as long as the block runs; the upstream starts once the probe answers."""
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        proxy = Proxy(proxy_config(upstream))  # type: ignore[arg-type]
        addresses = await nursery.start(proxy.run)
        probe = await start_probe(nursery, addresses[0][1])
        upstream.go.set()
        try:
            yield proxy, probe
        finally:
            proxy.request_shutdown()
            with trio.move_on_after(5):
                await proxy.server.finished.wait()
            nursery.cancel_scope.cancel()
    shutil.rmtree(upstream.storage_dir, ignore_errors=True)


async def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def assert_probe_answered_in_time(probe: HealthProbe, *, at_least: int) -> None:
    print(f"/healthz: {len(probe.timings)} probes, slowest {max(probe.timings, default=0) * 1000:.1f} ms")
    assert not probe.failures, probe.failures[:3]
    assert len(probe.timings) >= at_least, f"only {len(probe.timings)} probes: the loop was not probed"
    slow = sorted(probe.timings)[-3:]
    assert max(probe.timings) < HEALTHZ_BOUND, (
        f"/healthz took up to {max(probe.timings) * 1000:.0f} ms (slowest: "
        f"{', '.join(f'{t * 1000:.0f}' for t in slow)} ms; {len(probe.timings)} probes)"
    )


@pytest.mark.parametrize(
    ("unit", "megabytes", "records"),
    [
        (b"\r\n", 512, 1),  # blank records: about 500 KB of gzip for 512 MB of CRLF
        (b"{}\r\n", 8, 2 * 1024 * 1024 + 1),  # tiny records: two million of them
    ],
    ids=["blank-records", "tiny-records"],
)
async def test_healthz_answers_within_100_ms_while_the_upstream_sends_a_gzip_bomb(
    unit: bytes, megabytes: int, records: int
) -> None:
    upstream = HostileUpstream(lambda: bomb_body(unit, megabytes << 20))
    async with proxy_in_front_of(upstream) as (proxy, probe):
        hub = proxy.hubs["s1"]
        # The mark comes after the whole bomb: once it is in the log, everything was framed.
        await wait_for(lambda: hub.upstream.records >= records, timeout=120)
        assert hub.upstream.records == records
        assert hub.upstream.state == "streaming" and upstream.connections == 1
        last = await hub.log.read(hub.log.next_offset - 1, 1 << 20)
        assert last.data == MARK + b"\r\n"
        assert_probe_answered_in_time(probe, at_least=5)


@pytest.mark.parametrize(
    "body",
    [lambda: garbage_body(16 << 20), lambda: endless_line_body(256 << 20)],
    ids=["not-gzip", "one-endless-line"],
)
async def test_healthz_answers_within_100_ms_while_the_upstream_sends_garbage(
    body: Callable[[], Iterator[bytes]],
) -> None:
    upstream = HostileUpstream(body)
    async with proxy_in_front_of(upstream) as (proxy, probe):
        hub = proxy.hubs["s1"]
        # Each connection fails with a framing error; the proxy backs off and tries again.
        await wait_for(lambda: upstream.connections >= 3, timeout=30)
        error = hub.snapshot(time.time())["last_error"]
        assert error is not None and error["error"] == "framing", error
        assert hub.records == 0
        assert_probe_answered_in_time(probe, at_least=5)


async def store_of_hits(path: str, records: int) -> None:
    """A stream store holding ``records`` small hits, all within the default memory tail."""
    log = await DurableLog.open(
        path, retention_bytes=1 << 30, retention_seconds=1e9, memory_bytes=1 << 26, commit_interval=1
    )
    batch = 1000
    for first in range(0, records, batch):
        log.append(
            [b'{"hitIdHigh":%d,"hitIdLow":%d,"pageName":"p"}' % (7, n) for n in range(first, first + batch)],
            time.time(),
        )
    assert await log.commit_now()
    await log.aclose()


async def test_healthz_answers_within_100_ms_while_a_reload_opens_a_large_store() -> None:
    # Opening a store seeds the de-dup window with up to dedup_window_records stored ids
    # (default 200,000): the running proxy must not stall meanwhile.
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 50.0), SimStream("s2", "suite-s2", 50.0)))
    async with running(settings, streams=("s1",)) as (sim, proxy):
        assert proxy is not None
        await store_of_hits(stream_db_path(sim.storage_dir, "s2"), 200_000)
        async with trio.open_nursery() as nursery:
            probe = await start_probe(nursery, proxy.port)
            changes = await proxy.proxy.reload(proxy_config(sim, streams=("s1", "s2")))
            assert changes == ["stream s2: added"]
            hub = proxy.proxy.hubs["s2"]
            assert hub.dedup is not None and len(hub.dedup) == 200_000
            await trio.sleep(0.3)  # and while it starts streaming
            nursery.cancel_scope.cancel()
        assert_probe_answered_in_time(probe, at_least=5)
