"""DurableLog: the stream log kept in a SQLite file, with the hot tail in memory.

Theory of operation
-------------------
``DurableLog`` has ``MemoryLog``'s interface, so the hub uses either. Offsets
are record numbers that continue across restarts. The log lives in three
places, all indexed on the event loop so that every decision is synchronous:

* the *tail*: the newest segments, as appended (at most ``memory_bytes``, and
  what was on disk up to that size right after open). Consumers at the tail
  are served from here, exactly like ``MemoryLog``;
* the *queue*: appended segments not yet committed, oldest first. ``append``
  only puts the segment here; it never touches the disk. When commits keep
  failing the queue holds up to ``3 * memory_bytes`` (tail and queue together
  stay under ``4 * memory_bytes``); beyond that new records are not queued for
  the disk (counted in ``dropped_from_disk``) but still served from the tail;
* the *disk*: committed rows, mirrored by ``RowIndex`` (offsets, sizes,
  arrival times: 32 bytes a row). A read that misses both the tail and the
  queue reads the rows it needs in a worker thread (at most ``READ_THREADS``
  at once per stream).

``run`` is the writer: every ``commit_interval`` (sooner when the queue holds
``FLUSH_BYTES``) it applies retention (age, then size, over disk rows then
queued segments; the trim point only moves forward), takes the queued
segments, the changed cursors and meta keys, and commits them in one
transaction in a worker thread (see ``store.py``). Only when that returns are
the segments dropped from the queue and their rows added to the index, so
``committed_offset`` (the queue's front) means "durable below here". A failed
commit (disk full, read-only, I/O error) changes nothing but the status: the
queue keeps everything, the error is logged once, and the next interval
retries. Arrival times are kept non-decreasing (a clock stepping back is
clamped), which lets ``offset_at`` bisect.
"""

from __future__ import annotations

import bisect
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence

import trio

from lsproxy.hub.log import Slice, make_segment
from lsproxy.hub.store import (
    Commit,
    Committed,
    Connect,
    Loaded,
    Store,
    StoreError,
    connect_sqlite,
    describe_error,
)
from lsproxy.hub.store_files import open_store
from lsproxy.hub.store_mem import RowIndex, SegmentRun, slice_segments

log = logging.getLogger("lsproxy.store")

FLUSH_BYTES = 8 * 1024 * 1024  # commit early once this much is queued (bounds commit latency)
MAX_COMMIT_BYTES = 32 * 1024 * 1024  # per transaction; a bigger backlog takes several commits
FINAL_COMMIT_SECONDS = 5.0
READ_THREADS = 4


