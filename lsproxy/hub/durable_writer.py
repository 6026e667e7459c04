"""The writer half of DurableLog: disk queue, row index, retention, commits, cursors, meta.

Theory of operation
-------------------
``append`` hands each new segment to ``_enqueue``: the *queue* holds what is
not committed yet, oldest first, and ``run`` drains it. Every
``commit_interval`` (sooner once ``FLUSH_BYTES`` are queued) a commit

1. applies retention: rows whose newest record is older than
   ``retention_seconds`` go, then the oldest rows while more than
   ``retention_bytes`` are retained (the newest row always stays for the size
   limit); when no row is left the same rule runs over queued segments. The
   trim point only moves forward, and it is what the transaction deletes
   below, so a failed commit's deletion is simply redone by the next one;
2. takes up to ``MAX_COMMIT_BYTES`` of the queue, the cursors that differ
   from what is stored, the meta keys set since, and the log's end;
3. runs ``Store.commit`` in a worker thread (not abandoned on cancellation:
   the bookkeeping below must see its outcome);
4. only then pops the committed segments and adds their rows to the index,
   so ``committed_offset`` (the queue's front) always means "durable below".

A failed commit (``sqlite3.Error``/``OSError``: disk full, read-only, I/O
error) changes nothing but the status: logged once at ERROR, retried once per
interval, and the backlog is written when the disk is back. Meanwhile the queue
may grow to ``3 * memory_bytes`` (with the tail: ``4 * memory_bytes``); past
that, new segments are not queued (``dropped_from_disk``), but the tail still
serves them. Cancelling ``run`` (or ``aclose``) does a final commit bounded by
``FINAL_COMMIT_SECONDS`` (then the worker thread is abandoned) and closes the
database.
"""

from __future__ import annotations

import abc
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from urllib.parse import unquote

import trio

from lsproxy.histogram import COMMIT_SECONDS, Histogram
from lsproxy.hub.durable_index import RowIndex
from lsproxy.hub.segment import Segment, SegmentRun
from lsproxy.hub.store import Commit, Committed, Loaded, Store, describe_error

log = logging.getLogger("lsproxy.store")

FLUSH_BYTES = 8 * 1024 * 1024  # commit early once this much is queued (bounds commit latency)
MAX_COMMIT_BYTES = 32 * 1024 * 1024  # per transaction; a bigger backlog takes several commits
FINAL_COMMIT_SECONDS = 5.0


