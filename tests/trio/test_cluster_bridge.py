"""The asyncio bridge with a real asyncio loop on its thread."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from lsproxy.cluster.bridge import AsyncioBridge, BridgeClosed


async def test_call_runs_on_the_asyncio_thread_and_returns_or_raises() -> None:
    bridge = AsyncioBridge()
    bridge.start()
    try:

        async def where(x: int) -> tuple[str, int]:
            await asyncio.sleep(0.01)
            return threading.current_thread().name, x * 2

        assert await bridge.call(where, 21) == ("lsproxy-nats", 42)

        async def fail() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await bridge.call(fail)
    finally:
        await bridge.stop()
    with pytest.raises(BridgeClosed):
        await bridge.call(fail)


async def test_cancelling_the_trio_caller_cancels_the_asyncio_task() -> None:
    bridge = AsyncioBridge()
    bridge.start()
    cancelled = threading.Event()
    try:

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with trio.move_on_after(0.1):
            await bridge.call(forever)
        with trio.fail_after(5):
            while not cancelled.is_set():
                await trio.sleep(0.01)
    finally:
        await bridge.stop()


async def test_inbox_hands_batches_over_and_holds_the_producer_when_full() -> None:
    bridge = AsyncioBridge()
    bridge.start()
    try:
        inbox = bridge.inbox(max_items=100)
        produced = threading.Event()

        async def produce() -> None:
            for i in range(1000):
                await inbox.put(i)
            produced.set()

        bridge.post(produce)
        got: list[int] = []
        batches = 0
        with trio.fail_after(10):
            while len(got) < 1000:
                batch = await inbox.get_batch()
                assert len(batch) <= 100  # never more than the bound at once
                got.extend(batch)
                batches += 1
        assert got == list(range(1000)) and produced.is_set()
        assert batches >= 10
    finally:
        await bridge.stop()
