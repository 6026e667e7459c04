"""Resume points of anonymous consumers, by API key: a restarted client continues.

Theory of operation
-------------------
On Live Stream a client that reconnects within a few minutes resumes where it
left off. Existing clients send no consumer id, but they do send ``x-api-key``.
So when an anonymous connection that sent a key ends, its rewind point
(cursors.py: nothing before it can have been lost) is kept under the key for
``linger`` seconds; the next anonymous connection with that key takes it and
starts there instead of at the live tail.

Several connections with one key (two applications sharing credentials) stay
independent: nobody is taken over. Each ending connection leaves its own
point; a starting one takes the *lowest* point left under its key, so
whichever connection comes back first gets duplicates rather than a gap. The
other may then find a later point (or none, and start at the tail as before):
never worse than without resume points.

Keys are stored as digests (the caller's), never as the secret itself. Memory
is bounded: ``MAX_POINTS_PER_KEY`` per key, ``MAX_KEYS`` keys (the least
recently left go first).

Pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

from collections import OrderedDict

MAX_POINTS_PER_KEY = 8
MAX_KEYS = 10_000


class ResumePoints:
    def __init__(self, linger: float = 300.0) -> None:
        self.linger = linger
        self._points: OrderedDict[bytes, list[tuple[int, float]]] = OrderedDict()  # key -> (offset, left at)

    def __len__(self) -> int:
        return sum(len(points) for points in self._points.values())

    def leave(self, key: bytes, offset: int, now: float) -> None:
        """A connection with ``key`` ended; it can be resumed at ``offset``."""
        if self.linger <= 0:
            return
        points = self._points.pop(key, [])
        points.append((offset, now))
        self._points[key] = points[-MAX_POINTS_PER_KEY:]
        while len(self._points) > MAX_KEYS:
            self._points.popitem(last=False)

    def take(self, key: bytes, now: float) -> int | None:
        """The lowest point left under ``key`` within the linger (removed), or None."""
        points = self._points.get(key)
        if points is None:
            return None
        points[:] = [p for p in points if now - p[1] <= self.linger]
        if not points:
            del self._points[key]
            return None
        lowest = min(range(len(points)), key=lambda i: points[i][0])
        offset = points.pop(lowest)[0]
        if not points:
            del self._points[key]
        return offset
