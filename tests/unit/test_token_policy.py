"""RefreshSchedule: refresh at 80 %, back-off on failure, the 1 s floor, invalidation."""

from __future__ import annotations

import ast
import itertools
import math
import random
from pathlib import Path

import pytest

from lsproxy.upstream.token_policy import DEFAULT_EXPIRES_IN, RefreshSchedule

DAY = 86_400.0


def fetch(s: RefreshSchedule, at: float, expires_in: float | None = DAY, *, took: float = 0.0) -> None:
    """A fetch starting at ``at`` that takes ``took`` s; ``expires_in=None`` means it fails."""
    s.on_fetch_started(at)
    if expires_in is None:
        s.on_failure(at + took)
    else:
        s.on_success(at + took, issued_at=at, expires_in=expires_in)


def test_module_is_pure() -> None:
    path = Path(__file__).parent.parent.parent / "lsproxy" / "upstream" / "token_policy.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    assert names <= {"__future__", "math"}, names


def test_fresh_schedule_fetches_at_once() -> None:
    s = RefreshSchedule()
    assert s.next_fetch_at() == -math.inf
    assert s.fetch_allowed_at() == -math.inf
    assert not s.has_token and not s.token_usable(0.0)
    assert s.expires_in(0.0) is None and s.expires_at is None and s.issued_at is None


def test_refresh_at_80_percent_and_expiry_times() -> None:
    s = RefreshSchedule()
    fetch(s, 100.0, DAY, took=0.3)
    assert s.issued_at == 100.0  # issued_at is when the request was sent, not answered
    assert s.expires_at == 100.0 + DAY
    assert s.next_fetch_at() == pytest.approx(100.0 + 0.8 * DAY)
    assert s.usable_until == 100.0 + DAY - 30.0
    assert s.token_usable(100.0 + DAY - 31.0)
    assert not s.token_usable(100.0 + DAY - 30.0)
    assert s.expires_in(1100.0) == pytest.approx(DAY - 1000.0)
    assert s.consecutive_failures == 0


@pytest.mark.parametrize(
    ("expires_in", "refresh", "usable"),
    [
        (DAY, 0.8 * DAY, DAY - 30),
        (3600.0, 2880.0, 3570.0),
        (100.0, 80.0, 90.0),  # margin = 10 % when that is below 30 s
        (2.0, 1.6, 1.8),
        (0.5, 0.4, 0.45),
    ],
)
def test_refresh_point_and_margin_scale_with_lifetime(
    expires_in: float, refresh: float, usable: float
) -> None:
    s = RefreshSchedule()
    fetch(s, 0.0, expires_in)
    assert s.next_fetch_at() == pytest.approx(max(refresh, 1.0))  # never before the 1 s floor
    assert s.usable_until == pytest.approx(usable)


def test_steady_state_sequence_of_refreshes() -> None:
    s = RefreshSchedule()
    t = 0.0
    starts = []
    for _ in range(5):
        t = max(t, s.next_fetch_at())
        starts.append(t)
        fetch(s, t, 1000.0, took=0.5)
        assert s.token_usable(t + 0.5)
    assert starts == [0.0, 800.0, 1600.0, 2400.0, 3200.0]


def test_failure_backoff_doubles_to_the_cap_and_success_resets() -> None:
    s = RefreshSchedule()
    fetch(s, 0.0, None)
    waits = []
    t = 0.0
    for _ in range(9):
        nxt = s.next_fetch_at()
        waits.append(nxt - t)
        t = nxt
        fetch(s, t, None)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert s.consecutive_failures == 10
    assert not s.token_usable(t)
    fetch(s, s.next_fetch_at(), DAY)
    assert s.consecutive_failures == 0


def test_failed_refresh_keeps_the_token_and_retries_with_backoff() -> None:
    s = RefreshSchedule()
    fetch(s, 0.0, 1000.0)
    t = s.next_fetch_at()
    assert t == 800.0
    retries = []
    for _ in range(6):
        fetch(s, t, None, took=0.1)
        assert s.token_usable(t + 0.1), "a failed refresh must not drop a valid token"
        t = s.next_fetch_at()
        retries.append(round(t, 3))
    # 1, 2, 4, 8, 16, 32 s after each failure (which ended 0.1 s after it started)
    assert retries == [801.1, 803.2, 807.3, 815.4, 831.5, 863.6]
    fetch(s, t, 1000.0)
    assert s.next_fetch_at() == t + 800.0 and s.consecutive_failures == 0


def test_retry_never_scheduled_after_the_token_runs_out() -> None:
    s = RefreshSchedule(retry_cap=600.0)
    fetch(s, 0.0, 1000.0)  # usable until 970
    t = 800.0
    for _ in range(8):
        fetch(s, t, None)
        nxt = s.next_fetch_at()
        if s.token_usable(t):
            assert nxt <= max(s.usable_until, t + 1.0)
        t = nxt
    assert t == 970.0  # 800, 801, 803, ..., 927, then 927 + 128 clamped to 970: one last try
    fetch(s, t, None)
    # Once the token is gone the plain back-off applies again.
    assert not s.token_usable(t)
    assert s.next_fetch_at() - t == min(600.0, 2.0 ** (s.consecutive_failures - 1)) == 256.0


