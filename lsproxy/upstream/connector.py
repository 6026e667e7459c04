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
from collections.abc import Callable

import httpx
import trio

from lsproxy.config import StreamConfig
from lsproxy.errors import FramingError, RedirectError
from lsproxy.hub.stream import StreamHub
from lsproxy.upstream.framing import RecordFramer
from lsproxy.upstream.outcome import Outcome, classify_end, classify_status
from lsproxy.upstream.request import MAX_REDIRECTS, REDIRECT_STATUSES, build_request, follow_redirect

ERROR_BODY_LIMIT = 64 * 1024


async def _read_limited(response: httpx.Response, limit: int = ERROR_BODY_LIMIT) -> bytes:
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return body[:limit]


async def _stream_records(response: httpx.Response, hub: StreamHub) -> None:
    """Feed the raw (still gzip) body through the framer into the log until EOF."""
    framer = RecordFramer()
    async for chunk in response.aiter_raw():
        records = framer.feed(chunk)
        if records:
            hub.append(records)
    records = framer.feed_eof()
    if records:
        hub.append(records)


async def stream_once(stream: StreamConfig, hub: StreamHub, on_connected: Callable[[], None]) -> Outcome:
    """Connect (following redirects by hand), stream until the connection ends, say how it ended."""
    settings = stream.upstream
    credentials = stream.credentials
    request = build_request(
        stream.url,
        token=credentials.token.reveal(),
        api_key=credentials.api_key.reveal() if credentials.api_key else None,
        max_connections=1,
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
        async with httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False) as client:
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
                    await _stream_records(response, hub)
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
