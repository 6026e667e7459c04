"""Where is the record with a given hit id? For ``after=<hitIdHigh>:<hitIdLow>``.

Within the de-duplication window the answer is one lookup (dedup.py keeps
each id's offset). Older records are found by a bounded scan of the newest
``max_bytes`` of the log: a bytes search for the low id (in C, over whole
segments), each candidate confirmed with the same id extraction de-duplication
uses. The scan reads through ``StreamLog.read`` (memory, or disk in a worker
thread) and yields to the scheduler between batches, so a long scan never
stalls other consumers. The newest occurrence wins.
"""

from __future__ import annotations

import bisect
import re

import trio

from lsproxy.hub.dedup import hit_id
from lsproxy.hub.segment import CRLF, Block, Segment
from lsproxy.hub.stream import StreamHub

SCAN_BYTES = 64 * 1024 * 1024  # at most this much of the log is searched for an old hit id
_READ_BYTES = 1024 * 1024


async def find_hit(hub: StreamHub, key: bytes, max_bytes: int = SCAN_BYTES) -> int | None:
    """The log offset of the retained record with hit id ``key``, or None."""
    log = hub.log
    if hub.dedup is not None:
        offset = hub.dedup.offset_of(key)
        if offset is not None:
            return offset if log.oldest <= offset < log.next_offset else None
    tail, oldest = log.next_offset, log.oldest
    if tail <= oldest:
        return None
    average = max(1, log.retained_bytes // (tail - oldest))
    offset = max(oldest, tail - max_bytes // average)
    low = re.compile(rb'"hitIdLow"\s*:\s*' + re.escape(key.partition(b":")[2]) + rb"(?!\d)")
    found = None
    scanned = 0
    while offset < tail and scanned < 2 * max_bytes:
        batch = await log.read(offset, _READ_BYTES)
        if not batch.count:
            break
        first = batch.start
        for piece in batch.pieces:
            data = piece.data if isinstance(piece, Block) else piece
            scanned += len(data)
            for match in low.finditer(data):
                before = data.rfind(CRLF, 0, match.start())
                start = before + 2 if before >= 0 else 0
                end = data.find(CRLF, match.end())
                if hit_id(data[start:end]) == key:
                    if isinstance(piece, Segment):
                        found = piece.first + bisect.bisect_right(piece.ends, start)
                    else:
                        found = first + data.count(CRLF, 0, start)
            first = piece.end if isinstance(piece, Segment) else first + data.count(CRLF)
        offset = batch.end
        await trio.lowlevel.checkpoint()
    return found
