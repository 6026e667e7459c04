"""Response body encoders: identity, or gzip compressed once and shared.

Theory of operation
-------------------
Compressing separately for every gzip consumer costs one compressor's CPU and
~260 KB of memory per consumer. Instead, each log segment is compressed once,
on first use, into an *independent* raw-deflate block (fresh dictionary, ends
with a full flush; see hub/segment.py) that every gzip consumer sends as is.
Independent blocks can follow each other in any combination, so each consumer
only needs its own 10-byte gzip header at the start and, at the end, a final
empty block plus the trailer: the CRC-32 of everything it was sent (combined
per block with ``crc32_combine``, never recomputed over the data) and the
length. A consumer that starts or resumes inside a segment, and heartbeats,
get blocks compressed for them alone; the shared path is never slowed.

Every block ends byte-aligned after a full flush, so what a consumer has
received decompresses completely: a record reaches a consumer at the tail as
soon as its batch is sent (no data waits inside a compressor).

Pure: no I/O.
"""

from __future__ import annotations

import functools
from typing import Protocol

from lsproxy import deflate
from lsproxy.hub.segment import Block, Slice

HEARTBEAT = b"\r\n"  # an empty record: Live Stream clients skip it


class Encoder(Protocol):
    content_encoding: str | None

    def start(self) -> bytes:
        """Bytes that open the body (sent with the first batch)."""

    def encode(self, batch: Slice) -> list[bytes]:
        """The batch's encoded bytes, in parts (the caller joins them with its framing)."""

    def heartbeat(self) -> bytes: ...

    def finish(self) -> bytes:
        """Bytes that close the body."""


class IdentityEncoder:
    content_encoding: str | None = None

    def __init__(self, heartbeat: bytes = HEARTBEAT) -> None:
        self._heartbeat = heartbeat

    def start(self) -> bytes:
        return b""

    def encode(self, batch: Slice) -> list[bytes]:
        return [p.data if isinstance(p, Block) else p for p in batch.pieces]

    def heartbeat(self) -> bytes:
        return self._heartbeat

    def finish(self) -> bytes:
        return b""


class SharedGzipEncoder:
    """One consumer's gzip member, assembled from shared per-segment deflate blocks."""

    content_encoding: str | None = "gzip"
    __slots__ = ("_heartbeat", "crc", "size")

    def __init__(self, heartbeat: bytes = HEARTBEAT) -> None:
        self.crc = 0
        self.size = 0
        self._heartbeat = _heartbeat_block(heartbeat)

    def start(self) -> bytes:
        return deflate.GZIP_HEADER

    def encode(self, batch: Slice) -> list[bytes]:
        blocks = []
        crc, size = self.crc, self.size
        for piece in batch.pieces:
            if isinstance(piece, Block):
                blocks.append(piece.deflated())
                piece_crc, piece_len = piece.crc, len(piece.data)
            else:
                blocks.append(deflate.deflate_block(piece))
                piece_crc, piece_len = deflate.crc32(piece), len(piece)
            crc = deflate.crc32_combine(crc, piece_crc, piece_len)
            size += piece_len
        self.crc, self.size = crc, size
        return blocks

    def heartbeat(self) -> bytes:
        block, crc, size = self._heartbeat
        self.crc = deflate.crc32_combine(self.crc, crc, size)
        self.size += size
        return block

    def finish(self) -> bytes:
        return deflate.FINAL_BLOCK + deflate.gzip_trailer(self.crc, self.size)


@functools.cache
def _heartbeat_block(heartbeat: bytes) -> tuple[bytes, int, int]:
    """A heartbeat's deflate block, CRC and length: made once per kind (CRLF, SSE comment)."""
    return deflate.deflate_block(heartbeat), deflate.crc32(heartbeat), len(heartbeat)


def make_encoder(gzip: bool, heartbeat: bytes = HEARTBEAT) -> Encoder:
    """``heartbeat``: what keeps an idle response alive (an empty record; SSE: a comment)."""
    return SharedGzipEncoder(heartbeat) if gzip else IdentityEncoder(heartbeat)


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
