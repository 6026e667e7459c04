"""Shared gzip: per-segment deflate blocks + per-consumer header/CRC make valid gzip."""

import gzip
import random
import zlib
from collections.abc import Iterator

import pytest

from lsproxy import deflate
from lsproxy.hub.log import MemoryLog
from lsproxy.serve.encoding import IdentityEncoder, SharedGzipEncoder


@pytest.fixture(params=["isal", "zlib"], autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    before = deflate.BACKEND
    deflate.use_backend(request.param)
    yield request.param
    deflate.use_backend(before)


def filled_log(rng: random.Random) -> MemoryLog:
    log = MemoryLog(1 << 30)
    n = 0
    for _ in range(40):
        count = rng.randint(1, 30)
        log.append(
            [b'{"hitIdLow":%d,"pad":"%s"}' % (n + i, b"x" * rng.randint(0, 3000)) for i in range(count)], 0.0
        )
        n += count
    return log


@pytest.mark.parametrize("seed", range(5))
def test_any_sequence_of_reads_and_heartbeats_is_one_valid_gzip_member(seed: int) -> None:
    rng = random.Random(seed)
    log = filled_log(rng)
    encoder = SharedGzipEncoder()
    inflater = zlib.decompressobj(31)
    wire = encoder.start()
    inflated = inflater.decompress(wire)
    expected = b""
    offset = rng.randint(0, 50)  # often inside a segment: the consumer's own path
    while offset < log.next_offset:
        if rng.random() < 0.2:
            piece = encoder.heartbeat()
            expected += b"\r\n"
        else:
            batch = log.read_nowait(offset, rng.choice([100, 5000, 1 << 20]))
            piece = b"".join(encoder.encode(batch))
            expected += batch.data
            offset = batch.end
        wire += piece
        inflated += inflater.decompress(piece)
        assert inflated == expected  # everything sent so far decompresses now
    wire += encoder.finish()
    assert gzip.decompress(wire) == expected  # checks the CRC-32 and length trailer too


def test_each_batch_is_readable_as_soon_as_it_is_sent() -> None:
    log = filled_log(random.Random(9))
    encoder = SharedGzipEncoder()
    inflater = zlib.decompressobj(31)
    assert inflater.decompress(encoder.start()) == b""
    offset = 0
    while offset < log.next_offset:
        batch = log.read_nowait(offset, 8000)
        assert inflater.decompress(b"".join(encoder.encode(batch))) == batch.data
        offset = batch.end


def test_segments_are_compressed_once_and_shared() -> None:
    log = filled_log(random.Random(1))
    a, b = SharedGzipEncoder(), SharedGzipEncoder()
    batch = log.read_nowait(0, 1 << 30)
    assert a.encode(batch) == b.encode(batch)
    segment = batch.pieces[0]
    assert segment.deflated() is segment.deflated()


def test_identity_encoder() -> None:
    log = filled_log(random.Random(2))
    batch = log.read_nowait(3, 1 << 30)
    enc = IdentityEncoder()
    assert enc.start() == b"" and b"".join(enc.encode(batch)) == batch.data and enc.heartbeat() == b"\r\n"


def test_crc32_combine_fallback_matches_zlib() -> None:
    rng = random.Random(4)
    for _ in range(50):
        a, b = rng.randbytes(rng.randint(0, 5000)), rng.randbytes(rng.randint(0, 5000))
        assert deflate._crc32_combine_py(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
        assert deflate.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_a_heartbeat_of_another_kind_keeps_the_gzip_member_valid() -> None:
    enc = SharedGzipEncoder(b":\n\n")  # Server-Sent Events: a comment
    body = enc.start() + enc.heartbeat() + enc.heartbeat() + enc.finish()
    assert gzip.decompress(body) == b":\n\n:\n\n"
    assert IdentityEncoder(b":\n\n").heartbeat() == b":\n\n"
