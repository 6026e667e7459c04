"""Records per second over the last minutes: a ring of one-second buckets (pure).

The hub feeds it at every append (``add``: O(1), no task, no timer); the status
page reads it as a series ending at the last complete second (``series``).
Seconds in which nothing arrived read as 0. Time is passed in, never read
here. A clock that steps back adds to the bucket being filled, so counts are
never lost and the series never has a hole.
"""

from __future__ import annotations

DEFAULT_SECONDS = 600  # the status page's chart: the last 10 minutes


class RateRing:
    __slots__ = ("_counts", "_second", "seconds")

    def __init__(self, seconds: int = DEFAULT_SECONDS) -> None:
        if seconds < 1:
            raise ValueError("a rate ring needs at least one second")
        self.seconds = seconds
        self._counts = [0] * seconds
        self._second: int | None = None  # the unix second being filled

    def add(self, now: float, count: int) -> None:
        """``count`` records arrived at wall time ``now``."""
        second = int(now)
        current = self._second
        if current is None or second - current >= self.seconds:
            self._counts = [0] * self.seconds
            self._second = current = second
        elif second > current:
            for s in range(current + 1, second + 1):  # at most ``seconds`` steps
                self._counts[s % self.seconds] = 0
            self._second = current = second
        self._counts[current % self.seconds] += count

    def series(self, now: float) -> tuple[int, list[int]]:
        """``(end, counts)``: ``counts[i]`` records arrived in the unix second
        ``end - len(counts) + i``; ``end`` is the last complete second before ``now``."""
        end = int(now) - 1
        first = end - self.seconds + 1
        current = self._second
        if current is None:
            return end, [0] * self.seconds
        oldest_kept = current - self.seconds + 1
        return end, [
            self._counts[s % self.seconds] if oldest_kept <= s <= current else 0
            for s in range(first, end + 1)
        ]
