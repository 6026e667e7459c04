"""The retained hits of one simulated stream.

Theory of operation: hits are numbered 0, 1, 2, ... (``seq``) and appended in
batches ``(first, count, epoch)``. Records are a pure function of
``(seq, epoch)`` (see ``hits``), so a batch stores its rendered lines only
while it is in a bounded cache; an evicted batch is rendered again, byte for
byte the same, when an old position is read (resume, ``reset=smallest``).
That keeps ``retain`` = 200 000 hits cheap: metadata only, not 500 MB of JSON.

A batch received in the same second as the previous one extends it, so a slow
stream does not pile up one tiny batch per tick. Exactly the newest ``retain``
hits are readable; a batch is dropped once all its hits are older than that.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from lsproxy.simulator.hits import HitFactory

MAX_BATCH = 4096


@dataclass
class Batch:
    first: int
    count: int
    epoch: int
    lines: list[bytes] | None = field(default=None, repr=False)
    keys: list[int] | None = field(default=None, repr=False)


class HitBuffer:
    """Append-only numbered hits with a retention limit and a render cache."""

    def __init__(self, factory: HitFactory, retain: int, cache_hits: int = 50_000) -> None:
        self.factory = factory
        self.retain = retain
        self.cache_hits = cache_hits
        self._batches: list[Batch] = []
        self._head = 0  # index of the oldest live batch in _batches
        self._newest = 0  # seq of the next hit to be produced
        self._oldest = 0  # seq of the oldest retained hit: max(0, newest - retain)
        self._cached: dict[int, Batch] = {}  # first seq -> batch, in render order
        self._cached_count = 0

    @property
    def newest(self) -> int:
        """Seq of the next hit to be produced (= number of hits produced so far)."""
        return self._newest

    @property
    def oldest(self) -> int:
        """Seq of the oldest retained hit."""
        return self._oldest

    def append(self, count: int, epoch: int) -> None:
        """Produce ``count`` new hits received at ``epoch``."""
        while count > 0:
            last = self._batches[-1] if self._head < len(self._batches) else None
            if last is not None and last.epoch == epoch and last.count < MAX_BATCH:
                n = min(count, MAX_BATCH - last.count)
                if last.lines is not None and last.keys is not None:
                    lines, keys = self.factory.render_range(self._newest, n, epoch)
                    last.lines.extend(lines)
                    last.keys.extend(keys)
                    self._cached_count += n
                last.count += n
            else:
                n = min(count, MAX_BATCH)
                self._batches.append(Batch(self._newest, n, epoch))
            self._newest += n
            count -= n
        self._trim()
        self._evict()

    def _trim(self) -> None:
        self._oldest = max(self._oldest, self._newest - self.retain)
        batches = self._batches
        while self._head < len(batches) and (
            batches[self._head].first + batches[self._head].count <= self._oldest
        ):
            dropped = batches[self._head]
            if self._cached.pop(dropped.first, None) is not None:
                dropped.lines = dropped.keys = None
                self._cached_count -= dropped.count
            self._head += 1
        if self._head > 256 and self._head * 2 > len(batches):
            del batches[: self._head]
            self._head = 0

    def _evict(self) -> None:
        while self._cached_count > self.cache_hits and len(self._cached) > 1:
            old = self._cached.pop(next(iter(self._cached)))
            old.lines = old.keys = None
            self._cached_count -= old.count

    def _rendered(self, batch: Batch) -> tuple[list[bytes], list[int]]:
        if batch.lines is None or batch.keys is None:
            batch.lines, batch.keys = self.factory.render_range(batch.first, batch.count, batch.epoch)
            self._cached[batch.first] = batch
            self._cached_count += batch.count
            self._evict()
        return batch.lines, batch.keys

    def read(self, start: int, limit: int) -> tuple[list[bytes], list[int], int]:
        """Up to ``limit`` hits from ``start`` (clamped to the retained range).

        Returns (lines, visitor keys, next seq). ``next seq`` is where the next
        read should start; it is ``start`` when nothing new is available.
        """
        start = max(start, self.oldest)
        if start >= self._newest:
            return [], [], start
        idx = bisect.bisect_right(self._batches, start, lo=self._head, key=lambda b: b.first) - 1
        lines: list[bytes] = []
        keys: list[int] = []
        seq = start
        while idx < len(self._batches) and len(lines) < limit:
            batch = self._batches[idx]
            b_lines, b_keys = self._rendered(batch)
            lo = seq - batch.first
            hi = min(batch.count, lo + limit - len(lines))
            lines.extend(b_lines[lo:hi])
            keys.extend(b_keys[lo:hi])
            seq = batch.first + hi
            idx += 1
        return lines, keys, seq
