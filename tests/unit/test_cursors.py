"""CursorBook and the delivery (rewind) rule: pure book-keeping."""

import random

import pytest

from lsproxy.hub.cursors import MAX_MARKS, CursorBook, Delivery, TooManyConsumers


def test_delivery_without_enough_bytes_resumes_at_start() -> None:
    d = Delivery(start=100, window_bytes=1000)
    d.sent(110, 400)
    d.sent(120, 400)
    assert d.position == 120
    assert d.resume_offset() == 100  # 800 bytes could all still be in buffers


def test_delivery_resumes_after_batches_followed_by_a_full_window() -> None:
    d = Delivery(start=0, window_bytes=1000)
    d.sent(10, 500)  # wire 500
    d.sent(20, 500)  # wire 1000
    d.sent(30, 500)  # wire 1500: batch ending at 10 was followed by 1000 bytes
    assert d.resume_offset() == 10
    d.sent(30, 600)  # a heartbeat: 2100; batch ending at 20 followed by 1100
    assert d.resume_offset() == 20


def test_delivery_rule_never_loses_records_fuzz() -> None:
    """Against a model: the resume point is never past the end of the newest batch whose
    bytes are all confirmed (by the window or by an observation: no loss), and no further
    back than the mark resolution (~1/32 of the unconfirmed bytes, two granules)."""
    rng = random.Random(7)
    for _ in range(300):
        window = rng.choice([None, rng.randint(0, 5000)])
        d = Delivery(start=50, window_bytes=window)
        history = [(0, 50)]
        wire, offset, confirmed, widest = 0, 50, 0, 0
        for _ in range(rng.randint(0, 60)):
            if rng.random() < 0.25:
                unprocessed = rng.randint(0, wire + 10)
                d.observe(unprocessed, "test")
                confirmed = max(confirmed, wire - unprocessed)
            else:
                size = rng.randint(1, 800)
                if rng.random() < 0.8:
                    offset += rng.randint(1, 5)
                wire += size
                d.sent(offset, size)
                history.append((wire, offset))
                if window is not None:
                    confirmed = max(confirmed, wire - window)
            widest = max(widest, wire - confirmed)
            best = max(off for w, off in history if w <= confirmed)
            coarse = [off for w, off in history if w <= confirmed - 2 * (widest // 32 + 1)]
            assert max(coarse, default=50) <= d.resume_offset() <= best
            records, replay_bytes = d.replay()
            assert records == offset - d.resume_offset() and wire - confirmed <= replay_bytes <= wire


def test_first_named_connection_starts_at_tail_then_resumes() -> None:
    book = CursorBook()
    lease = book.attach("a", reset=None, oldest=0, tail=40, window_bytes=0)
    assert lease.start == 40 and not lease.took_over
    assert book.sent(lease, 45, 100)
    book.detach(lease)
    assert book.get("a").position == 45 and not book.get("a").connected
    again = book.attach("a", reset=None, oldest=0, tail=60, window_bytes=0)
    assert again.start == 45


def test_reset_smallest_and_largest() -> None:
    book = CursorBook()
    first = book.attach("a", reset="smallest", oldest=5, tail=40, window_bytes=0)
    assert first.start == 5
    book.detach(first)
    assert book.attach("a", reset="largest", oldest=5, tail=40, window_bytes=0).start == 40


def test_takeover_releases_old_lease_and_ignores_its_progress() -> None:
    book = CursorBook()
    old = book.attach("a", reset=None, oldest=0, tail=10, window_bytes=100)
    book.sent(old, 20, 150)  # batch 10..20, then 150 bytes
    book.sent(old, 30, 150)  # batch 20..30: 20 is followed by 150 >= 100 bytes
    new = book.attach("a", reset=None, oldest=0, tail=30, window_bytes=100)
    assert new.took_over and new.start == 20
    assert not book.sent(old, 99, 10)  # stale lease: ignored
    book.detach(old)  # stale: changes nothing
    assert book.get("a").connected
    assert book.sent(new, 25, 10)
    book.detach(new)
    assert book.get("a").position == 20  # 10 bytes < window: back to the start


def test_cursor_behind_retention_jumps_and_counts() -> None:
    book = CursorBook()
    lease = book.attach("a", reset=None, oldest=0, tail=0, window_bytes=0)
    book.sent(lease, 10, 1)
    book.detach(lease)
    again = book.attach("a", reset=None, oldest=25, tail=30, window_bytes=0)
    assert again.start == 25 and again.skipped == 15 and book.get("a").skipped == 15
    assert book.skipped(again, 25, 28) == (3, 0)
    assert book.get("a").skipped == 18


def test_a_rewind_past_the_oldest_record_is_not_a_skip() -> None:
    """Records sent before (the rewind's replay) that retention trimmed were not missed:
    only records never sent to the consumer count as skipped, at attach and while reading."""
    book = CursorBook()
    lease = book.attach("a", reset=None, oldest=0, tail=10, window_bytes=10**9)  # nothing confirmed
    book.sent(lease, 40, 1000)
    book.detach(lease)
    assert book.get("a").position == 10  # the whole connection is sent again
    again = book.attach("a", reset=None, oldest=30, tail=50, window_bytes=10**9)
    assert again.start == 30 and again.skipped == 0 and again.rewind_trimmed == 20
    assert again.replayed == 10  # 30..40 were sent before
    assert book.get("a").skipped == 0
    # While it reads, retention trims 30..45: 30..40 had been sent, 40..45 never were.
    assert book.skipped(again, 30, 45) == (5, 10)
    assert book.get("a").skipped == 5


def test_anonymous_cursors_vanish_on_detach() -> None:
    book = CursorBook()
    a = book.attach(None, reset="smallest", oldest=0, tail=9, window_bytes=0)
    b = book.attach(None, reset=None, oldest=0, tail=9, window_bytes=0)
    assert a.start == 0 and b.start == 9 and a.name != b.name
    assert len(book) == 2
    book.detach(a)
    book.detach(b)
    assert len(book) == 0


def test_persistent_snapshot_uses_the_rewind_point_and_restores() -> None:
    book = CursorBook()
    lease = book.attach("a", reset=None, oldest=0, tail=10, window_bytes=100)
    book.sent(lease, 20, 150)
    book.sent(lease, 30, 150)
    anon = book.attach(None, reset=None, oldest=0, tail=30, window_bytes=0)
    assert book.persistent(now=5.0) == {"a": (20, 0, 0.0)}  # connected: its rewind point, not 30
    book.detach(anon)
    restored = CursorBook()
    restored.restore(book.persistent(now=5.0))
    again = restored.attach("a", reset=None, oldest=0, tail=99, window_bytes=0)
    assert again.start == 20 and not again.took_over


def test_start_at_overrides_cursor_and_is_clamped() -> None:
    book = CursorBook()
    assert book.attach("a", reset="largest", oldest=5, tail=50, window_bytes=0, start_at=12).start == 12
    assert book.attach("b", reset=None, oldest=5, tail=50, window_bytes=0, start_at=1).start == 5
    assert book.attach("c", reset=None, oldest=5, tail=50, window_bytes=0, start_at=99).start == 50


def test_marks_stay_bounded_whatever_the_batch_sizes() -> None:
    d = Delivery(start=0, window_bytes=32 * 1024 * 1024)
    for i in range(1, 200_000):
        d.sent(i, 700)  # tiny batches: 140 MB in all
    assert len(d._marks) <= 40
    assert 0 < 199_999 - d.resume_offset() <= (32 * 1024 * 1024 * 1.1) // 700
    sampled = Delivery(start=0, window_bytes=None)
    rng = random.Random(1)
    for i in range(1, 200_000):
        sampled.sent(i, rng.randint(1, 3000))
        if i % 1000 == 0:
            sampled.observe(rng.randint(0, 40_000_000), "test")
        assert len(sampled._marks) <= MAX_MARKS


def test_an_observation_confirms_what_a_fixed_window_cannot() -> None:
    """The kernel says little is in flight: the resume point follows it, not the window."""
    d = Delivery(start=0, window_bytes=37_000_000)
    for i in range(1, 101):
        d.sent(i * 10, 10_000)  # 100 batches of 10 records, 1 MB in all
    assert d.resume_offset() == 0  # the window alone: all of it could still be in flight
    d.observe(25_000, "peer socket")  # at most 25 KB unprocessed: batches up to 975,000 bytes are read
    # ... up to the mark resolution: two granules of 1/32 of the 1 MB then unconfirmed.
    resumed = d.resume_offset()
    assert 970 - 2 * (1_000_000 // 32) // 1000 <= resumed <= 970 and d.source == "peer socket"
    assert d.replay() == (1000 - resumed, (1000 - resumed) * 1000)
    d.observe(500_000, "peer socket")  # a later, weaker sample never moves the point back
    assert d.resume_offset() == resumed
    d.sent(1010, 10_000)
    assert d.resume_offset() == resumed  # what was processed stays processed
    d.observe(0, "peer socket")
    assert d.resume_offset() == 1010


def test_unconfirmed_connection_resumes_at_its_start() -> None:
    d = Delivery(start=7, window_bytes=None)
    d.sent(20, 5000)
    assert d.resume_offset() == 7 and d.source == "none"


def test_new_named_ids_beyond_the_cap_are_refused_existing_ones_still_work() -> None:
    book = CursorBook(max_named=2)
    a = book.attach("a", reset=None, oldest=0, tail=5, window_bytes=0)
    book.attach("b", reset=None, oldest=0, tail=5, window_bytes=0)
    with pytest.raises(TooManyConsumers):
        book.attach("c", reset=None, oldest=0, tail=5, window_bytes=0)
    assert book.get("c") is None and book.named == 2
    anonymous = book.attach(None, reset=None, oldest=0, tail=5, window_bytes=0)  # not capped
    book.detach(anonymous)
    book.detach(a)
    assert book.attach("a", reset=None, oldest=0, tail=9, window_bytes=0).start == 5  # known id: fine


def test_cursors_not_connected_for_the_ttl_are_forgotten_oldest_first_in_bounded_steps() -> None:
    book = CursorBook(max_named=100, ttl=100.0)
    leases = {n: book.attach(n, reset=None, oldest=0, tail=0, window_bytes=0, now=0.0) for n in "abcde"}
    for i, name in enumerate("abcd"):
        book.detach(leases[name], now=10.0 * i)  # a at 0, b at 10, c at 20, d at 30; e stays connected
    assert book.sweep(now=99.0, limit=10) == []
    assert [c.name for c in book.sweep(now=125.0, limit=1)] == ["a"]  # bounded per step
    assert [c.name for c in book.sweep(now=125.0, limit=10)] == ["b", "c"]
    assert book.get("a") is None and book.named == 2
    again = book.attach("d", reset=None, oldest=0, tail=0, window_bytes=0, now=126.0)  # back in time
    assert book.sweep(now=10_000.0, limit=10) == []  # connected ones are never forgotten
    book.detach(again, now=10_000.0)
    assert [c.name for c in book.sweep(now=10_100.0, limit=10)] == ["d"]
    # A forgotten name frees its place under the cap and starts afresh.
    assert book.attach("a", reset=None, oldest=0, tail=42, window_bytes=0, now=10_100.0).created


def test_ttl_zero_keeps_cursors_forever() -> None:
    book = CursorBook(ttl=0)
    book.detach(book.attach("a", reset=None, oldest=0, tail=0, window_bytes=0, now=0.0), now=0.0)
    assert book.sweep(now=1e12, limit=10) == []


def test_restored_cursors_keep_their_last_seen_time_and_connected_ones_refresh_it() -> None:
    book = CursorBook(ttl=800.0)
    book.restore({"old": (5, 0, 100.0), "older": (3, 1, 50.0), "recent": (9, 0, 900.0)})
    assert book.named == 3
    assert [c.name for c in book.sweep(now=950.0, limit=10)] == ["older", "old"]
    lease = book.attach("recent", reset=None, oldest=0, tail=9, window_bytes=0, now=1000.0)
    assert book.persistent(now=1050.0)["recent"][2] == 1000.0  # within ttl/8: not rewritten
    assert book.persistent(now=1100.0)["recent"][2] == 1100.0  # a crash would not age it by more
    book.detach(lease, now=1200.0)
    assert book.persistent(now=5000.0)["recent"] == (9, 0, 1200.0)


def test_move_releases_the_lease_and_sets_the_position() -> None:
    book = CursorBook()
    lease = book.attach("a", reset=None, oldest=0, tail=100, window_bytes=0)
    assert book.sent(lease, 120, 10)
    cursor = book.move("a", 40)
    assert (cursor.position, cursor.connected, cursor.current) == (40, False, 40)
    assert not book.sent(lease, 130, 10)  # the old connection's progress is ignored
    book.detach(lease)
    assert book.get("a").position == 40  # type: ignore[union-attr]  # and its end does not move it back
    again = book.attach("a", reset=None, oldest=0, tail=200, window_bytes=0)
    assert again.start == 40


def test_move_creates_a_named_cursor_and_refuses_anonymous_ones() -> None:
    book = CursorBook()
    assert book.move("new", 7).named and book.attach("new", reset=None, oldest=0, tail=9, window_bytes=0).start == 7
    anonymous = book.attach(None, reset=None, oldest=0, tail=9, window_bytes=0)
    with pytest.raises(ValueError, match="anonymous"):
        book.move(anonymous.name, 1)
    assert book.forget(anonymous.name) is None


def test_a_forgotten_cursors_lease_never_matches_a_new_cursor_of_the_same_name() -> None:
    book = CursorBook()
    old = book.attach("a", reset=None, oldest=0, tail=10, window_bytes=0)
    assert book.forget("a") is not None and book.get("a") is None
    new = book.attach("a", reset=None, oldest=0, tail=50, window_bytes=0)
    assert new.start == 50  # a fresh cursor at the tail
    assert not book.sent(old, 20, 10)  # the dying connection cannot move the new cursor
    book.detach(old)
    assert book.get("a").connected and book.sent(new, 60, 10)  # type: ignore[union-attr]
    assert book.persistent(now=0.0) == {"a": (60, 0, 0.0)}


def test_an_exact_start_below_retention_counts_the_skip() -> None:
    book = CursorBook()
    lease = book.attach("a", reset=None, oldest=50, tail=90, window_bytes=0, start_at=20)
    assert lease.start == 50 and lease.skipped == 30 and book.get("a").skipped == 30  # type: ignore[union-attr]
    beyond = book.attach(None, reset=None, oldest=50, tail=90, window_bytes=0, start_at=500)
    assert beyond.start == 90 and beyond.skipped == 0


def test_removed_cursors_and_unpersisted_ones() -> None:
    book = CursorBook()
    lease = book.attach("g#0/2", reset=None, oldest=0, tail=10, window_bytes=0)
    book.remove("g#0/2")
    assert book.get("g#0/2") is not None  # held: not removed
    book.detach(lease)
    book.get("g#0/2").persisted = False  # type: ignore[union-attr]
    assert book.persistent(now=0.0) == {}
    book.remove("g#0/2")
    assert book.get("g#0/2") is None


def test_an_exact_start_below_retention_counts_only_records_never_sent() -> None:
    book = CursorBook()
    lease = book.attach("a", reset="smallest", oldest=0, tail=100, window_bytes=0)
    book.sent(lease, 40, 10)  # records 0..40 were handed over
    book.detach(lease)
    again = book.attach("a", reset=None, oldest=60, tail=100, window_bytes=0, start_at=20)
    assert (again.start, again.skipped, again.rewind_trimmed) == (60, 20, 20)  # 40..60 never sent
    book.detach(again)
    at_tail = book.attach("b", reset=None, oldest=60, tail=100, window_bytes=0)
    book.detach(at_tail)
    asked = book.attach("b", reset=None, oldest=60, tail=100, window_bytes=0, start_at=20)
    assert (asked.start, asked.skipped, asked.replayed) == (60, 40, 0)  # it started at 100: none were sent


def _consistent(book: CursorBook) -> None:
    """The cap's count and the sweep's idle list agree with the cursors themselves."""
    named = [c for c in book.cursors() if c.named]
    assert book.named == len(named)
    assert set(book._idle) == {c.name for c in named if not c.connected}


def test_every_mutation_keeps_the_named_count_and_the_idle_list_in_step() -> None:
    book = CursorBook(max_named=100, ttl=100.0)
    book.restore({"r": (5, 0, 10.0)})
    a = book.attach("a", reset=None, oldest=0, tail=10, window_bytes=0, now=20.0)
    book.attach("b", reset=None, oldest=0, tail=10, window_bytes=0, now=20.0)
    anonymous = book.attach(None, reset=None, oldest=0, tail=10, window_bytes=0, now=20.0)
    _consistent(book)
    assert book.adopt("c", 7, 0, seen_at=30.0) and not book.adopt("a", 1, 0, seen_at=30.0)  # held here: ignored
    book.move("m", 3, now=30.0)  # created by an operator
    book.move("b", 4, now=40.0)  # held: the connection loses it, the cursor is idle from now
    _consistent(book)
    book.remove("a")  # held: kept
    book.detach(a, now=50.0)
    book.remove("a")
    assert book.forget("r") is not None and book.forget(anonymous.name) is None
    book.detach(anonymous, now=50.0)
    _consistent(book)
    assert {c.name for c in book.sweep(now=135.0, limit=10)} == {"c", "m"}  # seen at 30
    assert [c.name for c in book.sweep(now=141.0, limit=10)] == ["b"]  # moved at 40
    _consistent(book)
    assert book.named == 0


def test_an_adopted_cursor_is_seen_when_the_other_node_saw_it() -> None:
    book = CursorBook(ttl=100.0)
    book.restore({"old": (5, 0, 0.0), "other": (5, 0, 50.0)})
    assert book.adopt("old", 9, 1, seen_at=90.0)  # another node saw its consumer at 90
    assert [c.name for c in book.sweep(now=170.0, limit=10)] == ["other"]
    assert book.persistent(now=170.0) == {"old": (9, 1, 90.0)}
    _consistent(book)