class DurableLog:
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
        if min(retention_bytes, memory_bytes) <= 0 or retention_seconds <= 0 or commit_interval <= 0:
            raise ValueError("retention, memory_bytes and commit_interval must be positive")
        self.path = store.path
        self._store = store
        self.retention_bytes, self.retention_seconds = retention_bytes, retention_seconds
        self.memory_bytes, self.commit_interval = memory_bytes, commit_interval
        self._clock = clock
        self._tail_limit = min(memory_bytes, retention_bytes)
        self._queue_cap = 3 * memory_bytes
        self._flush_bytes = min(FLUSH_BYTES, max(memory_bytes // 2, 1))
        self._index = RowIndex(loaded.index)
        self._tail = SegmentRun(loaded.tail)
        self._queue = SegmentRun()
        self._next = loaded.next_offset
        self._last_time = loaded.tail[-1].received_at if loaded.tail else None
        first = self._index.firsts[0] if self._index else self._next
        self._trim_below = self._trim_written = first
        self._trimmed = first  # every record before the first retained one is gone
        self._next_written = self._next
        self._cursors = dict(loaded.cursors)
        self._stored_cursors = dict(loaded.cursors)
        self._snapshot: dict[str, tuple[int, int]] | None = None
        self._meta = dict(loaded.meta)
        self._dirty_meta: dict[str, str] = {}
        self._closed = self._shut = False
        self._changed = trio.Event()
        self._flush = trio.Event()
        self._commit_lock = trio.Lock()
        self._read_limiter = trio.CapacityLimiter(READ_THREADS)
        self._error: str | None = None
        self._error_since: float | None = None
        self._dropping = False
        self._dropped = 0
        self._disk_bytes = store.disk_bytes()
        self._commits = 0
        self._last_commit: tuple[float, float] | None = None  # (wall time, seconds it took)
        self._apply_retention(clock())

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
        store, loaded = await trio.to_thread.run_sync(
            open_store, path, min(memory_bytes, retention_bytes), connect
        )
        return cls(
            store,
            loaded,
            retention_bytes=retention_bytes,
            retention_seconds=retention_seconds,
            memory_bytes=memory_bytes,
            commit_interval=commit_interval,
            clock=clock,
        )

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

    @property
    def last_received_at(self) -> float | None:
        return self._last_time if self._next > self.oldest else None

    @property
    def committed_offset(self) -> int:
        """Records below this are durable (or were trimmed or dropped from the disk queue)."""
        return self._queue.front.first if self._queue else self._next

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
        if self._queue.bytes + len(seg.data) <= self._queue_cap:
            self._queue.append(seg)
            if self._queue.bytes >= self._flush_bytes:
                self._flush.set()
        else:
            self._dropped += len(seg.ends)
            if not self._dropping:
                self._dropping = True
                log.error(
                    "stream store %s: %d MB wait for the disk; records from offset %d on are not "
                    "persisted (dropped_from_disk counts them); consumers at the tail are still served",
                    self.path, self._queue.bytes >> 20, seg.first,
                )  # fmt: skip
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
            if start >= self._next:
                return Slice(start, start, b"")
            got = self._read_memory(start, max_bytes)
            if got is None:
                got = await self._read_disk(start, max_bytes)
            if got is not None:
                return got
            # The rows went away meanwhile (retention): retry from the new oldest.

    def _read_memory(self, start: int, max_bytes: int) -> Slice | None:
        if self._tail and start >= self._tail.front.first:
            return self._tail.slice(start, max_bytes)
        if self._queue and start >= self._queue.front.first:
            got = self._queue.slice(start, max_bytes)
            if got is not None:
                return got
        elif self._index and start < self._index.ends[-1]:
            return None  # on disk
        # In a gap nobody holds: skip to the next record in memory.
        for run in (self._queue, self._tail):
            if run:
                i = run.find(start)
                if i is not None:
                    return run.slice(run.first_of(i), max_bytes)
        return Slice(self._next, self._next, b"")

    async def _read_disk(self, start: int, max_bytes: int) -> Slice | None:
        index = self._index
        i = index.find(start)
        if i is None:
            return None
        firsts, size = [index.firsts[i]], index.sizes[i]
        for j in range(i + 1, len(index.firsts)):
            if size >= max_bytes or index.firsts[j] != index.ends[j - 1]:
                break
            firsts.append(index.firsts[j])
            size += index.sizes[j]
        if self._shut:
            raise StoreError(f"the store {self.path} is shut down")
        rows = await trio.to_thread.run_sync(self._store.read_rows, firsts, limiter=self._read_limiter)
        return slice_segments(rows, 0, start, max_bytes) if rows else None

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
        """The first record received at or after ``unix_time`` (row granularity on disk,
        erring early); ``next_offset`` if none."""
        index = self._index
        i = bisect.bisect_left(index.times, unix_time, lo=index.head)
        if i < len(index.times):
            return max(index.firsts[i], self.oldest)
        found = [run.at_time(unix_time) for run in (self._queue, self._tail)]
        return max(min((f for f in found if f is not None), default=self._next), self.oldest)

    def recent_records(self, count: int) -> list[bytes]:
        """The newest ``count`` records held in memory (after open: the newest rows up to
        ``memory_bytes``), oldest first; fewer when memory holds fewer."""
        return self._tail.recent_records(count, self.oldest)

    # -- cursors and meta ---------------------------------------------------
    def load_cursors(self) -> dict[str, tuple[int, int]]:
        """name -> (position, skipped), as stored when the log was opened."""
        return dict(self._cursors)

    def save_cursors(self, cursors: Mapping[str, tuple[int, int]]) -> None:
        """The cursors to persist with the next commit (only changed ones are written;
        a name missing from the snapshot stays as stored)."""
        self._snapshot = dict(cursors)

    def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        """Persisted with the next commit."""
        if key.startswith("_log."):
            raise ValueError("meta keys starting with '_log.' are reserved")
        self._meta[key] = self._dirty_meta[key] = value

    def status(self) -> dict[str, object]:
        last = self._last_commit
        return {
            "path": self.path,
            "persisting": self._error is None,
            "error": self._error,
            "since": self._error_since,
            "committed_offset": self.committed_offset,
            "pending_records": self._queue.records,
            "pending_bytes": self._queue.bytes,
            "dropped_from_disk": self._dropped,
            "disk_bytes": self._disk_bytes,
            "memory_bytes": self._tail.bytes,
            "commits": self._commits,
            "last_commit_at": last[0] if last else None,
            "last_commit_seconds": round(last[1], 4) if last else None,
            "recovered": self._store.recovered,
        }

    # -- the writer ---------------------------------------------------------
    async def run(self) -> None:
        """Commit every ``commit_interval`` until cancelled; then a final commit (at
        most ``FINAL_COMMIT_SECONDS``) and close the database."""
        try:
            while True:
                deadline = trio.current_time() + self.commit_interval
                if self._error is None:  # while failing, retry once per interval only
                    with trio.move_on_at(deadline):
                        await self._flush.wait()
                else:
                    await trio.sleep_until(deadline)
                self._flush = trio.Event()
                async with self._commit_lock:
                    await self._commit_once()
                if self._error is None and self._queue.bytes >= self._flush_bytes:
                    self._flush.set()  # a backlog: keep going
        finally:
            await self._shutdown()

    async def commit_now(self) -> bool:
        """Commit everything appended so far (and cursors/meta); False if it failed."""
        target = self._next
        async with self._commit_lock:
            while True:
                if not await self._commit_once() or self.committed_offset >= target:
                    return self._error is None

    async def _shutdown(self) -> None:
        closed = False
        with trio.move_on_after(FINAL_COMMIT_SECONDS, shield=True):
            async with self._commit_lock:
                while await self._commit_once(abandon=True) and self._queue:
                    pass
                await trio.to_thread.run_sync(self._store.close, abandon_on_cancel=True)
                closed = True
        self._shut = True
        lost = self._queue.records
        if lost or not closed:
            log.error(
                "stream store %s: %s; %d records appended since offset %d are not persisted",
                self.path, "closed" if closed else "the final commit did not finish in time",
                lost, self.committed_offset,
            )  # fmt: skip

    async def _commit_once(self, *, abandon: bool = False) -> bool:
        now = self._clock()
        self._apply_retention(now)
        segments = self._queue.take(MAX_COMMIT_BYTES)
        snapshot = self._snapshot
        cursors = {}
        if snapshot is not None:
            cursors = {k: v for k, v in snapshot.items() if self._stored_cursors.get(k) != v}
        meta = dict(self._dirty_meta)
        next_offset = self._next
        idle = not (segments or cursors or meta)
        if idle and (self._trim_below, next_offset) == (self._trim_written, self._next_written):
            return True
        work = Commit(segments, self._trim_below, next_offset, cursors, meta, now)
        try:
            done = await trio.to_thread.run_sync(self._store.commit, work, abandon_on_cancel=abandon)
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc, now)
            return False
        self._committed(work, done, snapshot)
        return True

    def _committed(self, work: Commit, done: Committed, snapshot: dict[str, tuple[int, int]] | None) -> None:
        for _ in work.segments:  # still the queue's front: only commits pop, one at a time
            self._queue.popleft()
        for row in done.rows:
            if row[0] >= self._trim_below:
                self._index.append(*row)
        self._trim_written, self._next_written = work.trim_below, work.next_offset
        self._stored_cursors.update(work.cursors)
        self._cursors.update(work.cursors)
        if self._snapshot is snapshot:
            self._snapshot = None
        for key, value in work.meta.items():
            if self._dirty_meta.get(key) == value:
                del self._dirty_meta[key]
        self._disk_bytes, self._last_commit = done.disk_bytes, (work.now, done.seconds)
        self._commits += 1
        if self._error is not None:
            log.warning(
                "stream store %s: persisting again after %.0f s (%s)",
                self.path, work.now - (self._error_since or work.now), self._error,
            )  # fmt: skip
            self._error = self._error_since = None
        if self._dropping and self._queue.bytes <= self._queue_cap // 2:
            self._dropping = False
            log.warning(
                "stream store %s: the disk queue has room again (%d records dropped)",
                self.path,
                self._dropped,
            )

    def _failed(self, exc: BaseException, now: float) -> None:
        message = describe_error(exc, self.path)
        if self._error is None:
            self._error_since = now
            log.error(
                "stream store %s: cannot persist: %s; keeping records in memory (up to %d MB) "
                "and retrying every %.1f s", self.path, message, self._queue_cap >> 20, self.commit_interval,
            )  # fmt: skip
        self._error = message

    def _apply_retention(self, now: float) -> None:
        """Give up the oldest rows (then queued segments) past the age or the size limit;
        the newest record always stays for the size limit, none for the age limit."""
        cutoff = now - self.retention_seconds
        total = self._index.bytes + self._queue.bytes
        index, queue = self._index, self._queue
        while index and (
            index.times[index.head] < cutoff or (total > self.retention_bytes and (len(index) > 1 or queue))
        ):
            first, end, size, _ = index.popleft()
            total -= size
            self._trimmed += end - first
            self._trim_below = max(self._trim_below, end)
        while (
            not index
            and queue
            and (queue.front.received_at < cutoff or (total > self.retention_bytes and len(queue) > 1))
        ):
            seg = queue.popleft()
            total -= len(seg.data)
            self._trimmed += seg.end - seg.first
            self._trim_below = max(self._trim_below, seg.end)
        if self._tail and not index and not queue and self._tail.back.received_at < cutoff:
            self._trim_below = max(self._trim_below, self._tail.back.end)  # memory-only leftovers aged out
        self._evict_tail()
