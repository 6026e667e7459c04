"""DedupWindow: drops repeated hit ids within a bounded window, byte-exact."""

import logging

import pytest

from lsproxy.hub.dedup import DedupWindow, hit_id, parse_hit_id
from lsproxy.hub.log import MemoryLog
from lsproxy.hub.stream import StreamHub


def hit(high: int, low: int, extra: str = "") -> bytes:
    return f'{{"reportSuite":"s","hitIdHigh":{high},"hitIdLow":{low}{extra}}}'.encode()


BIG = 2**63 + 12345  # beyond 2^53: must stay exact


def test_hit_id_is_exact_and_needs_both_ids() -> None:
    assert hit_id(hit(BIG, BIG + 1)) == f"{BIG}:{BIG + 1}".encode()
    assert hit_id(b'{"hitIdHigh": 1}') is None
    assert hit_id(b'{"pageName":"x"}') is None
    assert hit_id(hit(BIG, 1)) != hit_id(hit(BIG, 2))
    assert hit_id(hit(BIG, 9007199254740993)) != hit_id(hit(BIG, 9007199254740992))  # float would merge them


def test_duplicates_dropped_in_and_across_batches_records_unchanged() -> None:
    window = DedupWindow(max_records=100, max_seconds=60)
    first = [hit(1, i) for i in range(5)]
    assert window.filter(first, now=0) == first
    again = [hit(1, 3), hit(1, 5, ',"x":1'), hit(1, 5, ',"x":2'), b"{}", b"{}"]
    assert window.filter(again, now=1) == [hit(1, 5, ',"x":1'), b"{}", b"{}"]
    assert window.dropped == 2


def test_window_bounded_by_count_and_age() -> None:
    window = DedupWindow(max_records=3, max_seconds=10)
    window.filter([hit(1, i) for i in range(4)], now=0)  # id 0 falls out by count
    assert len(window) == 3
    assert window.filter([hit(1, 0)], now=1) == [hit(1, 0)]
    assert window.filter([hit(1, 3)], now=5) == []
    assert window.filter([hit(1, 3)], now=20) == [hit(1, 3)]  # expired by age


def test_disabled_window_passes_everything_and_seed_counts() -> None:
    off = DedupWindow(max_records=0, max_seconds=10)
    assert off.filter([hit(1, 1), hit(1, 1)], now=0) == [hit(1, 1), hit(1, 1)]
    window = DedupWindow(max_records=10, max_seconds=10)
    window.seed([hit(2, 1), hit(2, 2)], now=0)
    assert window.filter([hit(2, 2), hit(2, 3)], now=1) == [hit(2, 3)]


def test_a_long_run_of_consecutive_duplicates_is_reported_once_per_interval() -> None:
    window = DedupWindow(max_records=10_000, max_seconds=600, warn_after=100, warn_interval=60)
    window.filter([hit(1, i) for i in range(1000)], now=0)
    # A restarted source numbering from 0 again: everything is a duplicate.
    assert window.filter([hit(1, i) for i in range(60)], now=1) == []
    assert window.consecutive == 60 and window.take_warning(now=1) is None  # a backfill, not yet a run
    window.filter([hit(1, i) for i in range(60, 150)], now=2)
    assert window.consecutive == 150
    assert window.take_warning(now=2) == 150
    window.filter([hit(1, i) for i in range(150, 400)], now=3)
    assert window.take_warning(now=3) is None  # rate-limited
    window.filter([hit(1, i) for i in range(400, 500)], now=61)
    assert window.take_warning(now=62) == 500  # the run so far, a minute later
    assert window.take_warning(now=200) is None  # nothing new since


def test_a_run_ended_inside_a_batch_is_still_reported_and_a_new_record_resets_the_count() -> None:
    window = DedupWindow(max_records=10_000, max_seconds=600, warn_after=100)
    window.filter([hit(1, i) for i in range(300)], now=0)
    batch = [hit(1, i) for i in range(250)] + [hit(2, 1), hit(1, 0)]
    assert window.filter(batch, now=1) == [hit(2, 1)]
    assert window.consecutive == 1
    assert window.take_warning(now=1) == 250


def test_duplicates_interleaved_with_new_records_never_warn() -> None:
    window = DedupWindow(max_records=10_000, max_seconds=600, warn_after=100)
    window.filter([hit(1, i) for i in range(1000)], now=0)
    mixed = [r for i in range(1000) for r in (hit(1, i), hit(3, i))]  # half duplicates, never 2 in a row
    window.filter(mixed, now=1)
    assert window.dropped == 1000 and window.consecutive == 0
    assert window.take_warning(now=1) is None


def test_the_hub_logs_the_run_at_warning_and_status_shows_it(caplog: pytest.LogCaptureFixture) -> None:
    window = DedupWindow(max_records=10_000, max_seconds=600, warn_after=100)
    hub = StreamHub("demo", MemoryLog(1 << 20), dedup=window)
    hub.append([hit(1, i) for i in range(200)])
    with caplog.at_level(logging.WARNING, logger="lsproxy.hub"):
        hub.append([hit(1, i) for i in range(150)])
    assert [r.getMessage() for r in caplog.records] == [
        "stream demo: 150 consecutive duplicates dropped: the upstream is replaying or ids repeat"
    ]
    status = hub.snapshot(now=0)
    assert (status["duplicates_dropped"], status["consecutive_duplicates"]) == (150, 150)


def test_the_window_knows_where_each_id_went() -> None:
    window = DedupWindow(max_records=10, max_seconds=60)
    records = [b'{"hitIdHigh":1,"hitIdLow":%d}' % i for i in (1, 2, 1, 3)] + [b"{}"]
    kept = window.filter(records, 0.0, first_offset=100)
    assert len(kept) == 4
    assert [window.offset_of(b"1:%d" % i) for i in (1, 2, 3)] == [100, 101, 102]
    window.seed([b'{"hitIdHigh":1,"hitIdLow":9}'], 0.0)
    assert window.offset_of(b"1:9") is None and window.offset_of(b"1:4") is None


def test_parse_hit_id() -> None:
    assert parse_hit_id("2948027281753079808:0012") == b"2948027281753079808:12"
    for bad in ("12", "a:b", "1:-2", ":1", "1:" + "9" * 21, "1:" + "0" * 41, "\u0661:\u0662"):
        assert parse_hit_id(bad) is None
