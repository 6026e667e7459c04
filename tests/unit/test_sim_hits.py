"""The simulator's hit records: deterministic, exact big ids, recoverable seq."""

from __future__ import annotations

import json
import re
import time

import pytest

from lsproxy.hub.dedup import hit_id
from lsproxy.simulator import SimSettings, Simulator
from lsproxy.simulator.buffer import HitBuffer
from lsproxy.simulator.hits import EMPTY_EVERY, SEQ_BASE, HitFactory, hit_id_high, seq_of

EPOCH = 1_700_000_000


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    a = HitFactory("demo", "suite", seed=7).render_range(0, 300, EPOCH)
    b = HitFactory("demo", "suite", seed=7).render_range(0, 300, EPOCH)
    c = HitFactory("demo", "suite", seed=8).render_range(0, 300, EPOCH)
    assert a == b
    assert a[0] != c[0]


def test_render_is_a_function_of_seq_and_epoch() -> None:
    f = HitFactory("demo")
    lines, keys = f.render_range(100, 50, EPOCH)
    assert [f.render(100 + i, EPOCH) for i in range(50)] == list(zip(lines, keys, strict=True))


def test_ids_exceed_2_53_and_are_exact_integers_in_the_text() -> None:
    f = HitFactory("demo", seed=3)
    for seq in (0, 1, 12345):
        line, _ = f.render(seq, EPOCH)
        text = line.decode()
        record = json.loads(text)
        assert record["hitIdHigh"] == f.hit_id_high == hit_id_high(3, "demo")
        assert record["hitIdLow"] == SEQ_BASE + seq
        for name in ("hitIdHigh", "hitIdLow", "visIdHigh", "visIdLow", "mcVisIdHigh", "mcVisIdLow"):
            assert record[name] > 2**53, name
            digits = re.search(rf'"{name}":(\d+)[,}}]', text)
            assert digits is not None and int(digits.group(1)) == record[name]


def test_hit_id_high_is_constant_per_stream_and_differs_between_streams() -> None:
    assert hit_id_high(1, "a") == hit_id_high(1, "a")
    assert hit_id_high(1, "a") != hit_id_high(1, "b")
    assert 2**62 <= hit_id_high(1, "a") < 2**63


def test_a_new_run_has_new_hit_ids_same_seqs_and_otherwise_the_same_content() -> None:
    first, _ = HitFactory("demo", seed=3, run=1).render_range(0, 50, EPOCH)
    again, _ = HitFactory("demo", seed=3, run=1).render_range(0, 50, EPOCH)
    restarted, _ = HitFactory("demo", seed=3, run=2).render_range(0, 50, EPOCH)
    assert first == again
    assert [seq_of(x) for x in restarted] == [seq_of(x) for x in first] == list(range(50))
    assert not {hit_id(x) for x in first} & {hit_id(x) for x in restarted}  # de-dup keeps them all
    old_high, new_high = str(hit_id_high(3, "demo", 1)).encode(), str(hit_id_high(3, "demo", 2)).encode()
    assert [x.replace(new_high, old_high) for x in restarted] == first


def test_every_simulator_start_is_a_new_run_unless_one_is_given() -> None:
    def high(settings: SimSettings) -> int:
        return Simulator(settings).streams["demo-stream"].buffer.factory.hit_id_high

    assert high(SimSettings()) != high(SimSettings())
    assert high(SimSettings(run_id=5)) == high(SimSettings(run_id=5)) == hit_id_high(1, "demo-stream", 5)


def test_seq_of() -> None:
    f = HitFactory("demo")
    assert [seq_of(f.render(s, EPOCH)[0]) for s in (0, 5, 999_999)] == [0, 5, 999_999]
    assert seq_of(b'{"hitIdLow":%d}' % (SEQ_BASE + 42)) == 42
    with pytest.raises(ValueError):
        seq_of(b'{"hitIdHigh":1}')


def test_lines_are_crlf_terminated_with_an_empty_record_every_200th() -> None:
    lines, _ = HitFactory("demo").render_range(0, 1000, EPOCH)
    text = b"".join(lines)
    records = text.split(b"\r\n")
    assert records[-1] == b""
    empties = [i for i, r in enumerate(records[:-1]) if not r]
    assert len(empties) == 1000 // EMPTY_EVERY
    for i, line in enumerate(lines):
        assert line.endswith(b"\r\n\r\n") == (i % EMPTY_EVERY == EMPTY_EVERY - 1)
        assert line.count(b"\n") == line.count(b"\r\n")


def test_record_fields_and_size() -> None:
    lines, _ = HitFactory("demo", "mysuite").render_range(0, 2000, EPOCH)
    sizes = [len(line.rstrip(b"\r\n")) for line in lines]
    assert min(sizes) >= 2000 and max(sizes) <= 3500
    record = json.loads(lines[0])
    for name in (
        "reportSuite",
        "visIdType",
        "timeGMT",
        "receivedTimeGMT",
        "pageName",
        "pageURL",
        "geoCountry",
        "geoCity",
        "geoRegion",
        "userAgent",
        "evars",
        "props",
        "events",
        "products",
        "bot",
    ):
        assert name in record, name
    assert record["reportSuite"] == "mysuite"
    assert record["receivedTimeGMT"] == EPOCH and record["timeGMT"] <= EPOCH


def test_visitor_population_and_key_follows_visitor() -> None:
    f = HitFactory("demo")
    lines, keys = f.render_range(0, 20_000, EPOCH)
    by_visitor: dict[tuple[int, int], set[int]] = {}
    for line, key in zip(lines[:3000], keys[:3000], strict=True):
        r = json.loads(line)
        by_visitor.setdefault((r["visIdHigh"], r["visIdLow"]), set()).add(key)
    assert all(len(k) == 1 for k in by_visitor.values())
    assert 1000 <= len(set(keys)) <= 5000


def test_generation_is_fast() -> None:
    f = HitFactory("speed")
    start = time.perf_counter()
    f.render_range(0, 20_000, EPOCH)
    rate = 20_000 / (time.perf_counter() - start)
    assert rate > 25_000  # ~200k/s measured; loose bound for slow CI


def test_buffer_retains_rerenders_identically_and_clamps() -> None:
    f = HitFactory("buf")
    buf = HitBuffer(f, retain=1000, cache_hits=0)  # keeps only the last rendered batch
    ref = HitBuffer(f, retain=1000)
    for i in range(300):
        for b in (buf, ref):
            b.append(17, EPOCH + i // 10)
            b.read(b.newest - 5, 5)  # render the newest batch
    assert buf.newest == 5100
    assert buf.newest - buf.oldest == 1000
    lines, _, nxt = buf.read(0, 100_000)  # clamped to the oldest retained hit
    assert nxt == buf.newest
    assert [seq_of(x) for x in lines] == list(range(buf.oldest, buf.newest))
    assert ref.read(0, 100_000) == (lines, buf.read(0, 100_000)[1], nxt)
    assert buf.read(buf.newest, 10) == ([], [], buf.newest)
    part, _, nxt = buf.read(buf.oldest + 3, 10)
    assert [seq_of(x) for x in part] == list(range(buf.oldest + 3, buf.oldest + 13))
    assert nxt == buf.oldest + 13
