"""PEM certificate + private key files -> a server ``ssl.SSLContext``.

Pure stdlib: the config loader uses it to validate ``[server] tls_cert`` and
``tls_key`` (so ``lsproxy check`` and a reload refuse bad files), and the
consumer server uses it to build the context it serves with, again at every
reload (renewed certificates are picked up without a restart). Errors name the
file and the problem, never the key material.
"""

from __future__ import annotations

import ssl

__all__ = ["TlsFileError", "server_context"]


class TlsFileError(Exception):
    """A certificate or key file is unusable; ``which`` is ``"tls_cert"`` or ``"tls_key"``."""

    def __init__(self, which: str, problem: str) -> None:
        super().__init__(problem)
        self.which = which
        self.problem = problem


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS server context for HTTP/1.1 with ``cert`` (PEM, leaf first, then any
    intermediates) and its private ``key`` (PEM). Raises TlsFileError."""
    for which, path in (("tls_cert", cert), ("tls_key", key)):
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
        except FileNotFoundError:
            raise TlsFileError(which, f"{path} does not exist") from None
        except OSError as exc:
            raise TlsFileError(which, f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
        marker = b"-----BEGIN CERTIFICATE-----" if which == "tls_cert" else b"PRIVATE KEY-----"
        if marker not in data:
            what = "PEM certificate" if which == "tls_cert" else "PEM private key"
            raise TlsFileError(which, f"{path} holds no {what}")
    try:
        # A throwaway context parses every certificate in the file (load_cert_chain only the first).
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError as exc:
        raise TlsFileError("tls_cert", f"{cert} is not a valid PEM certificate{_reason(exc)}") from None

    def no_password() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
        raise TlsFileError("tls_key", f"{key} is encrypted (lsproxy needs an unencrypted PEM key)")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsFileError("tls_key", f"{key} does not match the certificate in {cert}") from None
        raise TlsFileError("tls_key", f"{key} is not a valid PEM private key{_reason(exc)}") from None
    return context


def _reason(exc: ssl.SSLError) -> str:
    return f" ({exc.reason.lower().replace('_', ' ')})" if exc.reason else ""
