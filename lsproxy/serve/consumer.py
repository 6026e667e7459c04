"""One consumer's streaming response: a pump task and a watcher task.

Theory of operation
-------------------
The pump is the only writer on the socket: it reads the stream log from its
subscription's start, encodes a batch (whole segments: shared gzip blocks or
shared buffers), hands it to the kernel with one ``writev`` (waiting, at most
``write_timeout`` without progress, only when the socket buffer is full), and
only then book-keeps the progress. With nothing to send it waits for new records
for at most ``heartbeat_interval`` and otherwise sends a bare CRLF (an empty
record, which Live Stream clients ignore), so clients with read timeouts stay
connected while the upstream is down. A closed log (shutdown, stream removed)
ends the body cleanly with the terminating chunk.

The watcher is the only reader: once the GET is read h11 has nothing more to
say, but the socket must still be read to notice the consumer leaving (EOF or
reset). It discards what arrives, up to a limit, and cancels the response when
the consumer goes.

A stalled consumer blocks only its own pump; the upstream never waits for it.
"""

from __future__ import annotations

import logging
import math
import socket
from dataclasses import dataclass
from functools import cache

import trio

from lsproxy.hub.stream import StreamHub, Subscription
from lsproxy.serve.encoding import Encoder, make_encoder
from lsproxy.serve.http import READ_SIZE, ConnectionBroken, HttpConnection
from lsproxy.serve.routes import StreamRequest

log = logging.getLogger("lsproxy.serve")

BATCH_BYTES = 256 * 1024  # at most this much of the log per write: bounded latency and memory
MAX_DISCARD_BYTES = 64 * 1024  # what a consumer may send after its GET before we hang up
CLIENT_SLACK_BYTES = 1024 * 1024  # the consumer's own read buffers (gzip, line readers)
MAX_UNYIELDED_BATCHES = 8  # at most ~2 MB written by one consumer before others get a turn


@dataclass(frozen=True)
class StreamSettings:
    heartbeat_interval: float
    write_timeout: float
    replay_window_bytes: int | None  # None: derive from the socket and the kernel's limits


@cache
def _kernel_max_receive_buffer() -> int:
    """The most a local consumer's kernel can buffer for it (autotuned or set)."""
    best = 6 * 1024 * 1024
    try:
        with open("/proc/sys/net/ipv4/tcp_rmem") as f:
            best = max(best, int(f.read().split()[2]))
        with open("/proc/sys/net/core/rmem_max") as f:
            best = max(best, 2 * int(f.read()))  # SO_RCVBUF is doubled by the kernel
    except (OSError, ValueError, IndexError):
        pass
    return best


def replay_window(stream: trio.abc.Stream, configured: int | None) -> int:
    """Wire bytes that may be in flight to this consumer; see hub/cursors.py."""
    if configured is not None:
        return configured
    send_buffer = 4 * 1024 * 1024
    if isinstance(stream, trio.SocketStream):
        send_buffer = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return send_buffer + _kernel_max_receive_buffer() + CLIENT_SLACK_BYTES


async def serve_stream(
    http: HttpConnection, hub: StreamHub, request: StreamRequest, settings: StreamSettings
) -> None:
    """Answer a stream GET until the consumer leaves, is taken over, or the stream ends."""
    encoder = make_encoder(request.gzip)
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if encoder.content_encoding:
        headers.append((b"content-encoding", encoder.content_encoding.encode()))
    with trio.CancelScope() as scope:
        sub = hub.subscribe(
            request.consumer,
            reset=request.reset,
            start_at=hub.log.offset_at(request.since) if request.since is not None else None,
            window_bytes=replay_window(http.stream, settings.replay_window_bytes),
            cancel_scope=scope,
        )
        fields = {"stream": hub.name, "consumer": sub.name}
        log.info("stream %s: consumer %s connected at offset %d", hub.name, sub.name, sub.start, extra=fields)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_for_departure, http, nursery.cancel_scope)
                try:
                    # The head goes out with the first bytes of the body.
                    head = http.start_body(200, headers) + http.body_chunk([encoder.start()])
                    await _pump(http, hub, sub, encoder, settings, head)
                except ConnectionBroken as exc:
                    log.info("stream %s: consumer %s: %s", hub.name, sub.name, exc, extra=fields)
                nursery.cancel_scope.cancel()
        finally:
            hub.unsubscribe(sub)
            log.info("stream %s: consumer %s disconnected", hub.name, sub.name, extra=fields)
    if scope.cancelled_caught:
        log.info(
            "stream %s: connection of consumer %s replaced by a newer one", hub.name, sub.name, extra=fields
        )


async def _pump(
    http: HttpConnection,
    hub: StreamHub,
    sub: Subscription,
    enc: Encoder,
    settings: StreamSettings,
    pending: bytes,
) -> None:
    offset = sub.start
    heartbeat = settings.heartbeat_interval if settings.heartbeat_interval > 0 else math.inf
    timeout = settings.write_timeout  # a consumer that accepts nothing this long is cut
    unyielded = 0  # batches written without a trip through the scheduler (send_parts' fast path)
    while True:
        batch = await hub.log.read(offset, BATCH_BYTES)
        if batch.start > offset:
            sub.skipped(batch.start - offset)
            offset = batch.start
        if batch.count:
            parts = http.chunk_parts(enc.encode(batch), pending)
            pending = b""
            await http.send_parts(parts, timeout)
            offset = batch.end
            if not sub.sent(offset, sum(map(len, parts))):
                return
            unyielded += 1
            if unyielded >= MAX_UNYIELDED_BATCHES:
                # A consumer far behind has batches ready for a long time: let others run.
                await trio.lowlevel.checkpoint()
                unyielded = 0
            continue
        if hub.log.closed:
            await http.send(http.body_chunk([enc.finish()], pending) + http.END_BODY, timeout)
            return
        if pending:
            await http.send(pending, timeout)
            pending = b""
        unyielded = 0
        with trio.move_on_after(heartbeat):
            await hub.log.wait_beyond(offset)
            continue
        # Heartbeat: an empty record. Its bytes count for the rewind rule like any others.
        wire = http.body_chunk([enc.heartbeat()])
        await http.send(wire, timeout)
        if not sub.sent(offset, len(wire)):
            return


async def _watch_for_departure(http: HttpConnection, response_scope: trio.CancelScope) -> None:
    """Read (and discard) until the consumer closes or resets, then end its response."""
    received = 0
    while True:
        try:
            data = await http.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            break
        received += len(data)
        if received > MAX_DISCARD_BYTES:
            log.info("consumer sent %d bytes after its request; closing", received)
            break
    response_scope.cancel()
