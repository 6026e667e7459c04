"""Properties of the shared gzip encoder: any sequence of batches (shared segments, parts
of segments, heartbeats) makes one valid gzip member that decodes to exactly those bytes."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lsproxy import deflate
from lsproxy.hub.segment import Segment, Slice, make_segment
from lsproxy.serve.encoding import HEARTBEAT, IdentityEncoder, SharedGzipEncoder

pytestmark = pytest.mark.parametrize("backend", ["isal", "zlib"])  # zlib: the pure-Python crc32_combine


@contextmanager
def codec(backend: str) -> Iterator[None]:
    before = deflate.BACKEND
    deflate.use_backend(backend)
    try:
        yield
    finally:
        deflate.use_backend(before)


records = st.lists(st.binary(min_size=1, max_size=200).map(lambda r: r.replace(b"\r\n", b"  ")), max_size=8)
# One step of a consumer's body: a whole segment (shared), the part of a segment from some
# record on (compressed for this consumer alone), or a heartbeat.
steps = st.lists(
    st.tuples(st.sampled_from(["whole", "part", "heartbeat"]), st.integers(0, 7), st.integers(0, 10)),
    max_size=12,
)


def gunzip_member(body: bytes) -> bytes:
    """The member's content; fails unless ``body`` is exactly one complete gzip member."""
    inflater = zlib.decompressobj(31)
    data = inflater.decompress(body) + inflater.flush()
    assert inflater.eof and not inflater.unused_data
    return data


@given(st.lists(records.filter(bool), min_size=1, max_size=6), steps, steps)
def test_any_batch_sequence_decodes_to_the_same_bytes(
    backend: str,
    segment_records: list[list[bytes]],
    first: list[tuple[str, int, int]],
    second: list[tuple[str, int, int]],
) -> None:
    with codec(backend):
        segments, offset = [], 0
        for recs in segment_records:
            segments.append(make_segment(offset, recs, 0.0))
            offset += len(recs)
        # Two consumers share the segments (and their compression, made on first use).
        for plan in (first, second):
            encoder, plain = SharedGzipEncoder(), IdentityEncoder()
            body, expected = [encoder.start()], [plain.start()]
            for kind, which, skip in plan:
                seg = segments[which % len(segments)]
                if kind == "heartbeat":
                    body.append(encoder.heartbeat())
                    expected.append(plain.heartbeat())
                    continue
                batch = piece_of(seg, skip) if kind == "part" else Slice(seg.first, seg.end, (seg,))
                body += encoder.encode(batch)
                expected += plain.encode(batch)
            body.append(encoder.finish())
            expected.append(plain.finish())
            assert gunzip_member(b"".join(body)) == b"".join(expected)
            assert expected.count(HEARTBEAT) == sum(kind == "heartbeat" for kind, _, _ in plan)


def piece_of(seg: Segment, skip: int) -> Slice:
    """The segment from its ``skip``-th record on, as bytes (a reader resuming inside it)."""
    start = seg.first + skip % len(seg.ends)
    return Slice(start, seg.end, (seg.data[seg.byte_start(start) :],))
