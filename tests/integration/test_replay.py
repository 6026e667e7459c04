"""Where streams start: initial_reset on a fresh store, and replay by time (since=)."""

from __future__ import annotations

import dataclasses
import time

import trio

from lsproxy.app import Proxy
from lsproxy.simulator import SimSettings, SimStream
from tests.harness import StreamReader, proxy_config, running


async def test_initial_reset_smallest_applies_only_to_a_stream_with_no_stored_position() -> None:
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), linger=0.0)
    async with running(settings, start_proxy=False) as (sim, _):
        await trio.sleep(0.5)  # the suite has produced ~100 hits before the proxy first connects
        config = proxy_config(sim)
        fresh = dataclasses.replace(
            config, streams=(dataclasses.replace(config.streams[0], initial_reset="smallest"),)
        )
        first_seqs = []
        for run in (fresh, fresh):  # the second run finds the store and resumes instead
            proxy = Proxy(run)
            async with trio.open_nursery() as nursery:
                addresses = await nursery.start(proxy.run)
                reader = await StreamReader(addresses[0][1], "/api/1/stream/s1?reset=smallest").connect()
                await reader.read_records(5)
                first_seqs.append(reader.seqs()[0])
                with trio.fail_after(10):  # this run's own upstream connection (after the delay)
                    while sim.stream_stats()["accepted"] < len(first_seqs):
                        await trio.sleep(0.05)
                await reader.aclose()
                proxy.request_shutdown()
        assert first_seqs[0] == 0  # the oldest retained hit: Live Stream was asked for reset=smallest
        assert first_seqs[1] == 0  # the store kept it...
        queries = sim.stream_stats()["queries"]
        assert queries[0].get("reset") == "smallest" and "reset" not in queries[-1]  # ...so no reset again
        assert sim.stream_stats()["accepted"] == 2


async def test_since_replays_from_the_first_record_received_at_or_after_a_time() -> None:
    async with running() as (_sim, proxy):
        first = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=early").connect()
        await first.read_records(100)
        await trio.sleep(0.3)
        boundary = time.time()
        await trio.sleep(0.3)
        await first.read_records(len(first.records) + 100)
        replay = await StreamReader(proxy.port, f"/api/1/stream/s1?consumer=early&since={boundary}").connect()
        await replay.read_records(20)
        hub = proxy.proxy.hubs["s1"]
        expected_offset = hub.log.offset_at(boundary)
        assert 0 < expected_offset < hub.log.next_offset
        # The replay starts after everything received before the boundary, at the first after it.
        before = [s for s in first.seqs() if s < replay.seqs()[0]]
        assert len(before) >= 100 and replay.seqs()[0] == first.seqs()[len(before)]
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(boundary)) + "Z"
        again = await StreamReader(proxy.port, f"/api/1/stream/s1?since={iso}").connect()
        await again.read_records(5)
        assert again.seqs()[0] <= replay.seqs()[0]  # whole seconds: at or before the exact boundary
        for r in (first, replay, again):
            await r.aclose()
