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

Now and then (every ``SAMPLE_BYTES`` sent, on going idle, at heartbeats) the
pump asks the kernel how much of what it sent the consumer may not have
processed yet (``inflight.py``) and tells its cursor: that is what keeps the
replay after a consumer restart small (the rewind rule, ``hub/cursors.py``).

The watcher is the only reader: once the GET is read h11 has nothing more to
say, but the socket must still be read to notice the consumer leaving (EOF or
reset). It discards what arrives, up to a limit, and cancels the response when
the consumer goes.

A stalled consumer blocks only its own pump; the upstream never waits for it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import trio

from lsproxy.hub.cursors import TooManyConsumers
from lsproxy.hub.stream import StreamHub, Subscription
from lsproxy.serve.encoding import Encoder, make_encoder
from lsproxy.serve.http import READ_SIZE, ConnectionBroken, HttpConnection
from lsproxy.serve.inflight import InflightProbe, replay_window
from lsproxy.serve.routes import ErrorReply, StreamRequest

log = logging.getLogger("lsproxy.serve")

BATCH_BYTES = 256 * 1024  # at most this much of the log per write: bounded latency and memory
MAX_DISCARD_BYTES = 64 * 1024  # what a consumer may send after its GET before we hang up
MAX_UNYIELDED_BATCHES = 8  # at most ~2 MB written by one consumer before others get a turn
SAMPLE_BYTES = 64 * 1024  # sample the socket after this many bytes (the replay's resolution)
IDLE_SAMPLE_SECONDS = 0.1  # ... and on going idle, at most this often (consumers at the tail)


@dataclass(frozen=True)
class StreamSettings:
    heartbeat_interval: float
    write_timeout: float
    replay_window_bytes: int | None  # a fixed bound on the bytes in flight; None: sample the kernel
    client_buffer_bytes: int = 1024 * 1024  # the consumer's own read buffers (gzip, line readers)


async def serve_stream(
    http: HttpConnection, hub: StreamHub, request: StreamRequest, settings: StreamSettings
) -> None:
    """Answer a stream GET until the consumer leaves, is taken over, or the stream ends."""
    encoder = make_encoder(request.gzip)
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if encoder.content_encoding:
        headers.append((b"content-encoding", encoder.content_encoding.encode()))
    probe = InflightProbe.open(http.stream, settings.client_buffer_bytes)
    window = settings.replay_window_bytes
    if window is None and probe is None:
        window = replay_window(http.stream, settings.client_buffer_bytes)
    with trio.CancelScope() as scope:
        try:
            sub = hub.subscribe(
                request.consumer,
                reset=request.reset,
                start_at=hub.log.offset_at(request.since) if request.since is not None else None,
                window_bytes=window,
                cancel_scope=scope,
            )
        except TooManyConsumers:
            limit = hub.book.max_named
            log.info(
                "stream %s: refused new consumer %s: %d named consumers already",
                hub.name,
                request.consumer,
                limit,
            )
            reply = ErrorReply(
                429, "too_many_consumers",
                f"stream has {limit} named consumers (max_named_consumers); reuse an id or wait for consumer_ttl",
            )  # fmt: skip
            await http.send_error(reply, settings.write_timeout)
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_for_departure, http, nursery.cancel_scope)
                try:
                    # The head goes out with the first bytes of the body.
                    head = http.start_body(200, headers) + http.body_chunk([encoder.start()])
                    await _pump(http, hub, sub, encoder, settings, head, probe)
                except ConnectionBroken as exc:
                    log.info("stream %s: consumer %s: %s", hub.name, sub.name, exc)
                nursery.cancel_scope.cancel()
        finally:
            hub.unsubscribe(sub)
            log.info("stream %s: consumer %s disconnected", hub.name, sub.name)
    if scope.cancelled_caught:
        log.info("stream %s: connection of consumer %s replaced by a newer one", hub.name, sub.name)


async def _pump(
    http: HttpConnection,
    hub: StreamHub,
    sub: Subscription,
    enc: Encoder,
    settings: StreamSettings,
    pending: bytes,
    probe: InflightProbe | None,
) -> None:
    offset = sub.start
    unsampled = 0  # bytes sent since the last in-flight sample
    sampled_at = -math.inf

    def sample() -> None:
        nonlocal unsampled, sampled_at
        if probe is not None and (bound := probe.unprocessed_bound()) is not None:
            sub.observe(bound, probe.source)
        unsampled, sampled_at = 0, trio.current_time()

    heartbeat = settings.heartbeat_interval if settings.heartbeat_interval > 0 else math.inf
    timeout = settings.write_timeout  # a consumer that accepts nothing this long is cut
    unyielded = 0  # batches written without a trip through the scheduler (send_parts' fast path)
    while True:
        batch = await hub.log.read(offset, BATCH_BYTES)
        if batch.start > offset:
            sub.skipped(offset, batch.start)
            offset = batch.start
        if batch.count:
            parts = http.chunk_parts(enc.encode(batch), pending)
            pending = b""
            await http.send_parts(parts, timeout)
            offset = batch.end
            size = sum(map(len, parts))
            if not sub.sent(offset, size):
                return
            unsampled += size
            if unsampled >= SAMPLE_BYTES:
                sample()
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
        if unsampled and trio.current_time() - sampled_at >= IDLE_SAMPLE_SECONDS:
            sample()  # a consumer at the tail: what it has read of the batches just sent
        unyielded = 0
        with trio.move_on_after(heartbeat):
            await hub.log.wait_beyond(offset)
            continue
        # Heartbeat: an empty record. Its bytes count for the rewind rule like any others.
        wire = http.body_chunk([enc.heartbeat()])
        await http.send(wire, timeout)
        if not sub.sent(offset, len(wire)):
            return
        sample()


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
