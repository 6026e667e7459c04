"""The asyncio bridge: nats-py on a thread of its own, driven from trio.

Theory of operation
-------------------
nats-py is asyncio-only, and running it through trio-asyncio costs 4-10x. So
the bridge runs one asyncio event loop on one daemon thread, and the two sides
only ever hand each other *batches*:

* trio -> asyncio: ``await bridge.call(fn, *args)`` runs the coroutine
  ``fn(*args)`` on the asyncio loop and waits for its result without blocking
  trio (the asyncio side's completion wakes the trio task through
  ``TrioToken.run_sync_soon``). Cancelling the trio task cancels the asyncio
  task. Callers pass whole batches (hundreds of records per publish call),
  never one record per call. ``post`` is the same without waiting.
* asyncio -> trio: an ``Inbox``. The asyncio side puts items; the first put
  into an empty inbox schedules *one* wake-up of the trio side, which then
  takes everything queued so far in one ``get_batch``. An inbox is bounded:
  past ``max_items`` the asyncio producer awaits (nats-py then sees a slow
  consumer, which its ordered consumers recover from), the trio side never
  waits on asyncio.

Exceptions raised on the asyncio side reach the trio caller as they are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")


class BridgeClosed(RuntimeError):
    """The bridge's loop is not running (never started, or stopped)."""


class AsyncioBridge:
    def __init__(self, name: str = "lsproxy-nats") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    # -- lifecycle (trio side) ------------------------------------------------------
    def start(self) -> None:
        """Start the thread and its loop (returns once the loop runs). Call from trio."""
        if self._thread is not None:
            return
        self._token = trio.lowlevel.current_trio_token()
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    pending = asyncio.all_tasks(loop)
                    for task in pending:
                        task.cancel()
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()
        self.loop = loop

    async def stop(self) -> None:
        """Stop the loop (its pending tasks are cancelled) and join the thread."""
        loop, thread = self.loop, self._thread
        self.loop, self._thread = None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        await trio.to_thread.run_sync(thread.join, 5.0)

    @property
    def running(self) -> bool:
        return self.loop is not None

    # -- trio -> asyncio ------------------------------------------------------------
    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the asyncio loop; its result (or exception) here."""
        loop = self.loop
        if loop is None or self._token is None:
            raise BridgeClosed("the NATS bridge is not running")
        done = trio.Event()
        token = self._token
        future = asyncio.run_coroutine_threadsafe(_coroutine(fn, args), loop)

        def wake(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        if future.cancelled():  # by the loop, stopping under us (shutdown)
            raise BridgeClosed("the NATS bridge stopped")
        return future.result()

    def post(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``fn(*args)`` on the asyncio loop without waiting (errors are the callee's)."""
        loop = self.loop
        if loop is None:
            raise BridgeClosed("the NATS bridge is not running")
        asyncio.run_coroutine_threadsafe(_coroutine(fn, args), loop)

    def inbox(self, max_items: int = 10_000) -> Inbox[Any]:
        if self._token is None:
            raise BridgeClosed("the NATS bridge is not running")
        return Inbox(self._token, max_items)


async def _coroutine(fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    return await fn(*args)


class Inbox(Generic[T]):
    """asyncio -> trio hand-off of items, taken by the trio side in batches."""

    def __init__(self, token: trio.lowlevel.TrioToken, max_items: int) -> None:
        self._token = token
        self._max = max_items
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._wake_scheduled = False
        self._trio_event = trio.Event()
        # created on the asyncio side when the inbox is full, with the loop that waits on it
        self._room: tuple[asyncio.Event, asyncio.AbstractEventLoop] | None = None

    # asyncio side
    async def put(self, item: T) -> None:
        """Queue ``item``; waits (asyncio) while the inbox holds ``max_items``."""
        while True:
            with self._lock:
                if len(self._items) < self._max:
                    self._items.append(item)
                    schedule = not self._wake_scheduled
                    self._wake_scheduled = True
                    break
                if self._room is None:
                    self._room = (asyncio.Event(), asyncio.get_running_loop())
                room = self._room[0]
            await room.wait()
        if schedule:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._wake_trio)

    def _wake_trio(self) -> None:
        self._trio_event.set()

    # trio side
    async def get_batch(self) -> list[T]:
        """Everything queued so far (at least one item); waits while empty."""
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    self._wake_scheduled = False
                    room, self._room = self._room, None
                    break
                self._wake_scheduled = False
            await self._trio_event.wait()
            self._trio_event = trio.Event()
        if room is not None:
            event, loop = room
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)
        return items
