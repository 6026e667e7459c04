"""A browser dashboard: EventSource in real headless Chromium reads the stream through
the proxy, loses its connection, reconnects with Last-Event-ID and misses nothing.

The test serves the page itself (and collects what the page saw: the page POSTs
its events back), and puts a TCP relay between the browser and the proxy, so
it can drop the browser's connection the way a network does. Chromium is the
system's (Debian ``chromium``; scripts/test installs it): no browser download.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.harness import running

PAGE = """<!doctype html><html><body><script>
const seen = [];
let opens = 0, errors = 0;
const source = new EventSource("%(stream)s");
source.onopen = () => { opens++; };
source.onerror = () => { errors++; };
source.onmessage = (e) => {
  const low = /"hitIdLow":(\\d+)/.exec(e.data);  // a string: ids exceed 2^53
  seen.push([e.lastEventId, low ? low[1] : null]);
};
setInterval(() => {
  fetch("/report", {method: "POST", body: JSON.stringify({opens, errors, seen})});
}, 200);
</script></body></html>
"""


class PageServer:
    """Serves the page and keeps the page's latest report."""

    def __init__(self, page: str) -> None:
        self.page = page.encode()
        self.report: dict[str, Any] = {"opens": 0, "errors": 0, "seen": []}

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ")
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            while len(body) < int(headers.get("content-length", 0)):
                body += await stream.receive_some(65536)
            if method == "POST" and path == "/report":
                self.report = json.loads(body)
                reply = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
            elif path == "/":
                reply = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(self.page), self.page)
                )
            else:
                reply = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            await stream.send_all(reply)


class Relay:
    """Forwards connections to ``port``; ``drop`` cuts the current ones (both sides)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.scopes: list[trio.CancelScope] = []

    async def handle(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self.scopes.append(scope)
            upstream = await trio.open_tcp_stream("127.0.0.1", self.port)
            async with client, upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pipe, upstream, client, nursery.cancel_scope)

    @staticmethod
    async def _pipe(src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except trio.BrokenResourceError:
            pass
        done.cancel()

    def drop(self) -> None:
        for scope in self.scopes:
            scope.cancel()
        self.scopes.clear()


async def serve(nursery: trio.Nursery, handler: Any) -> int:
    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return int(listeners[0].socket.getsockname()[1])


async def test_event_source_in_chromium_sees_every_record_once_in_order_across_a_drop(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is required (scripts/test installs it)")
    async with running(cors_allow_origins='["*"]') as (_sim, proxy), trio.open_nursery() as nursery:
        assert proxy is not None
        relay = Relay(proxy.port)
        relay_port = await serve(nursery, relay.handle)
        pages = PageServer(PAGE % {"stream": f"http://127.0.0.1:{relay_port}/api/1/stream/s1?reset=smallest"})
        page_port = await serve(nursery, pages.handle)  # another origin than the stream: CORS
        browser = await trio.lowlevel.open_process(
            [
                chromium,
                "--headless",
                "--no-sandbox",  # root in CI containers
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}",
                f"http://127.0.0.1:{page_port}/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with trio.fail_after(30):
                while len(pages.report["seen"]) < 50:
                    await trio.sleep(0.1)
                relay.drop()
                at_drop = len(pages.report["seen"])
                while pages.report["opens"] < 2 or len(pages.report["seen"]) < at_drop + 50:
                    await trio.sleep(0.1)
        finally:
            browser.kill()
            await browser.wait()
        nursery.cancel_scope.cancel()
    report = pages.report
    assert report["errors"] >= 1 and report["opens"] >= 2  # it did lose the connection and come back
    ids = [int(i) for i, _ in report["seen"]]
    seqs = [int(low) - 2**60 for _, low in report["seen"]]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # every record once, in order
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
