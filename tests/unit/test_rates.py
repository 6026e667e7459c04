"""The records-per-second ring behind the status page's chart, and the plain histogram."""

from __future__ import annotations

import math

import pytest

from lsproxy.histogram import Histogram
from lsproxy.hub.rates import RateRing

T0 = 1_700_000_000.0


def test_series_ends_at_the_last_complete_second_and_fills_quiet_seconds_with_zero() -> None:
    ring = RateRing(seconds=5)
    ring.add(T0 + 0.1, 3)
    ring.add(T0 + 0.9, 2)
    ring.add(T0 + 2.5, 7)
    ring.add(T0 + 3.2, 1)  # the second being filled: not shown yet
    end, counts = ring.series(T0 + 3.5)
    assert end == int(T0) + 2
    assert counts == [0, 0, 5, 0, 7]  # seconds T0-2 .. T0+2


def test_a_series_long_after_the_last_record_is_all_zero() -> None:
    ring = RateRing(seconds=5)
    ring.add(T0, 10)
    assert ring.series(T0 + 100) == (int(T0) + 99, [0] * 5)
    assert RateRing(seconds=3).series(T0) == (int(T0) - 1, [0, 0, 0])


def test_the_ring_keeps_exactly_its_window_across_wraps_and_gaps() -> None:
    ring = RateRing(seconds=4)
    for second in range(10):
        ring.add(T0 + second, second + 1)
    _, counts = ring.series(T0 + 10)
    assert counts == [7, 8, 9, 10]
    ring.add(T0 + 12, 5)  # a 2-second gap zeroes the skipped buckets
    _, counts = ring.series(T0 + 13)
    assert counts == [10, 0, 0, 5]
    ring.add(T0 + 1000, 1)  # a gap longer than the window starts afresh
    assert ring.series(T0 + 1001)[1] == [0, 0, 0, 1]


def test_a_clock_stepping_back_adds_to_the_current_bucket() -> None:
    ring = RateRing(seconds=3)
    ring.add(T0 + 5, 1)
    ring.add(T0 + 3, 4)  # wall clock stepped back two seconds
    assert ring.series(T0 + 6)[1] == [0, 0, 5]


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        hist.observe(value)
    assert hist.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 5)]
    assert hist.count == 5 and hist.sum == pytest.approx(4.65)
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))
