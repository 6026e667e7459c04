"""Pure request rules of the simulated Live Stream API (no I/O).

The checks of a stream connection run in the documented order: unknown
endpoint 404, non-GET 405, HTTP version 505, bearer token 401, api key 401,
gzip 406, ``maxConnections`` 400, ``smoothingBucketSize`` 400 (and an
unknown ``reset`` value 400). With ``echo_token`` (hostile mode) a 401's
description ends with the bearer token received. Everything after that (slots, failures
injected by tests, rate 0) depends on the stream's live state: see
``stream.StreamState.admit``.

The bearer token is accepted when it is the static ``token`` or, with the
IMS look-alike enabled, a token it issued that has not expired (the caller
passes the lookup, ``ims.ImsState.lookup``); an expired issued token is a
401 ``invalid_token`` "token expired". Every 401 carries a ``reason`` for
the simulator's stats: missing_token, invalid_token, expired_token, api_key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

from lsproxy.simulator.settings import SimSettings

STREAM_PATH = re.compile(r"^/api/([12])/stream/([^/]+)$")
NODE_PATH = re.compile(r"^/_sim/node/([12])/stream/([^/]+)$")
_DIGITS = re.compile(r"^[0-9]{1,6}$")

ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "too_many_connections",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    505: "http_version_not_supported",
}


@dataclass(frozen=True)
class Request:
    """A parsed request head: lower-case header names, first value of each query key."""

    method: str
    target: str
    http_version: str
    headers: dict[str, str]
    body: bytes = field(default=b"", repr=False)  # the request body (bounded by the reader)
    path: str = field(init=False)
    query_string: str = field(init=False)
    query: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        object.__setattr__(self, "path", parts.path)
        object.__setattr__(self, "query_string", parts.query)
        parsed = parse_qs(parts.query, keep_blank_values=True)
        object.__setattr__(self, "query", {k: v[0] for k, v in parsed.items()})


@dataclass(frozen=True)
class Refusal:
    """An error answer: status plus Live Stream-style JSON error body."""

    status: int
    error: str
    description: str
    reason: str = field(default="", compare=False)  # for stats only, never sent

    def body(self) -> bytes:
        return json.dumps({"error": self.error, "error_description": self.description}).encode()


def refusal(status: int, description: str) -> Refusal:
    return Refusal(status, ERROR_NAMES.get(status, "error"), description)


@dataclass(frozen=True)
class StreamParams:
    max_connections: int
    reset: str | None
    smoothing_bucket_size: int


#: Looks up an issued token: "valid", "expired" or "unknown".
TokenLookup = Callable[[str], str]


def bearer_token(headers: dict[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def authorization_ok(headers: dict[str, str], token: str, issued: TokenLookup | None = None) -> bool:
    return check_authorization(headers, token, issued) is None


def check_authorization(
    headers: dict[str, str], token: str, issued: TokenLookup | None = None
) -> Refusal | None:
    """None when the bearer token is the static one or a valid issued one, else the 401."""
    value = bearer_token(headers)
    if value is not None and value == token:
        return None
    if value and issued is not None:
        state = issued(value)
        if state == "valid":
            return None
        if state == "expired":
            return Refusal(401, "invalid_token", "token expired", reason="expired_token")
    if "authorization" not in headers:
        return Refusal(401, ERROR_NAMES[401], "missing bearer token", reason="missing_token")
    return Refusal(401, ERROR_NAMES[401], "invalid bearer token", reason="invalid_token")


def accepts_gzip(headers: dict[str, str]) -> bool:
    for item in headers.get("accept-encoding", "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() != "gzip":
            continue
        q = params.strip()
        if q.lower().startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def _int_param(query: dict[str, str], name: str, default: int, lo: int, hi: int) -> int | None:
    raw = query.get(name)
    if raw is None:
        return default
    if not _DIGITS.match(raw) or not lo <= int(raw) <= hi:
        return None
    return int(raw)


def check_stream_request(
    req: Request, settings: SimSettings, issued: TokenLookup | None = None
) -> StreamParams | Refusal:
    """Everything a stream connection must satisfy before the live state is consulted.

    The caller has already matched the path to a known endpoint (else 404).
    ``issued`` looks up tokens issued by the IMS look-alike (None: static token only).
    """
    if req.method != "GET":
        return refusal(405, f"method {req.method} not allowed; use GET")
    if req.http_version != "1.1":
        return refusal(505, f"HTTP/{req.http_version} not supported; use HTTP/1.1")
    denied = check_authorization(req.headers, settings.token, issued)
    if denied is not None:
        if settings.echo_token and (token := bearer_token(req.headers)):
            return dataclasses.replace(denied, description=f"{denied.description}: {token}")
        return denied
    api_key = settings.expected_api_key
    if api_key is not None and req.headers.get("x-api-key") != api_key:
        return Refusal(401, ERROR_NAMES[401], "x-api-key missing or invalid", reason="api_key")
    if not accepts_gzip(req.headers):
        return refusal(406, "Accept-Encoding must include gzip")
    max_conns = _int_param(req.query, "maxConnections", 1, 1, 8)
    if max_conns is None:
        return refusal(400, "maxConnections must be an integer between 1 and 8")
    bucket = _int_param(req.query, "smoothingBucketSize", 270, 1, 7200)
    if bucket is None:
        return refusal(400, "smoothingBucketSize must be an integer between 1 and 7200")
    reset = req.query.get("reset")
    if reset is not None and reset not in ("smallest", "largest"):
        return refusal(400, "reset must be smallest or largest")
    return StreamParams(max_conns, reset, bucket)


def masked_headers(
    headers: dict[str, str], token: str, issued: TokenLookup | None = None
) -> dict[str, object]:
    """Request headers for /_sim/stats: Authorization masked, plus authorization_ok."""
    out: dict[str, object] = dict(headers)
    if "authorization" in out:
        scheme = headers["authorization"].partition(" ")[0]
        out["authorization"] = f"{scheme} ***" if scheme else "***"
    out["authorization_ok"] = authorization_ok(headers, token, issued)
    return out


def redirect_location(
    req: Request, version: str, endpoint: str, port: int, *, echo_token: bool = False
) -> str:
    """A cross-origin node URL: reached as localhost -> 127.0.0.1, otherwise -> localhost.
    ``echo_token``: the bearer token received goes into its query, as ``token``."""
    host = req.headers.get("host", "")
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    node_host = "127.0.0.1" if hostname.lower() == "localhost" else "localhost"
    query_string = req.query_string
    if echo_token and (token := bearer_token(req.headers)):
        query_string = "&".join(filter(None, (query_string, urlencode({"token": token}))))
    query = f"?{query_string}" if query_string else ""
    return f"http://{node_host}:{port}/_sim/node/{version}/stream/{endpoint}{query}"
