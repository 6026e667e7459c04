"""The simulator server: routing, stream responses, control endpoints.

Theory of operation: ``serve`` binds, starts one ticker task that generates
hits for every stream, and one handler task per TCP connection. A stream response is one pump loop
(the only writer of its socket) plus a watcher task that reads and discards
whatever the client sends and cancels the pump at EOF or reset. Each pump has
its own gzip compressor and sync-flushes after every batch; the record lines
themselves are shared between connections (see ``buffer``). Whatever ends a
stream (client gone, ``drop``, ``corrupt``, shutdown), ``finally`` releases
the slot, which then lingers, and the socket is closed without the final
chunk: an abrupt end, as the real service's.

``POST /ims/token/v3`` is the IMS look-alike (see ``ims``); the stream
endpoint then also accepts the tokens it issued, until they expire. 401s of
the stream endpoint are counted by reason (``stats()["auth_failures"]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import time
import zlib
from collections import Counter
from typing import Any

import trio

from lsproxy.simulator.control import handle_control
from lsproxy.simulator.http import HttpConnection, receive_or_eof
from lsproxy.simulator.ims import IMS_PATH, ImsState, handle_token
from lsproxy.simulator.protocol import (
    NODE_PATH,
    STREAM_PATH,
    Refusal,
    Request,
    check_stream_request,
    masked_headers,
    redirect_location,
    refusal,
)
from lsproxy.simulator.settings import SimSettings
from lsproxy.simulator.stream import Conn, StreamState

log = logging.getLogger("lsproxy.simulator")

# A deflate block header with BTYPE=11 (reserved): every inflater rejects it.
CORRUPT_CHUNK = b"\x07\xff\xfe\xfd not deflate data \x00\x01\x02"
WATCH_LIMIT = 1 << 20  # bytes a streaming client may send before we hang up


class SimulatorBindError(Exception):
    """The listen address cannot be bound; the message says which and why, in one line."""


class Simulator:
    """A Live Stream look-alike over real sockets. Use ``await nursery.start(sim.serve)``."""

    def __init__(self, settings: SimSettings) -> None:
        if settings.run_id is None:
            # A restarted simulator numbers hits from 0 again: a new run keeps their ids new.
            settings = dataclasses.replace(settings, run_id=secrets.randbits(32))
        self.settings = settings
        self.streams = {s.endpoint: StreamState(s, settings) for s in settings.streams}
        self.ims = ImsState(settings)
        self.auth_failures: Counter[str] = Counter()  # stream 401s by reason
        self.address: tuple[str, int] | None = None
        self._wall0 = time.time()
        self._t0 = 0.0

    # --- lifecycle ----------------------------------------------------------
    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, then ``task_status.started((host, port))``; serve until cancelled.
        Raises SimulatorBindError when the address cannot be bound."""
        try:
            listeners = await trio.open_tcp_listeners(self.settings.port, host=self.settings.host)
        except OSError as exc:
            host = self.settings.host
            where = f"[{host}]:{self.settings.port}" if ":" in host else f"{host}:{self.settings.port}"
            raise SimulatorBindError(f"simulator cannot serve on {where}: {exc.strerror or exc}") from None
        port = listeners[0].socket.getsockname()[1]
        self.address = (self.settings.host, port)
        self._wall0, self._t0 = time.time(), trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._generate)
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.address)

    async def _generate(self) -> None:
        """One ticker for all streams (a task per stream costs a wake-up per stream per tick)."""
        interval = self.settings.batch_interval
        last = next_tick = trio.current_time()
        while True:
            next_tick = max(next_tick + interval, trio.current_time())
            await trio.sleep_until(next_tick)
            now = trio.current_time()
            epoch = int(self._wall0 + (now - self._t0))
            for stream in self.streams.values():
                stream.tick(now - last, epoch)
            last = now

    # --- controls (also reachable as POST /_sim/...) ------------------------
    def _stream(self, endpoint: str) -> StreamState:
        try:
            return self.streams[endpoint]
        except KeyError:
            raise KeyError(f"unknown stream {endpoint!r}") from None

    def drop(self, endpoint: str) -> int:
        """Close every open connection of the stream abruptly; returns how many."""
        return self._stream(endpoint).drop(trio.current_time())

    def set_rate(self, endpoint: str, rate: float) -> None:
        self._stream(endpoint).set_rate(rate)

    def stall(self, endpoint: str, seconds: float) -> None:
        """Send no bytes on the stream's connections for ``seconds`` (they stay open)."""
        self._stream(endpoint).stall(seconds, trio.current_time())

    def fail_next(self, endpoint: str, status: int, count: int = 1) -> None:
        """Answer the next ``count`` valid connection attempts with ``status``."""
        self._stream(endpoint).fail_next(status, count)

    def corrupt(self, endpoint: str) -> int:
        """Each open connection sends a non-deflate chunk next, then closes."""
        return self._stream(endpoint).corrupt()

    def fail_ims(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` IMS token requests with ``status``."""
        self.ims.fail(count, status)

    def revoke_tokens(self) -> int:
        """Forget every token the IMS look-alike issued (the stream answers 401 to them)."""
        return self.ims.revoke()

    def token_state(self, token: str) -> str:
        """``valid``, ``expired`` or ``unknown``: an issued token, on the trio clock."""
        return self.ims.lookup(token, trio.current_time())

    def reset_stats(self) -> None:
        for stream in self.streams.values():
            stream.reset_stats()
        self.ims.reset_stats()
        self.auth_failures.clear()

    def stats(self) -> dict[str, Any]:
        try:
            now: float | None = trio.current_time()
        except RuntimeError:
            now = None
        return {
            "pid": os.getpid(),  # lets a script check that the simulator answering is its own
            "run_id": self.settings.run_id,
            "streams": {name: s.stats(now) for name, s in self.streams.items()},
            "ims": self.ims.stats(now),
            "auth_failures": dict(sorted(self.auth_failures.items())),
        }

    # --- HTTP ---------------------------------------------------------------
    async def _handle(self, sock: trio.SocketStream) -> None:
        http = HttpConnection(sock)
        try:
            while True:
                req = await http.read_request()
                if req is None:
                    return
                if not await self._dispatch(http, req) or not http.next_cycle():
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("simulator: connection handler failed")
        finally:
            await trio.aclose_forcefully(sock)

    async def _dispatch(self, http: HttpConnection, req: Request) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        node = NODE_PATH.match(req.path)
        match = node or STREAM_PATH.match(req.path)
        if match:
            version, endpoint = match.group(1), match.group(2)
            stream = self.streams.get(endpoint)
            if stream is None:
                await http.send_error(refusal(404, f"unknown stream endpoint {endpoint!r}"))
                return True
            if self.settings.redirect and not node and req.method == "GET":
                assert self.address is not None
                location = redirect_location(
                    req, version, endpoint, self.address[1], echo_token=self.settings.echo_token
                )
                stream.redirects += 1
                stream.statuses[302] += 1
                await http.send_response(302, b"", [("location", location)])
                return True
            return await self._stream_request(http, req, stream)
        if req.path == IMS_PATH:
            await handle_token(self, http, req, trio.current_time())
            return True
        if req.path.startswith("/_sim/"):
            await handle_control(self, http, req)
            return True
        await http.send_error(refusal(404, f"no such path {req.path}"))
        return True

    async def _stream_request(self, http: HttpConnection, req: Request, stream: StreamState) -> bool:
        """Serve one stream connection attempt; True if the HTTP connection may be reused."""
        now = trio.current_time()
        stream.attempts += 1
        stream.attempt_times.append(now)
        issued = self.token_state if self.settings.oauth else None
        stream.last_headers = masked_headers(req.headers, self.settings.token, issued)
        stream.queries.append(dict(req.query))
        checked = check_stream_request(req, self.settings, issued)
        outcome = checked if isinstance(checked, Refusal) else stream.admit(checked, now)
        if isinstance(outcome, Refusal):
            stream.statuses[outcome.status] += 1
            if outcome.status == 401:
                self.auth_failures[outcome.reason or "other"] += 1
            allow = [("allow", "GET")] if outcome.status == 405 else None
            await http.send_error(outcome, allow)
            return True
        stream.statuses[200] += 1
        try:
            with outcome.cancel_scope:
                await http.start_stream()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch, http.stream, nursery.cancel_scope)
                    # A reset while sending means the client left, the same as EOF.
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self._pump(http, stream, outcome)
                    nursery.cancel_scope.cancel()
        finally:
            stream.release(outcome, trio.current_time())
        return False

    @staticmethod
    async def _watch(sock: trio.SocketStream, scope: trio.CancelScope) -> None:
        """Read and discard until the client leaves (EOF or reset), then end the stream."""
        received = 0
        while received <= WATCH_LIMIT:
            data = await receive_or_eof(sock)
            if not data:
                break
            received += len(data)
        scope.cancel()

    @staticmethod
    async def _pump(http: HttpConnection, stream: StreamState, conn: Conn) -> None:
        # Level 1: ~3x the speed of the default level at 5:1 on these records; the
        # simulator's CPU, not the wire, is what limits benchmarks.
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        while True:
            if stream.stalled_until > trio.current_time():
                await trio.sleep_until(stream.stalled_until)
                continue
            if conn.corrupt:
                await http.send_chunk(CORRUPT_CHUNK)
                return
            lines, moved = stream.collect(conn)
            if not moved:
                await stream.wait_changed()
                continue
            if lines:
                data = compressor.compress(b"".join(lines))
                await http.send_chunk(data + compressor.flush(zlib.Z_SYNC_FLUSH))
                stream.sent += len(lines)
            await trio.lowlevel.checkpoint()
