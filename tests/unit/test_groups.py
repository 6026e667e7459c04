"""Consumer groups: the share / member state machine over the cursor book."""

from __future__ import annotations

import pytest

from lsproxy.hub.cursors import CursorBook, Lease, Reset
from lsproxy.hub.groups import ANONYMOUS, GroupBook, GroupRefused, Membership, parse_share_name, share_name


class Stream:
    """A book plus a clock and a log extent, to join like the hub does."""

    def __init__(self, oldest: int = 0, tail: int = 100) -> None:
        self.book = CursorBook()
        self.groups = GroupBook(self.book, anonymous_linger=300)
        self.oldest, self.tail, self.now = oldest, tail, 1000.0

    def join(
        self,
        consumer: str | None,
        shares: int,
        reset: Reset | None = None,
        start_at: int | None = None,
        window_bytes: int = 0,
    ) -> Membership:
        return self.groups.join(
            consumer,
            shares,
            reset=reset,
            oldest=self.oldest,
            tail=self.tail,
            window_bytes=window_bytes,
            now=self.now,
            start_at=start_at,
        )

    def leave(self, lease: Lease, position: int | None = None) -> None:
        if position is not None:
            self.book.sent(lease, position, 10)
        self.book.detach(lease)
        self.groups.left(lease, self.now)

    def positions(self, group: str, shares: int) -> list[int]:
        return [self.book.get(share_name(group, k, shares)).position for k in range(shares)]  # type: ignore[union-attr]


@pytest.mark.parametrize("consumer", ["workers", None])
def test_n_members_take_distinct_shares_and_an_extra_one_is_refused(consumer: str | None) -> None:
    s = Stream()
    members = [s.join(consumer, 4) for _ in range(4)]
    assert sorted(m.share for m in members) == [0, 1, 2, 3]
    assert all(m.lease.start == 100 for m in members)  # a new group starts at the tail
    with pytest.raises(GroupRefused) as refused:
        s.join(consumer, 4)
    assert refused.value.error == "max_connections_reached" and "maximum number" in refused.value.description
    with pytest.raises(GroupRefused) as mismatch:
        s.join(consumer, 3)
    assert mismatch.value.error == "max_connections_mismatch" and "disagrees" in mismatch.value.description


def test_new_group_shares_all_start_where_the_first_member_does() -> None:
    s = Stream(oldest=10, tail=100)
    first = s.join("g", 3, reset="smallest")
    assert first.lease.start == 10 and s.positions("g", 3) == [10, 10, 10]
    s2 = Stream(oldest=10, tail=100)
    s2.join("g", 3, start_at=42)  # since= / after= / offset=
    assert s2.positions("g", 3) == [42, 42, 42]


def test_a_reconnecting_member_takes_the_free_share_and_continues_it() -> None:
    s = Stream()
    a, b, c = (s.join("g", 3) for _ in range(3))
    s.tail = 200
    s.leave(b.lease, position=150)
    assert s.book.get(share_name("g", b.share, 3)).position == 150  # type: ignore[union-attr]
    again = s.join("g", 3)
    assert again.share == b.share and again.lease.start == 150
    assert s.book.is_current(a.lease) and s.book.is_current(c.lease)  # nobody else moved


def test_a_killed_members_share_rewinds_over_bytes_in_flight_and_its_old_lease_moves_nothing() -> None:
    s = Stream()
    a, b = s.join("g", 2, window_bytes=1000), s.join("g", 2, window_bytes=1000)
    s.tail = 400
    for end in (150, 200, 250):  # 500 wire bytes each: the last two may still be in flight
        s.book.sent(a.lease, end, 500)
    s.leave(a.lease)  # SIGKILLed
    assert s.positions("g", 2)[a.share] == 150
    again = s.join("g", 2, window_bytes=1000)
    assert again.share == a.share and again.lease.start == 150
    # The old connection's late reports (its lease is stale) move nothing the new member holds.
    assert not s.book.sent(a.lease, 390, 10)
    s.leave(a.lease)
    assert s.book.is_current(again.lease) and s.book.get(share_name("g", a.share, 2)).current == 150  # type: ignore[union-attr]
    s.book.sent(b.lease, 300, 2000)
    s.book.sent(b.lease, 320, 2000)
    s.leave(b.lease)
    s.book.sent(again.lease, 260, 50)
    s.leave(again.lease)
    assert (a.share, b.share) == (0, 1) and s.positions("g", 2) == [150, 300]
    new = s.join("g", 3)  # a new N starts at the lowest rewind point, not at what was sent
    assert new.lease.start == 150 and s.positions("g", 3) == [150, 150, 150]


