"""The supervisor loop on trio's MockClock: the 60-second rule holds for any fault sequence.

The attempt function is injected (the real one needs a network); it plays a
scripted or random upstream: connects or not, streams for a while, fails in
every way an attempt can, or even raises (a bug must not cause a fast retry).
"""

import random

import pytest
import trio
import trio.testing

from lsproxy.config import StreamConfig, parse_config
from lsproxy.hub.log import MemoryLog
from lsproxy.hub.stream import StreamHub
from lsproxy.upstream.outcome import classify_end, classify_status
from lsproxy.upstream.supervisor import supervise

BASE = 60.0
TEN_MINUTES = 600.0


def stream_config(**upstream: float) -> StreamConfig:
    settings = {"reconnect_delay": BASE, "max_reconnect_delay": 900, "healthy_after": 60, **upstream}
    text = "\n".join(
        [
            "[upstream]",
            *(f"{k} = {v}" for k, v in settings.items()),
            "[credentials.c]",
            'token = "t0ken"',
            "[streams.s]",
            'url = "http://127.0.0.1:1/api/1/stream/s"',
        ]
    )
    return parse_config(text, path="t.toml", environ={}).streams[0]


class Upstream:
    """Records when attempts start and when they end, and plays a script."""

    def __init__(self, script):  # type: ignore[no-untyped-def]
        self.script = script
        self.starts: list[float] = []
        self.ends: list[float] = []

    async def attempt(self, on_connected):  # type: ignore[no-untyped-def]
        self.starts.append(trio.current_time())
        try:
            return await self.script(len(self.starts), on_connected)
        finally:
            self.ends.append(trio.current_time())


