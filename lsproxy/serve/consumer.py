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
connected while the upstream is down. A closed log (shutdown, stream removed),
or an operator moving or deleting the consumer's cursor (``Subscription.end``,
checked between batches so that no batch is cut), ends the body cleanly with
the terminating chunk.

Now and then (every ``SAMPLE_BYTES`` sent, on going idle, at heartbeats) the
pump asks the kernel how much of what it sent the consumer may not have
processed yet (``inflight.py``) and tells its cursor: that is what keeps the
replay after a consumer restart small (the rewind rule, ``hub/cursors.py``).

The watcher is the only reader: once the GET is read h11 has nothing more to
say, but the socket must still be read to notice the consumer leaving (EOF or
reset). It discards what arrives, up to a limit, and cancels the response when
the consumer goes.

A stalled consumer blocks only its own pump; the upstream never waits for it.

A consumer group member, a browser (Server-Sent Events) or a consumer asking
for ``fields`` gets each batch through its ``View`` (view.py): renderings of
whole segments are shared through the stream's cache, so the pump still
sends shared buffers and shared compression. A batch that holds none of a
member's records moves its cursor without a write.
"""

from __future__ import annotations

import logging
import math
import socket
from dataclasses import dataclass

import trio

from lsproxy.hub.cursors import TooManyConsumers
from lsproxy.hub.groups import MAX_SHARES, GroupRefused
from lsproxy.hub.hit_search import find_hit
from lsproxy.hub.segment import Slice
from lsproxy.hub.stream import ClaimUnavailable, StreamHub, Subscription
from lsproxy.serve import sse
from lsproxy.serve.encoding import HEARTBEAT, Encoder, make_encoder
from lsproxy.serve.http import READ_SIZE, ConnectionBroken, HttpConnection
from lsproxy.serve.inflight import InflightProbe, replay_window
from lsproxy.serve.routes import ErrorReply, StreamRequest
from lsproxy.serve.view import View, render_batch

log = logging.getLogger("lsproxy.serve")

BATCH_BYTES = 256 * 1024  # at most this much of the log per write: bounded latency and memory
MAX_DISCARD_BYTES = 64 * 1024  # what a consumer may send after its GET before we hang up
MAX_UNYIELDED_BATCHES = 8  # at most ~2 MB written by one consumer before others get a turn
SAMPLE_BYTES = 64 * 1024  # sample the socket after this many bytes (the replay's resolution)
IDLE_SAMPLE_SECONDS = 0.1  # ... and on going idle, at most this often (consumers at the tail)
CLAIM_RETRY_AFTER = b"2"  # seconds, with a 503 for a group share the cluster cannot record now


@dataclass(frozen=True)
class StreamSettings:
    heartbeat_interval: float
    write_timeout: float
    replay_window_bytes: int | None  # a fixed bound on the bytes in flight; None: sample the kernel
    client_buffer_bytes: int = 1024 * 1024  # the consumer's own read buffers (gzip, line readers)
    tcp_user_timeout: float = 30.0  # unacknowledged data this long: the consumer's host is gone
    anonymous_resume: bool = True  # anonymous consumers resume by x-api-key
    cors_allow_origins: frozenset[str] = frozenset()  # browser origins allowed to read ("*": any)


def set_user_timeout(stream: trio.abc.Stream, seconds: float) -> None:
    """TCP_USER_TIMEOUT: the kernel drops a connection whose sent data stays unacknowledged
    this long, so a consumer whose host vanished is noticed within a heartbeat plus this."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None or seconds <= 0 or not isinstance(stream, trio.SocketStream):
        return
    try:
        stream.socket.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
    except OSError as exc:  # not TCP (a Unix socket in tests), or refused: heartbeats still help
        log.debug("TCP_USER_TIMEOUT not set: %s", exc)


async def _asked_start(hub: StreamHub, request: StreamRequest) -> tuple[int | None, str | None]:
    """(offset to start at, X-Lsproxy-Resume) for offset=/Last-Event-ID, after= or since=."""
    if request.offset is not None:
        return request.offset, None  # offset=, last_event_id=, Last-Event-ID (the header wins)
    if request.after is not None:
        found = await find_hit(hub, request.after)
        return (None, "not-found") if found is None else (found + 1, "exact")
    if request.since is not None:
        return await hub.offset_since(request.since), None
    return None, None


