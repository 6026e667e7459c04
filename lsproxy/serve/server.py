"""The consumer-facing server: accept loop and per-connection dispatch.

Every connection handler owns its errors (``serve_listeners`` style accept
loops do not catch them): it logs, closes its socket and lets ``Cancelled``
through. Shutdown: ``stop_accepting`` closes the listeners; streaming responses
end when their hub is closed; whatever is still running after the grace period
is cancelled with ``cancel_handlers``.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Mapping

import h11
import trio

from lsproxy.errors import BindError
from lsproxy.hub.stream import StreamHub
from lsproxy.serve import endpoints, page
from lsproxy.serve.consumer import StreamSettings, serve_stream
from lsproxy.serve.http import HttpConnection
from lsproxy.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lsproxy.serve.metrics import MetricsEndpoint
from lsproxy.serve.routes import EndpointRequest, ErrorReply, Router, StreamRequest

log = logging.getLogger("lsproxy.serve")

KEEPALIVE_IDLE = 30.0  # seconds an idle keep-alive connection to a finite endpoint may wait
ERROR_WRITE_TIMEOUT = 5.0
# Accept errors that mean "out of a resource right now": wait a little, keep serving.
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


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
        metrics_max_consumers: int = 100,
    ) -> None:
        self.hubs = hubs
        self.router = Router(routes)
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
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                    raise
                log.error("accept failed (%s); retrying in 0.1 s", exc)
                await trio.sleep(0.1)
                continue
            self.connections += 1
            handlers.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        http = HttpConnection(stream)
        try:
            await self._converse(http)
        except Exception:
            log.exception("consumer connection failed")
        finally:
            await http.aclose()

    async def _converse(self, http: HttpConnection) -> None:
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
            if isinstance(route, ErrorReply):
                log.info(
                    "rejected %s %s: %d %s",
                    request.method.decode("latin-1"),
                    request.target.decode("latin-1")[:200],
                    route.status,
                    route.description,
                )
                await http.send_error(route, ERROR_WRITE_TIMEOUT)
                return
            if isinstance(route, StreamRequest):
                del request  # the route has what the stream needs; idle consumers are many
                await serve_stream(http, self.hubs[route.stream], route, self.stream_settings)
                return
            assert isinstance(route, EndpointRequest)
            status, headers, body = self._render(route.name)
            if not _keep_alive(request):
                headers.append((b"connection", b"close"))
            await http.send_response(status, headers, body, head_only=route.head, timeout=ERROR_WRITE_TIMEOUT)
            if not http.next_cycle():
                return
            timeout = KEEPALIVE_IDLE

    def _render(self, name: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) of a finite endpoint: metrics, the status page, or JSON."""
        headers = [(b"cache-control", b"no-store")]
        if name == "metrics":
            return 200, [(b"content-type", METRICS_CONTENT_TYPE), *headers], self.metrics.render()
        if (asset := page.asset(name)) is not None:
            return 200, [(b"content-type", asset[0]), *headers, *page.SECURITY_HEADERS], asset[1]
        status, body = endpoints.render(name, self.hubs, self.started_at)
        return status, [(b"content-type", b"application/json"), *headers], body


def _keep_alive(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"connection" and b"close" in value.lower():
            return False
    return request.http_version == b"1.1"
