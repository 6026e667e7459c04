"""Views: a group member's share, SSE and fields, rendered once per segment and shared."""

import random

from lsproxy.hub.block_cache import BlockCache
from lsproxy.hub.log import MemoryLog
from lsproxy.hub.segment import Block, Slice
from lsproxy.hub.visitor import share_hash, share_of
from lsproxy.serve.view import View, render, render_batch


def filled_log(rng: random.Random, count: int = 600) -> tuple[MemoryLog, list[bytes]]:
    log = MemoryLog(1 << 30)
    records = []
    while len(records) < count:
        batch = [
            b'{"hitIdLow":%d,"visIdHigh":%d,"visIdLow":1,"pad":"%s"}'
            % (len(records) + i, rng.randrange(40), b"x" * rng.randint(0, 300))
            for i in range(rng.randint(1, 25))
        ]
        batch += [b'{"hitIdLow":%d}' % (len(records) + len(batch))]  # no visitor
        records += batch
        log.append(batch, 0.0)
    return log, records


def read_all(log: MemoryLog, view: View, cache: BlockCache, start: int, max_bytes: int) -> bytes:
    out, offset = [], start
    while offset < log.next_offset:
        batch = log.read_nowait(offset, max_bytes)
        rendered = render_batch(view, batch, cache)
        assert (rendered.start, rendered.end) == (batch.start, batch.end)
        out += [p.data if isinstance(p, Block) else p for p in rendered.pieces]
        offset = batch.end
    return b"".join(out)


def test_shares_are_disjoint_complete_in_order_and_keep_visitors_together() -> None:
    rng = random.Random(1)
    log, records = filled_log(rng)
    for shares in (2, 3, 8):
        got = []
        for share in range(shares):
            start = rng.randrange(5)  # a mid-segment start renders that piece on its own
            lines = read_all(log, View(shares, share), BlockCache(), start, rng.randint(1, 5000))
            mine = [r for r in lines.split(b"\r\n") if r]
            expected = [
                r for i, r in enumerate(records[start:], start) if share_of(share_hash(r, i), shares) == share
            ]
            assert mine == expected  # in log order
            got += [(r, share) for r in mine]
        visitors: dict[bytes, int] = {}
        for record, share in got:
            if b"visIdHigh" in record:
                visitor = record.split(b'"visIdHigh":')[1].split(b",")[0]
                assert visitors.setdefault(visitor, share) == share


def test_union_of_shares_is_the_stream() -> None:
    log, records = filled_log(random.Random(2))
    union: list[bytes] = []
    for share in range(4):
        union += [r for r in read_all(log, View(4, share), BlockCache(), 0, 10_000).split(b"\r\n") if r]
    assert sorted(union) == sorted(records)


def test_members_of_groups_of_the_same_size_share_one_block() -> None:
    log, _ = filled_log(random.Random(3))
    cache = BlockCache()
    batch = log.read_nowait(log.oldest, 1 << 20)
    first = render_batch(View(3, 1), batch, cache)
    second = render_batch(View(3, 1), batch, cache)
    assert first.pieces and all(a is b for a, b in zip(first.pieces, second.pieces, strict=True))
    assert cache.hits == len(batch.pieces)  # every segment rendered once, then reused
    other = render_batch(View(3, 2), batch, cache)
    assert not set(map(id, other.pieces)) & set(map(id, first.pieces))


def test_sse_events_carry_offsets_and_fields_project() -> None:
    log = MemoryLog(1 << 20)
    log.append([b'{"a":1,"hitIdLow":%d,"b":2}' % i for i in range(5)], 0.0)
    batch = log.read_nowait(2, 1 << 20)
    data = b"".join(
        p.data if isinstance(p, Block) else p
        for p in render_batch(View(sse=True, fields=frozenset({"hitIdLow"})), batch, BlockCache()).pieces
    )
    assert data == b"".join(b'id: %d\ndata: {"hitIdLow":%d}\n\n' % (i, i) for i in range(2, 5))


def test_passthrough_and_plain_bytes() -> None:
    assert View().passthrough and not View(2, 0).passthrough and not View(sse=True).passthrough
    assert render(View(fields=frozenset({"a"})), b'{"a":1,"b":2}\r\n{"b":3}\r\n', 7) == b'{"a":1}\r\n{}\r\n'
    assert render_batch(View(2, 0), Slice(0, 0), BlockCache()).pieces == ()
