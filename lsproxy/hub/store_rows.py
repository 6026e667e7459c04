"""The row format: how log segments become rows of the ``segments`` table and back.

Theory of operation
-------------------
A row is a ``Segment``: ``first`` (its first record's offset, the table's
INTEGER PRIMARY KEY), ``count``, ``received_at``, ``data`` (the records, each
followed by CRLF) and ``ends`` (each record's byte end in ``data``, packed as
little-endian uint32, 4 bytes a record: 0.16 % of a 2.5 KB hit). ``ends``
could be recomputed by splitting ``data``, but storing it keeps reads free of
per-record work and doubles as a consistency check (``row_segment``).

The writer does not store segments as appended: ``coalesce`` packs
consecutive ones into rows of about ``ROW_BYTES`` (the consumers' batch size)
and splits larger ones at record boundaries. Then a disk read touches one or
two rows, a row is never much bigger than what a reader wants, and the row
count (and the in-memory ``RowIndex``) stays small however the upstream reads
were cut: at most one row per ``ROW_BYTES``, or per commit when traffic is light.

Pure: no I/O.
"""

from __future__ import annotations

import array
import bisect
import sys
from collections.abc import Iterable, Iterator, Sequence

from lsproxy.hub.segment import CRLF, Segment

ROW_BYTES = 256 * 1024  # = the consumers' BATCH_BYTES: a disk read is one or two rows


def pack_ends(ends: Sequence[int]) -> bytes:
    packed = array.array("I", ends)
    if sys.byteorder == "big":  # the file format is little-endian everywhere
        packed.byteswap()
    return packed.tobytes()


def unpack_ends(blob: bytes) -> tuple[int, ...]:
    packed = array.array("I")
    packed.frombytes(blob)
    if sys.byteorder == "big":
        packed.byteswap()
    return tuple(packed)


def row_segment(
    first: int, count: int, received_at: float, data: bytes, ends_blob: bytes, *, thorough: bool = False
) -> Segment:
    """A stored row as a Segment; ValueError when it is inconsistent."""
    ends = unpack_ends(ends_blob)
    if count < 1 or len(ends) != count or ends[-1] != len(data) or not data.endswith(CRLF):
        raise ValueError(f"row at offset {first} is inconsistent")
    if thorough and any(data[e - 2 : e] != CRLF or e <= s for s, e in zip((0, *ends), ends, strict=False)):
        raise ValueError(f"row at offset {first} has broken record boundaries")
    return Segment(first, data, ends, received_at)


def coalesce(segments: Iterable[Segment], row_bytes: int = ROW_BYTES) -> Iterator[Segment]:
    """Pack consecutive segments into rows of at most ``row_bytes``, cut at record
    boundaries (a larger record is a row of its own). A gap in offsets (records
    dropped from the disk queue) starts a new row. A row's ``received_at`` is that
    of its newest record: ``offset_at`` then errs towards replaying a little more.
    A generator: the commit interleaves it with SQLite steps, which release the GIL,
    so the event loop never waits for the whole batch's Python work."""
    parts: list[bytes] = []
    ends: list[int] = []
    first, size, when = 0, 0, 0.0
    for seg in segments:
        if parts and seg.first != first + len(ends):
            yield Segment(first, b"".join(parts), tuple(ends), when)
            parts, ends, size = [], [], 0
        i, pos = 0, 0
        while i < len(seg.ends):
            k = bisect.bisect_right(seg.ends, pos + row_bytes - size, lo=i)
            if k == i and parts:  # the next record does not fit: close this row
                yield Segment(first, b"".join(parts), tuple(ends), when)
                parts, ends, size = [], [], 0
                continue
            k = max(k, i + 1)
            if not parts:
                first = seg.first + i
            stop = seg.ends[k - 1]
            parts.append(seg.data if pos == 0 and stop == len(seg.data) else seg.data[pos:stop])
            ends.extend(map((size - pos).__add__, seg.ends[i:k]))
            size += stop - pos
            when = seg.received_at
            i, pos = k, stop
    if parts:
        yield Segment(first, b"".join(parts), tuple(ends), when)
