"""Segments and slices: the units records move in, from the upstream to the sockets.

A *segment* is one batch of records as the upstream delivered it (one framed
read): the records joined with their CRLF terminators, plus each record's byte
end, so a reader can start at any record without touching the others. A
segment also carries, computed once on first use and then shared by every gzip
consumer, its raw-deflate compression (independent: ends with a full flush)
and its CRC-32: the "compress once, share" path of serve/encoding.py.

A *slice* is what one read of the log returns: whole segments where possible
(shareable), and plain bytes where a reader starts or stops inside a segment.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lsproxy import deflate

CRLF = b"\r\n"


class Segment:
    __slots__ = ("_deflated", "crc", "data", "ends", "first", "received_at")

    def __init__(self, first: int, data: bytes, ends: Sequence[int], received_at: float) -> None:
        self.first = first  # offset of the segment's first record
        self.data = data  # the records, each followed by CRLF
        self.ends = ends  # ends[i]: byte end (exclusive) of record first + i in data
        self.received_at = received_at  # wall-clock time of arrival
        self._deflated: bytes | None = None
        self.crc = 0

    @property
    def end(self) -> int:
        return self.first + len(self.ends)

    def byte_start(self, offset: int) -> int:
        """Byte position in ``data`` where record ``offset`` begins."""
        i = offset - self.first
        return self.ends[i - 1] if i > 0 else 0

    def deflated(self) -> bytes:
        """This segment as an independent raw-deflate block (computed once, then shared)."""
        if self._deflated is None:
            self._deflated = deflate.deflate_block(self.data)
            self.crc = deflate.crc32(self.data)
        return self._deflated


def make_segment(first: int, records: Sequence[bytes], received_at: float) -> Segment:
    ends = []
    pos = 0
    for record in records:
        pos += len(record) + 2
        ends.append(pos)
    return Segment(first, CRLF.join(records) + CRLF, ends, received_at)


@dataclass(frozen=True, slots=True)
class Slice:
    start: int  # offset of the first record (> the asked offset if records were trimmed)
    end: int  # offset just past the last record
    pieces: tuple[Segment | bytes, ...] = ()  # whole segments, or bytes of part of one

    @property
    def count(self) -> int:
        return self.end - self.start

    @property
    def data(self) -> bytes:
        """The records, each followed by CRLF."""
        if len(self.pieces) == 1:
            piece = self.pieces[0]
            return piece.data if isinstance(piece, Segment) else piece
        return b"".join(p.data if isinstance(p, Segment) else p for p in self.pieces)
