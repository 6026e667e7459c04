"""ReconnectPolicy: the 60-second rule, growth, reset, jitter."""

from __future__ import annotations

import math
import random

import pytest
import trio
import trio.testing

from lsproxy.upstream.backoff import Failure, ReconnectPolicy

BASE, CEILING, HEALTHY = 60.0, 900.0, 300.0


def policy(*, jitter: float = 0.0, seed: int = 0) -> ReconnectPolicy:
    return ReconnectPolicy(
        base=BASE, ceiling=CEILING, healthy_after=HEALTHY, jitter=jitter, rng=random.Random(seed)
    )


def fail_once(p: ReconnectPolicy, failure: Failure = Failure.REFUSED) -> float:
    """An attempt at the earliest allowed moment that fails 1 s later; returns the wait."""
    start = max(p.next_attempt_at(), 0.0)
    p.on_attempt(start)
    return p.on_ended(start + 1.0, failure) - (start + 1.0)


def test_first_attempt_is_immediate() -> None:
    p = policy()
    assert p.next_attempt_at() == -math.inf
    assert p.consecutive_failures == 0
    assert p.last_delay == 0.0
    p.on_attempt(0.0)
    assert p.in_attempt


def test_growth_sequence_up_to_ceiling() -> None:
    p = policy()
    waits = [fail_once(p) for _ in range(6)]
    assert waits == [60, 120, 240, 480, 900, 900]
    assert p.consecutive_failures == 6
    assert p.last_delay == 900


def test_wait_counts_from_the_loss() -> None:
    p = policy()
    p.on_attempt(10.0)
    p.on_connected(10.5)
    assert p.on_ended(42.0, Failure.LOST) == 42.0 + BASE


def test_healthy_connection_resets_growth() -> None:
    p = policy()
    for _ in range(4):
        fail_once(p)
    assert p.last_delay == 480
    t = p.next_attempt_at()
    p.on_attempt(t)
    p.on_connected(t + 0.2)
    assert p.on_ended(t + 0.2 + HEALTHY, Failure.LOST) == t + 0.2 + HEALTHY + BASE
    assert p.consecutive_failures == 1
    assert p.last_delay == BASE
    assert fail_once(p) == 120  # growth restarts from base


def test_short_lived_connection_does_not_reset() -> None:
    p = policy()
    waits = []
    for _ in range(4):
        t = p.next_attempt_at() if p.consecutive_failures else 0.0
        p.on_attempt(t)
        p.on_connected(t + 1)
        end = t + 1 + HEALTHY - 0.001  # streamed, but not long enough
        waits.append(p.on_ended(end, Failure.LOST) - end)
    assert waits == [60, 120, 240, 480]


def test_attempt_time_before_connect_does_not_count_as_healthy() -> None:
    # Healthy is measured from on_connected, not from on_attempt.
    p = policy()
    fail_once(p)
    fail_once(p)
    t = p.next_attempt_at()
    p.on_attempt(t)
    p.on_connected(t + HEALTHY)  # a very slow connect
    assert p.on_ended(t + HEALTHY + 10, Failure.LOST) - (t + HEALTHY + 10) == 240


def test_connected_without_end_of_stream_is_not_reset_without_on_connected() -> None:
    p = policy()
    fail_once(p)
    t = p.next_attempt_at()
    p.on_attempt(t)
    # a refused attempt lasting long (e.g. slow 503) is not a healthy connection
    assert p.on_ended(t + 10 * HEALTHY, Failure.REFUSED) - (t + 10 * HEALTHY) == 120


def test_config_failure_waits_ceiling() -> None:
    p = policy()
    assert fail_once(p, Failure.CONFIG) == CEILING
    assert p.last_delay == CEILING
    # and it counts as a consecutive failure
    assert fail_once(p) == 120


def test_config_failure_after_growth_still_ceiling() -> None:
    p = policy()
    fail_once(p)
    assert fail_once(p, Failure.CONFIG) == CEILING


