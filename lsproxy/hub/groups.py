"""Consumer groups: ``maxConnections=N`` members splitting one stream, as on Live Stream.

Theory of operation
-------------------
Connections to one stream that send ``maxConnections=N`` (2..8) form a group:
named ones (``consumer=<id>``) the group ``<id>``, anonymous ones the stream's
one anonymous group. A group has N *shares*; hub/visitor.py says which share
each record belongs to (all hits of one visitor in the same share). A member
owns one share while connected.

Each share is a cursor of the stream's CursorBook, named ``<id>#<k>/<N>``
(``#`` and ``/`` cannot occur in a consumer id), so it has the rewind rule and,
for named groups, is persisted with the named cursors and restored after a
restart without any extra table. The anonymous group's shares
(``~anonymous#<k>/<N>``) are not persisted: they live in memory for at least
``anonymous_linger`` seconds after the group's last member left, as Live Stream
keeps a position for a reconnecting client; after that the next group starts
afresh.

The rules, checked in this order when a member joins:

* a member declaring another N than the connected members: 409 (the connection
  count disagrees); a named consumer without ``maxConnections`` (N = 1) counts
  as a group of one here, so it too is refused while members of its id are
  connected, and a member is refused while it is;
* an (N+1)-th member: 409 (maximum number of connections reached);
* with no member connected and the shares of another N (or the single
  consumer's cursor) on record, the group is formed anew: every new share
  starts at the lowest of the old cursors (duplicates, never gaps), and the
  old ones are removed;
* with no cursor on record at all, the shares start where a single consumer
  with the same parameters would: the joining member's start (the tail,
  ``reset``, ``since``, ``after``...) is every share's start;
* the member takes the lowest free share and continues it. A share without a
  member keeps its position: its records wait for the next member, they are
  never given to the others.

Shares are named cursors of the book, so they count against its
``max_named``: a group that would create shares beyond it is refused with
TooManyConsumers before anything changes (the anonymous group is exempt, as
anonymous consumers are). A share not connected for the book's ``ttl`` may be
forgotten by its sweep like any named cursor: the next member of that group
recreates it at the group's lowest remaining cursor (duplicates, never gaps
among what is still retained); with all of them gone the group starts afresh.

In cluster mode a share may be held by a member connected to another node:
``held_elsewhere`` (a predicate the cluster side keeps current) makes such a
share count as connected in every rule above, so group membership is
cluster-wide.

All of this is pure book-keeping over the CursorBook: no I/O, no clock (``now``
is passed in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lsproxy.hub.cursors import Cursor, CursorBook, Lease, Reset, TooManyConsumers

ANONYMOUS = "~anonymous"
MAX_SHARES = 8


def share_name(group: str, share: int, shares: int) -> str:
    return f"{group}#{share}/{shares}"


def parse_share_name(name: str) -> tuple[str, int, int] | None:
    """(group, share, shares) of a share cursor's name; None for other cursors."""
    group, sep, rest = name.rpartition("#")
    if not sep:
        return None
    share, sep, shares = rest.partition("/")
    if not (sep and share.isdigit() and shares.isdigit()):
        return None
    return group, int(share), int(shares)