class DurableWriter(abc.ABC):
    """Base class of ``DurableLog`` (which owns the tail and the reads)."""

    _next: int  # the log's end (DurableLog's)
    _tail: SegmentRun  # the memory tail (DurableLog's)

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
        self._queue_cap = 3 * memory_bytes
        self._flush_bytes = min(FLUSH_BYTES, max(memory_bytes // 2, 1))
        self._index = RowIndex(loaded.index)
        self._queue = SegmentRun()
        first = self._index.firsts[0] if self._index else self._next
        self._trim_below = self._trim_written = first
        self._trimmed = first  # every record before the first retained one is gone
        self._next_written = self._next
        self._cursors = dict(loaded.cursors)
        self._stored_cursors = dict(loaded.cursors)
        self._snapshot: dict[str, tuple[int, int]] | None = None
        self._meta = dict(loaded.meta)
        self._dirty_meta: dict[str, str] = {}
        self._shut = False
        self._flush = trio.Event()
        self._commit_lock = trio.Lock()
        self._error: str | None = None
        self._error_since: float | None = None
        self._dropping = False
        self._dropped = 0
        self._disk_bytes = loaded.disk_bytes
        self._commits = 0
        self._last_commit: tuple[float, float] | None = None  # (wall time, seconds it took)
        self.commit_seconds = Histogram(COMMIT_SECONDS)  # every successful commit's duration
        # Structured log fields: the stream's name, from <dir>/<stream>.sqlite3 (store_files).
        self._log_fields = {"stream": unquote(os.path.basename(self.path).removesuffix(".sqlite3"))}
        self._apply_retention(clock())

    @abc.abstractmethod
    def _evict_tail(self) -> None:
        """Drop memory-tail segments below the trim point (DurableLog's part)."""

    @property
    def committed_offset(self) -> int:
        """Records below this are durable (or were trimmed, or dropped from the disk queue)."""
        return self._queue.front.first if self._queue else self._next

    def _enqueue(self, seg: Segment) -> None:
        """Queue a new segment for the disk, unless the queue is at its hard cap."""
        if self._queue.bytes + len(seg.data) <= self._queue_cap:
            self._queue.append(seg)
            if self._queue.bytes >= self._flush_bytes:
                self._flush.set()
            return
        self._dropped += len(seg.ends)
        if not self._dropping:
            self._dropping = True
            log.error(
                "stream store %s: %.1f MB wait for the disk; records from offset %d on are not "
                "persisted (dropped_from_disk counts them); consumers at the tail are still served",
                self.path, self._queue.bytes / 1e6, seg.first,
            )  # fmt: skip

    # -- cursors and meta ---------------------------------------------------
    def load_cursors(self) -> dict[str, tuple[int, int]]:
        """name -> (position, skipped), as last persisted (at open: as stored)."""
        return dict(self._cursors)

    def save_cursors(self, cursors: Mapping[str, tuple[int, int]]) -> None:
        """The cursors to persist with the next commit: every named cursor (only changed
        ones are written; a stored name missing from the snapshot, one an operator
        deleted, is deleted)."""
        self._snapshot = dict(cursors)

    def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        """Persisted with the next commit."""
        if key.startswith("_log."):
            raise ValueError("meta keys starting with '_log.' are reserved")
        self._meta[key] = self._dirty_meta[key] = value

    def status(self) -> dict[str, object]:
        """JSON-able: whether commits succeed (else the error and since when, wall clock),
        what is durable, what waits in memory, what was dropped, the file's size."""
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
            "tail_bytes": self._tail.bytes,
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
            deadline = trio.current_time() + self.commit_interval
            while True:
                if self._error is None:  # while failing, retry once per interval only
                    with trio.move_on_at(deadline):
                        await self._flush.wait()
                else:
                    await trio.sleep_until(deadline)
                self._flush = trio.Event()
                deadline = trio.current_time() + self.commit_interval  # counted from this start
                async with self._commit_lock:
                    await self._commit_once()
                if self._error is None and self._queue.bytes >= self._flush_bytes:
                    self._flush.set()  # a backlog: keep going
        finally:
            await self.aclose()

    async def commit_now(self) -> bool:
        """Commit everything appended so far (and cursors/meta); False if it failed."""
        target = self._next
        async with self._commit_lock:
            while True:
                ok = await self._commit_once()
                if not ok or self.committed_offset >= target:
                    return ok

    async def aclose(self) -> None:
        """A final commit and close (``run`` does this when cancelled). Bounded by
        ``FINAL_COMMIT_SECONDS`` even when cancelled; after it, reads of the disk fail."""
        if self._shut:
            return
        closed = False
        with trio.move_on_after(FINAL_COMMIT_SECONDS, shield=True):
            async with self._commit_lock:
                if self._shut:  # closed by a concurrent aclose while we waited
                    return
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
        if self._shut:
            return False
        now = self._clock()
        self._apply_retention(now)
        segments = self._queue.take(MAX_COMMIT_BYTES)
        snapshot = self._snapshot
        cursors = {}
        forgotten: list[str] = []
        if snapshot is not None:
            cursors = {k: v for k, v in snapshot.items() if self._stored_cursors.get(k) != v}
            forgotten = [k for k in self._stored_cursors if k not in snapshot]
        meta = dict(self._dirty_meta)
        next_offset = self._next
        idle = not (segments or cursors or forgotten or meta)
        if idle and (self._trim_below, next_offset) == (self._trim_written, self._next_written):
            return True
        work = Commit(segments, self._trim_below, next_offset, cursors, meta, now, forgotten)
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
        for name in work.forgotten:
            self._stored_cursors.pop(name, None)
            self._cursors.pop(name, None)
        if self._snapshot is snapshot:
            self._snapshot = None
        for key, value in work.meta.items():
            if self._dirty_meta.get(key) == value:
                del self._dirty_meta[key]
        self._disk_bytes, self._last_commit = done.disk_bytes, (work.now, done.seconds)
        self._commits += 1
        self.commit_seconds.observe(done.seconds)
        if self._error is not None:
            log.warning(
                "stream store %s: persisting again after %.0f s (%s)",
                self.path, work.now - (self._error_since or work.now), self._error,
                extra=self._log_fields,
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
                "stream store %s: cannot persist: %s; keeping records in memory (up to %.1f MB) "
                "and retrying every %g s", self.path, message, self._queue_cap / 1e6, self.commit_interval,
                extra=self._log_fields,
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
