"""RecordFramer: raw gzip body bytes in, complete Live Stream records out.

Theory of operation
-------------------
The Live Stream body is a gzip stream (possibly several concatenated gzip
members) whose decompressed text is records separated by CRLF. HTTP chunk
boundaries, gzip block boundaries and record boundaries are unrelated, so the
framer keeps its state between calls:

* the inflater (ISA-L or zlib, see deflate.py) of the current gzip member. When a member ends
  (``eof``), whatever followed it (``unused_data``) starts the next member;
* the *input*: raw bytes given but not inflated yet;
* the *text*: decompressed bytes not split into lines yet (left by a step that
  reached its line budget);
* the *tail*: decompressed bytes after the last line break seen, i.e. the
  beginning of a record that has not ended yet. It is kept as a list of
  pieces and joined once, when the record completes, so a record that
  arrives in many small pieces costs linear time.

Work per call is bounded, whatever the input: a few kilobytes of gzip can
inflate to gigabytes. ``feed`` does one *step*: at most ``STEP_BYTES`` of
output inflated (``STEP_CALLS`` zlib calls) and at most ``STEP_LINES`` lines
split; whatever is left stays in the framer and ``pending`` says so. The
caller calls ``feed(b"")`` until ``pending`` is false, yielding to other work
between steps (connector.py checkpoints). Normal traffic (records of hundreds
of bytes) fits one step per network read.

Each block is split with ``bytes.split(b"\\n", budget)`` (a C loop): the
first piece completes the tail, the middle pieces are whole lines, the last
piece is the new tail (or, when the line budget ran out, text for the next
step). One trailing ``\\r`` is stripped per line, which also handles a CRLF
split between two blocks. Blank lines (``b""`` or ``b"\\r"``) are dropped;
a block of nothing but blank lines is only counted, never split. Records are
never decoded or re-encoded.

A tail longer than ``max_record_bytes`` fails at once, so a hostile or
corrupt body cannot make the framer buffer without limit.

Any ``FramingError`` is final: the framer refuses further input. Records
returned by earlier calls stay valid; records decompressed within the call
that raised are discarded (zlib itself discards the output of a call that
fails, so nothing finer is possible). ``feed_eof`` on a truncated stream
delivers nothing new but raises, saying how much partial record was lost.
"""

from __future__ import annotations

from lsproxy import deflate
from lsproxy.errors import FramingError

__all__ = ["STEP_BYTES", "STEP_CALLS", "STEP_LINES", "RecordFramer"]

STEP_BYTES = 256 * 1024  # max decompressed bytes per step
STEP_LINES = 2048  # max lines split per step (a bomb of tiny records)
STEP_CALLS = 64  # max zlib calls per step (a bomb of empty gzip members)
_BLANK = b"\r\n"


class RecordFramer:
    """Incremental gunzip plus line splitting in bounded steps; see the module docstring."""

    __slots__ = (
        "_compressed",
        "_done",
        "_error",
        "_inflated",
        "_inflater",
        "_input",
        "_lines_left",
        "_max",
        "_more",
        "_records",
        "_tail",
        "_tail_len",
        "_tail_offset",
        "_text",
    )

    def __init__(self, *, max_record_bytes: int = 4 * 1024 * 1024) -> None:
        if max_record_bytes < 1:
            raise ValueError("max_record_bytes must be >= 1")
        self._max = max_record_bytes
        self._inflater = deflate.gunzip_stream()
        self._input = b""
        self._more = False  # the inflater may hold output for input it already took
        self._text = b""
        self._lines_left = 0
        self._tail: list[bytes] = []
        self._tail_len = 0
        self._tail_offset = 0  # decompressed offset where the tail (or the text) starts
        self._records = 0
        self._compressed = 0
        self._inflated = 0
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

    @property
    def inflated_bytes(self) -> int:
        """Decompressed bytes produced so far."""
        return self._inflated

    @property
    def pending(self) -> bool:
        """More records may come without more input: call ``feed(b"")`` again."""
        return bool(self._input or self._text or self._more)

    def feed(self, data: bytes) -> list[bytes]:
        """Raw gzip bytes in (any split), then one bounded step: complete records out.

        Records come back byte-for-byte without their line terminator (CRLF,
        or a bare LF); blank lines are dropped. While ``pending``, the input
        given so far is not fully processed yet: call ``feed(b"")``. Raises
        ``FramingError`` on corrupt gzip data or a record longer than
        ``max_record_bytes``.
        """
        self._check_usable()
        if data:
            self._compressed += len(data)
            self._input = self._input + data if self._input else data
        out: list[bytes] = []
        self._lines_left = STEP_LINES
        room = STEP_BYTES
        if self._text:
            text, self._text = self._text, b""
            room -= len(text)
            self._split(text, out)
        if not self._text:
            self._inflate(room, out)
        self._records += len(out)
        return out

    def feed_eof(self) -> list[bytes]:
        """The body ended: return the unterminated last record, if any.

        Raises ``FramingError`` if the gzip stream is truncated (mid-member).
        An empty body (no bytes at all) is a clean end with no records.
        """
        self._check_usable()
        if self.pending:
            raise RuntimeError("RecordFramer.feed_eof() while input is pending: feed(b'') first")
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

    def _inflate(self, room: int, out: list[bytes]) -> None:
        """Inflate at most ``room`` bytes (and ``STEP_CALLS`` calls), splitting as it goes."""
        inflater = self._inflater
        data = self._input
        start = self._compressed - len(data)
        try:
            for _ in range(STEP_CALLS):
                if room <= 0 or self._text:
                    break
                if inflater.eof:  # member complete: what follows starts a new one
                    if not data:
                        break
                    inflater = self._inflater = deflate.gunzip_stream()
                block = inflater.decompress(data, room)
                # A full output block may leave output inside zlib: ask again.
                self._more = len(block) == room and not inflater.eof
                room -= len(block)
                self._inflated += len(block)
                data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
                self._split(block, out)
                if not data and not self._more:
                    break
        except deflate.error as exc:
            raise self._failure(
                f"corrupt gzip data in raw bytes {start}..{self._compressed} "
                f"(decompressed byte offset {self._tail_offset + self._tail_len}): {exc}"
            ) from exc
        self._input = data

    def _split(self, block: bytes, out: list[bytes]) -> None:
        if not block:
            return
        if self._tail_len <= 1 and block[0] in _BLANK and block[-1] in _BLANK and self._skip_blank(block):
            return
        lines = block.split(b"\n", self._lines_left)
        last = lines.pop()
        self._lines_left -= len(lines)
        if self._lines_left <= 0 and b"\n" in last:
            # Out of line budget: the rest is split by the next step.
            self._text = last
            last = b""
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

    def _skip_blank(self, block: bytes) -> bool:
        """Count a run of blank lines without splitting it; False if it holds a record.
        Only CR and LF, and no CR CR (``b"\\r\\r\\n"`` is the record ``b"\\r"``)."""
        text = self._tail[0] + block if self._tail else block  # the tail is at most one byte
        if text.strip(_BLANK) or b"\r\r" in text:
            return False
        end = text.rfind(b"\n") + 1
        rest = text[end:]  # b"" or b"\r"
        self._tail_offset += end
        self._tail = [rest] if rest else []
        self._tail_len = len(rest)
        return True

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
        self._input = self._text = b""
        self._more = False
        return FramingError(message)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise FramingError(f"framer already failed: {self._error}")
        if self._done:
            raise RuntimeError("RecordFramer used after feed_eof()")
