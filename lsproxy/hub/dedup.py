"""De-duplication of hits on ``hitIdHigh`` + ``hitIdLow`` over a bounded window.

Theory of operation
-------------------
Live Stream sends duplicates around reconnects (a short backfill) and when
connections are added; with several connections per stream, the same hit may
arrive on two of them. The proxy drops a record whose hit id it has seen
recently, so consumers get each hit once (except around their *own*
reconnects, see cursors.py).

The window is bounded twice: at most ``max_records`` ids, and none older than
``max_seconds``; the oldest ids fall out first. A duplicate arriving after its
original left the window passes through: the window is sized for reconnect
backfills (seconds to minutes), not for all history.

Ids are found with a bytes regex, not a JSON parse: records stay byte-for-byte
as received and ids above 2^53 stay exact (the id is kept as the digit
bytes). Records without both ids pass through untouched.

A backfill is short; a long run of consecutive duplicates means the upstream
replays history or reuses ids (a restarted source numbering its hits from 0
again), and consumers silently get nothing while the stream looks healthy. So
the window counts the current run (``consecutive``) and, once a run reaches
``warn_after``, has a warning due (``take_warning``): at most one per
``warn_interval`` seconds, for the longest run seen since the last one.

The window also remembers each id's log offset (given by the caller), so an
exact resume (``after=<hit id>``) within the window is one lookup.

Pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence

_HIGH = re.compile(rb'"hitIdHigh"\s*:\s*(\d+)')
_LOW = re.compile(rb'"hitIdLow"\s*:\s*(\d+)')
# Live Stream writes the two ids side by side: one search instead of two, usually.
_PAIR = re.compile(rb'"hitIdHigh":(\d+),"hitIdLow":(\d+)')


def hit_id(record: bytes) -> bytes | None:
    """``b"<high>:<low>"`` for a record carrying both ids, else None."""
    pair = _PAIR.search(record)
    if pair is not None:
        return pair.group(1) + b":" + pair.group(2)
    high = _HIGH.search(record)
    if high is None:
        return None
    low = _LOW.search(record)
    if low is None:
        return None
    return high.group(1) + b":" + low.group(1)


WARN_AFTER = 1000  # consecutive duplicates: far more than a reconnect's backfill
WARN_INTERVAL = 60.0  # seconds between two warnings about duplicate runs
def parse_hit_id(value: str) -> bytes | None:
    """``"<high>:<low>"`` (decimal, as in the records) -> the key dedup uses, or None."""
    high, sep, low = value.partition(":")
    if not (sep and high.isdigit() and low.isdigit() and high.isascii() and low.isascii()):
        return None
    if len(high) > 40 or len(low) > 40 or int(high) >= 2**64 or int(low) >= 2**64:
        return None
    return str(int(high)).encode() + b":" + str(int(low)).encode()


class DedupWindow:
    def __init__(
        self,
        *,
        max_records: int,
        max_seconds: float,
        warn_after: int = WARN_AFTER,
        warn_interval: float = WARN_INTERVAL,
    ) -> None:
        self.max_records = max_records
        self.max_seconds = max_seconds
        self.warn_after = warn_after
        self.warn_interval = warn_interval
        self._seen: dict[bytes, int | None] = {}  # id -> log offset (None: not known)
        self._order: deque[tuple[float, bytes]] = deque()
        self.dropped = 0  # duplicates dropped so far
        self.consecutive = 0  # duplicates dropped since the last record kept
        self._unreported = 0  # longest run >= warn_after not yet warned about
        self._warned_at = float("-inf")

    @property
    def enabled(self) -> bool:
        return self.max_records > 0 and self.max_seconds > 0

    def __len__(self) -> int:
        return len(self._order)

    def filter(self, records: Sequence[bytes], now: float, first_offset: int | None = None) -> list[bytes]:
        """The records whose ids were not seen within the window (in order); remembers them,
        and, with ``first_offset`` (the offset the first kept record will get), where."""
        if not self.enabled:
            return list(records)
        self._expire(now)
        kept: list[bytes] = []
        seen, order = self._seen, self._order
        run = self.consecutive
        for record in records:
            key = hit_id(record)
            if key is None:
                kept.append(record)
            elif key in seen:
                self.dropped += 1
                run += 1
            else:
                if run >= self.warn_after:
                    self._unreported = max(self._unreported, run)
                run = 0
                seen[key] = None if first_offset is None else first_offset + len(kept)
                order.append((now, key))
                kept.append(record)
        if run >= self.warn_after:
            self._unreported = max(self._unreported, run)
        self.consecutive = run
        self._trim()
        return kept

    def take_warning(self, now: float) -> int | None:
        """The length of a run of at least ``warn_after`` consecutive duplicates to warn
        about, at most once per ``warn_interval``; None when nothing is due."""
        if not self._unreported or now - self._warned_at < self.warn_interval:
            return None
        run, self._unreported, self._warned_at = self._unreported, 0, now
        return run

    def offset_of(self, key: bytes) -> int | None:
        """The log offset of the record with hit id ``key`` (``b"<high>:<low>"``), if the
        window holds it and knows where it went."""
        return self._seen.get(key)

    def seed(self, records: Iterable[bytes], now: float) -> None:
        """Remember ids of records stored before (e.g. before a restart) without filtering."""
        if not self.enabled:
            return
        for record in records:
            key = hit_id(record)
            if key is not None and key not in self._seen:
                self._seen[key] = None
                self._order.append((now, key))
        self._trim()

    def _expire(self, now: float) -> None:
        horizon = now - self.max_seconds
        order, seen = self._order, self._seen
        while order and order[0][0] < horizon:
            seen.pop(order.popleft()[1], None)

    def _trim(self) -> None:
        order, seen = self._order, self._seen
        while len(order) > self.max_records:
            seen.pop(order.popleft()[1], None)
