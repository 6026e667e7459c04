"""Shared helpers for integration tests: real simulator, real proxy, real sockets.

Everything runs in-process on the real trio clock (short configured delays),
except where a test starts subprocesses on purpose.
"""

from __future__ import annotations

import shutil
import tempfile
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import trio

from lsproxy.app import Proxy
from lsproxy.config import Config, parse_config
from lsproxy.simulator import SimSettings, SimStream, Simulator
from lsproxy.simulator.hits import seq_of

__all__ = ["ProxyUnderTest", "SimUnderTest", "StreamReader", "proxy_config", "running", "seq_of"]


@dataclass
class SimUnderTest:
    sim: Simulator
    port: int
    storage_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="lsproxy-test-"))  # the proxy's

    def url(self, endpoint: str = "s1", version: int = 1) -> str:
        return f"http://127.0.0.1:{self.port}/api/{version}/stream/{endpoint}"

    def stream_stats(self, endpoint: str = "s1") -> dict[str, Any]:
        return self.sim.stats()["streams"][endpoint]  # type: ignore[no-any-return]


@dataclass
class ProxyUnderTest:
    proxy: Proxy
    port: int

    def url(self, route: str = "s1", query: str = "") -> str:
        q = f"?{query}" if query else ""
        return f"http://127.0.0.1:{self.port}/api/1/stream/{route}{q}"

    async def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(f"http://127.0.0.1:{self.port}{path}")
            return r.status_code, r.json()


_OTHER_SERVER_KEYS = {
    "replay_window_bytes",
    "client_buffer_bytes",
    "max_named_consumers",
    "consumer_ttl",
    "tcp_user_timeout",
    "anonymous_resume",
    "anonymous_resume_linger",
    "anonymous_group_linger",
    "cors_allow_origins",
}


def proxy_config(
    sim: SimUnderTest,
    *,
    streams: tuple[str, ...] = ("s1",),
    stream_keys: Mapping[str, Mapping[str, str]] | None = None,
    endpoints: Mapping[str, str] | None = None,
    extra: str = "",
    **overrides: Any,
) -> Config:
    """A config for the proxy in front of ``sim``: fast delays, ephemeral port.
    ``endpoints`` maps a stream name to another simulator endpoint than its own name.
    Keyword arguments (TOML literals) override [server] keys or [upstream] keys;
    ``extra`` is TOML added after the [storage] table (more keys, or whole tables)."""
    server: dict[str, Any] = {
        "listen": '"127.0.0.1:0"',
        "heartbeat_interval": 0.2,
        "request_timeout": 1,
        "write_timeout": 2,
        "shutdown_grace": 1,
    }
    settings = {
        "reconnect_delay": 0.3,
        "max_reconnect_delay": 2.0,
        "connect_timeout": 2,
        "healthy_after": 0.5,
    }
    server_only = ("replay_window_bytes", "tls_cert", "tls_key", "allow_unauthenticated")
    for key, value in overrides.items():
        (server if key in server or key in server_only or key in _OTHER_SERVER_KEYS else settings)[key] = value
    lines = [
        "[server]",
        *(f"{k} = {v}" for k, v in server.items()),
        "[storage]",
        f'dir = "{sim.storage_dir}"',
        "commit_interval = 0.2",
        extra,
        "[upstream]",
        *(f"{k} = {v}" for k, v in settings.items()),
        "[credentials.sim]",
        'token = "sim-secret-token-123"',
    ]
    for name in streams:
        url = sim.url((endpoints or {}).get(name, name))
        lines += [f"[streams.{name}]", f'url = "{url}"', f'report_suite = "suite-{name}"']
        lines += [f"{k} = {v}" for k, v in (stream_keys or {}).get(name, {}).items()]
    return parse_config("\n".join(lines), path="test.toml", environ={})


@asynccontextmanager
async def running(
    sim_settings: SimSettings | None = None,
    *,
    streams: tuple[str, ...] = ("s1",),
    start_proxy: bool = True,
    **cfg: Any,
) -> AsyncIterator[tuple[SimUnderTest, ProxyUnderTest | None]]:
    """Simulator (and proxy) in a nursery; both torn down on exit."""
    settings = sim_settings or SimSettings()
    settings = replace(
        settings,
        port=0,
        token="sim-secret-token-123",
        streams=settings.streams
        if sim_settings
        else tuple(SimStream(s, f"suite-{s}", 200.0) for s in streams),
    )
    async with trio.open_nursery() as nursery:
        sim = Simulator(settings)
        _host, port = await nursery.start(sim.serve)
        s = SimUnderTest(sim, port)
        p = None
        if start_proxy:
            proxy = Proxy(proxy_config(s, streams=streams, **cfg))
            addresses = await nursery.start(proxy.run)
            p = ProxyUnderTest(proxy, addresses[0][1])
        try:
            yield s, p
        finally:
            if p is not None:
                p.proxy.request_shutdown()
                with trio.move_on_after(5):
                    await p.proxy.server.finished.wait()
            nursery.cancel_scope.cancel()
    shutil.rmtree(s.storage_dir, ignore_errors=True)


class StreamReader:
    """A consumer over a raw socket: HTTP/1.1 GET, chunked + optional gzip, record by record.

    Deliberately not httpx: tests need to stop reading (stall), see the exact
    status line, and notice a clean end of stream (the terminating chunk).
    """

    def __init__(self, port: int, path: str, *, gzip: bool = True, headers: dict[str, str] | None = None):
        self.port, self.path, self.gzip = port, path, gzip
        self.headers = headers or {}
        self.status = 0
        self.response_headers: dict[str, str] = {}
        self.records: list[bytes] = []  # non-empty records in arrival order
        self.empty_records = 0  # heartbeats and empty records
        self.decoded = bytearray()  # the whole body as decoded (for Server-Sent Events)
        self.ended_cleanly = False
        self._buf = b""
        self._body = b""
        self._tail = b""
        self._inflater = zlib.decompressobj(31)
        self.stream: trio.SocketStream | None = None

    async def connect(self) -> StreamReader:
        self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        hdrs = {"Host": "localhost", **({"Accept-Encoding": "gzip"} if self.gzip else {}), **self.headers}
        head = f"GET {self.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        await self.stream.send_all(head.encode())
        while b"\r\n\r\n" not in self._buf:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("closed before the response head")
            self._buf += data
        head_bytes, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.response_headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        if self.status != 200:
            self.error_body = self._buf
        return self

    def _decode_chunks(self) -> None:
        while True:
            if b"\r\n" not in self._buf:
                return
            size_line, rest = self._buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self.ended_cleanly = True
                self._buf = b""
                return
            if len(rest) < size + 2:
                return
            chunk, self._buf = rest[:size], rest[size + 2 :]
            data = self._inflater.decompress(chunk) if self.gzip else chunk
            self.decoded += data
            self._tail += data
            *complete, self._tail = self._tail.split(b"\r\n")
            for record in complete:
                if record:
                    self.records.append(record)
                else:
                    self.empty_records += 1

    async def read_until(self, predicate: Any, timeout: float = 10) -> None:
        assert self.stream is not None
        with trio.fail_after(timeout):
            while not predicate(self):
                self._decode_chunks()
                if predicate(self) or self.ended_cleanly:
                    return
                data = await self.stream.receive_some(65536)
                if not data:
                    return
                self._buf += data

    async def read_records(self, n: int, timeout: float = 10) -> list[bytes]:
        await self.read_until(lambda r: len(r.records) >= n, timeout)
        return self.records

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    def seqs(self) -> list[int]:
        return [seq_of(r) for r in self.records]
