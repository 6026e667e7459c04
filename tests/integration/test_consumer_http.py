"""The consumer-facing HTTP parsing rules, over raw sockets against a running proxy."""

from __future__ import annotations

import json

import trio

from tests.harness import StreamReader, running


async def exchange(port: int, request: bytes, timeout: float = 3) -> tuple[bytes, bool]:
    """Send ``request``, read until the proxy closes or ``timeout``: (bytes read, closed)."""
    s = await trio.open_tcp_stream("127.0.0.1", port)
    await s.send_all(request)
    out, closed = b"", False
    with trio.move_on_after(timeout):
        while data := await s.receive_some(65536):
            out += data
        closed = True
    await s.aclose()
    return out, closed


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}, body


async def test_odd_digits_in_integer_parameters_get_a_400_not_a_dropped_connection() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        for value in (b"%C2%B2", b"%D9%A3", b"9" * 5000):
            response, closed = await exchange(
                proxy.port, b"GET /api/1/stream/s1?maxConnections=" + value + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            status, _, body = split(response)
            assert status.startswith("HTTP/1.1 400 "), (value[:20], response[:200])
            assert "maxConnections" in json.loads(body)["error_description"]
            assert closed


async def test_head_is_answered_with_headers_and_no_body_everywhere() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        # A stream path: 405 naming what is allowed, the length of the GET's error body, no body.
        response, closed = await exchange(proxy.port, b"HEAD /api/1/stream/s1 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = split(response)
        assert status.startswith("HTTP/1.1 405 "), response
        assert headers["allow"] == "GET" and int(headers["content-length"]) > 0
        assert body == b"" and closed
        for target, code in ((b"/api/1/stream/nope", "404"), (b"/nowhere", "404")):
            response, closed = await exchange(proxy.port, b"HEAD " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = split(response)
            assert status.startswith(f"HTTP/1.1 {code} ") and body == b"" and closed, response
        # An endpoint: 200 without a body, and the connection goes on to the next request.
        response, closed = await exchange(
            proxy.port,
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        first, _, second = response.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 "), response
        assert second.endswith(b'{\n "status": "ok"\n}\n') and closed
        # A method an endpoint does not take.
        response, _ = await exchange(proxy.port, b"DELETE /status HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = split(response)
        assert status.startswith("HTTP/1.1 405 ") and headers["allow"] == "GET, HEAD"


async def test_content_length_with_transfer_encoding_is_answered_then_closed() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        request = (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        response, closed = await exchange(proxy.port, request, timeout=5)  # keep-alive idle is 30 s
        status, headers, _ = split(response)
        assert status.startswith("HTTP/1.1 200 ")
        assert headers.get("connection") == "close"
        assert closed


async def test_firehose_clients_reach_the_stream_at_api_0() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        reader = await StreamReader(proxy.port, "/api/0/stream/s1").connect()
        assert reader.status == 200
        await reader.read_records(5)
        await reader.aclose()
