"""TLS on the consumer listener: trio's ``SSLStream`` over each accepted socket.

HTTP/1.1 only (ALPN offers nothing else). The context comes from the PEM files
(``tls_files.server_context``) at start and again at every reload, so renewed
certificates are served to new connections without a restart; a reload whose
files do not load keeps the running context. The handshake is bounded by the
request timeout, like the request head it precedes (slowloris).
"""

from __future__ import annotations

import ssl

import trio

from lsproxy.tls_files import TlsFileError, server_context


class ServerTls:
    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self.context: ssl.SSLContext = server_context(cert, key)  # raises TlsFileError

    def reload(self) -> str:
        """Re-read the files; what happened, for the reload's log."""
        try:
            self.context = server_context(self.cert, self.key)
        except TlsFileError as exc:
            return f"TLS certificate not reloaded ({exc.which}: {exc.problem}); the running one stays"
        return f"TLS certificate re-read from {self.cert}"

    async def handshake(self, stream: trio.SocketStream, timeout: float) -> trio.SSLStream[trio.SocketStream] | str:
        """The TLS stream once the handshake is done, or why it failed (the caller closes ``stream``)."""
        tls = trio.SSLStream(stream, self.context, server_side=True, https_compatible=True)
        with trio.move_on_after(timeout) as waited:
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
                if isinstance(cause, ssl.SSLError):
                    return f"TLS handshake failed ({cause.reason or cause.strerror or 'ssl error'})"
                return "TLS handshake failed (the client went away)"
        if waited.cancelled_caught:
            return f"TLS handshake not done within {timeout:g} s"
        return tls
