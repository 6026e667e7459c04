"""Response body encoders for consumers: identity, or gzip flushed per batch.

Pure. A gzip consumer gets one compressor for its whole response and a
``Z_SYNC_FLUSH`` after every batch: without the flush, records would sit in
the compressor until enough data piled up, and a consumer at the tail of a
quiet stream would see nothing for minutes.
"""

from __future__ import annotations

import zlib
from typing import Protocol

GZIP_LEVEL = 1  # the fan-out path is CPU-bound; level 1 costs ~1/3 of level 6


class Encoder(Protocol):
    content_encoding: str | None

    def encode(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class IdentityEncoder:
    content_encoding: str | None = None

    def encode(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class GzipEncoder:
    content_encoding: str | None = "gzip"

    def __init__(self, level: int = GZIP_LEVEL) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)

    def encode(self, data: bytes) -> bytes:
        return self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._compressor.flush(zlib.Z_FINISH)


def make_encoder(gzip: bool) -> Encoder:
    return GzipEncoder() if gzip else IdentityEncoder()


def accepts_gzip(accept_encoding: str) -> bool:
    """True when an Accept-Encoding value admits gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False
