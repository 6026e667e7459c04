"""What one consumer is sent of each batch: its share, in its format, with its fields.

Theory of operation
-------------------
Most consumers get the log's bytes as they are (``View.passthrough``): the
pump sends whole segments untouched. The others see a *rendering*: only the
records of their group share (hub/visitor.py), each as a Server-Sent Event
(sse.py) and/or reduced to some fields (fields.py). A rendering depends only on
the segment and the view, so the rendering of a whole segment is made once and
kept in the stream's ``BlockCache``: every member of every group of the same
size on one stream, every browser on the stream, shares its bytes and its
compression. A batch that starts inside a segment (a consumer starting or
resuming there) is rendered for that consumer alone.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lsproxy.hub.block_cache import BlockCache
from lsproxy.hub.segment import CRLF, Block, Segment, Slice
from lsproxy.hub.visitor import share_hash, share_of
from lsproxy.serve.fields import project
from lsproxy.serve.sse import event


@dataclass(frozen=True, slots=True)
class View:
    shares: int = 1  # group size; 1: the whole stream
    share: int = 0  # which share, 0..shares-1
    sse: bool = False
    fields: frozenset[str] | None = None

    @property
    def passthrough(self) -> bool:
        return self.shares == 1 and not self.sse and self.fields is None


def _records(piece: Block | bytes, first: int) -> Iterator[tuple[int, bytes, int | None]]:
    """(offset, record, share hash if known) of a batch piece starting at offset ``first``."""
    if isinstance(piece, Segment):
        hashes = piece.share_hashes()
        data, start = piece.data, 0
        for i, end in enumerate(piece.ends):
            yield piece.first + i, data[start : end - 2], hashes[i]
            start = end
    else:
        data = piece.data if isinstance(piece, Block) else piece
        for i, record in enumerate(data.split(CRLF)[:-1]):
            yield first + i, record, None


def render(view: View, piece: Block | bytes, first: int) -> bytes:
    """The piece's records (the first at offset ``first``) as this view sends them."""
    out = []
    wanted = view.fields
    for offset, record, known_hash in _records(piece, first):
        if view.shares > 1:
            hash_ = known_hash if known_hash is not None else share_hash(record, offset)
            if share_of(hash_, view.shares) != view.share:
                continue
        if wanted is not None:
            record = project(record, wanted)
        out.append(event(offset, record) if view.sse else record + CRLF)
    return b"".join(out)


def render_batch(view: View, batch: Slice, cache: BlockCache) -> Slice:
    """``batch`` as ``view`` sends it: whole segments through the shared cache."""
    pieces: list[Block | bytes] = []
    offset = batch.start
    for piece in batch.pieces:
        if isinstance(piece, Segment):
            key = (piece.first, len(piece.ends), view)
            block = cache.get(key)
            if block is None:
                block = Block(render(view, piece, piece.first))
                cache.put(key, block)
            if block.data:
                pieces.append(block)
            offset = piece.end
        else:
            data = render(view, piece, offset)
            if data:
                pieces.append(data)
            offset += (piece.data if isinstance(piece, Block) else piece).count(CRLF)
    return Slice(batch.start, batch.end, tuple(pieces))