def test_jitter_never_below_floor_and_bounded() -> None:
    p = policy(jitter=0.25, seed=1234)
    seen = []
    for i in range(2000):
        if i % 7 == 0:  # a healthy connection now and then resets the growth
            t = max(p.next_attempt_at(), 0.0)
            p.on_attempt(t)
            p.on_connected(t)
            end = t + HEALTHY
            wait = p.on_ended(end, Failure.LOST) - end
        else:
            wait = fail_once(p, random.Random(i).choice(list(Failure)))
        delay = p.last_delay
        assert delay <= wait <= delay * 1.25 + 1e-9
        assert wait >= BASE
        seen.append(wait - delay)
    assert max(seen) > 0  # jitter is actually applied
    assert len(set(seen)) > 1000


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    a, b = policy(jitter=0.1, seed=99), policy(jitter=0.1, seed=99)
    assert [fail_once(a) for _ in range(10)] == [fail_once(b) for _ in range(10)]


def test_on_attempt_before_allowed_raises() -> None:
    p = policy()
    p.on_attempt(0.0)
    allowed = p.on_ended(5.0, Failure.LOST)
    with pytest.raises(ValueError, match="before the allowed time"):
        p.on_attempt(allowed - 0.001)
    assert not p.in_attempt
    p.on_attempt(allowed)


def test_call_order_bugs_raise() -> None:
    p = policy()
    with pytest.raises(RuntimeError):
        p.on_connected(0.0)
    with pytest.raises(RuntimeError):
        p.on_ended(0.0, Failure.LOST)
    p.on_attempt(0.0)
    with pytest.raises(RuntimeError):
        p.on_attempt(0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0, "ceiling": 1, "healthy_after": 1},
        {"base": 10, "ceiling": 5, "healthy_after": 1},
        {"base": 1, "ceiling": 5, "healthy_after": -1},
        {"base": 1, "ceiling": 5, "healthy_after": 1, "jitter": -0.1},
        {"base": math.nan, "ceiling": 5, "healthy_after": 1},
    ],
)
def test_invalid_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(rng=random.Random(0), **kwargs)


def test_many_failures_do_not_overflow() -> None:
    p = policy()
    for _ in range(3000):
        fail_once(p)
    assert p.last_delay == CEILING


@pytest.mark.parametrize("seed", range(5))
def test_property_attempts_never_closer_than_base_to_a_loss(seed: int) -> None:
    """Thousands of random histories: every attempt starts >= previous loss + base."""
    rng = random.Random(seed)
    for _ in range(1000):
        base = rng.choice([0.5, 1.0, 60.0])
        ceiling = base * rng.choice([1, 3, 15])
        healthy = rng.choice([0.0, base, 5 * base])
        p = ReconnectPolicy(
            base=base,
            ceiling=ceiling,
            healthy_after=healthy,
            jitter=rng.choice([0.0, 0.1, 1.0]),
            rng=random.Random(rng.random()),
        )
        now = rng.uniform(-1e6, 1e6)
        last_loss: float | None = None
        streak = 0
        for _ in range(rng.randint(1, 30)):
            # the supervisor sleeps until the allowed time, possibly a little longer
            now = max(now, p.next_attempt_at()) + rng.choice([0.0, 0.0, rng.uniform(0, base)])
            if last_loss is not None:
                assert now >= last_loss + base
            p.on_attempt(now)
            connected = rng.random() < 0.6
            if connected:
                now += rng.uniform(0, 2.0)
                p.on_connected(now)
                connected_at = now
                now += rng.choice([0.0, rng.uniform(0, 2 * healthy + 1), healthy])
                healthy_run = now - connected_at >= healthy
                failure = Failure.LOST
            else:
                now += rng.uniform(0, 30.0)
                healthy_run = False
                failure = rng.choice([Failure.REFUSED, Failure.REFUSED, Failure.CONFIG])
            nxt = p.on_ended(now, failure)
            streak = 1 if healthy_run else streak + 1
            expected = ceiling if failure is Failure.CONFIG else min(ceiling, base * 2 ** (streak - 1))
            assert p.consecutive_failures == streak
            assert p.last_delay == expected
            assert nxt >= now + base
            assert nxt >= now + expected
            assert nxt <= now + expected * (1 + p._jitter) + 1e-6 * abs(now)
            last_loss = now


