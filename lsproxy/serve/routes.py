"""Consumer request routing: (method, target, version, headers) -> what to serve.

Pure: no sockets, no trio. The answer is one of ``StreamRequest``,
``EndpointRequest`` or ``ErrorReply`` (a Live Stream-style JSON error).
Live Stream's own query parameters are validated the way Live Stream
validates them, then dropped: the upstream request is the proxy's own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from urllib.parse import parse_qsl, unquote, urlsplit

from lsproxy.hub.cursors import Reset
from lsproxy.serve.encoding import accepts_gzip

ENDPOINTS = frozenset({"healthz", "readyz", "status"})
# Operating the proxy: Prometheus metrics, the status page ("" is "/") and its chart's data.
ENDPOINTS |= {"metrics", "rates", "", "static/app.js", "static/style.css"}
_STREAM_PATH = re.compile(r"^/api/[12]/stream/([^/]+)/?$")
_CONSUMER_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


@dataclass(frozen=True, slots=True)
class StreamRequest:
    stream: str  # the stream's table name
    consumer: str | None  # named cursor, None for anonymous
    reset: Reset | None
    gzip: bool
    since: float | None = None  # replay from the first record received at or after (unix time)


@dataclass(frozen=True, slots=True)
class EndpointRequest:
    name: str  # one of ENDPOINTS
    head: bool  # HEAD: same status and headers, no body


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: int
    error: str
    description: str


Route = StreamRequest | EndpointRequest | ErrorReply


def _int_param(name: str, value: str, low: int, high: int) -> ErrorReply | None:
    if not value.isdigit() or not low <= int(value) <= high:
        return ErrorReply(
            400, "invalid_parameter", f"{name} must be an integer from {low} to {high}, got {value!r}"
        )
    return None


class Router:
    def __init__(self, routes: Mapping[str, str]) -> None:
        self._routes = dict(routes)  # route key -> stream name

    def route(
        self,
        method: bytes,
        target: bytes,
        http_version: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Route:
        try:
            parts = urlsplit(target.decode("ascii"))
        except UnicodeDecodeError:
            return ErrorReply(400, "bad_request", "the request target is not ASCII")
        path = parts.path
        if path.startswith("/") and path[1:] in ENDPOINTS:
            if method not in (b"GET", b"HEAD"):
                return ErrorReply(405, "method_not_allowed", f"{path} accepts GET only")
            return EndpointRequest(path[1:], head=method == b"HEAD")
        match = _STREAM_PATH.match(path)
        if match is None:
            return ErrorReply(404, "not_found", f"no such path {path!r}; streams are at /api/1/stream/<name>")
        key = unquote(match.group(1))
        stream = self._routes.get(key)
        if stream is None:
            known = ", ".join(sorted(self._routes)) or "none"
            return ErrorReply(404, "not_found", f"no stream named {key!r} (known: {known})")
        if method != b"GET":
            return ErrorReply(405, "method_not_allowed", "Live Stream endpoints accept GET only")
        if http_version != b"1.1":
            return ErrorReply(505, "http_version_not_supported", "a stream needs HTTP/1.1 (chunked encoding)")
        return self._stream_request(stream, parts.query, headers)

    def _stream_request(
        self, stream: str, query: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> StreamRequest | ErrorReply:
        params: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if params.setdefault(name, value) != value:
                return ErrorReply(400, "invalid_parameter", f"{name} is given twice with different values")
        for name, low, high in (("maxConnections", 1, 8), ("smoothingBucketSize", 1, 7200)):
            if name in params and (error := _int_param(name, params[name], low, high)):
                return error
        if params.get("smoothing", "0") not in ("0", "1", "true", "false"):
            return ErrorReply(400, "invalid_parameter", "smoothing must be 0 or 1")
        reset = params.get("reset")
        if reset is not None and reset not in ("smallest", "largest"):
            return ErrorReply(400, "invalid_parameter", f"reset must be smallest or largest, got {reset!r}")
        since = None
        if "since" in params:
            since = parse_since(params["since"])
            if since is None:
                return ErrorReply(
                    400,
                    "invalid_parameter",
                    f"since must be unix seconds or an ISO-8601 time with a zone, got {params['since'][:64]!r}",
                )
        consumer = params.get("consumer")
        accept_encoding = ""
        for header, raw in headers:
            if header == b"x-consumer-id":
                header_id = raw.decode("latin-1").strip()
                if consumer is not None and consumer != header_id:
                    return ErrorReply(
                        400, "invalid_parameter", "consumer and X-Consumer-Id name different consumers"
                    )
                consumer = header_id
            elif header == b"accept-encoding":
                accept_encoding += raw.decode("latin-1") + ","
        if consumer is not None and not _CONSUMER_ID.match(consumer):
            return ErrorReply(
                400,
                "invalid_parameter",
                "consumer id must be 1-128 characters of letters, digits and . _ : @ -",
            )
        return StreamRequest(
            stream, consumer, cast(Reset | None, reset), accepts_gzip(accept_encoding), since
        )


def parse_since(value: str) -> float | None:
    """Unix seconds (``1700000000``, ``1700000000.5``) or ISO-8601 with a zone
    (``2026-11-26T18:00:00Z``, ``...+01:00``); None when it is neither."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:
            return None  # a local time would depend on the proxy's zone: refuse it
        return moment.timestamp()
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
