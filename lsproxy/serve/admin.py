"""The admin API under ``/admin/``: JSON in, JSON out, from hub state only.

    GET    /admin/streams                                  state, rate, next attempt per stream
    GET    /admin/consumers                                every stream's consumers (and groups)
    POST   /admin/streams/<route>/consumers/<id>/cursor    {"offset": n} | {"since": t} | {"reset": r}
    DELETE /admin/streams/<route>/consumers/<id>           forget a cursor
    POST   /admin/streams/<route>/reconnect                ask for an upstream attempt now

Who may call it is decided before (``auth.AccessControl``: an admin token, or
a loopback client while authentication is off). A cursor move or delete is
book-keeping in the hub; a connection holding the cursor ends its response
cleanly and its consumer resumes at the new position. A reconnect goes
through each upstream connection's supervisor, which never starts an attempt
before the 60 s rule allows (409 until then). Errors have Live Stream's JSON
shape. Cursor ids with a ``/`` (``team/x``, the namespaced names) may be sent
as they are or percent-encoded.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import unquote

from lsproxy.hub.stream import StreamHub
from lsproxy.serve.auth import AccessControl
from lsproxy.serve.http import HttpConnection
from lsproxy.serve.routes import _CONSUMER_ID, AdminRequest, ErrorReply, parse_since

MAX_BODY = 64 * 1024
RATE_WINDOW = 60.0  # seconds the stream's rate is measured over

Headers = list[tuple[bytes, bytes]]


class ReconnectAnswer(Protocol):
    """One upstream connection's answer (``upstream.supervisor.ReconnectAnswer``)."""

    @property
    def result(self) -> str: ...  # "scheduled", "closing" or "refused"
    @property
    def next_attempt_in(self) -> float | None: ...
    @property
    def reason(self) -> str: ...


#: stream name -> each upstream connection's answer (wired by app.py; serve/ cannot see upstream/)
Reconnect = Callable[[str], Sequence[ReconnectAnswer]]


@dataclass(frozen=True, slots=True)
class AdminCall:
    action: Literal["streams", "consumers", "move", "delete", "reconnect"]
    route: str = ""
    consumer: str = ""


@dataclass(frozen=True, slots=True)
class MethodNotAllowed(ErrorReply):
    allow: bytes = b""


def _method_not_allowed(allowed: str) -> ErrorReply:
    return MethodNotAllowed(
        405, "method_not_allowed", f"this admin path accepts {allowed} only", allowed.encode()
    )


def parse_call(method: str, path: str) -> AdminCall | ErrorReply:
    """Which admin call an (method, path) is; pure."""
    rest = path.rstrip("/").split("/")[2:]  # after "", "admin"
    if rest in (["streams"], ["consumers"]):
        if method not in ("GET", "HEAD"):
            return _method_not_allowed("GET, HEAD")
        return AdminCall("streams" if rest == ["streams"] else "consumers")
    if len(rest) >= 3 and rest[0] == "streams" and rest[1]:
        route = unquote(rest[1])
        if rest[2:] == ["reconnect"]:
            return AdminCall("reconnect", route) if method == "POST" else _method_not_allowed("POST")
        if rest[2] == "consumers" and len(rest) >= 4:
            tail = rest[3:]
            to_cursor = len(tail) >= 2 and tail[-1] == "cursor"  # or a cursor named ".../cursor"
            if method == "DELETE":
                return AdminCall("delete", route, unquote("/".join(tail)))
            if method == "POST" and to_cursor:
                return AdminCall("move", route, unquote("/".join(tail[:-1])))
            return _method_not_allowed("POST, DELETE" if to_cursor else "DELETE")
    return ErrorReply(
        404,
        "not_found",
        f"no admin path {path[:200]!r}; see /admin/streams, /admin/consumers, "
        "/admin/streams/<route>/consumers/<id>/cursor, /admin/streams/<route>/reconnect",
    )