def test_a_share_without_member_keeps_its_position() -> None:
    s = Stream()
    a = s.join("g", 2)
    s.tail = 500
    s.book.sent(a.lease, 400, 10)
    assert s.positions("g", 2)[1 - a.share] == 100  # its records wait for the next member


def test_n_changes_after_all_left_at_the_lowest_old_cursor() -> None:
    s = Stream()
    members = [s.join("g", 3) for _ in range(3)]
    s.tail = 300
    for m, position in zip(members, (250, 180, 290), strict=True):
        s.leave(m.lease, position)
    new = s.join("g", 2)
    assert new.lease.start == 180 and s.positions("g", 2) == [180, 180]
    assert not any(parse_share_name(c.name)[2] == 3 for c in s.book.cursors())  # type: ignore[index]


def test_single_named_consumer_and_group_of_its_id() -> None:
    s = Stream()
    single = s.book.attach("g", reset=None, oldest=0, tail=100, window_bytes=0)
    with pytest.raises(GroupRefused, match="disagrees"):
        s.join("g", 2)  # the single consumer counts as a group of one
    s.book.sent(single, 120, 10)
    s.book.detach(single)
    s.tail = 200
    member = s.join("g", 2)  # a group formed from the single cursor: no gap
    assert member.lease.start == 120 and s.positions("g", 2) == [120, 120]
    assert s.book.get("g") is None
    with pytest.raises(GroupRefused, match="disagrees"):
        s.groups.check_single("g")  # and the other way round
    s.leave(member.lease, 170)
    s.groups.check_single("g")  # all left: the shares fold back into the single cursor
    assert s.book.get("g").position == 120  # type: ignore[union-attr]  (the lowest share)
    assert not s.groups.shares_of("g")


def test_named_shares_are_persisted_and_restored_anonymous_ones_are_not() -> None:
    s = Stream()
    named = s.join("g", 2)
    s.join(None, 2)
    s.leave(named.lease, 130)
    saved = s.book.persistent()
    assert set(saved) == {"g#0/2", "g#1/2"} and saved["g#0/2"][0] == 130
    after_restart = Stream(tail=300)
    after_restart.book.restore(saved)
    again = after_restart.join("g", 2)
    assert again.share == 0 and again.lease.start == 130


def test_anonymous_group_lingers_then_starts_afresh() -> None:
    s = Stream()
    a, b = s.join(None, 2), s.join(None, 2)
    s.tail = 400
    s.leave(a.lease, 300)
    s.leave(b.lease, 350)
    s.now += 299
    back = s.join(None, 2)
    assert back.lease.start == 300  # within the linger: continues its share
    s.leave(back.lease, 320)
    s.now += 301
    fresh = s.join(None, 3)
    assert fresh.lease.start == 400 and s.positions(ANONYMOUS, 3) == [400, 400, 400]


def test_forgotten_shares_restart_at_the_lowest_remaining_cursor() -> None:
    s = Stream()
    members = [s.join("g", 3) for _ in range(3)]
    s.tail = 300
    for m, position in zip(members, (250, 180, 290), strict=True):
        s.leave(m.lease, position)
    s.book.remove(share_name("g", 0, 3))  # e.g. expired by a consumer TTL
    again = s.join("g", 3)
    assert again.share == 0 and again.lease.start == 180


def test_snapshot() -> None:
    s = Stream()
    m = s.join("g", 2)
    s.book.sent(m.lease, 110, 1)
    snap = s.groups.snapshot(tail=120)
    assert snap == [
        {
            "id": "g",
            "connections": 2,
            "members": 1,
            "shares": [
                {"share": 0, "connected": True, "cursor": 110, "lag": 10, "skipped": 0},
                {"share": 1, "connected": False, "cursor": 100, "lag": 20, "skipped": 0},
            ],
        }
    ]


def test_share_names() -> None:
    assert parse_share_name(share_name("a.b@c", 3, 8)) == ("a.b@c", 3, 8)
    assert parse_share_name("plain") is None and parse_share_name("x#y") is None
