"""Visitor keys and share hashes: which share of a consumer group a record belongs to.

Theory of operation
-------------------
Live Stream splits a stream between the connections of a group and sends all
hits of one visitor to the same connection. The proxy does the same for its
consumer groups (groups.py): a record's *visitor key* is ``visIdHigh`` +
``visIdLow``, else ``mcVisIdHigh`` + ``mcVisIdLow``, else ``customVisId``.
The key is found with a bytes regex, as hit ids are (dedup.py): records stay
byte for byte and ids above 2^53 stay exact digit strings. Records without a
key may go to any one member; they are spread by their log offset, which is
stable, so a record re-read after a reconnect still belongs to the same share.

Each record gets a 32-bit *share hash* (a CRC-32 of the key, spread by a
multiplicative hash: stable across restarts and Python versions, unlike
``hash``). A record belongs to share ``k`` of a group of ``n`` when
``share_of(hash, n) == k``: the high bits of ``hash * n``, so the split is
even for every n. The hashes of a segment are computed once per segment
(segment.py caches them) and shared by every member of every group.

Pure: no I/O.
"""

from __future__ import annotations

import array
import re
import zlib
from collections.abc import Sequence

_VIS = re.compile(rb'"visIdHigh"\s*:\s*(\d+)\s*,\s*"visIdLow"\s*:\s*(\d+)')
_VIS_HIGH = re.compile(rb'"visIdHigh"\s*:\s*(\d+)')
_VIS_LOW = re.compile(rb'"visIdLow"\s*:\s*(\d+)')
_MC_HIGH = re.compile(rb'"mcVisIdHigh"\s*:\s*(\d+)')
_MC_LOW = re.compile(rb'"mcVisIdLow"\s*:\s*(\d+)')
_CUSTOM = re.compile(rb'"customVisId"\s*:\s*"((?:[^"\\]|\\.)+)"')

_GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash constant (2^32 / phi)
_M32 = 0xFFFFFFFF


def _pair(record: bytes, high: re.Pattern[bytes], low: re.Pattern[bytes]) -> bytes | None:
    h = high.search(record)
    if h is None:
        return None
    lo = low.search(record)
    if lo is None or (h.group(1).strip(b"0") == b"" and lo.group(1).strip(b"0") == b""):
        return None  # 0:0 means "no id"
    return h.group(1) + b":" + lo.group(1)


def visitor_key(record: bytes) -> bytes | None:
    """The record's visitor key (a tagged digit string), or None when it names no visitor."""
    pair = _VIS.search(record)
    if pair is not None and (pair.group(1).strip(b"0") or pair.group(2).strip(b"0")):
        return b"v" + pair.group(1) + b":" + pair.group(2)
    key = _pair(record, _VIS_HIGH, _VIS_LOW)
    if key is not None:
        return b"v" + key
    key = _pair(record, _MC_HIGH, _MC_LOW)
    if key is not None:
        return b"m" + key
    custom = _CUSTOM.search(record)
    if custom is not None:
        return b"c" + custom.group(1)
    return None


def _spread(x: int) -> int:
    return (x * _GOLDEN) & _M32


def share_hash(record: bytes, offset: int) -> int:
    """The record's 32-bit share hash: of its visitor key, else of its log offset."""
    key = visitor_key(record)
    return _spread(zlib.crc32(key) if key is not None else offset & _M32)


def share_of(hash_: int, shares: int) -> int:
    """The share (0..shares-1) a record with this hash belongs to."""
    return (hash_ * shares) >> 32


def segment_hashes(data: bytes, ends: Sequence[int], first: int) -> array.array[int]:
    """Share hashes of a segment's records (``ends`` as in segment.py)."""
    hashes = array.array("I", bytes(4 * len(ends)))
    start = 0
    for i, end in enumerate(ends):
        hashes[i] = share_hash(data[start : end - 2], first + i)
        start = end
    return hashes
