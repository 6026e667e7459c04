"""MemoryLog: offsets, slicing at record boundaries, retention, waiting."""

import pytest
import trio

from lsproxy.hub.log import MemoryLog


def records(first: int, count: int, size: int = 10) -> list[bytes]:
    return [f'{{"n":{i:0{size - 6}d}}}'.encode() for i in range(first, first + count)]


def decode(data: bytes) -> list[bytes]:
    assert data.endswith(b"\r\n") or data == b""
    return data.split(b"\r\n")[:-1]


def test_offsets_and_full_read() -> None:
    log = MemoryLog(1 << 20)
    assert (log.oldest, log.next_offset) == (0, 0)
    log.append(records(0, 3), 1.0)
    log.append(records(3, 2), 2.0)
    assert (log.oldest, log.next_offset) == (0, 5)
    got = log.read_nowait(0, 1 << 20)
    assert (got.start, got.end) == (0, 5)
    assert decode(got.data) == records(0, 5)


def test_read_mid_segment_and_at_tail() -> None:
    log = MemoryLog(1 << 20)
    log.append(records(0, 4), 1.0)
    got = log.read_nowait(2, 1 << 20)
    assert (got.start, got.end) == (2, 4)
    assert decode(got.data) == records(2, 2)
    tail = log.read_nowait(4, 1 << 20)
    assert (tail.start, tail.end, tail.data) == (4, 4, b"")
    with pytest.raises(ValueError):
        log.read_nowait(5, 100)


@pytest.mark.parametrize("max_bytes", [1, 12, 13, 24, 25, 36, 50, 1000])
def test_reads_end_at_segment_boundaries(max_bytes: int) -> None:
    log = MemoryLog(1 << 20)
    for first in range(0, 20, 4):
        log.append(records(first, 4), 1.0)  # 48-byte segments of 12-byte records
    offset, seen = 1, []
    while offset < log.next_offset:
        got = log.read_nowait(offset, max_bytes)
        assert got.start == offset and got.end > offset
        assert got.end % 4 == 0  # never cut inside a segment
        whole_segments = (got.end - got.start) // 4
        assert whole_segments <= max(1, -(-max_bytes // 48))  # stops once max_bytes is reached
        seen += decode(got.data)
        offset = got.end
    assert seen == records(1, 19)


def test_retention_trims_whole_segments_and_reports_skip() -> None:
    log = MemoryLog(100)
    for first in range(0, 30, 3):
        log.append(records(first, 3), float(first))  # 36 bytes per segment
    assert log.retained_bytes <= 100
    assert log.oldest == 24 and log.next_offset == 30
    assert log.trimmed_records == 24
    got = log.read_nowait(5, 1 << 20)
    assert got.start == 24  # the reader sees it jumped 19 records
    assert decode(got.data) == records(24, 6)
    assert log.received_at(24) == 24.0 and log.received_at(3) is None


def test_newest_segment_always_kept() -> None:
    log = MemoryLog(10)
    log.append(records(0, 5), 1.0)
    assert log.oldest == 0 and log.retained_records == 5


def test_compaction_keeps_offsets_right() -> None:
    log = MemoryLog(12 * 10)
    for i in range(5000):
        log.append(records(i, 1), 1.0)
    assert log.oldest == 4990
    assert decode(log.read_nowait(0, 1 << 20).data) == records(4990, 10)
    assert decode(log.read_nowait(4995, 1 << 20).data) == records(4995, 5)


async def test_wait_beyond_wakes_on_append_and_close() -> None:
    log = MemoryLog(1 << 20)
    woke: list[int] = []

    async def waiter() -> None:
        await log.wait_beyond(0)
        woke.append(log.next_offset)
        await log.wait_beyond(1)
        woke.append(-1 if log.closed else log.next_offset)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        log.append(records(0, 1), 1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [1]
        log.close()
    assert woke == [1, -1]
    with pytest.raises(RuntimeError):
        log.append(records(1, 1), 1.0)


def test_offset_at_finds_the_first_record_received_at_or_after() -> None:
    log = MemoryLog(1 << 20)
    for i, t in enumerate([10.0, 20.0, 20.0, 30.0]):
        log.append(records(i * 2, 2), t)
    assert [log.offset_at(t) for t in (0, 10, 15, 20, 25, 30, 31)] == [0, 0, 2, 2, 6, 6, 8]
