"""The demo restarted: proxy and simulator both stopped and started again on the same
storage. The new simulator numbers its hits from 0 again; its hit ids must still be new,
so records flow at once instead of being dropped as duplicates of the last run."""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any

import trio

from lsproxy.app import Proxy
from lsproxy.simulator import SimSettings, SimStream, Simulator
from tests.harness import ProxyUnderTest, SimUnderTest, StreamReader, proxy_config


def more_than(n: int) -> Any:
    return lambda reader: len(reader.records) > n


async def run_once(storage_dir: str, rate: float, until: Any) -> tuple[list[bytes], dict[str, Any]]:
    """Simulator + proxy on ``storage_dir``; a consumer at the tail reads until ``until(reader,
    status)``; then both stop. Returns the records read and the stream's last /status."""
    settings = SimSettings(port=0, token="sim-secret-token-123", streams=(SimStream("s1", "suite-s1", rate),))
    async with trio.open_nursery() as nursery:
        sim = Simulator(settings)
        _, sim_port = await nursery.start(sim.serve)
        proxy = Proxy(proxy_config(SimUnderTest(sim, sim_port, storage_dir=storage_dir)))
        addresses = await nursery.start(proxy.run)
        p = ProxyUnderTest(proxy, addresses[0][1])
        reader = await StreamReader(p.port, "/api/1/stream/s1").connect()
        with trio.fail_after(15):
            while True:
                await reader.read_until(more_than(len(reader.records)), timeout=15)
                status = (await p.get_json("/status"))[1]["streams"]["s1"]
                if until(reader, status):
                    break
        await reader.aclose()
        proxy.request_shutdown()
        await proxy.server.finished.wait()
        nursery.cancel_scope.cancel()
    return reader.records, status


async def test_restarted_proxy_and_simulator_deliver_at_once_no_duplicates_dropped() -> None:
    storage = tempfile.mkdtemp(prefix="lsproxy-test-")
    try:
        # The first life stores 3000+ hits (seq 0..3000+), all remembered by the de-dup window.
        first, status = await run_once(storage, 3000.0, lambda r, s: s["records_received"] >= 3000)
        assert status["duplicates_dropped"] == 0
        # The second life starts at seq 0 again, slowly: it stays far below the first's
        # last seq for the whole test, so any repeated id would be dropped.
        second, status = await run_once(storage, 100.0, lambda r, s: len(r.records) >= 30)
        assert status["duplicates_dropped"] == 0 and status["consecutive_duplicates"] == 0
        high = {json.loads(r)["hitIdHigh"] for r in first}
        assert len(high) == 1 and not high & {json.loads(r)["hitIdHigh"] for r in second}
    finally:
        shutil.rmtree(storage, ignore_errors=True)