def test_floor_applies_to_every_fetch() -> None:
    s = RefreshSchedule()
    fetch(s, 10.0, DAY)
    assert s.fetch_allowed_at() == 11.0
    with pytest.raises(ValueError, match="before the allowed time"):
        s.on_fetch_started(10.5)
    s.invalidate(10.2)
    assert not s.token_usable(10.2)
    assert s.next_fetch_at() == 11.0  # due at once, but not before the floor
    fetch(s, 11.0, DAY)
    assert s.token_usable(11.0) and not s.invalidated


def test_invalidate_storm_is_one_fetch_per_second() -> None:
    s = RefreshSchedule()
    rng = random.Random(5)
    t = 0.0
    starts: list[float] = []
    while t < 30.0:
        # Many 401s between fetches; the caller fetches as soon as it may.
        for _ in range(rng.randint(1, 20)):
            s.invalidate(t)
            t += rng.uniform(0.0, 0.05)
        start = max(t, s.next_fetch_at())
        starts.append(start)
        fetch(s, start, DAY, took=0.05)
        t = start + 0.05
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps and min(gaps) >= 1.0 - 1e-9
    assert len(starts) <= 31


def test_invalidated_token_stays_unusable_through_a_failed_fetch() -> None:
    s = RefreshSchedule()
    fetch(s, 0.0, DAY)
    s.invalidate(5.0)
    assert s.invalidated and s.invalidated_at == 5.0
    fetch(s, 5.0, None)
    assert not s.token_usable(5.0)
    assert s.next_fetch_at() == 6.0  # back-off 1 s
    fetch(s, 6.0, DAY)
    assert s.token_usable(6.0)


def test_abandoned_fetch_changes_nothing_but_the_floor() -> None:
    s = RefreshSchedule()
    fetch(s, 0.0, 1000.0)
    s.on_fetch_started(800.0)
    s.on_abandoned()
    assert s.consecutive_failures == 0 and s.token_usable(800.0)
    assert s.next_fetch_at() == 801.0


def test_sequencing_errors() -> None:
    s = RefreshSchedule()
    with pytest.raises(RuntimeError):
        s.on_success(0.0, issued_at=0.0, expires_in=10.0)
    with pytest.raises(RuntimeError):
        s.on_failure(0.0)
    s.on_fetch_started(0.0)
    assert s.in_fetch
    with pytest.raises(RuntimeError):
        s.on_fetch_started(5.0)
    s.on_failure(0.5)
    assert not s.in_fetch


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_expires_in(bad: float) -> None:
    s = RefreshSchedule()
    s.on_fetch_started(0.0)
    with pytest.raises(ValueError):
        s.on_success(0.0, issued_at=0.0, expires_in=bad)


def test_issued_after_now_is_a_caller_bug() -> None:
    s = RefreshSchedule()
    s.on_fetch_started(0.0)
    with pytest.raises(ValueError):
        s.on_success(1.0, issued_at=2.0, expires_in=10.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"refresh_fraction": 0.0},
        {"refresh_fraction": 0.95},
        {"min_interval": -1.0},
        {"min_interval": math.inf},
        {"retry_base": 0.0},
        {"retry_base": 10.0, "retry_cap": 5.0},
        {"expiry_margin": -1.0},
    ],
)
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RefreshSchedule(**kwargs)


def test_random_sequences_keep_the_invariants() -> None:
    """Any mix of successes, failures, invalidations and random lifetimes: the floor holds,
    a usable token is never lost to a failure, and the refresher is never due after expiry
    while a token is usable."""
    for seed in range(200):
        rng = random.Random(seed)
        s = RefreshSchedule()
        t = 0.0
        last_start = -math.inf
        for _ in range(60):
            event = rng.random()
            if event < 0.15:
                s.invalidate(t)
            t = (
                max(t + rng.uniform(0.0, 3.0), s.next_fetch_at())
                if event < 0.6
                else max(t, s.fetch_allowed_at())
            )
            assert t - last_start >= 1.0 - 1e-9
            usable_before = s.token_usable(t)
            s.on_fetch_started(t)
            last_start = t
            took = rng.uniform(0.0, 0.5)
            if rng.random() < 0.4:
                s.on_failure(t + took)
                if usable_before and t + took < s.usable_until:
                    assert s.token_usable(t + took)
                    assert s.next_fetch_at() <= max(s.usable_until, t + 1.0)
            else:
                lifetime = rng.choice([0.5, 2.0, 60.0, 3600.0, DAY])
                s.on_success(t + took, issued_at=t, expires_in=lifetime)
                assert s.next_fetch_at() >= t + 1.0
                assert s.next_fetch_at() <= max(t + 0.8 * lifetime, t + 1.0) + 1e-9
            t += took


def test_default_lifetime_constant() -> None:
    assert DEFAULT_EXPIRES_IN == DAY
