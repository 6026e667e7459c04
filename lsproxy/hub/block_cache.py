"""BlockCache: renderings of log segments that several consumers send, kept for reuse.

A group member's share of a segment, a segment as Server-Sent Events, or with
only some fields is the same bytes for every consumer that asks for the same
view (serve/view.py): rendered once, compressed once (``Block.deflated``),
sent to all. Consumers at the tail read a segment within moments of each
other, so a small least-recently-used cache, bounded in bytes, is enough;
a consumer far behind renders for itself when its segments have left it.

Pure: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from lsproxy.hub.segment import Block

DEFAULT_CACHE_BYTES = 16 * 1024 * 1024


class BlockCache:
    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._blocks: OrderedDict[Hashable, Block] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, key: Hashable) -> Block | None:
        block = self._blocks.get(key)
        if block is None:
            self.misses += 1
            return None
        self.hits += 1
        self._blocks.move_to_end(key)
        return block

    def put(self, key: Hashable, block: Block) -> None:
        """Keep ``block``; counted by its bytes (its compression, once made, adds less)."""
        old = self._blocks.pop(key, None)
        if old is not None:
            self.bytes -= len(old.data)
        self._blocks[key] = block
        self.bytes += len(block.data)
        while self.bytes > self.max_bytes and len(self._blocks) > 1:
            self.bytes -= len(self._blocks.popitem(last=False)[1].data)
