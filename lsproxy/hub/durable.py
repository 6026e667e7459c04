"""DurableLog: the stream log kept in a SQLite file, with the hot tail in memory.

Theory of operation
-------------------
``DurableLog`` has ``MemoryLog``'s interface, so the hub uses either. Offsets
are record numbers that continue across restarts. Records live in up to three
places, all indexed on the event loop, so every decision is synchronous:

* the *tail*: the newest segments as appended, at most ``memory_bytes`` (right
  after open: the newest rows up to that size). Consumers at the tail are
  served from here exactly as by ``MemoryLog``, with no thread and no copy;
* the *queue*: segments not committed yet (``durable_writer.py``);
* the *disk*: committed rows, mirrored by a ``RowIndex``. A read that neither
  the tail nor the queue can serve reads the one or two rows it needs in a
  worker thread (``READ_THREADS`` at once per stream at most) and keeps them
  in a small cache, so consumers replaying the same stretch share the reads
  and the per-segment compression.

``append`` never touches the disk: it makes the segment, adds it to the tail
and the queue, and wakes the waiters. Arrival times are kept non-decreasing
(a clock stepping back is clamped), which lets ``offset_at`` bisect. A gap
(records trimmed, lost in a crash, or never persisted and gone from memory)
reads as a skip: ``Slice.start`` beyond the asked offset, as with retention.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import trio

from lsproxy.hub.durable_index import RowIndex
from lsproxy.hub.durable_writer import DurableWriter
from lsproxy.hub.segment import Segment, SegmentRun, Slice, make_segment, slice_segments
from lsproxy.hub.store import (
    Connect,
    Loaded,
    Store,
    StoreError,
    connect_sqlite,
)
from lsproxy.hub.store_files import open_store
from lsproxy.hub.store_rows import ROW_BYTES

READ_THREADS = 4
ROW_CACHE_BYTES = 32 * 1024 * 1024  # rows read from disk, kept for other readers


class DurableLog(DurableWriter):
    """A StreamLog on disk; create it with ``await DurableLog.open(...)``, run ``run``."""

    def __init__(
        self,
        store: Store,
        loaded: Loaded,
        *,
        retention_bytes: int,
        retention_seconds: float,
        memory_bytes: int,
        commit_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tail = SegmentRun(loaded.tail)
        self._tail_limit = min(memory_bytes, retention_bytes)
        self._next = loaded.next_offset
        self._last_time = loaded.tail[-1].received_at if loaded.tail else None
        self._closed = False
        self._changed = trio.Event()
        self._read_limiter = trio.CapacityLimiter(READ_THREADS)
        self._row_cache: OrderedDict[int, Segment] = OrderedDict()
        self._row_cache_bytes = 0
        self._row_cache_limit = min(ROW_CACHE_BYTES, max(memory_bytes // 4, 4 * ROW_BYTES))
        super().__init__(
            store,
            loaded,
            retention_bytes=retention_bytes,
            retention_seconds=retention_seconds,
            memory_bytes=memory_bytes,
            commit_interval=commit_interval,
            clock=clock,
        )

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        retention_bytes: int,
        retention_seconds: float,
        memory_bytes: int,
        commit_interval: float,
        clock: Callable[[], float] = time.time,
        connect: Connect = connect_sqlite,
    ) -> DurableLog:
        """Open (or create, or salvage) ``path``; StoreError when it cannot be used."""

        def opened() -> DurableLog:
            # Building the row index and applying retention loop over every stored row:
            # in the worker thread too, so a large store never stalls the event loop.
            store, loaded = open_store(path, min(memory_bytes, retention_bytes), connect)
            return cls(
                store,
                loaded,
                retention_bytes=retention_bytes,
                retention_seconds=retention_seconds,
                memory_bytes=memory_bytes,
                commit_interval=commit_interval,
                clock=clock,
            )

        return await trio.to_thread.run_sync(opened)

    # -- MemoryLog's properties ---------------------------------------------
    @property
    def oldest(self) -> int:
        firsts = [self._next]
        for run in (self._tail, self._queue):
            if run:
                firsts.append(run.front.first)
        if self._index:
            firsts.append(self._index.firsts[self._index.head])
        return max(self._trim_below, min(firsts))

    @property
    def next_offset(self) -> int:
        return self._next

    @property
    def retained_bytes(self) -> int:
        return self._index.bytes + self._queue.bytes

    @property
    def retained_records(self) -> int:
        return self._next - self.oldest

    @property
    def trimmed_records(self) -> int:
        return self._trimmed

    @property
    def closed(self) -> bool:
        return self._closed

    # -- writing ------------------------------------------------------------
    def append(self, records: Sequence[bytes], received_at: float) -> None:
        """Append records (without terminators). Never blocks, never awaits, no disk."""
        if self._closed:
            raise RuntimeError("append to a closed log")
        if not records:
            return
        if self._last_time is not None and received_at < self._last_time:
            received_at = self._last_time  # the clock stepped back: keep times sorted
        seg = make_segment(self._next, records, received_at)
        self._next, self._last_time = seg.end, received_at
        self._tail.append(seg)
        self._evict_tail()
        self._enqueue(seg)
        self._wake()

    def _evict_tail(self) -> None:
        tail = self._tail
        while tail and (
            tail.front.end <= self._trim_below or (len(tail) > 1 and tail.bytes > self._tail_limit)
        ):
            tail.popleft()

    def close(self) -> None:
        """No more records will come: wake every waiter so it can end its response."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- reading ------------------------------------------------------------
    async def read(self, offset: int, max_bytes: int) -> Slice:
        """As ``MemoryLog.read``; from memory when possible, else from disk in a thread.
        A gap (trimmed, or never persisted and gone from memory) reads as a skip."""
        if offset > self._next:
            raise ValueError(f"offset {offset} is beyond the tail {self._next}")
        while True:
            start = max(offset, self.oldest)
            where = self._locate(start) if start < self._next else None
            if where is None:  # nothing at or after start is held (lost after a crash)
                return Slice(self._next, self._next)
            source, i = where
            if isinstance(source, SegmentRun):
                return source.slice(i, start, max_bytes)
            got = await self._read_disk(i, start, max_bytes)
            if isinstance(got, Slice):
                return got
            offset = max(offset, got)  # the rows were trimmed meanwhile, or are unreadable

    def _locate(self, start: int) -> tuple[SegmentRun | RowIndex, int] | None:
        """Where ``start`` is held (memory first), or else the next record after it."""
        best: tuple[SegmentRun | RowIndex, int] | None = None
        for source in (self._tail, self._queue, self._index):
            i = source.find(start)
            if i is None:
                continue
            if source.first_of(i) <= start:
                return source, i
            if best is None or source.first_of(i) < best[0].first_of(best[1]):
                best = source, i
        return best

    async def _read_disk(self, i: int, start: int, max_bytes: int) -> Slice | int:
        """Rows from index entry ``i`` on; else the offset after them (none could be read)."""
        index = self._index
        firsts, size = [index.firsts[i]], index.sizes[i]
        for j in range(i + 1, len(index.firsts)):
            if size >= max_bytes or index.firsts[j] != index.ends[j - 1]:
                break
            firsts.append(index.firsts[j])
            size += index.sizes[j]
        after = index.ends[i + len(firsts) - 1]
        cached = [self._row_cache.get(first) for first in firsts]
        if all(row is not None for row in cached):
            rows = [row for row in cached if row is not None]
        else:
            if self._shut:
                raise StoreError(f"the store {self.path} is shut down")
            rows = await trio.to_thread.run_sync(self._store.read_rows, firsts, limiter=self._read_limiter)
            for row in rows:
                self._cache_row(row)
        return slice_segments(rows, 0, start, max_bytes) if rows else after

    def _cache_row(self, row: Segment) -> None:
        # Consumers replaying the same stretch share the rows (and their compression).
        cache = self._row_cache
        if row.first not in cache:
            cache[row.first] = row
            self._row_cache_bytes += len(row.data)
        cache.move_to_end(row.first)
        while self._row_cache_bytes > self._row_cache_limit and len(cache) > 1:
            self._row_cache_bytes -= len(cache.popitem(last=False)[1].data)

    async def wait_beyond(self, offset: int) -> None:
        """Return once a record at ``offset`` or later exists, or the log is closed."""
        while self._next <= offset and not self._closed:
            await self._changed.wait()

    def received_at(self, offset: int) -> float | None:
        """Arrival time of ``offset`` (its row's newest record's, once only on disk)."""
        if offset < self.oldest or offset >= self._next:
            return None
        for run in (self._tail, self._queue):
            i = run.find(offset)
            if i is not None and run.first_of(i) <= offset:
                return run.time_of(i)
        i = self._index.find(offset)
        if i is not None and self._index.firsts[i] <= offset:
            return self._index.times[i]
        return None

    def offset_at(self, unix_time: float) -> int:
        """The first record received at or after ``unix_time``; ``next_offset`` if none.
        Exact while memory holds the place; on disk per row (``ROW_BYTES`` or one commit
        at most), erring early: a row counts as received when its newest record was."""
        index = self._index
        i = bisect.bisect_left(index.times, unix_time, lo=index.head)
        if i < len(index.times):
            answer = index.firsts[i]
            if self._tail and self._tail.front.first <= answer:
                exact = self._tail.at_time(unix_time)  # in [answer, that row's end)
                answer = answer if exact is None else exact
        else:  # not committed yet, if anywhere
            found = [
                f for f in (self._tail.at_time(unix_time), self._queue.at_time(unix_time)) if f is not None
            ]
            answer = min(found, default=self._next)
        return max(answer, self.oldest)

    def recent_records(self, count: int) -> list[bytes]:
        """The newest ``count`` records held in memory (after open: the newest rows up to
        ``memory_bytes``), oldest first; fewer when memory holds fewer."""
        return self._tail.recent_records(count, self.oldest)
