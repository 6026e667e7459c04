"""Minimal h11-over-trio server connection for the simulator.

Finite responses (errors, redirects, control endpoints) carry Content-Length
and allow keep-alive; a stream response is chunked and endless, and ends
either cleanly (``end_body``) or abruptly (the caller just closes the socket,
as the real service does when it drops a connection). If a ``send_all``
fails, an unknown part went out: h11 is told (``send_failed``) and nothing is
written again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from http import HTTPStatus

import h11
import trio

from lsproxy.simulator.protocol import Refusal, Request

log = logging.getLogger("lsproxy.simulator")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
HEAD_TIMEOUT = 30.0
SERVER = "lsproxy-simulator"


async def receive_or_eof(stream: trio.abc.ReceiveStream, max_bytes: int = 65536) -> bytes:
    """``receive_some``, with a peer reset or a closed stream reported as EOF (b"")."""
    try:
        return bytes(await stream.receive_some(max_bytes))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


class HttpConnection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.broken = False

    async def read_request(self) -> Request | None:
        """The next request (its body, at most ``MAX_BODY`` bytes, in ``Request.body``), or
        None when the peer is gone or broke the protocol (a 400 is sent first when still
        possible)."""
        req: Request | None = None
        body = bytearray()
        try:
            with trio.move_on_after(HEAD_TIMEOUT):
                while True:
                    event = self.h11.next_event()
                    if event is h11.NEED_DATA:
                        self.h11.receive_data(await receive_or_eof(self.stream))
                    elif isinstance(event, h11.Request):
                        headers: dict[str, str] = {}
                        for name, value in event.headers:
                            key = name.decode("latin-1").lower()
                            val = value.decode("latin-1")
                            headers[key] = f"{headers[key]}, {val}" if key in headers else val
                        req = Request(
                            event.method.decode("ascii"),
                            event.target.decode("latin-1"),
                            event.http_version.decode("ascii"),
                            headers,
                        )
                    elif isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > MAX_BODY:
                            await self.send_error(
                                Refusal(413, "payload_too_large", "request body too large"),
                                headers=[
                                    ("connection", "close")
                                ],  # we stop reading: the client must not reuse it
                            )
                            return None
                    elif isinstance(event, h11.EndOfMessage):
                        return dataclasses.replace(req, body=bytes(body)) if req and body else req
                    else:  # ConnectionClosed, PAUSED
                        return None
        except h11.RemoteProtocolError as exc:
            await self.send_error(Refusal(exc.error_status_hint, "bad_request", str(exc)))
        return None

    def can_respond(self) -> bool:
        return not self.broken and self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    async def _send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            try:
                await self.stream.send_all(data)
            except BaseException:
                self.broken = True
                self.h11.send_failed()
                raise

    async def send_response(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """A complete response with Content-Length."""
        hdrs = [
            ("server", SERVER),
            ("content-type", content_type),
            ("content-length", str(len(body))),
            *(headers or []),
        ]
        await self._send(h11.Response(status_code=status, headers=hdrs, reason=_reason(status)))
        if body:
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def send_json(self, status: int, obj: object) -> None:
        await self.send_response(status, json.dumps(obj).encode())

    async def send_error(
        self,
        refusal: Refusal,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """A Live Stream-style JSON error, if a response can still be started."""
        if not self.can_respond():
            return
        try:
            await self.send_response(refusal.status, refusal.body(), headers)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            self.broken = True

    async def start_stream(self) -> None:
        """Headers of an endless gzip, chunked stream response."""
        await self._send(
            h11.Response(
                status_code=200,
                reason=b"OK",
                headers=[
                    ("server", SERVER),
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                    ("cache-control", "no-cache"),
                ],
            )
        )

    async def send_chunk(self, data: bytes) -> None:
        await self._send(h11.Data(data=data))

    def next_cycle(self) -> bool:
        """Prepare for the next keep-alive request; False when the connection must close."""
        if self.broken or self.h11.our_state is not h11.DONE:
            return False
        if self.h11.their_state is not h11.DONE:
            return False
        self.h11.start_next_cycle()
        return True