class AdminApi:
    def __init__(
        self,
        hubs: Mapping[str, StreamHub],
        resolve: Callable[[str], str | None],
        access: AccessControl,
        reconnect: Reconnect | None = None,
    ) -> None:
        self.hubs = hubs  # shared with the server: streams come and go with reloads
        self.resolve = resolve  # route key -> stream name
        self.access = access
        self.reconnect = reconnect

    async def serve(
        self, http: HttpConnection, request: AdminRequest, body_timeout: float
    ) -> tuple[int, bytes, Headers]:
        """(status, JSON body, extra headers) for one admin request."""
        call = parse_call(request.method, request.path)
        if isinstance(call, ErrorReply):
            return _reply(call)
        body = b""
        if call.action == "move":
            read = await http.read_body(MAX_BODY, body_timeout)
            if isinstance(read, ErrorReply):
                return _reply(read)
            body = read
        status, payload, headers = self.answer(call, body, time.time())
        return status, _json(payload), headers

    # -- the calls (synchronous: hub state only) ----------------------------
    def answer(self, call: AdminCall, body: bytes, now: float) -> tuple[int, dict[str, Any], Headers]:
        if call.action == "streams":
            return 200, {"streams": {n: self._stream(h, now) for n, h in self.hubs.items()}}, []
        if call.action == "consumers":
            return 200, {"streams": {n: self._consumers(h, now) for n, h in self.hubs.items()}}, []
        stream = self.resolve(call.route)
        hub = self.hubs.get(stream) if stream is not None else None
        if hub is None:
            return _problem(404, "not_found", f"no stream named {call.route[:100]!r}")
        if call.action == "reconnect":
            return self._reconnect(hub)
        if call.action == "delete":
            ended = hub.forget_cursor(call.consumer)
            if ended is None:
                return _problem(404, "not_found", f"stream {hub.name}: no named cursor {call.consumer[:200]!r}")
            return 200, {"stream": hub.name, "consumer": call.consumer, "deleted": True,
                         "connection_ended": ended}, []  # fmt: skip
        return self._move(hub, call.consumer, body)

    def _move(self, hub: StreamHub, name: str, body: bytes) -> tuple[int, dict[str, Any], Headers]:
        cursor = hub.book.get(name)
        if cursor is None and (problem := self._new_name_problem(name)):
            return _problem(400, "invalid_parameter", problem)
        if cursor is not None and not cursor.named:
            return _problem(400, "invalid_parameter", f"{name!r} is an anonymous consumer: it has no cursor to move")
        try:
            request = json.loads(body) if body else None
        except (ValueError, RecursionError):
            request = None
        if not isinstance(request, dict) or len(request) != 1:
            return _problem(
                400, "invalid_parameter",
                'the body must be one JSON object with one key: {"offset": n}, {"since": t} '
                'or {"reset": "smallest"|"largest"}',
            )  # fmt: skip
        ((key, value),) = request.items()
        log = hub.log
        if key == "offset":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return _problem(400, "invalid_parameter", "offset must be an integer >= 0")
            if value > log.next_offset:
                return _problem(400, "invalid_parameter", f"offset {value} is beyond the tail {log.next_offset}")
            position = value
        elif key == "since":
            since = parse_since(str(value)) if isinstance(value, (str, int, float)) else None
            if since is None or isinstance(value, bool):
                return _problem(
                    400, "invalid_parameter", "since must be unix seconds or an ISO-8601 time with a zone"
                )
            position = log.offset_at(since)
        elif key == "reset":
            if value not in ("smallest", "largest"):
                return _problem(400, "invalid_parameter", 'reset must be "smallest" or "largest"')
            position = log.oldest if value == "smallest" else log.next_offset
        else:
            return _problem(400, "invalid_parameter", f"unknown key {key[:40]!r}; use offset, since or reset")
        previous = cursor.current if cursor is not None else None
        ended = hub.move_cursor(name, position)
        moved = hub.book.get(name)
        assert moved is not None
        return 200, {"stream": hub.name, "consumer": name, "position": moved.position,
                     "previous": previous, "created": cursor is None, "connection_ended": ended}, []  # fmt: skip

    def _new_name_problem(self, name: str) -> str | None:
        """Why a cursor that does not exist yet cannot be created under ``name``."""
        if not self.access.enabled:
            ok = _CONSUMER_ID.fullmatch(name) is not None
            return None if ok else "consumer id must be 1-128 characters of letters, digits and . _ : @ -"
        table, _, consumer = name.partition("/")
        if table not in {c.name for c in self.access.consumers} or not _CONSUMER_ID.fullmatch(consumer):
            return (
                "with authentication on, cursor names are <consumer table>/<consumer id> "
                f"(no cursor {name[:200]!r} exists yet, and no consumer could reach it)"
            )
        return None

    def _reconnect(self, hub: StreamHub) -> tuple[int, dict[str, Any], Headers]:
        answers = list(self.reconnect(hub.name)) if self.reconnect is not None else []
        connections = [
            {"result": a.result, "next_attempt_in": a.next_attempt_in, "reason": a.reason} for a in answers
        ]
        if any(a.result != "refused" for a in answers):
            return 202, {"stream": hub.name, "connections": connections}, []
        waits = [a.next_attempt_in for a in answers if a.next_attempt_in is not None]
        reasons = "; ".join(dict.fromkeys(a.reason for a in answers)) or "the stream is not running"
        payload = {
            "error": "reconnect_refused",
            "error_description": f"stream {hub.name}: {reasons}",
            "next_attempt_in": min(waits) if waits else None,
            "connections": connections,
        }
        headers = [(b"retry-after", str(max(1, math.ceil(min(waits)))).encode())] if waits else []
        return 409, payload, headers

    # -- listings --------------------------------------------------------------
    @staticmethod
    def _stream(hub: StreamHub, now: float) -> dict[str, Any]:
        snap = hub.snapshot(now)
        log = hub.log
        recent = log.next_offset - log.offset_at(now - RATE_WINDOW)
        return {
            "state": snap["state"],
            "connections": [c["state"] for c in snap["upstream_connections"]],
            "rate": round(recent / RATE_WINDOW, 1),
            "records_received": snap["records_received"],
            "next_attempt_in": snap["next_attempt_in"],
            "last_error": snap["last_error"],
            "log": {"oldest": log.oldest, "next": log.next_offset},
            "consumers": len(hub.book),
            "consumers_connected": sum(1 for c in hub.book.cursors() if c.connected),
        }

    @staticmethod
    def _consumers(hub: StreamHub, now: float) -> dict[str, Any]:
        log = hub.log
        tail = log.next_offset
        consumers = []
        for c in hub.book.cursors():
            current = c.current
            lag_seconds: float | None = 0.0
            if current < tail:
                received = log.received_at(max(current, log.oldest))
                lag_seconds = round(max(0.0, now - received), 3) if received is not None else None
            consumers.append(
                {
                    "id": c.name if c.named else None,
                    "connected": c.connected,
                    "cursor": current,
                    "lag": tail - current,
                    "lag_seconds": lag_seconds,
                    "skipped": c.skipped,
                    "connections": c.connections,
                    "last_seen": now if c.connected else (c.seen_at or None),
                }
            )
        listing: dict[str, Any] = {"consumers": consumers}
        groups = hub.snapshot(now).get("groups")
        if groups is not None:
            listing["groups"] = groups
        return listing


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, indent=1).encode() + b"\n"


def _problem(status: int, error: str, description: str) -> tuple[int, dict[str, Any], Headers]:
    return status, {"error": error, "error_description": description}, []


def _reply(error: ErrorReply) -> tuple[int, bytes, Headers]:
    status, payload, headers = _problem(error.status, error.error, error.description)
    if isinstance(error, MethodNotAllowed):
        headers = [(b"allow", error.allow)]
    return status, _json(payload), headers
