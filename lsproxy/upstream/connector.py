"""One upstream connection attempt: request, redirects, then records into the hub.

The thin I/O shell around the pure pieces (request, framing, outcome). It
returns an ``Outcome`` for every way an attempt can end and never raises
except ``Cancelled``: foreign exceptions (httpx, trio, framing) are translated
here, at this one boundary. httpx's own redirect handling stays off: it drops
``Authorization`` on cross-origin redirects, and Live Stream redirects are
cross-origin.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from typing import Protocol

import httpx
import trio

from lsproxy.config import StreamConfig, UpstreamSettings
from lsproxy.errors import CredentialsError, FramingError, RedirectError
from lsproxy.hub.stream import StreamHub
from lsproxy.secret import Secret
from lsproxy.upstream.framing import RecordFramer
from lsproxy.upstream.outcome import Outcome, classify_end, classify_status
from lsproxy.upstream.request import MAX_REDIRECTS, REDIRECT_STATUSES, build_request, follow_redirect
from lsproxy.upstream.tls_context import client_tls_context

ERROR_BODY_LIMIT = 64 * 1024
# TCP keepalive finds a dead upstream (no FIN, no RST) within ~2 minutes, even on a
# quiet suite that sends nothing for hours, where an idle_timeout would cause a
# reconnect loop: so idle_timeout can default to 0 (off).
KEEPALIVE_OPTIONS = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6),
]


async def _read_limited(response: httpx.Response, limit: int = ERROR_BODY_LIMIT) -> bytes:
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return body[:limit]


async def _stream_records(response: httpx.Response, hub: StreamHub, connection: int) -> None:
    """Feed the raw (still gzip) body through the framer into the hub until EOF."""
    framer = RecordFramer()
    status = hub.upstreams[connection]
    async for chunk in response.aiter_raw():
        status.bytes_received += len(chunk)
        records = framer.feed(chunk)
        while True:
            if records:
                hub.append(records, connection)
            if not framer.pending:
                break
            # A few KB of gzip can inflate to gigabytes: the framer works in bounded
            # steps, and everything else (/healthz, consumers) runs between them.
            await trio.lowlevel.checkpoint()
            records = framer.feed(b"")
    records = framer.feed_eof()
    if records:
        hub.append(records, connection)


class TokenSource(Protocol):
    """What a connection attempt needs of a credential set (see credentials.py)."""

    @property
    def api_key(self) -> Secret | None: ...
    async def get(self) -> Secret: ...
    def invalidate(self, token: Secret | None = None) -> None: ...


def upstream_params(settings: UpstreamSettings) -> dict[str, str]:
    """Live Stream options of the upstream request, besides maxConnections."""
    params = {}
    if settings.smoothing:
        params["smoothing"] = "1"
        if settings.smoothing_bucket_size is not None:
            params["smoothingBucketSize"] = str(settings.smoothing_bucket_size)
    return params


async def stream_once(
    stream: StreamConfig,
    hub: StreamHub,
    tokens: TokenSource,
    on_connected: Callable[[], None],
    *,
    connection: int = 0,
) -> Outcome:
    """Connect (following redirects by hand), stream until the connection ends, say how it ended."""
    settings = stream.upstream
    try:
        token = await tokens.get()
    except CredentialsError as exc:
        return classify_end("credentials", str(exc), stream=stream.name, streamed=False)
    params = upstream_params(settings)
    if stream.initial_reset is not None and hub.log.next_offset == 0:
        # Only for a stream that has no stored position at all; afterwards Live Stream
        # resumes (and backfills) from where this proxy left off.
        params["reset"] = stream.initial_reset
    request = build_request(
        stream.url,
        token=token.reveal(),
        api_key=tokens.api_key.reveal() if tokens.api_key else None,
        max_connections=settings.connections,
        params=params,
    )
    head_deadline = settings.connect_timeout if settings.connect_timeout > 0 else math.inf
    timeout = httpx.Timeout(
        connect=settings.connect_timeout or None,
        read=settings.idle_timeout or None,  # httpx's read timeout is our idle timeout
        write=settings.connect_timeout or None,
        pool=settings.connect_timeout or None,
    )
    streamed = False
    try:
        transport = httpx.AsyncHTTPTransport(verify=await client_tls_context(), socket_options=KEEPALIVE_OPTIONS)
        async with httpx.AsyncClient(
            transport=transport, timeout=timeout, trust_env=False, follow_redirects=False
        ) as client:
            for hops in range(MAX_REDIRECTS + 1):
                with trio.fail_after(head_deadline):
                    response = await client.send(
                        client.build_request("GET", request.url, headers=list(request.headers)), stream=True
                    )
                try:
                    status = response.status_code
                    if status in REDIRECT_STATUSES:
                        request = follow_redirect(request, status, response.headers.get("location"), hops)
                        continue
                    if status == 401:
                        # Only this token is bad: another connection may already have replaced it.
                        tokens.invalidate(token)
                    if not 200 <= status < 300:
                        with trio.move_on_after(head_deadline):
                            return classify_status(status, await _read_limited(response), stream=stream.name)
                        return classify_status(status, b"", stream=stream.name)
                    encoding = response.headers.get("content-encoding", "").lower()
                    if encoding != "gzip":
                        return classify_end(
                            "framing",
                            f"upstream answered with Content-Encoding {encoding or 'identity'!r}, expected gzip",
                            stream=stream.name,
                            streamed=False,
                        )
                    streamed = True
                    on_connected()
                    await _stream_records(response, hub, connection)
                    return classify_end(
                        "eof", "upstream closed the stream", stream=stream.name, streamed=True
                    )
                finally:
                    await response.aclose()
            raise AssertionError("unreachable: follow_redirect raises past MAX_REDIRECTS")
    except trio.TooSlowError:
        return classify_end(
            "connect_timeout",
            f"no response head within {settings.connect_timeout:g} s",
            stream=stream.name,
            streamed=False,
        )
    except httpx.ReadTimeout:
        if streamed:
            detail = f"no bytes for {settings.idle_timeout:g} s (idle_timeout)"
            return classify_end("idle_timeout", detail, stream=stream.name, streamed=True)
        return classify_end(
            "timeout", "timed out waiting for the upstream", stream=stream.name, streamed=False
        )
    except httpx.TimeoutException as exc:
        return classify_end("connect_timeout", type(exc).__name__, stream=stream.name, streamed=streamed)
    except (httpx.TransportError, OSError) as exc:
        return classify_end("network", _describe(exc), stream=stream.name, streamed=streamed)
    except FramingError as exc:
        return classify_end("framing", str(exc), stream=stream.name, streamed=streamed)
    except RedirectError as exc:
        return classify_end("redirect", str(exc), stream=stream.name, streamed=streamed)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
