"""RecordFramer: gzip bytes in any split -> the same records, byte for byte."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Iterable, Iterator

import pytest

from lsproxy import deflate
from lsproxy.errors import FramingError
from lsproxy.upstream.framing import STEP_BYTES, STEP_CALLS, STEP_LINES, RecordFramer


@pytest.fixture(params=["isal", "zlib"], autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every framing test runs on both inflaters."""
    before = deflate.BACKEND
    deflate.use_backend(request.param)
    yield request.param
    deflate.use_backend(before)


RECORDS = [
    b'{"reportSuite":"examplecomprod","hitIdHigh":2948027281753079808,'
    b'"hitIdLow":4948646782672799561,"pageName":"Page #8552"}',
    b'{"reportSuite":"examplecomprod","hitIdHigh":18446744073709551615,'
    b'"hitIdLow":9007199254740993,"geoCity":"paris"}',
    b'{"unicode":"caf\xc3\xa9 \xe2\x82\xac","escaped":"a\\r\\nb"}',
    b"{}",
]


def gz(text: bytes) -> bytes:
    return gzip.compress(text)


def body(records: Iterable[bytes], sep: bytes = b"\r\n") -> bytes:
    return b"".join(r + sep for r in records)


def feed_chunks(framer: RecordFramer, chunks: Iterable[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
        while framer.pending:
            out.extend(framer.feed(b""))
    out.extend(framer.feed_eof())
    return out


def random_splits(data: bytes, rng: random.Random, max_piece: int = 50) -> list[bytes]:
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(0, max_piece)  # 0: empty feeds must be harmless too
        pieces.append(data[i : i + n])
        i += n
    return pieces


def many_records(n: int, rng: random.Random) -> list[bytes]:
    return [
        b'{"hitIdHigh":%d,"hitIdLow":%d,"pad":"%s"}'
        % (rng.getrandbits(64), rng.getrandbits(64), b"x" * rng.randint(0, 3000))
        for _ in range(n)
    ]


def test_whole_body() -> None:
    framer = RecordFramer()
    assert feed_chunks(framer, [gz(body(RECORDS))]) == RECORDS
    assert framer.records == len(RECORDS)
    assert framer.compressed_bytes == len(gz(body(RECORDS)))


def test_byte_by_byte() -> None:
    data = gz(body(RECORDS))
    framer = RecordFramer()
    assert feed_chunks(framer, (data[i : i + 1] for i in range(len(data)))) == RECORDS
    assert framer.compressed_bytes == len(data)


@pytest.mark.parametrize("seed", range(20))
def test_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    records = many_records(40, rng)
    data = gz(body(records))
    assert feed_chunks(RecordFramer(), random_splits(data, rng, max_piece=rng.choice([3, 500]))) == (records)


def test_records_arrive_as_soon_as_terminated() -> None:
    # A sync-flushed stream, like Adobe's chunks: each record is available when its CRLF is.
    comp = zlib.compressobj(wbits=31)
    framer = RecordFramer()
    assert framer.feed(comp.compress(b'{"a":1}\r\n{"b"') + comp.flush(zlib.Z_SYNC_FLUSH)) == [b'{"a":1}']
    assert framer.feed(comp.compress(b":2}\r") + comp.flush(zlib.Z_SYNC_FLUSH)) == []
    assert framer.feed(comp.compress(b"\n") + comp.flush(zlib.Z_SYNC_FLUSH)) == [b'{"b":2}']
    assert framer.feed(comp.flush()) == []
    assert framer.feed_eof() == []
    assert framer.records == 2


def test_bare_lf_and_mixed_terminators() -> None:
    text = b'{"a":1}\n{"b":2}\r\n{"c":3}\n'
    assert feed_chunks(RecordFramer(), [gz(text)]) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_only_one_cr_is_stripped() -> None:
    assert feed_chunks(RecordFramer(), [gz(b"x\r\r\n")]) == [b"x\r"]


def test_empty_records_are_dropped() -> None:
    text = b"\r\n\r\n" + b'{"a":1}\r\n' + b"\n\r\n\r\n" + b'{"b":2}\r\n\r\n\r'
    framer = RecordFramer()
    assert feed_chunks(framer, [gz(text)]) == [b'{"a":1}', b'{"b":2}']
    assert framer.records == 2


def test_record_split_between_cr_and_lf() -> None:
    # Two gzip members so the decompressed blocks split exactly between '\r' and '\n'.
    data = gz(b'{"a":1}\r') + gz(b'\n{"b":2}\r') + gz(b"\n")
    framer = RecordFramer()
    out = []
    for member in (gz(b'{"a":1}\r'), gz(b'\n{"b":2}\r'), gz(b"\n")):
        out.append(framer.feed(member))
    assert out == [[], [b'{"a":1}'], [b'{"b":2}']]
    assert framer.feed_eof() == []
    assert feed_chunks(RecordFramer(), [data]) == [b'{"a":1}', b'{"b":2}']


def test_multi_member_gzip() -> None:
    # Members split mid-record, fed whole, byte by byte and in random pieces.
    text = body(RECORDS)
    data = gz(text[:10]) + gz(text[10:77]) + gz(b"") + gz(text[77:])
    assert feed_chunks(RecordFramer(), [data]) == RECORDS
    assert feed_chunks(RecordFramer(), (data[i : i + 1] for i in range(len(data)))) == RECORDS
    rng = random.Random(7)
    assert feed_chunks(RecordFramer(), random_splits(data, rng)) == RECORDS


def test_feed_eof_returns_unterminated_tail() -> None:
    framer = RecordFramer()
    assert framer.feed(gz(b'{"a":1}\r\n{"b":2}')) == [b'{"a":1}']
    assert framer.feed_eof() == [b'{"b":2}']
    assert framer.records == 2


def test_feed_eof_tail_with_lone_cr_is_stripped() -> None:
    assert feed_chunks(RecordFramer(), [gz(b'{"a":1}\r')]) == [b'{"a":1}']
    assert feed_chunks(RecordFramer(), [gz(b'{"a":1}\r\n\r')]) == [b'{"a":1}']


def test_feed_eof_without_tail() -> None:
    framer = RecordFramer()
    assert framer.feed(gz(body(RECORDS))) == RECORDS
    assert framer.feed_eof() == []


def test_empty_body_is_a_clean_end() -> None:
    framer = RecordFramer()
    assert framer.feed_eof() == []
    assert framer.compressed_bytes == 0


def test_use_after_feed_eof_is_a_caller_bug() -> None:
    framer = RecordFramer()
    framer.feed_eof()
    with pytest.raises(RuntimeError):
        framer.feed(b"")


def test_truncated_gzip_keeps_earlier_records() -> None:
    data = gz(body(RECORDS) + b'{"partial":')
    cut = len(data) - 8  # drop the CRC32 + ISIZE trailer: all text is there, the end is not
    framer = RecordFramer()
    assert framer.feed(data[:cut]) == RECORDS
    with pytest.raises(FramingError, match=r"truncated.*discarded 11 bytes of a partial record"):
        framer.feed_eof()
    assert framer.records == len(RECORDS)


def test_truncated_mid_deflate() -> None:
    rng = random.Random(3)
    records = many_records(30, rng)
    data = gz(body(records))
    framer = RecordFramer()
    got = framer.feed(data[: len(data) // 2])
    assert 0 < len(got) < len(records)
    assert got == records[: len(got)]
    with pytest.raises(FramingError, match="truncated"):
        framer.feed_eof()


def test_truncated_second_member_header() -> None:
    framer = RecordFramer()
    assert framer.feed(gz(b"a\r\n") + gz(b"b\r\n")[:5]) == [b"a"]
    with pytest.raises(FramingError, match="truncated"):
        framer.feed_eof()


def test_garbage_is_a_framing_error() -> None:
    framer = RecordFramer()
    with pytest.raises(FramingError, match="corrupt gzip data"):
        framer.feed(b'{"not":"gzip"}\r\n')
    with pytest.raises(FramingError, match="already failed"):
        framer.feed(gz(b"a\r\n"))
    with pytest.raises(FramingError):
        framer.feed_eof()


def test_garbage_after_a_member() -> None:
    framer = RecordFramer()
    assert framer.feed(gz(b"a\r\n")) == [b"a"]
    with pytest.raises(FramingError, match="corrupt gzip data"):
        framer.feed(b"\x00garbage, longer than a gzip header")  # ISA-L waits for a whole header
    assert framer.records == 1


def test_corrupt_deflate_data() -> None:
    data = bytearray(gz(body(many_records(20, random.Random(1)))))
    for i in range(20, len(data) - 20, 7):
        data[i] ^= 0x55
    with pytest.raises(FramingError, match="corrupt gzip data"):
        feed_chunks(RecordFramer(), [bytes(data)])


def test_bad_crc_is_detected() -> None:
    data = bytearray(gz(b"a\r\n"))
    data[-8] ^= 0xFF
    with pytest.raises(FramingError, match="corrupt gzip data"):
        RecordFramer().feed(bytes(data))


def test_oversized_record_in_one_block() -> None:
    framer = RecordFramer(max_record_bytes=10)
    text = b"0123456789\r\n" + b"0123456789X\r\n"
    with pytest.raises(FramingError, match=r"offset 12 is 11 bytes long, over the limit of 10"):
        framer.feed(gz(text))


def test_oversized_record_fails_before_it_ends() -> None:
    framer = RecordFramer(max_record_bytes=100)
    comp = zlib.compressobj(wbits=31)
    assert framer.feed(comp.compress(b"ok\r\n") + comp.flush(zlib.Z_SYNC_FLUSH)) == [b"ok"]
    with pytest.raises(FramingError, match=r"offset 4 is at least \d+ bytes long"):
        for _ in range(10):
            framer.feed(comp.compress(b"y" * 30) + comp.flush(zlib.Z_SYNC_FLUSH))


def test_record_of_exactly_the_limit_is_fine() -> None:
    rec = b"z" * 100
    data = gz(rec + b"\r\n" + rec + b"\r")  # the second one ends at EOF, with its '\r'
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        assert feed_chunks(RecordFramer(max_record_bytes=100), chunks) == [rec, rec]


def test_oversized_tail_at_eof() -> None:
    framer = RecordFramer(max_record_bytes=5)
    assert framer.feed(gz(b"abcdef")) == []  # 6 bytes may still be 5 + '\r'
    with pytest.raises(FramingError, match="6 bytes long"):
        framer.feed_eof()


def test_large_records_and_highly_compressible_body() -> None:
    # Output larger than one zlib block per call: the framer must drain zlib.
    records = [b"a" * 1_000_000, b"b" * 3_000_000, b'{"x":1}']
    data = gz(body(records))
    assert len(data) < 20_000
    assert feed_chunks(RecordFramer(), [data]) == records
    assert feed_chunks(RecordFramer(), [b"".join([gz(b"\r\n" * 400_000), data])]) == records


def test_ids_above_2_53_are_byte_for_byte() -> None:
    rec = b'{"hitIdHigh":9007199254740993,"hitIdLow":18446744073709551615, "sp" : 1.0}'
    assert feed_chunks(RecordFramer(), [gz(rec + b"\r\n")]) == [rec]


def test_non_ascii_split_across_chunks() -> None:
    rec = '{"city":"Zürich","sym":"€"}'.encode()
    data = gz(rec + b"\r\n")
    assert feed_chunks(RecordFramer(), (data[i : i + 1] for i in range(len(data)))) == [rec]


# -- bounded work per call: a small input can inflate to gigabytes -------------------


def gz_run(unit: bytes, total: int, end: bytes = b"") -> bytes:
    """Level-9 gzip of ``unit`` repeated to ``total`` bytes, then ``end`` (fast to build)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    piece = unit * ((1 << 20) // len(unit))
    return b"".join([*(comp.compress(piece) for _ in range(total >> 20)), comp.compress(end), comp.flush()])


def feed_in_steps(framer: RecordFramer, data: bytes) -> list[list[bytes]]:
    """Every call's records: one feed, then feed(b"") while work is pending."""
    steps = [framer.feed(data)]
    while framer.pending:
        steps.append(framer.feed(b""))
    return steps


def test_a_bomb_of_blank_lines_is_inflated_in_bounded_steps() -> None:
    total = 32 << 20
    data = gz_run(b"\r\n", total, end=b'{"after":1}\r\n')
    assert len(data) < total // 500
    framer = RecordFramer()
    steps = feed_in_steps(framer, data)
    assert [r for step in steps for r in step] == [b'{"after":1}']
    assert len(steps) >= total // STEP_BYTES  # no call inflated more than STEP_BYTES
    assert framer.feed_eof() == []


def test_a_bomb_of_tiny_records_comes_out_in_bounded_steps() -> None:
    count = 200_000
    framer = RecordFramer()
    steps = feed_in_steps(framer, gz(b"a\r\n" * count))
    assert max(map(len, steps)) <= STEP_LINES
    assert sum(map(len, steps)) == count and framer.records == count
    assert all(r == b"a" for step in steps for r in step)


def test_mixed_blank_lines_and_records_are_split_in_bounded_steps() -> None:
    text = (b"\r\n" * 7 + b"x\n") * 50_000
    steps = feed_in_steps(RecordFramer(), gz(text))
    assert sum(map(len, steps)) == 50_000
    assert max(map(len, steps)) <= STEP_LINES // 8 + 1  # blank lines count against the budget


def test_a_bomb_of_empty_gzip_members_is_bounded_by_zlib_calls() -> None:
    members = 20 * STEP_CALLS
    framer = RecordFramer()
    steps = feed_in_steps(framer, gz(b"") * members + gz(b"a\r\n"))
    assert len(steps) >= members // STEP_CALLS
    assert [r for step in steps for r in step] == [b"a"]


def test_new_input_while_pending_is_queued_behind_the_old() -> None:
    first = gz(b"a\r\n" * (3 * STEP_LINES))
    framer = RecordFramer()
    out = framer.feed(first)
    assert framer.pending
    out += framer.feed(gz(b"b\r\n"))
    while framer.pending:
        out += framer.feed(b"")
    assert out == [b"a"] * (3 * STEP_LINES) + [b"b"]


def test_feed_eof_with_work_pending_is_a_caller_bug() -> None:
    framer = RecordFramer()
    framer.feed(gz(b"a\r\n" * (2 * STEP_LINES)))
    assert framer.pending
    with pytest.raises(RuntimeError, match="pending"):
        framer.feed_eof()


def test_blank_run_fast_path_keeps_a_lone_cr_and_records_of_one_cr() -> None:
    # Blocks of only CR/LF are counted, not split: "\r\r\n" is still the record "\r".
    members = [gz(b"\r\n\r\n\r"), gz(b"\r\n\r\n"), gz(b"\n\r\r\n"), gz(b"\r"), gz(b"x\r\n")]
    assert feed_chunks(RecordFramer(), members) == [b"\r", b"\r", b"\rx"]
