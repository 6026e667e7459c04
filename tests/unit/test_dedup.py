"""DedupWindow: drops repeated hit ids within a bounded window, byte-exact."""

from lsproxy.hub.dedup import DedupWindow, hit_id, parse_hit_id


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
