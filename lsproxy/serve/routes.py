"""Consumer request routing: (method, target, version, headers) -> what to serve.

Pure: no sockets, no trio. The answer is one of ``StreamRequest``,
``EndpointRequest``, ``AdminRequest`` or ``ErrorReply`` (a Live Stream-style JSON error).
Live Stream's own query parameters are validated the way Live Stream
validates them, then dropped: the upstream request is the proxy's own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from urllib.parse import parse_qsl, unquote, urlsplit

from lsproxy.hub.cursors import Reset
from lsproxy.hub.dedup import parse_hit_id
from lsproxy.secret import redact
from lsproxy.serve.encoding import accepts_gzip
from lsproxy.serve.fields import FieldsError, parse_fields
from lsproxy.serve.sse import wants_event_stream

ENDPOINTS = frozenset({"healthz", "readyz", "status"})
# Operating the proxy: Prometheus metrics, the status page ("" is "/") and its chart's data.
ENDPOINTS |= {"metrics", "rates", "", "static/app.js", "static/style.css"}
# Any small API version: the "firehose" generation of clients asks for /api/0/stream/<X>.
_STREAM_PATH = re.compile(r"/api/[0-9]{1,2}/stream/([^/]+)/?")
_CONSUMER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
# ASCII digits only (str.isdigit() also takes "²" and "٣"), and few of them: int() of
# thousands of digits is slow, and past 4300 it raises.
_INT = re.compile(r"[0-9]{1,6}")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_MAX_SINCE = 64  # characters: the longest ISO-8601 form is about 35


@dataclass(frozen=True, slots=True)
class StreamRequest:
    stream: str  # the stream's table name
    consumer: str | None  # named cursor, None for anonymous
    reset: Reset | None
    gzip: bool
    since: float | None = None  # replay from the first record received at or after (unix time)
    shares: int = 1  # maxConnections: > 1 makes the connection a consumer group member
    after: bytes | None = None  # resume right after this hit id (b"<high>:<low>")
    offset: int | None = None  # start at this log offset (offset=, Last-Event-ID + 1)
    sse: bool = False  # Server-Sent Events instead of Live Stream's JSON lines
    fields: frozenset[str] | None = None  # only these top-level fields
    resume_key: bytes | None = None  # digest of the x-api-key header (never the key itself)
    origin: str | None = None  # the Origin header, for CORS


@dataclass(frozen=True, slots=True)
class EndpointRequest:
    name: str  # one of ENDPOINTS
    head: bool  # HEAD: same status and headers, no body


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """Anything under /admin/ (serve/admin.py routes it further)."""

    method: str
    path: str  # still percent-encoded


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: int
    error: str
    description: str
    allow: bytes = b""  # the Allow header of a 405


Route = StreamRequest | EndpointRequest | AdminRequest | ErrorReply


def _echo(value: str) -> str:
    """Consumer text quoted in an error (sent back and logged): secrets masked, bounded."""
    shown = redact(value)
    return repr(shown if len(shown) <= 64 else shown[:64] + "…")


def _int_param(name: str, value: str, low: int, high: int) -> ErrorReply | None:
    if not _INT.fullmatch(value) or not low <= int(value) <= high:
        return ErrorReply(
            400,
            "invalid_parameter",
            f"{name} must be an integer from {low} to {high}, got {_echo(value)}",
        )
    return None


class Router:
    def __init__(self, routes: Mapping[str, str]) -> None:
        self._routes = dict(routes)  # route key -> stream name

    def resolve(self, key: str) -> str | None:
        """The stream a route key (name, endpoint or report suite) names."""
        return self._routes.get(key)

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
        if path == "/admin" or path.startswith("/admin/"):
            return AdminRequest(method.decode("ascii", "replace"), path)
        if path.startswith("/") and path[1:] in ENDPOINTS:
            if method not in (b"GET", b"HEAD"):
                return ErrorReply(
                    405, "method_not_allowed", f"{path} accepts GET and HEAD only", allow=b"GET, HEAD"
                )
            return EndpointRequest(path[1:], head=method == b"HEAD")
        match = _STREAM_PATH.fullmatch(path)
        if match is None:
            return ErrorReply(
                404, "not_found", f"no such path {_echo(path)}; streams are at /api/1/stream/<name>"
            )
        key = unquote(match.group(1))
        stream = self._routes.get(key)
        if stream is None:
            known = ", ".join(sorted(self._routes)) or "none"
            return ErrorReply(404, "not_found", f"no stream named {_echo(key)} (known: {known})")
        if method != b"GET":
            return ErrorReply(
                405, "method_not_allowed", "Live Stream endpoints accept GET only", allow=b"GET"
            )
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
            return ErrorReply(
                400, "invalid_parameter", f"reset must be smallest or largest, got {_echo(reset)}"
            )
        since = None
        if "since" in params:
            since = parse_since(params["since"])
            if since is None:
                return ErrorReply(
                    400,
                    "invalid_parameter",
                    f"since must be unix seconds or an ISO-8601 time with a zone, got {_echo(params['since'])}",
                )
        consumer = params.get("consumer")
        accept_encoding = accept = ""
        last_event_id: str | None = None
        api_key: bytes | None = None
        origin: str | None = None
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
            elif header == b"accept":
                accept += raw.decode("latin-1") + ","
            elif header == b"last-event-id":
                last_event_id = raw.decode("latin-1").strip()
            elif header == b"x-api-key":
                api_key = raw.strip()
            elif header == b"origin":
                origin = raw.decode("latin-1").strip()
        if consumer is not None and not _CONSUMER_ID.fullmatch(consumer):
            return ErrorReply(
                400,
                "invalid_parameter",
                "consumer id must be 1-128 characters of letters, digits and . _ : @ -",
            )
        start = _start_params(params, last_event_id)
        if isinstance(start, ErrorReply):
            return start
        after, offset = start
        fmt = params.get("format")
        if fmt not in (None, "json", "sse"):
            return ErrorReply(400, "invalid_parameter", f"format must be json or sse, got {fmt[:32]!r}")
        fields = None
        if "fields" in params:
            try:
                fields = frozenset(parse_fields(params["fields"]))
            except FieldsError as exc:
                return ErrorReply(400, "invalid_parameter", str(exc))
        return StreamRequest(
            stream,
            consumer,
            cast(Reset | None, reset),
            accepts_gzip(accept_encoding),
            since,
            shares=int(params.get("maxConnections", "1")),
            after=after,
            offset=offset,
            sse=fmt == "sse" or (fmt is None and wants_event_stream(accept)),
            fields=fields,
            # The stream in the digest: one key's resume points never cross streams.
            resume_key=hashlib.sha256(stream.encode() + b"\0" + api_key).digest() if api_key else None,
            origin=origin,
        )


_MAX_OFFSET = 2**63 - 1
_OFFSET = re.compile(r"[0-9]{1,19}")  # ASCII digits, bounded before int()


def _start_params(
    params: Mapping[str, str], last_event_id: str | None
) -> tuple[bytes | None, int | None] | ErrorReply:
    """(after, offset) from ``after``, ``offset``, ``last_event_id`` and the Last-Event-ID
    header. The header (an EventSource reconnecting) wins over the query, which it repeats;
    otherwise at most one way to say where to start."""
    if last_event_id is not None:
        if not _OFFSET.fullmatch(last_event_id) or int(last_event_id) >= _MAX_OFFSET:
            return ErrorReply(
                400, "invalid_parameter", f"Last-Event-ID must be a log offset, got {last_event_id[:32]!r}"
            )
        return None, int(last_event_id) + 1
    given = [name for name in ("since", "after", "offset", "last_event_id") if name in params]
    if len(given) > 1:
        return ErrorReply(400, "invalid_parameter", f"give one of {' and '.join(given)}, not both")
    if "after" in params:
        after = parse_hit_id(params["after"])
        if after is None:
            return ErrorReply(
                400,
                "invalid_parameter",
                f"after must be <hitIdHigh>:<hitIdLow> in decimal, got {params['after'][:64]!r}",
            )
        return after, None
    for name, delta in (("offset", 0), ("last_event_id", 1)):
        if name in params:
            value = params[name]
            if not _OFFSET.fullmatch(value) or int(value) >= _MAX_OFFSET:
                return ErrorReply(
                    400,
                    "invalid_parameter",
                    f"{name} must be a log offset (an integer >= 0), got {value[:32]!r}",
                )
            return None, int(value) + delta
    return None, None


def parse_since(value: str) -> float | None:
    """Unix seconds (``1700000000``, ``1700000000.5``: ASCII digits) or ISO-8601 with a
    zone (``2026-11-26T18:00:00Z``, ``...+01:00``); None when it is neither."""
    if _UNIX_SECONDS.fullmatch(value):
        return float(value)
    if len(value) > _MAX_SINCE or not value.isascii() or not value[:1].isdigit():
        return None  # float() would also take "nan", "1e9", "1_0" and non-ASCII digits
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # a local time would depend on the proxy's zone: refuse it
    return moment.timestamp()
