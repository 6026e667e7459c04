"""CursorBook and the delivery (rewind) rule: pure book-keeping."""

import random

import pytest

from lsproxy.hub.cursors import CursorBook, Delivery


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
    """Against a model: the resume point is never past the end of the newest batch with
    >= window bytes after it (no loss), and no further back than the mark resolution."""
    rng = random.Random(7)
    for _ in range(300):
        window = rng.randint(0, 5000)
        d = Delivery(start=50, window_bytes=window)
        history = [(0, 50)]
        wire, offset = 0, 50
        for _ in range(rng.randint(0, 40)):
            size = rng.randint(1, 800)
            if rng.random() < 0.8:
                offset += rng.randint(1, 5)
            wire += size
            d.sent(offset, size)
            history.append((wire, offset))
            eligible = [off for w, off in history if wire - w >= window]
            best = max(eligible) if eligible else 50
            coarse = [off for w, off in history if wire - w >= window + 2 * (window // 32 + 1)]
            assert max(coarse, default=50) <= d.resume_offset() <= best


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
    assert again.start == 25 and book.get("a").skipped == 15
    book.skipped(again, 3)
    assert book.get("a").skipped == 18


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
    assert book.persistent() == {"a": (20, 0)}  # connected: its rewind point, not 30
    book.detach(anon)
    restored = CursorBook()
    restored.restore(book.persistent())
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
    assert book.persistent() == {"a": (60, 0)}


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
    assert book.persistent() == {}
    book.remove("g#0/2")
    assert book.get("g#0/2") is None
