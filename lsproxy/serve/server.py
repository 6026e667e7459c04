"""The consumer-facing server: accept loop and per-connection dispatch.

Every connection handler owns its errors (``serve_listeners`` style accept
loops do not catch them): it logs, closes its socket and lets ``Cancelled``
through. Shutdown: ``stop_accepting`` closes the listeners; streaming responses
end when their hub is closed; whatever is still running after the grace period
is cancelled with ``cancel_handlers``.

Access (``auth.py``) is decided per request between routing and serving; with
``tls`` every connection first completes a TLS handshake (``tls.py``).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Mapping

import h11
import trio

from lsproxy.config_consumers import ConsumerAccess
from lsproxy.errors import BindError
from lsproxy.hub.stream import StreamHub
from lsproxy.secret import redact
from lsproxy.serve import endpoints, page
from lsproxy.serve.admin import AdminApi, Reconnect
from lsproxy.serve.auth import AccessControl, Refused, cursor_prefix
from lsproxy.serve.consumer import StreamSettings, serve_stream
from lsproxy.serve.endpoints import ClusterView
from lsproxy.serve.http import HttpConnection
from lsproxy.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lsproxy.serve.metrics import MetricsEndpoint
from lsproxy.serve.routes import (
    AdminRequest,
    ConsumerPage,
    EndpointRequest,
    ErrorReply,
    Router,
    StreamRequest,
)
from lsproxy.serve.tls import ServerTls

log = logging.getLogger("lsproxy.serve")

KEEPALIVE_IDLE = 30.0  # seconds an idle keep-alive connection to a finite endpoint may wait
ERROR_WRITE_TIMEOUT = 5.0
# Accept errors that mean "out of a resource right now": wait a little, keep serving.
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class AcceptTrouble:
    """What a run of failed accepts deserves: a pause, and a few log lines.

    Out of file descriptors, every accept fails at once for as long as a
    connection waits in the listen queue: retrying at a fixed pace spins and
    floods the log. The pause doubles from ``FIRST_PAUSE`` to ``MAX_PAUSE`` and
    restarts after a success. The first failure is logged; after that at most
    one line per ``REPORT_INTERVAL``, counting the failures since the previous
    one (so failures between successes go into the next line, if any comes),
    and one when accepts succeed again after a reported failure. Pure: the
    caller passes the time.
    """

    FIRST_PAUSE = 0.1
    MAX_PAUSE = 1.0
    REPORT_INTERVAL = 60.0

    def __init__(self) -> None:
        self.pause = 0.0
        self.failures = 0  # in the current run, since its first failure
        self.unreported = 0  # failures no log line has counted yet
        self._run_started: float | None = None
        self._reported_run = False  # this run's failures were logged
        self._last_report: float | None = None

    def failed(self, now: float, reason: str) -> tuple[float, str | None]:
        """The pause before the next accept, and an ERROR line to log (or None)."""
        self.pause = min(self.MAX_PAUSE, self.pause * 2) if self.pause else self.FIRST_PAUSE
        self.failures += 1
        self.unreported += 1
        if self._run_started is None:
            self._run_started = now
        if self._last_report is not None and now - self._last_report < self.REPORT_INTERVAL:
            return self.pause, None
        if self.unreported == 1:
            line = (
                f"accept failed ({reason}); new consumers wait in the listen queue; "
                f"retrying with a pause of up to {self.MAX_PAUSE:g} s, "
                f"reporting at most once every {self.REPORT_INTERVAL:g} s"
            )
        else:
            line = f"accept failed {self.unreported} times since the last report ({reason}); still retrying"
        self.unreported = 0
        self._last_report = now
        self._reported_run = True
        return self.pause, line

    def accepted(self, now: float) -> str | None:
        """A connection was accepted: an INFO line if a reported run of failures ended."""
        if self._run_started is None:
            return None
        line = None
        if self._reported_run:
            line = f"accepting again after {self.failures} failed accepts in {now - self._run_started:.1f} s"
            self.unreported = 0
        self.pause, self.failures = 0.0, 0
        self._run_started, self._reported_run = None, False
        return line


class ConsumerServer:
    def __init__(
        self,
        hubs: Mapping[str, StreamHub],
        routes: Mapping[str, str],
        *,
        host: str,
        port: int,
        request_timeout: float,
        stream_settings: StreamSettings,
        access: AccessControl | None = None,
        tls: ServerTls | None = None,
        reconnect: Reconnect | None = None,
        metrics_max_consumers: int = 100,
    ) -> None:
        self.hubs = hubs
        self.router = Router(routes)
        self.access = access or AccessControl()
        self.tls = tls
        self.admin = AdminApi(hubs, lambda key: self.router.resolve(key), self.access, reconnect)
        self.host = host
        self.port = port
        self.request_timeout = request_timeout
        self.stream_settings = stream_settings
        self.started_at = time.time()
        self.connections = 0
        self.metrics = MetricsEndpoint(
            hubs, max_consumers=metrics_max_consumers, connections_accepted=lambda: self.connections
        )
        self._accepting = trio.CancelScope()
        self._handlers = trio.CancelScope()
        self.finished = trio.Event()
        self.cluster: ClusterView | None = None  # cluster mode: its state in /status and /readyz

    async def run(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report the bound addresses through ``task_status``, serve until stopped."""
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            where = f"[{self.host}]" if ":" in self.host else self.host
            raise BindError(f"cannot serve on {where}:{self.port}: {exc.strerror or exc}") from None
        addresses = [listener.socket.getsockname()[:2] for listener in listeners]
        try:
            with self._handlers:
                async with trio.open_nursery() as handlers:
                    with self._accepting:
                        async with trio.open_nursery() as accepters:
                            for listener in listeners:
                                accepters.start_soon(self._accept_loop, listener, handlers)
                            task_status.started(addresses)
                    for listener in listeners:
                        await trio.aclose_forcefully(listener)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            self.finished.set()

    def stop_accepting(self) -> None:
        self._accepting.cancel()

    def cancel_handlers(self) -> None:
        self._handlers.cancel()

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        trouble = AcceptTrouble()
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                    raise
                reason = f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror or exc}"
                pause, line = trouble.failed(trio.current_time(), reason)
                if line is not None:
                    log.error("%s", line)
                await trio.sleep(pause)
                continue
            if (line := trouble.accepted(trio.current_time())) is not None:
                log.info("%s", line)
            self.connections += 1
            handlers.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        peer = _peer_host(stream)
        http = HttpConnection(stream)
        try:
            if self.tls is not None:
                tls = await self.tls.handshake(stream, self.request_timeout)
                if isinstance(tls, str):
                    log.info("client %s: %s", peer, tls)
                    return
                http = HttpConnection(tls)
            await self._converse(http, peer)
        except Exception:
            log.exception("consumer connection failed")
        finally:
            await http.aclose()

    async def _converse(self, http: HttpConnection, peer: str) -> None:
        timeout = self.request_timeout
        while True:
            request = await http.next_request(timeout)
            if request is None:
                return
            if isinstance(request, ErrorReply):
                log.info("bad request: %d %s", request.status, request.description)
                await http.send_error(request, ERROR_WRITE_TIMEOUT)
                return
            route = self.router.route(request.method, request.target, request.http_version, request.headers)
            admitted = self.access.admit(route, request.headers, peer, trio.current_time())
            if isinstance(admitted, Refused):
                await self._refuse(http, request, admitted, peer)
                return
            route, identity = admitted.route, admitted.identity
            if isinstance(route, ErrorReply):
                log.info(
                    "rejected %s %s: %d %s",
                    request.method.decode("latin-1"),
                    redact(request.target.decode("latin-1"))[:200],
                    route.status,
                    route.description,
                )
                await http.send_error(route, ERROR_WRITE_TIMEOUT)
                return
            if isinstance(route, StreamRequest):
                del request  # the route has what the stream needs; idle consumers are many
                hub = self.hubs[route.stream]
                if hub.unavailable is not None and (why := hub.unavailable(hub)) is not None:
                    await http.send_error(ErrorReply(503, "service_unavailable", why), ERROR_WRITE_TIMEOUT)
                    return
                await serve_stream(http, hub, route, self.stream_settings)
                return
            if isinstance(route, AdminRequest):
                status, body, extra = await self.admin.serve(http, route, self.request_timeout)
                headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store"), *extra]
            else:
                assert isinstance(route, EndpointRequest)
                status, headers, body = self._render(route.name, identity, route.consumers)
            if not _keep_alive(request):
                headers.append((b"connection", b"close"))
            await http.send_response(status, headers, body, timeout=ERROR_WRITE_TIMEOUT)
            if not http.next_cycle():
                return
            timeout = KEEPALIVE_IDLE

    async def _refuse(self, http: HttpConnection, request: h11.Request, refused: Refused, peer: str) -> None:
        reply = refused.reply
        if refused.blocked:
            limiter = self.access.limiter
            log.warning(
                "client %s: %d failed authentications within %g s; answering it 429 for %g s",
                peer, limiter.limit, limiter.window, limiter.block,
            )  # fmt: skip
        elif reply.status != 429:  # a blocked client's requests were announced by the line above
            path = request.target.split(b"?", 1)[0].decode("latin-1")[:200]
            log.info(
                "refused %s %s from %s: %d %s",
                request.method.decode("latin-1"), path, peer, reply.status, reply.description,
            )  # fmt: skip
        await http.send_error(reply, ERROR_WRITE_TIMEOUT, headers=refused.headers)

    def _render(
        self, name: str, identity: ConsumerAccess | None, consumers: ConsumerPage
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) of a finite endpoint: metrics, the status page, or JSON.
        A consumer's token (auth on, not an admin) sees only its own streams and cursors."""
        headers = [(b"cache-control", b"no-store")]
        if name == "metrics":  # auth on: admins only (AccessControl.admit)
            self.metrics.collector.cluster_status = self.cluster.status if self.cluster is not None else None
            return 200, [(b"content-type", METRICS_CONTENT_TYPE), *headers], self.metrics.render()
        if (asset := page.asset(name)) is not None:
            return 200, [(b"content-type", asset[0]), *headers, *page.SECURITY_HEADERS], asset[1]
        hubs = self.hubs
        if identity is not None and not identity.admin:
            hubs = {stream: hub for stream, hub in hubs.items() if identity.may_read(stream)}
        status, body = endpoints.render(
            name, hubs, self.started_at, consumers, cursor_prefix=cursor_prefix(identity), cluster=self.cluster
        )
        return status, [(b"content-type", b"application/json"), *headers], body


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"


def _keep_alive(request: h11.Request) -> bool:
    names = set()
    for name, value in request.headers:
        if name == b"connection" and b"close" in value.lower():
            return False
        names.add(name)
    if b"content-length" in names and b"transfer-encoding" in names:
        # The request smuggling shape: another parser may frame this body differently,
        # so nothing after it on this connection can be trusted (RFC 9112 6.3).
        return False
    return request.http_version == b"1.1"
