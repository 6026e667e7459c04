"""Several upstream connections per stream, de-duplication, and live reload."""

from __future__ import annotations

import trio

from lsproxy.simulator import SimSettings, SimStream
from tests.harness import StreamReader, proxy_config, running


async def sample_open_connections(sim, endpoint: str, samples: list[int], stop: trio.Event) -> None:  # type: ignore[no-untyped-def]
    while not stop.is_set():
        samples.append(sim.stream_stats(endpoint)["open"])
        await trio.sleep(0.01)


async def test_n_connections_agree_never_exceed_n_and_union_is_complete_without_duplicates() -> None:
    for n in (1, 3, 8):
        settings = SimSettings(streams=(SimStream("s1", "suite-s1", 400.0),), linger=0.0, backfill=30)
        async with running(settings, connections=n) as (sim, proxy):
            samples: list[int] = []
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample_open_connections, sim, "s1", samples, stop)
                r = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
                await r.read_records(300)
                sim.sim.drop("s1")  # every connection reconnects; the simulator backfills 30 hits each
                await r.read_records(len(r.records) + 600, timeout=15)
                stop.set()
            stats = sim.stream_stats()
            assert set(stats["max_connections_seen"]) == {n}  # every connection declared the same N
            assert max(samples) <= n and stats["accepted"] == 2 * n
            assert stats["statuses"].get("409", 0) == 0
            seqs = r.seqs()
            assert len(seqs) == len(set(seqs)), f"N={n}: duplicates reached the consumer"
            # The union of the N partial streams is the whole stream (order differs between connections).
            middle = sorted(seqs)[50:-50]
            assert middle == list(range(middle[0], middle[-1] + 1)), f"N={n}: hits missing"
            _, status = await proxy.get_json("/status")
            s1 = status["streams"]["s1"]
            assert s1["duplicates_dropped"] >= 30 and len(s1["upstream_connections"]) == n
            await r.aclose()


async def test_reload_adds_removes_and_changes_streams_leaving_the_others_untouched() -> None:
    sim_streams = tuple(
        SimStream(name, f"suite-{name}", 200.0) for name in ("keep", "drop", "change", "added")
    )
    settings = SimSettings(streams=sim_streams, linger=0.2)  # shorter than the 0.3 s reconnect_delay
    async with running(settings, streams=("keep", "drop", "change")) as (sim, proxy):
        readers = {
            name: await StreamReader(proxy.port, f"/api/1/stream/{name}?consumer=c-{name}").connect()
            for name in ("keep", "drop", "change")
        }
        for r in readers.values():
            await r.read_records(20)
        old = proxy.proxy.config
        # "change" gets a different upstream setting; "keep" is identical.
        new = proxy_config(
            sim, streams=("keep", "change", "added"), stream_keys={"change": {"smoothing": "true"}}
        )
        changes = await proxy.proxy.reload(new)
        assert "stream drop: removed" in changes and "stream added: added" in changes
        assert any(c.startswith("stream change: upstream settings changed") for c in changes)
        assert not any(c.startswith("stream keep") for c in changes)
        # The removed stream's consumer gets a clean end of stream.
        await readers["drop"].read_until(lambda r: r.ended_cleanly, timeout=5)
        assert readers["drop"].ended_cleanly
        # The changed stream reconnects after reconnect_delay; its consumer keeps its connection.
        before = len(readers["change"].records)
        await readers["change"].read_records(before + 50, timeout=10)
        added = await StreamReader(proxy.port, "/api/1/stream/added").connect()
        await added.read_records(10)
        kept_before = len(readers["keep"].records)
        await readers["keep"].read_records(kept_before + 20)
        assert sim.stream_stats("keep")["attempts"] == 1  # untouched: no new connection
        change = sim.stream_stats("change")
        assert change["accepted"] == 2
        # Counted from when the proxy closed the old connection; the simulator notices
        # the close a moment later (its EOF), hence the small allowance.
        assert change["attempt_times"][1] - change["disconnect_times"][0] >= 0.3 - 0.02
        assert sim.stream_stats("added")["accepted"] == 1
        assert old is not proxy.proxy.config
        for r in [*readers.values(), added]:
            await r.aclose()
