"""The slot journal in KV on a real nats-server: every holding records its connection,
and a late write of an earlier holding never overwrites the current holder's record.

The next holder's wait (the 60 s rule across nodes) is computed from this entry, so
an entry that is stale while a connection is open lets the next holder connect early.
"""

from __future__ import annotations

import shutil
import time

import pytest
import trio

from lsproxy.app import Proxy
from lsproxy.cluster import names
from lsproxy.cluster.node import ClusterNode
from lsproxy.cluster.slot_policy import decode_moments
from lsproxy.cluster.slots import SlotRecord
from lsproxy.config import ClusterConfig
from lsproxy.hub.journal_rule import Moments, upstream_key
from tests.cluster_harness import kv, nats_available, nats_cluster
from tests.harness import running
from tests.integration.test_cluster_one_node import cluster_config, sim_settings, wait_serving

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not nats_available(), reason="nats-server is not installed (scripts/test installs it)"
    ),
]


def journal(url: str, key: str) -> Moments:
    moments = decode_moments(kv(url, names.JOURNAL_BUCKET, "get", key)["value"].encode())
    assert moments is not None
    return moments


async def test_a_node_that_takes_its_slot_again_records_the_new_connection() -> None:
    """The lease is taken from the holder (its key deleted, as an operator could): it
    closes, takes the lease again and reconnects. The entry must then show that
    connection open. (A node once skipped every journal write of its second holding:
    the entry kept the first holding's end, and a later holder did not wait.)"""
    with nats_cluster(1) as nats:
        async with running(sim_settings(), start_proxy=False) as (sim, _):
            config = cluster_config(sim, nats.urls, "solo")
            key = names.slot_key(upstream_key(config.streams[0].url), 0)
            async with trio.open_nursery() as nursery:
                proxy = Proxy(config)
                port = (await nursery.start(proxy.run))[0][1]
                await wait_serving(port)
                with trio.fail_after(10):
                    while sim.stream_stats()["accepted"] < 1:
                        await trio.sleep(0.05)
                first = await trio.to_thread.run_sync(journal, nats.urls[0], key)
                assert first.open == 1
                await trio.sleep(4)  # a holding long enough to have written many marks

                taken_at = time.time()
                await trio.to_thread.run_sync(kv, nats.urls[0], names.LEASE_BUCKET, "delete", key)
                with trio.fail_after(15):
                    while sim.stream_stats()["accepted"] < 2:
                        await trio.sleep(0.05)
                again = await trio.to_thread.run_sync(journal, nats.urls[0], key)
                assert again.open == 1, again
                assert again.attempt_at is not None and again.attempt_at > taken_at, again
                assert again.ended_at is not None and again.ended_at > taken_at  # the first one's end
                stats = sim.stream_stats()
                assert "409" not in stats["statuses"] and stats["open"] == 1
                proxy.request_shutdown()
            shutil.rmtree(config.storage.dir, ignore_errors=True)


async def test_a_late_write_of_an_earlier_holding_does_not_overwrite_the_holders_record() -> None:
    """Writes are conditional on the revision a holding last saw. An earlier holding's
    write that lands after the holder wrote is refused; one that lands first (between
    the holder's read and its first write) is written over by the holder."""
    with nats_cluster(1) as nats:
        node = ClusterNode(ClusterConfig(nats=tuple(nats.urls), node="n1", replicas=1, lease_ttl=2.0))
        key = names.slot_key("https://livestream.example/api/1/stream/suite", 0)
        url = nats.urls[0]

        async def read_and_hold() -> SlotRecord:
            raw, revision = await node.bridge.call(node.a_journal_get, key)
            moments = Moments() if raw is None else decode_moments(raw)
            assert moments is not None
            return SlotRecord(node, key, moments, revision, holding=lambda: True)

        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            with trio.fail_after(15):
                await node.ready.wait()

            earlier = await read_and_hold()
            await earlier.attempt_starting()
            holder = await read_and_hold()
            earlier.holding = lambda: False  # its lease ran out; a write of it was held up
            await holder.attempt_starting()
            earlier.ended()  # lands after the holder's write: refused
            assert not await earlier.write()
            found = await trio.to_thread.run_sync(journal, url, key)
            assert (found.attempt_at, found.open) == (holder.moments.attempt_at, 1), found

            successor = await read_and_hold()
            holder.holding = lambda: False
            holder.ended()  # lands before the successor's first write: nobody wrote since
            assert await holder.write()
            assert (await trio.to_thread.run_sync(journal, url, key)).open == 0
            await successor.attempt_starting()  # refused once, then written over the late end
            found = await trio.to_thread.run_sync(journal, url, key)
            assert (found.attempt_at, found.open) == (successor.moments.attempt_at, 1), found
            nursery.cancel_scope.cancel()
