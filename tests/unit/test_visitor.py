"""Visitor keys and share hashes: found without a JSON parse, stable, evenly split."""

from collections import Counter

import pytest

from lsproxy.hub.segment import make_segment
from lsproxy.hub.visitor import segment_hashes, share_hash, share_of, visitor_key
from lsproxy.simulator.hits import HitFactory

BIG = 2948027281753079808  # > 2**53


def test_visitor_key_priority_vis_then_mc_then_custom() -> None:
    both = b'{"visIdHigh":%d,"visIdLow":7,"mcVisIdHigh":1,"mcVisIdLow":2,"customVisId":"c"}' % BIG
    assert visitor_key(both) == b"v%d:7" % BIG
    spaced = b'{"visIdLow" : 7, "x":1, "visIdHigh" : %d}' % BIG  # other order, spaces
    assert visitor_key(spaced) == b"v%d:7" % BIG
    zero_vis = b'{"visIdHigh":0,"visIdLow":0,"mcVisIdHigh":11,"mcVisIdLow":12,"customVisId":"c"}'
    assert visitor_key(zero_vis) == b"m11:12"
    assert visitor_key(b'{"customVisId":"cust-\\"7","visIdType":3}') == b'ccust-\\"7'
    assert visitor_key(b'{"customVisId":"","hitIdLow":1}') is None
    assert visitor_key(b'{"hitIdHigh":1,"hitIdLow":2}') is None
    assert visitor_key(b"") is None


def test_share_hash_is_pinned_because_share_cursors_are_persisted() -> None:
    # A persisted share cursor is only meaningful if the same visitor maps to the same share
    # after an upgrade: a change here must be deliberate.
    record = b'{"visIdHigh":%d,"visIdLow":7}' % BIG
    assert share_hash(record, 0) == share_hash(record, 99)  # the offset plays no part with a key
    assert share_hash(record, 0) == 2675860986
    assert [share_of(share_hash(record, 0), n) for n in range(2, 9)] == [1, 1, 2, 3, 3, 4, 4]
    assert share_hash(b'{"a":1}', 5) != share_hash(b'{"a":1}', 6)  # keyless: spread by offset


@pytest.mark.parametrize("shares", range(2, 9))
def test_simulator_visitors_split_evenly(shares: int) -> None:
    factory = HitFactory("s1")
    lines, _keys = factory.render_range(0, 6000, 1_700_000_000)
    counts = Counter(share_of(share_hash(line.strip(), i), shares) for i, line in enumerate(lines))
    assert set(counts) == set(range(shares))
    assert max(counts.values()) < 1.35 * 6000 / shares  # 3000 visitors: close to even


def test_one_visitor_one_share_for_simulator_records() -> None:
    factory = HitFactory("s1")
    lines, keys = factory.render_range(0, 3000, 1_700_000_000)
    seen: dict[int, int] = {}
    for i, (line, key) in enumerate(zip(lines, keys, strict=True)):
        share = share_of(share_hash(line.strip(), i), 5)
        assert seen.setdefault(key, share) == share


def test_segment_hashes_are_computed_once_per_segment() -> None:
    records = [b'{"visIdHigh":%d,"visIdLow":%d}' % (BIG, i) for i in range(20)] + [b'{"x":1}']
    seg = make_segment(100, records, 0.0)
    hashes = seg.share_hashes()
    assert list(hashes) == [share_hash(r, 100 + i) for i, r in enumerate(records)]
    assert seg.share_hashes() is hashes
    assert list(segment_hashes(seg.data, seg.ends, seg.first)) == list(hashes)
