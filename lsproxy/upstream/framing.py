"""RecordFramer: raw gzip body bytes in, complete Live Stream records out.

Theory of operation
-------------------
The Live Stream body is a gzip stream (possibly several concatenated gzip
members) whose decompressed text is records separated by CRLF. HTTP chunk
boundaries, gzip block boundaries and record boundaries are unrelated, so the
framer keeps two pieces of state between ``feed`` calls:

* the inflater (ISA-L or zlib, see deflate.py) of the current gzip member. When a member ends
  (``eof``), whatever followed it (``unused_data``) starts the next member;
* the *tail*: decompressed bytes after the last line break seen, i.e. the
  beginning of a record that has not ended yet. It is kept as a list of
  pieces and joined once, when the record completes, so a record that
  arrives in many small pieces costs linear time.

Each decompressed block is split with ``bytes.split(b"\\n")`` (a C loop): the
first piece completes the tail, the middle pieces are whole lines, the last
piece is the new tail. One trailing ``\\r`` is stripped per line, which also
handles a CRLF split between two blocks. Blank lines (``b""`` or ``b"\\r"``)
are dropped. Records are never decoded or re-encoded.

Inflation is bounded (``_BLOCK`` output bytes per zlib call), and a tail
longer than ``max_record_bytes`` fails at once, so a hostile or corrupt body
cannot make the framer buffer without limit.

Any ``FramingError`` is final: the framer refuses further input. Records
returned by earlier calls stay valid; records decompressed within the call
that raised are discarded (zlib itself discards the output of a call that
fails, so nothing finer is possible). ``feed_eof`` on a truncated stream
delivers nothing new but raises, saying how much partial record was lost.
"""

from __future__ import annotations

from lsproxy import deflate
from lsproxy.errors import FramingError

__all__ = ["RecordFramer"]

_BLOCK = 256 * 1024  # max decompressed bytes per zlib call


class RecordFramer:
    """Incremental gunzip plus line splitting; see the module docstring."""

    __slots__ = (
        "_compressed",
        "_done",
        "_error",
        "_inflater",
        "_max",
        "_records",
        "_tail",
        "_tail_len",
        "_tail_offset",
    )

    def __init__(self, *, max_record_bytes: int = 4 * 1024 * 1024) -> None:
        if max_record_bytes < 1:
            raise ValueError("max_record_bytes must be >= 1")
        self._max = max_record_bytes
        self._inflater = deflate.gunzip_stream()
        self._tail: list[bytes] = []
        self._tail_len = 0
        self._tail_offset = 0  # decompressed offset where the tail starts
        self._records = 0
        self._compressed = 0
        self._done = False
        self._error: str | None = None

    @property
    def records(self) -> int:
        """Records produced so far."""
        return self._records

    @property
    def compressed_bytes(self) -> int:
        """Raw (compressed) bytes fed so far."""
        return self._compressed

    def feed(self, data: bytes) -> list[bytes]:
        """Raw gzip bytes in (any split), complete records out.

        Records come back byte-for-byte without their line terminator (CRLF,
        or a bare LF); blank lines are dropped. Raises ``FramingError`` on
        corrupt gzip data or a record longer than ``max_record_bytes``.
        """
        self._check_usable()
        start = self._compressed
        self._compressed += len(data)
        out: list[bytes] = []
        inflater = self._inflater
        try:
            while True:
                if inflater.eof:  # member complete: what follows starts a new one
                    if not data:
                        break
                    inflater = self._inflater = deflate.gunzip_stream()
                block = inflater.decompress(data, _BLOCK)
                self._split(block, out)
                if inflater.eof:
                    data = inflater.unused_data
                else:
                    data = inflater.unconsumed_tail
                    # A full output block may leave output inside zlib: ask again.
                    if not data and len(block) < _BLOCK:
                        break
        except deflate.error as exc:
            raise self._failure(
                f"corrupt gzip data in raw bytes {start}..{self._compressed} "
                f"(decompressed byte offset {self._tail_offset + self._tail_len}): {exc}"
            ) from exc
        self._records += len(out)
        return out

    def feed_eof(self) -> list[bytes]:
        """The body ended: return the unterminated last record, if any.

        Raises ``FramingError`` if the gzip stream is truncated (mid-member).
        An empty body (no bytes at all) is a clean end with no records.
        """
        self._check_usable()
        self._done = True
        if self._compressed and not self._inflater.eof:
            self._fail(
                f"gzip stream truncated after {self._compressed} raw bytes "
                f"(decompressed byte offset {self._tail_offset + self._tail_len}); "
                f"discarded {self._tail_len} bytes of a partial record"
            )
        if not self._tail:
            return []
        line = b"".join(self._tail)
        self._tail = []
        self._tail_len = 0
        record = line[:-1] if line.endswith(b"\r") else line
        if not record:
            return []
        if len(record) > self._max:
            self._fail_oversized(self._tail_offset, len(record))
        self._records += 1
        return [record]

    # -- internals ---------------------------------------------------------

    def _split(self, block: bytes, out: list[bytes]) -> None:
        if not block:
            return
        lines = block.split(b"\n")
        last = lines.pop()
        if lines:
            # The block completes the tail (if any): the first line belongs to it.
            offset = self._tail_offset
            if self._tail:
                self._tail.append(lines[0])
                lines[0] = b"".join(self._tail)
                self._tail = []
            records = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
            if max(map(len, records)) > self._max:
                for line, record in zip(lines, records, strict=True):
                    if len(record) > self._max:
                        self._fail_oversized(offset, len(record))
                    offset += len(line) + 1
            out.extend(filter(None, records))
            self._tail_offset += sum(map(len, lines)) + len(lines)
            self._tail_len = 0
        if last:
            self._tail.append(last)
            self._tail_len += len(last)
            if self._tail_len > self._max + 1:  # +1: a trailing '\r' may still be stripped
                self._fail_oversized(self._tail_offset, self._tail_len, partial=True)

    def _fail_oversized(self, offset: int, size: int, *, partial: bool = False) -> None:
        what = f"at least {size}" if partial else f"{size}"
        self._fail(
            f"record at decompressed byte offset {offset} is {what} bytes long, "
            f"over the limit of {self._max} (max_record_bytes)"
        )

    def _fail(self, message: str) -> None:
        raise self._failure(message)

    def _failure(self, message: str) -> FramingError:
        self._error = message
        self._tail = []
        self._tail_len = 0
        return FramingError(message)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise FramingError(f"framer already failed: {self._error}")
        if self._done:
            raise RuntimeError("RecordFramer used after feed_eof()")