async def test_supervisor_loop_under_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    """A tiny supervisor: sleep_until(next_attempt_at) before every attempt.

    ``autojump_clock`` is pytest-trio's built-in fixture (a MockClock with
    autojump_threshold=0): a requested Clock fixture becomes the run's clock,
    so hours of back-off pass in no real time.
    """
    p = ReconnectPolicy(base=BASE, ceiling=CEILING, healthy_after=HEALTHY, jitter=0.1, rng=random.Random(5))
    # (answered 2xx?, how long the attempt/connection lasts, how it ends)
    script = [
        (False, 2.0, Failure.REFUSED),  # 503
        (False, 2.0, Failure.REFUSED),  # 409
        (True, 5.0, Failure.LOST),  # short-lived connection: no reset
        (True, 3600.0, Failure.LOST),  # healthy for an hour: reset
        (False, 0.5, Failure.CONFIG),  # 404: the ceiling, and it counts as a failure
        (False, 0.5, Failure.REFUSED),  # third consecutive failure
    ]
    starts: list[float] = []
    losses: list[float] = []
    delays: list[float] = []
    for connected, duration, failure in script:
        await trio.sleep_until(p.next_attempt_at())
        now = trio.current_time()
        starts.append(now)
        p.on_attempt(now)
        if connected:
            p.on_connected(trio.current_time())
        await trio.sleep(duration)
        losses.append(trio.current_time())
        p.on_ended(trio.current_time(), failure)
        delays.append(p.last_delay)

    assert delays == [60, 120, 240, 60, 900, 240]
    assert starts[0] == pytest.approx(0.0, abs=1e-9)
    for loss, delay, start in zip(losses, delays, starts[1:], strict=False):
        assert loss + delay <= start <= loss + delay * 1.1 + 1e-6
    await trio.sleep_until(p.next_attempt_at())
    assert trio.current_time() >= losses[-1] + 240


def test_hold_until_only_ever_delays() -> None:
    policy = ReconnectPolicy(base=60, ceiling=900, healthy_after=60, jitter=0, rng=random.Random(1))
    policy.hold_until(30.0)
    assert policy.next_attempt_at() == 30.0
    policy.hold_until(10.0)
    assert policy.next_attempt_at() == 30.0
    policy.on_attempt(30.0)
    assert policy.on_ended(40.0, Failure.REFUSED) == 100.0
    policy.hold_until(50.0)
    assert policy.next_attempt_at() == 100.0


def test_expedite_cuts_the_grown_wait_short_but_never_the_floor() -> None:
    p = policy()
    for _ in range(4):
        fail_once(p)  # waits 60, 120, 240, 480
    lost_at = p.next_attempt_at() - 480.0
    assert p.earliest_allowed() == lost_at + BASE
    assert not p.expedite(lost_at + BASE - 0.001)  # the 60 s rule
    assert p.next_attempt_at() == lost_at + 480.0  # a refused request changes nothing
    assert p.expedite(lost_at + BASE)
    assert p.next_attempt_at() == lost_at + BASE
    p.on_attempt(lost_at + BASE)
    assert not p.expedite(lost_at + BASE + 1)  # an attempt is in progress
    assert p.on_ended(lost_at + BASE + 2, Failure.REFUSED) - (lost_at + BASE + 2) == 900.0  # growth kept
    assert p.earliest_allowed() == lost_at + BASE + 2 + BASE


def test_expedite_after_a_config_error_and_before_any_failure() -> None:
    p = policy()
    assert p.expedite(5.0) and p.next_attempt_at() == -math.inf  # nothing to wait for anyway
    fail_once(p, Failure.CONFIG)  # attempt at 0, ends at 1, waits the ceiling
    assert p.next_attempt_at() == 901.0
    assert not p.expedite(60.9) and p.expedite(61.0)
    assert p.next_attempt_at() == 61.0


def test_expedite_respects_hold_until() -> None:
    p = policy()
    p.hold_until(100.0)  # a loss the policy did not see (a restart, a reload)
    assert p.earliest_allowed() == 100.0
    assert not p.expedite(99.0) and p.expedite(100.0)


@pytest.mark.parametrize("seed", range(10))
def test_property_expedite_at_any_moment_keeps_attempts_base_apart_from_losses(seed: int) -> None:
    rng = random.Random(seed)
    p = policy(jitter=0.1, seed=seed)
    now, last_loss = 0.0, -math.inf
    for _ in range(200):
        now += rng.uniform(0, 200)
        p.expedite(now)
        if now < p.next_attempt_at():
            continue
        assert now - last_loss >= BASE
        p.on_attempt(now)
        now += rng.uniform(0, 100)
        p.on_ended(now, rng.choice(list(Failure)))
        last_loss = now
