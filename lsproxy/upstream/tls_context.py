"""The TLS context of every outgoing HTTPS request (Live Stream, the token endpoint)."""

from __future__ import annotations

import ssl

import httpx
import trio

_context: ssl.SSLContext | None = None


async def client_tls_context() -> ssl.SSLContext:
    """httpx's default certificate verification, set up once and in a worker thread:
    loading the CA bundle takes 20-90 ms, too long for the event loop and to repeat at
    every connection attempt or token fetch. (A CA bundle changed on disk is used after
    a restart.)"""
    global _context
    if _context is None:
        _context = await trio.to_thread.run_sync(httpx.create_ssl_context)
    return _context