def _response_headers(
    request: StreamRequest, encoder: Encoder, settings: StreamSettings
) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", sse.CONTENT_TYPE if request.sse else b"application/json"),
        (b"cache-control", b"no-store"),
    ]
    if encoder.content_encoding:
        headers.append((b"content-encoding", encoder.content_encoding.encode()))
    allowed = settings.cors_allow_origins
    if request.origin is not None and ("*" in allowed or request.origin in allowed):
        headers += [(b"access-control-allow-origin", request.origin.encode()), (b"vary", b"origin")]
    return headers


async def serve_stream(
    http: HttpConnection, hub: StreamHub, request: StreamRequest, settings: StreamSettings
) -> None:
    """Answer a stream GET until the consumer leaves, is taken over, or the stream ends."""
    set_user_timeout(http.stream, settings.tcp_user_timeout)
    start_at, resume = await _asked_start(hub, request)
    asked = request.reset is not None or resume is not None or start_at is not None
    encoder = make_encoder(request.gzip, sse.HEARTBEAT if request.sse else HEARTBEAT)
    headers = _response_headers(request, encoder, settings)
    probe = InflightProbe.open(http.stream, settings.client_buffer_bytes)
    window = settings.replay_window_bytes
    if window is None and probe is None:
        window = replay_window(http.stream, settings.client_buffer_bytes)
    with trio.CancelScope() as scope:
        try:
            for _ in range(MAX_SHARES + 1):  # cluster mode: a share claimed elsewhere meanwhile
                sub = hub.subscribe(
                    request.consumer,
                    reset=request.reset,
                    start_at=start_at,
                    window_bytes=window,
                    cancel_scope=scope,
                    shares=request.shares,
                    resume_key=request.resume_key if settings.anonymous_resume and not asked else None,
                )
                try:
                    claimed = await hub.claim_share(sub)
                except BaseException:
                    hub.unsubscribe(sub)
                    raise
                if claimed:
                    break
                hub.unsubscribe(sub)
            else:
                raise GroupRefused("max_connections_reached", "every share is held by another node's member")
        except GroupRefused as refused:
            log.info("stream %s: %s", hub.name, refused.description)
            await http.send_error(ErrorReply(409, refused.error, refused.description), settings.write_timeout)
            return
        except ClaimUnavailable as exc:
            log.warning("stream %s: group member not admitted: %s", hub.name, exc)
            reply = ErrorReply(503, "service_unavailable", str(exc))
            await http.send_error(reply, settings.write_timeout, [(b"retry-after", CLAIM_RETRY_AFTER)])
            return
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
        view = View(sub.shares, sub.share, request.sse, request.fields)
        resume = resume or sub.resumed
        headers.append((b"x-lsproxy-offset", b"%d" % sub.start))
        if resume is not None:
            headers.append((b"x-lsproxy-resume", resume.encode()))
        fields = {"stream": hub.name, "consumer": sub.name}
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_for_departure, http, nursery.cancel_scope)
                try:
                    # The head goes out with the first bytes of the body.
                    opening = [encoder.start()]
                    if request.sse and sub.lease.skipped:  # the asked start was lost to retention
                        gap = sse.gap_event(sub.lease.skipped)
                        opening += encoder.encode(Slice(sub.start, sub.start, (gap,)))
                    head = http.start_body(200, headers) + http.body_chunk(opening)
                    await _pump(http, hub, sub, encoder, settings, head, view, probe)
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
    view: View,
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
        if sub.ending:
            await http.send(http.body_chunk([enc.finish()], pending) + http.END_BODY, timeout)
            return
        batch = await hub.log.read(offset, BATCH_BYTES)
        skipped = batch.start - offset
        if skipped > 0:
            sub.skipped(offset, batch.start)
            offset = batch.start
        if batch.count:
            if not view.passthrough:
                batch = render_batch(view, batch, hub.block_cache)
                if view.sse and skipped > 0:
                    batch = Slice(batch.start, batch.end, (sse.gap_event(skipped), *batch.pieces))
            wire = 0
            if batch.pieces:
                parts = http.chunk_parts(enc.encode(batch), pending)
                pending = b""
                await http.send_parts(parts, timeout)
                wire = sum(map(len, parts))
            offset = batch.end
            if not sub.sent(offset, wire):
                if sub.ending:
                    continue
                return
            unsampled += wire
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
        with trio.move_on_after(heartbeat) as sub.wait_scope:
            await hub.log.wait_beyond(offset)
            continue
        if sub.ending:
            continue
        # Heartbeat: an empty record. Its bytes count for the rewind rule like any others.
        beat = http.body_chunk([enc.heartbeat()])
        await http.send(beat, timeout)
        if not sub.sent(offset, len(beat)) and not sub.ending:
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