async def run_for(
    seconds: float, stream: StreamConfig, upstream: Upstream, hub: StreamHub, seed: int = 0
) -> str:
    """Run the supervisor for ``seconds``; return the state it published just before being stopped."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: supervise(
                stream.name, stream.upstream, hub.upstream, upstream.attempt, rng=random.Random(seed)
            )
        )
        await trio.sleep(seconds)
        state = hub.upstream.state
        nursery.cancel_scope.cancel()
    return state


async def test_first_attempt_at_once_then_base_delay_after_a_healthy_stream(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    async def script(n, on_connected):  # type: ignore[no-untyped-def]
        on_connected()
        await trio.sleep(TEN_MINUTES)  # streams healthily (mock clock), then the upstream closes
        return classify_end("eof", "closed", stream="s", streamed=True)

    up = Upstream(script)
    hub = StreamHub("s", MemoryLog(1 << 20))
    await run_for(2000, stream_config(), up, hub)
    assert up.starts[0] == 0
    gaps = [start - end for start, end in zip(up.starts[1:], up.ends, strict=False)]
    assert gaps and all(BASE <= g <= BASE * 1.1 for g in gaps)  # exactly base plus jitter, never growth
    assert hub.upstream.connects == len(up.starts)


async def test_refusals_grow_to_the_ceiling_and_config_errors_wait_the_ceiling(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    async def refuse(n, on_connected):  # type: ignore[no-untyped-def]
        return classify_status(409, b'{"error_description":"too many"}', stream="s")

    up = Upstream(refuse)
    hub = StreamHub("s", MemoryLog(1 << 20))
    state = await run_for(4000, stream_config(), up, hub)
    gaps = [start - end for start, end in zip(up.starts[1:], up.ends, strict=False)]
    floors = [60, 120, 240, 480, 900, 900]
    for gap, floor in zip(gaps, floors, strict=False):
        assert floor <= gap <= floor * 1.1
    assert state == "backoff"
    assert hub.upstream.last_error["status"] == 409
    assert hub.upstream.last_error["description"] == "too many"

    async def not_found(n, on_connected):  # type: ignore[no-untyped-def]
        return classify_status(404, b"", stream="s")

    up = Upstream(not_found)
    hub = StreamHub("s", MemoryLog(1 << 20))
    state = await run_for(2000, stream_config(), up, hub)
    gaps = [start - end for start, end in zip(up.starts[1:], up.ends, strict=False)]
    assert gaps and all(900 <= g <= 990 for g in gaps)
    assert state == "failed"


@pytest.mark.parametrize("seed", range(20))
async def test_no_fault_sequence_opens_connections_less_than_base_apart(autojump_clock, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)

    async def chaos(n, on_connected):  # type: ignore[no-untyped-def]
        roll = rng.random()
        if roll < 0.1:
            raise RuntimeError("a bug in the attempt")
        await trio.sleep(rng.choice([0, 0, 0.001, 1, 9.9, 30]))  # connect time, connect timeouts
        if roll < 0.4:
            return classify_status(rng.choice([400, 401, 404, 409, 500, 503, 418]), b"", stream="s")
        if roll < 0.5:
            return classify_end(rng.choice(["network", "connect_timeout"]), "x", stream="s", streamed=False)
        on_connected()
        await trio.sleep(rng.choice([0, 0.5, 59, 61, 3600]))  # how long it streamed
        return classify_end(
            rng.choice(["eof", "network", "idle_timeout", "framing"]), "x", stream="s", streamed=True
        )

    up = Upstream(chaos)
    await run_for(6 * 3600, stream_config(), up, StreamHub("s", MemoryLog(1 << 20)), seed=seed)
    assert len(up.starts) > 5
    for end, next_start in zip(up.ends, up.starts[1:], strict=False):
        assert next_start - end >= BASE, (end, next_start)


async def test_cancellation_stops_the_loop_and_marks_the_stream_stopped(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    async def hang(n, on_connected):  # type: ignore[no-untyped-def]
        on_connected()
        await trio.sleep_forever()

    up = Upstream(hang)
    hub = StreamHub("s", MemoryLog(1 << 20))
    assert await run_for(10, stream_config(), up, hub) == "streaming"
    assert len(up.starts) == 1 and len(up.ends) == 1
    assert hub.upstream.state == "stopped"


async def test_an_operator_reconnect_waits_for_the_rule_then_attempts_at_once(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    from lsproxy.upstream.supervisor import SupervisorControl

    async def not_found(n, on_connected):  # type: ignore[no-untyped-def]
        await trio.sleep(1)
        return classify_status(404, b"", stream="s")  # a config error: the next try waits the ceiling

    up, hub, control = Upstream(not_found), StreamHub("s", MemoryLog(1 << 20)), SupervisorControl()
    assert control.reconnect().result == "refused"  # not running yet
    stream = stream_config()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: supervise("s", stream.upstream, hub.upstream, up.attempt, rng=random.Random(0), control=control)
        )
        await trio.sleep(30)  # the first attempt failed at 1 s; the ceiling says 901 s
        answer = control.reconnect()
        assert (answer.result, answer.next_attempt_in) == ("refused", 31.0)  # the rule: 61 s
        assert "31.0 s" in answer.reason
        assert len(up.starts) == 1
        await trio.sleep(31)
        answer = control.reconnect()
        assert answer.result == "scheduled"
        await trio.sleep(0.5)
        assert up.starts == [0, 61]  # at once, not at 901
        assert control.reconnect().result == "refused"  # connecting: an attempt is in progress
        await trio.sleep(10)
        assert hub.upstream.state == "failed" and len(up.starts) == 2
        nursery.cancel_scope.cancel()
    assert control.reconnect().result == "refused"  # stopped


async def test_an_operator_reconnect_of_a_streaming_connection_closes_it_and_waits_the_delay(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    from lsproxy.upstream.supervisor import SupervisorControl

    async def stream_forever(n, on_connected):  # type: ignore[no-untyped-def]
        on_connected()
        await trio.sleep_forever()

    up, hub, control = Upstream(stream_forever), StreamHub("s", MemoryLog(1 << 20)), SupervisorControl()
    stream = stream_config()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: supervise("s", stream.upstream, hub.upstream, up.attempt, rng=random.Random(0), control=control)
        )
        await trio.sleep(100)
        assert hub.upstream.state == "streaming"
        assert control.reconnect().result == "closing"
        await trio.sleep(0.001)
        assert up.ends == [100] and hub.upstream.state == "backoff"
        assert hub.upstream.last_error["error"] == "operator"
        answer = control.reconnect()  # at once again: the rule says no
        assert answer.result == "refused" and answer.next_attempt_in == 59.999
        await trio.sleep(100)
        assert len(up.starts) == 2 and 160 <= up.starts[1] <= 166  # base (+ jitter) after the close
        nursery.cancel_scope.cancel()


async def test_each_end_is_one_log_line_with_its_reason_and_the_next_attempt(autojump_clock, caplog) -> None:  # type: ignore[no-untyped-def]
    async def refuse(n, on_connected):  # type: ignore[no-untyped-def]
        if n == 3:
            on_connected()
            await trio.sleep(TEN_MINUTES)
            return classify_end("eof", "closed", stream="s", streamed=True)
        return classify_status(409, b"", stream="s")

    up = Upstream(refuse)
    hub = StreamHub("s", MemoryLog(1 << 20))
    caplog.set_level("INFO", logger="lsproxy.upstream")
    await run_for(1000, stream_config(), up, hub)
    ends = [r for r in caplog.records if getattr(r, "reason", None)]
    kinds = [("2xx", "eof") if n == 3 else ("409", "too_many_connections") for n in range(1, len(ends) + 1)]
    assert len(ends) >= 4 and [(r.status, r.reason) for r in ends] == kinds
    gaps = [start - end for start, end in zip(up.starts[1:], up.ends, strict=False)]
    for record, gap in zip(ends, gaps, strict=False):
        # the wait announced is the wait kept (the mock clock jumps exactly to it)
        assert record.wait == pytest.approx(gap, abs=0.01) and record.stream == "s" and record.connection == 1
        assert f"Next attempt in {gap:.1f} s at " in record.getMessage()
    attempts = [r for r in caplog.records if r.getMessage().startswith("stream s: upstream attempt")]
    assert len(attempts) == len(up.starts)
    assert not [r for r in caplog.records if "next upstream attempt in" in r.getMessage()]  # no separate wait line
    assert hub.upstream.outcomes == {"409": len(ends) - 1, "2xx": 1}
    assert [e["status"] for e in hub.upstream.recent_errors] == [None if s == "2xx" else 409 for s, _ in kinds]
