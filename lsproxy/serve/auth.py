"""Who is asking, and may they: consumer tokens, per-stream access, the admin
API's gate, and the limiter for failed authentications.

Theory of operation
-------------------
Authentication is on as soon as the configuration has a ``[consumers.<name>]``
table. Each table holds the SHA-256 of its bearer token, never the token. A
request's token is hashed and compared with *every* table's digest through
``hmac.compare_digest``, without stopping at a match, so neither the content
of a guess nor which table it hit shows in the time taken.

``AccessControl.admit`` turns a routed request into ``Admitted`` (the route,
with the cursor name moved into the consumer's namespace: ``consumer=x`` from
table ``team`` is the cursor ``team/x``, so no team can read or move another's
cursor) or ``Refused`` (a Live Stream-style JSON error: 401 with
``WWW-Authenticate: Bearer`` for a missing or unknown token, 403 for a stream
outside the table's list or a non-admin on ``/admin/``, 429 while the client's
address is blocked). ``/healthz`` and ``/readyz`` stay open for probes. With
authentication off the admin API answers loopback clients only.

An address with ``FAILURE_LIMIT`` failed authentications within
``FAILURE_WINDOW`` seconds gets 429 for ``BLOCK_SECONDS``; the limiter says
when an address becomes blocked, so that the server logs it once per block.
Time is passed in (``now``), the module reads no clock and does no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from lsproxy.config_consumers import ConsumerAccess
from lsproxy.serve.routes import AdminRequest, EndpointRequest, ErrorReply, Route, StreamRequest

__all__ = ["AccessControl", "Admitted", "FailedAuthLimiter", "Refused", "find_consumer", "is_loopback"]

FAILURE_LIMIT = 20
FAILURE_WINDOW = 60.0
BLOCK_SECONDS = 60.0
MAX_TRACKED_ADDRESSES = 10_000  # memory bound under a spread-out attack
# Probes carry no token; the status page's files hold no data (its data comes from
# /status and /rates, which need one).
OPEN_ENDPOINTS = frozenset({"healthz", "readyz", "", "static/app.js", "static/style.css"})

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Admitted:
    route: Route
    identity: ConsumerAccess | None  # None: authentication is off, or an open endpoint


@dataclass(frozen=True, slots=True)
class Refused:
    reply: ErrorReply
    headers: tuple[tuple[bytes, bytes], ...] = ()
    blocked: bool = False  # this failure blocked the address (log it: once per block)


def find_consumer(consumers: Sequence[ConsumerAccess], token: bytes) -> ConsumerAccess | None:
    """The table whose token this is. Every digest is compared in constant time, and all
    of them always are: the time taken says nothing about the token or the match."""
    digest = hashlib.sha256(token).digest()
    found = None
    for consumer in consumers:
        if hmac.compare_digest(digest, consumer.token_sha256):
            found = consumer
    return found


def bearer_token(headers: Headers) -> bytes | None:
    """The token of the one ``Authorization: Bearer`` header; None if absent or malformed."""
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or b" " in token:
        return None
    return token


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class FailedAuthLimiter:
    """Failed authentications per client address; see the module docstring."""

    def __init__(
        self,
        *,
        limit: int = FAILURE_LIMIT,
        window: float = FAILURE_WINDOW,
        block: float = BLOCK_SECONDS,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        self.limit, self.window, self.block, self.max_addresses = limit, window, block, max_addresses
        self._failures: dict[str, deque[float]] = {}
        self._blocked: dict[str, float] = {}  # address -> blocked until

    def __len__(self) -> int:
        return len(self._failures.keys() | self._blocked.keys())

    def retry_after(self, address: str, now: float) -> float | None:
        """Seconds the address stays blocked; None when it is not."""
        until = self._blocked.get(address)
        if until is None:
            return None
        if until <= now:
            del self._blocked[address]
            return None
        return until - now

    def failed(self, address: str, now: float) -> bool:
        """Count a failure; True when it blocks the address."""
        times = self._failures.get(address)
        if times is None:
            self._make_room(now)
            times = self._failures[address] = deque(maxlen=self.limit)
        times.append(now)
        if len(times) < self.limit or times[0] <= now - self.window:
            return False
        del self._failures[address]
        self._blocked[address] = now + self.block
        return True

    def _make_room(self, now: float) -> None:
        if len(self._failures) + len(self._blocked) < self.max_addresses:
            return
        horizon = now - self.window
        for address in [a for a, t in self._failures.items() if t[-1] <= horizon]:
            del self._failures[address]
        for address in [a for a, until in self._blocked.items() if until <= now]:
            del self._blocked[address]
        # Still full of recent failures: forget the oldest tenth (blocks are kept).
        excess = len(self._failures) + len(self._blocked) - self.max_addresses + 1
        if excess > 0:
            for address in list(self._failures)[: max(excess, self.max_addresses // 10)]:
                del self._failures[address]


def _unauthorized(description: str, error: str | None = None) -> Refused:
    challenge = b'Bearer realm="lsproxy"' + (f', error="{error}"'.encode() if error else b"")
    return Refused(
        ErrorReply(401, "unauthorized", description), ((b"www-authenticate", challenge),)
    )


def _forbidden(description: str) -> Refused:
    return Refused(ErrorReply(403, "forbidden", description))


class AccessControl:
    def __init__(self, consumers: Sequence[ConsumerAccess] = (), limiter: FailedAuthLimiter | None = None):
        self.consumers = tuple(consumers)
        self.limiter = limiter or FailedAuthLimiter()

    @property
    def enabled(self) -> bool:
        return bool(self.consumers)

    def replace_consumers(self, consumers: Sequence[ConsumerAccess]) -> None:
        """A reload: new tables, the same failure counts."""
        self.consumers = tuple(consumers)

    def admit(self, route: Route, headers: Headers, peer: str, now: float) -> Admitted | Refused:
        if isinstance(route, EndpointRequest) and route.name in OPEN_ENDPOINTS:
            return Admitted(route, None)
        if not self.enabled:
            if isinstance(route, AdminRequest) and not is_loopback(peer):
                return _forbidden(
                    "the admin API answers loopback clients only while consumers are not "
                    "authenticated (no [consumers] tables)"
                )
            return Admitted(route, None)
        wait = self.limiter.retry_after(peer, now)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            reply = ErrorReply(
                429, "too_many_requests", f"too many failed authentications; retry in {seconds} s"
            )
            return Refused(reply, ((b"retry-after", str(seconds).encode()),))
        token = bearer_token(headers)
        identity = find_consumer(self.consumers, token) if token is not None else None
        if identity is None:
            refusal = (
                _unauthorized("an Authorization: Bearer <token> header is required")
                if token is None
                else _unauthorized("the bearer token is not valid", "invalid_token")
            )
            return dataclasses.replace(refusal, blocked=self.limiter.failed(peer, now))
        if isinstance(route, StreamRequest):
            if not identity.may_read(route.stream):
                return _forbidden(f"consumer {identity.name!r} may not read stream {route.stream!r}")
            if route.consumer is not None:
                route = dataclasses.replace(route, consumer=f"{identity.name}/{route.consumer}")
        elif isinstance(route, AdminRequest) or (isinstance(route, EndpointRequest) and route.name == "metrics"):
            if not identity.admin:  # /metrics names every stream and consumer
                return _forbidden(f"consumer {identity.name!r} is not an admin (admin = true)")
        elif isinstance(route, ErrorReply) and route.status == 404 and not identity.admin:
            # The router's message lists every stream; a restricted consumer sees only its own.
            route = ErrorReply(404, "not_found", "no such path or stream")
        return Admitted(route, identity)


def cursor_prefix(identity: ConsumerAccess | None) -> str | None:
    """Cursor names a /status caller may see: None for all (admin, or authentication off)."""
    if identity is None or identity.admin:
        return None
    return f"{identity.name}/"