class GroupRefused(Exception):
    """A member cannot join (HTTP 409, Live Stream's wording)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class Membership:
    lease: Lease
    group: str
    share: int
    shares: int


class GroupBook:
    """Every consumer group of one stream, kept as share cursors in ``book``."""

    def __init__(self, book: CursorBook, *, anonymous_linger: float = 300.0) -> None:
        self.book = book
        self.anonymous_linger = anonymous_linger
        self.held_elsewhere: Callable[[str], bool] = lambda _share: False
        self._anonymous_left_at: float | None = None  # when its last member left

    # -- queries ------------------------------------------------------------
    def shares_of(self, group: str) -> dict[int, dict[int, Cursor]]:
        """N -> share -> cursor, for every N the group has cursors of."""
        found: dict[int, dict[int, Cursor]] = {}
        for shares in range(2, MAX_SHARES + 1):
            for share in range(shares):
                cursor = self.book.get(share_name(group, share, shares))
                if cursor is not None:
                    found.setdefault(shares, {})[share] = cursor
        return found

    def _busy(self, cursor: Cursor) -> bool:
        """A member holds this share, here or (cluster mode) on another node."""
        return cursor.connected or self.held_elsewhere(cursor.name)

    def _connected_size(self, group: str, found: dict[int, dict[int, Cursor]]) -> int | None:
        """The N the connected members declared (1: the single named consumer), if any."""
        for shares, cursors in found.items():
            if any(self._busy(c) for c in cursors.values()):
                return shares
        single = self.book.get(group) if group != ANONYMOUS else None
        return 1 if single is not None and single.connected else None

    # -- joining ------------------------------------------------------------
    def check_single(self, consumer: str, now: float) -> None:
        """A named consumer without ``maxConnections`` (N = 1) is about to attach: refuse
        it while members of a group of its id are connected; fold the group's idle shares
        into its cursor (at their lowest position) so nothing is skipped."""
        found = self.shares_of(consumer)
        if not found:
            return
        connected = self._connected_size(consumer, found)
        if connected not in (None, 1):
            raise _mismatch(consumer, 1, connected)
        self._reform(consumer, found, 1, now)

    def join(
        self,
        consumer: str | None,
        shares: int,
        *,
        reset: Reset | None,
        oldest: int,
        tail: int,
        window_bytes: int | None,
        now: float,
        start_at: int | None = None,
    ) -> Membership:
        """A member with ``maxConnections=shares`` (2..8) connects; GroupRefused if it may not."""
        if not 2 <= shares <= MAX_SHARES:
            raise ValueError(f"a group has 2..{MAX_SHARES} shares, not {shares}")
        group = ANONYMOUS if consumer is None else consumer
        if consumer is None:
            self._expire_anonymous(now)
        found = self.shares_of(group)
        connected = self._connected_size(group, found)
        if connected is not None:
            if connected != shares:
                raise _mismatch(consumer, shares, connected)
            if sum(self._busy(c) for c in found[shares].values()) >= shares:
                raise GroupRefused(
                    "max_connections_reached",
                    f"the maximum number of connections ({shares}) for {_describe(consumer)} is reached",
                )
        single = self.book.get(group) if group != ANONYMOUS else None
        if group != ANONYMOUS:
            existing = sum(len(c) for c in found.values()) + (single is not None)
            growth = shares - existing
            if growth > 0 and self.book.named + growth > self.book.max_named:
                raise TooManyConsumers(
                    f"{self.book.named} named consumers already, a group of {shares} needs {growth} more "
                    "(max_named_consumers)"
                )
        formed = connected is None and (set(found) != {shares} or single is not None)
        if formed:
            self._reform(group, found, shares, now)
        mine = self.shares_of(group).get(shares, {})
        if mine and len(mine) < shares:
            # Some shares were forgotten (expired): they restart at the group's lowest cursor.
            low = min(c.position for c in mine.values())
            self._create(group, shares, [k for k in range(shares) if k not in mine], low, now)
        share = next(k for k in range(shares) if k not in mine or not self._busy(mine[k]))
        lease = self.book.attach(
            share_name(group, share, shares),
            reset=reset,
            oldest=oldest,
            tail=tail,
            window_bytes=window_bytes,
            now=now,
            start_at=start_at,
            capped=False,  # checked above, for the whole group
        )
        if formed:
            # A new group: every share starts where this first member does.
            self._create(group, shares, [k for k in range(shares) if k != share], lease.start, now)
        if group == ANONYMOUS:
            self._anonymous_left_at = None
            for k in range(shares):
                cursor = self.book.get(share_name(group, k, shares))
                if cursor is not None:
                    cursor.persisted = False
        return Membership(lease, group, share, shares)

    def left(self, lease: Lease, now: float) -> None:
        """A member's connection ended (after ``CursorBook.detach``)."""
        parsed = parse_share_name(lease.name)
        if parsed is None or parsed[0] != ANONYMOUS:
            return
        found = self.shares_of(ANONYMOUS)
        if self._connected_size(ANONYMOUS, found) is None:
            self._anonymous_left_at = now

    def _expire_anonymous(self, now: float) -> None:
        left_at = self._anonymous_left_at
        if left_at is not None and now - left_at > self.anonymous_linger:
            for cursors in self.shares_of(ANONYMOUS).values():
                for cursor in cursors.values():
                    self.book.remove(cursor.name)
            self._anonymous_left_at = None

    def _reform(self, group: str, found: dict[int, dict[int, Cursor]], shares: int, now: float) -> None:
        """No member is connected: replace every cursor of ``group`` by ``shares`` new ones
        (the single consumer's cursor when ``shares`` is 1) at the lowest old position."""
        old = [c for cursors in found.values() for c in cursors.values()]
        single = self.book.get(group) if group != ANONYMOUS else None
        if single is not None:
            old.append(single)
        keep = {c.name for c in old} & {share_name(group, k, shares) for k in range(shares)}
        if shares == 1:
            keep = {group}
        if not old or {c.name for c in old} == keep:
            return  # nothing on record (a fresh group), or already these cursors
        low = min(c.position for c in old)
        skipped = max(c.skipped for c in old)
        for cursor in old:
            self.book.remove(cursor.name)
        names = [group] if shares == 1 else [share_name(group, k, shares) for k in range(shares)]
        self.book.restore({name: (low, skipped, now) for name in names})

    def _create(self, group: str, shares: int, which: list[int], position: int, now: float) -> None:
        self.book.restore({share_name(group, k, shares): (position, 0, now) for k in which})
        for k in which:  # restore keeps an existing cursor: make sure all start here
            cursor = self.book.get(share_name(group, k, shares))
            if cursor is not None and not cursor.connected:
                cursor.position = position

    # -- status -------------------------------------------------------------
    def snapshot(self, tail: int, prefix: str | None = None) -> list[dict[str, Any]]:
        """Every group: id (None: the anonymous one), N, members, each share's cursor.
        ``prefix``: only the named groups whose ids start so (a non-admin's own), and the
        anonymous group (shared by everyone reading the stream; it names nobody)."""
        groups: dict[tuple[str, int], list[tuple[int, Cursor]]] = {}
        for cursor in self.book.cursors():
            parsed = parse_share_name(cursor.name)
            if parsed is not None:
                group, share, shares = parsed
                if prefix is not None and group != ANONYMOUS and not group.startswith(prefix):
                    continue
                groups.setdefault((group, shares), []).append((share, cursor))
        return [
            {
                "id": None if group == ANONYMOUS else group,
                "connections": shares,
                "members": sum(c.connected for _, c in members),
                "shares": [
                    {
                        "share": share,
                        "connected": c.connected,
                        "cursor": c.current,
                        "lag": tail - c.current,
                        "skipped": c.skipped,
                    }
                    for share, c in sorted(members, key=lambda m: m[0])
                ],
            }
            for (group, shares), members in sorted(groups.items())
        ]


def is_share(cursor: Cursor) -> bool:
    return parse_share_name(cursor.name) is not None


def _describe(consumer: str | None) -> str:
    return "the anonymous consumer group" if consumer is None else f"consumer group {consumer!r}"


def _mismatch(consumer: str | None, declared: int, connected: int) -> GroupRefused:
    return GroupRefused(
        "max_connections_mismatch",
        f"maxConnections={declared} disagrees with the {connected} connection"
        f"{'s' if connected != 1 else ''} of {_describe(consumer)} (every connection must send "
        "the same value; a new value applies once all have disconnected)",
    )
