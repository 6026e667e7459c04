"""An operator's cursor move reaches a connected consumer at once, even an idle one."""

from __future__ import annotations

import trio
import trio.testing

from lsproxy.hub.log import MemoryLog
from lsproxy.hub.stream import StreamHub
from lsproxy.serve.consumer import StreamSettings, serve_stream
from lsproxy.serve.http import HttpConnection
from lsproxy.serve.routes import StreamRequest


async def test_a_move_wakes_an_idle_consumer_and_ends_its_response_cleanly(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    hub = StreamHub("s", MemoryLog(1 << 20))
    hub.append([b'{"n":1}', b'{"n":2}'])
    client, server = trio.testing.memory_stream_pair()
    http = HttpConnection(server)
    http.conn.receive_data(b"GET /api/1/stream/s HTTP/1.1\r\nHost: x\r\n\r\n")
    http.conn.next_event()
    # Heartbeats off: nothing but the move can wake the pump.
    settings = StreamSettings(heartbeat_interval=0, write_timeout=5, replay_window_bytes=0)
    received = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, http, hub, StreamRequest("s", "c", "smallest", gzip=False), settings)
        while b'{"n":2}' not in received:
            received += await client.receive_some()
        await trio.sleep(3600)  # idle for an hour
        assert hub.book.get("c").connected  # type: ignore[union-attr]
        assert hub.move_cursor("c", 1)
        with trio.fail_after(1):
            while not received.endswith(b"0\r\n\r\n"):
                received += await client.receive_some()
        assert received.count(b'{"n":') == 2  # nothing sent twice, nothing sent after the move
    cursor = hub.book.get("c")
    assert cursor is not None and not cursor.connected and cursor.position == 1
    assert not hub.move_cursor("c", 0)  # no connection to end any more
