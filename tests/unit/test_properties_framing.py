"""Properties of RecordFramer: any gzip stream of records, cut anywhere, frames exactly;
bombs are worked in bounded steps; garbage raises FramingError and nothing else."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsproxy import deflate
from lsproxy.errors import FramingError
from lsproxy.upstream.framing import STEP_BYTES, STEP_LINES, RecordFramer

pytestmark = pytest.mark.parametrize("backend", ["isal", "zlib"])  # every property on both inflaters


@contextmanager
def inflater(backend: str) -> Iterator[None]:
    before = deflate.BACKEND
    deflate.use_backend(backend)
    try:
        yield
    finally:
        deflate.use_backend(before)


# A record: non-empty, no LF. Bytes around the terminators (CR, LF, '{') are favoured.
record_bytes = st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\n", b"")).filter(bool)
records = st.lists(
    st.one_of(record_bytes, st.sampled_from([b"\r", b"\r\r", b"{}", b'{"a":1}', b"x\r"])),
    max_size=40,
)


@st.composite
def record_streams(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """(records, text): the records with CRLF or bare-LF terminators, blank lines between
    them, and maybe an unterminated last record."""
    recs = draw(records)
    parts = []
    for i, rec in enumerate(recs):
        parts.append(draw(st.sampled_from([b"", b"\r\n", b"\n", b"\r\n\r\n", b"\n\r\n"])))  # blank lines
        last = i == len(recs) - 1
        if last and not rec.endswith(b"\r") and draw(st.booleans()):
            parts.append(rec)  # unterminated: feed_eof delivers it
        elif rec.endswith(b"\r"):
            parts.append(rec + b"\r\n")  # a bare LF would make its CR the terminator's
        else:
            parts.append(rec + draw(st.sampled_from([b"\r\n", b"\n"])))
    return recs, b"".join(parts)


@st.composite
def gzip_of(draw: st.DrawFn, text: bytes) -> bytes:
    """``text`` as one or more gzip members, cut anywhere (a CRLF may straddle two), each
    compressed at some level, possibly sync-flushed mid-member, empty members between."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    out = []
    for piece in pieces:
        if draw(st.booleans()):
            out.append(zlib.compress(b"", wbits=31))
        comp = zlib.compressobj(draw(st.integers(0, 9)), zlib.DEFLATED, 31)
        half = draw(st.integers(0, len(piece)))
        out.append(comp.compress(piece[:half]) + comp.flush(zlib.Z_SYNC_FLUSH))
        out.append(comp.compress(piece[half:]) + comp.flush())
    return b"".join(out)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(min(c, len(data)) for c in cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def drain(framer: RecordFramer, out: list[bytes]) -> None:
    while framer.pending:
        out.extend(framer.feed(b""))


@given(st.data(), record_streams(), st.lists(st.integers(0, 10_000), max_size=12), st.booleans())
def test_any_split_of_any_gzip_stream_of_records_frames_exactly(
    backend: str, data: st.DataObject, stream: tuple[list[bytes], bytes], cuts: list[int], eager: bool
) -> None:
    recs, text = stream
    body = data.draw(gzip_of(text))
    out: list[bytes] = []
    with inflater(backend):
        framer = RecordFramer()
        for chunk in split_at(body, cuts):
            out.extend(framer.feed(chunk))
            if eager:  # as the connector does; else all the input queues up first
                drain(framer, out)
        drain(framer, out)
        out.extend(framer.feed_eof())
    assert out == recs
    assert framer.records == len(recs)
    assert framer.compressed_bytes == len(body)
    assert framer.inflated_bytes == len(text)


bomb_units = st.sampled_from([b"\r\n", b"\n", b"\r\n\r", b"a\n", b"{}\r\n", b"\r\n\r\n\r\nx\r\n", b"\r\r\n"])


@settings(max_examples=max(5, settings.default.max_examples // 4))  # megabytes each
@given(bomb_units, st.integers(64, 1024), st.integers(1, 3))
def test_bombs_are_worked_in_bounded_steps(backend: str, unit: bytes, kilobytes: int, members: int) -> None:
    text = unit * ((kilobytes << 10) // len(unit))
    body = zlib.compress(text, 9, 31) * members  # the same member again: more text, same small input
    got, calls, before = 0, 0, 0
    with inflater(backend):
        framer = RecordFramer()
        step = framer.feed(body)
        while True:
            calls += 1
            assert len(step) <= STEP_LINES
            assert framer.inflated_bytes - before <= STEP_BYTES
            before = framer.inflated_bytes
            got += len(step)
            if not framer.pending:
                break
            step = framer.feed(b"")
        assert framer.feed_eof() == []
    assert got == sum(1 for line in (text * members).split(b"\n")[:-1] if line.removesuffix(b"\r"))
    assert framer.inflated_bytes == members * len(text)
    assert calls >= framer.inflated_bytes // STEP_BYTES


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=6))
def test_garbage_raises_framing_error_and_nothing_else(backend: str, junk: bytes, cuts: list[int]) -> None:
    with inflater(backend):
        run_to_the_end(RecordFramer(max_record_bytes=256), split_at(junk, cuts), 256)


@given(record_streams(), st.data(), st.lists(st.integers(0, 10_000), min_size=1, max_size=8))
def test_corrupted_gzip_raises_framing_error_and_nothing_else(
    backend: str, stream: tuple[list[bytes], bytes], data: st.DataObject, flips: list[int]
) -> None:
    body = bytearray(data.draw(gzip_of(stream[1])))
    for flip in flips:
        body[flip % len(body)] ^= 1 << (flip % 8)
    with inflater(backend):
        run_to_the_end(RecordFramer(max_record_bytes=64), [bytes(body)], 64)


def run_to_the_end(framer: RecordFramer, chunks: list[bytes], limit: int) -> None:
    """Feed, drain, end; the only exception allowed is FramingError, and it is final."""
    try:
        out: list[bytes] = []
        for chunk in chunks:
            out.extend(framer.feed(chunk))
            drain(framer, out)
        out.extend(framer.feed_eof())
    except FramingError:
        with pytest.raises(FramingError, match="already failed"):
            framer.feed(b"")
        return
    assert all(out) and all(b"\n" not in r and len(r) <= limit for r in out)
