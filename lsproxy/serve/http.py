"""h11 glue: one consumer-facing HTTP/1.1 connection over a trio stream.

The protocol is h11's; this layer only moves bytes and applies the rules that
plain h11 + trio code gets wrong:
- a failed or cancelled ``send_all`` leaves an unknown part on the wire, so the
  connection is marked broken (``send_failed``) and never written again;
- an error response is only possible before the response head went out;
- the request head is size-capped and time-limited (slowloris);
- a peer reset (``trio.BrokenResourceError``) is an EOF.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from http import HTTPStatus

import h11
import trio

from lsproxy import __version__
from lsproxy.secret import redact
from lsproxy.serve.routes import ErrorReply

MAX_REQUEST_HEAD = 16 * 1024
_IOV_MAX = 1024  # buffers per sendmsg (Linux's UIO_MAXIOV)
READ_SIZE = 16 * 1024
SERVER_HEADER = f"lsproxy/{__version__}".encode()

_KNOWN_STATUSES = frozenset(s.value for s in HTTPStatus)

Headers = Sequence[tuple[bytes, bytes]]

# Stands in for the h11 state of connections whose streaming body has begun: in
# ERROR, so that nothing can be sent through h11 on them any more.
_STREAMING = h11.Connection(h11.SERVER)
_STREAMING.send_failed()


class ConnectionBroken(Exception):
    """The peer is gone, too slow, or a write failed: stop using this connection."""


def error_body(reply: ErrorReply) -> bytes:
    return json.dumps({"error": reply.error, "error_description": reply.description}).encode()


class HttpConnection:
    def __init__(self, stream: trio.abc.HalfCloseableStream | trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self._broken = False
        # h11 refuses a body in the answer to HEAD: every response here leaves it out.
        self._answering_head = False

    @property
    def can_send_head(self) -> bool:
        return not self._broken and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    # -- reading ------------------------------------------------------------
    async def next_request(self, timeout: float) -> h11.Request | ErrorReply | None:
        """The next request head; None when the peer closed (or idled out) between
        requests; an ErrorReply for a malformed, oversized or too-slow head."""
        deadline = trio.current_time() + (timeout if timeout > 0 else math.inf)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 431:
                    return ErrorReply(431, "request_header_fields_too_large", "request head over 16 KiB")
                # h11 quotes the offending line, which may hold a consumer's credentials.
                return ErrorReply(status, "bad_request", redact(f"malformed HTTP request: {exc}"))
            if event is h11.NEED_DATA:
                with trio.move_on_at(deadline):
                    data = await self._receive()
                    self.conn.receive_data(data)
                    continue
                if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
                    return None  # idle keep-alive connection: just close
                return ErrorReply(408, "request_timeout", "request head not received in time")
            if isinstance(event, h11.Request):
                self._answering_head = event.method == b"HEAD"
                # h11 caps only an *incomplete* head; one that arrived whole is measured here.
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > MAX_REQUEST_HEAD:
                    return ErrorReply(431, "request_header_fields_too_large", "request head over 16 KiB")
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            # Data/EndOfMessage of a request body: GET requests carry none; drain it.

    async def read_body(self, limit: int, timeout: float) -> bytes | ErrorReply:
        """The body of the request just read (admin API), at most ``limit`` bytes."""
        body = b""
        with trio.move_on_after(timeout if timeout > 0 else math.inf):
            while True:
                try:
                    event = self.conn.next_event()
                except h11.RemoteProtocolError as exc:
                    return ErrorReply(exc.error_status_hint, "bad_request", f"malformed request body: {exc}")
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        return ErrorReply(413, "payload_too_large", f"request body over {limit} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    return body
                elif event is h11.NEED_DATA:
                    data = await self._receive()
                    if not data:
                        return ErrorReply(400, "bad_request", "the request body ended early")
                    self.conn.receive_data(data)
                else:
                    return ErrorReply(400, "bad_request", "the request body ended early")
        return ErrorReply(408, "request_timeout", "request body not received in time")

    async def _receive(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(READ_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    # -- writing ------------------------------------------------------------
    async def send(self, data: bytes, timeout: float = 0) -> None:
        """``send_all`` with a write timeout; any failure breaks the connection for good."""
        if self._broken:
            raise ConnectionBroken("connection already broken")
        try:
            if timeout > 0:
                with trio.fail_after(timeout):
                    await self.stream.send_all(data)
            else:
                await self.stream.send_all(data)
        except BaseException as exc:
            # Cancelled included: an unknown part of data went out.
            self._broken = True
            self.conn.send_failed()
            if isinstance(exc, trio.TooSlowError):
                raise ConnectionBroken(f"consumer accepted no data for {timeout:g} s") from None
            if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
                raise ConnectionBroken("consumer went away") from None
            raise

    async def send_parts(self, parts: Sequence[bytes], timeout: float) -> None:
        """Like ``send(b"".join(parts), timeout)``, without the join and, usually, without
        a trip through the scheduler: the parts (shared segment buffers) go straight to
        the kernel with one ``writev``; only when the socket buffer is full does it wait
        for the consumer, at most ``timeout`` seconds without progress."""
        stream = self.stream
        if not isinstance(stream, trio.SocketStream):
            await self.send(b"".join(parts), timeout)
            return
        if self._broken:
            raise ConnectionBroken("connection already broken")
        # Plain bytes while everything goes out at once (the usual case); memoryviews
        # only to slice the rest after a partial write.
        views: list[bytes | memoryview] = [p for p in parts if p]
        fd = stream.socket.fileno()
        try:
            while views:
                try:
                    sent = os.writev(fd, views[:_IOV_MAX])
                except BlockingIOError:
                    sent = 0
                while views and sent >= len(views[0]):
                    sent -= len(views.pop(0))
                if sent:
                    views[0] = memoryview(views[0])[sent:]
                if views:
                    with trio.move_on_after(timeout if timeout > 0 else math.inf) as waited:
                        await stream.socket.wait_writable()
                    if waited.cancelled_caught:
                        raise trio.TooSlowError
        except BaseException as exc:
            self._broken = True  # Cancelled included: an unknown part went out
            self.conn.send_failed()
            if isinstance(exc, trio.TooSlowError):
                raise ConnectionBroken(f"consumer accepted no data for {timeout:g} s") from None
            if isinstance(exc, OSError):
                raise ConnectionBroken(f"consumer went away ({exc.strerror or exc})") from None
            raise

    def _head(self, status: int, headers: Headers) -> bytes:
        all_headers = [(b"server", SERVER_HEADER), *headers]
        reason = HTTPStatus(status).phrase.encode() if status in _KNOWN_STATUSES else b""
        response = h11.Response(status_code=status, headers=all_headers, reason=reason)
        return self.conn.send(response) or b""

    async def send_response(self, status: int, headers: Headers, body: bytes, *, timeout: float = 0) -> None:
        """A complete response with Content-Length; to a HEAD request, the same without the body."""
        data = self._head(status, [*headers, (b"content-length", str(len(body)).encode())])
        if not self._answering_head:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.send(data, timeout)

    async def send_error(self, reply: ErrorReply, timeout: float = 0, headers: Headers = ()) -> None:
        """A JSON error, if the response has not started yet; then the connection ends."""
        if not self.can_send_head:
            return
        all_headers = [(b"content-type", b"application/json"), (b"connection", b"close"), *headers]
        if reply.allow:
            all_headers.append((b"allow", reply.allow))
        with contextlib.suppress(ConnectionBroken, h11.LocalProtocolError):
            await self.send_response(reply.status, all_headers, error_body(reply), timeout=timeout)

    # A stream's body is framed here rather than by h11: h11 would copy every
    # batch once more, and a streaming response never shares its connection.
    END_BODY = b"0\r\n\r\n"

    def start_body(self, status: int, headers: Headers) -> bytes:
        """Bytes of a chunked response head (sent together with the first chunk).
        A stream never returns to HTTP, so its h11 state is dropped here: with
        thousands of mostly idle consumers, every kilobyte per connection counts."""
        head = self._head(status, [*headers, (b"transfer-encoding", b"chunked")])
        self.conn = _STREAMING
        return head

    @staticmethod
    def chunk_parts(parts: Sequence[bytes], before: bytes = b"") -> list[bytes]:
        """``before``, then one chunk holding ``parts``, as a list of buffers (no copy)."""
        size = sum(map(len, parts))
        if not size:
            return [before]
        return [before, b"%x\r\n" % size, *parts, b"\r\n"]

    @classmethod
    def body_chunk(cls, parts: Sequence[bytes], before: bytes = b"") -> bytes:
        """``chunk_parts`` joined: for small chunks (heads, heartbeats, the end)."""
        return b"".join(cls.chunk_parts(parts, before))

    def next_cycle(self) -> bool:
        """Prepare for the next request on a keep-alive connection; False if it must close."""
        while self.conn.their_state is h11.SEND_BODY:
            # A GET's EndOfMessage is already buffered; a request with a body we do not wait for.
            try:
                if self.conn.next_event() is h11.NEED_DATA:
                    return False
            except h11.RemoteProtocolError:
                return False
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

    async def aclose(self, grace: float = 1.0) -> None:
        """Close: a bounded graceful close, then a forceful one."""
        with trio.move_on_after(grace, shield=True):
            if not self._broken and isinstance(self.stream, trio.SocketStream):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self.stream.send_eof()
            elif not self._broken and isinstance(self.stream, trio.SSLStream):
                # close_notify, so that TLS clients see a clean end, not a truncation.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self.stream.aclose()
        await trio.aclose_forcefully(self.stream)
