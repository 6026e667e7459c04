"""Properties of the rewind rule (hub/cursors.py): after any sequence of batches and
heartbeats, a connection resumes at a point no record in flight lies before (never a gap),
not much further back than the window requires (bounded duplicates), with bounded memory;
and a stale lease never moves a cursor."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lsproxy.hub.cursors import MARKS_PER_WINDOW, CursorBook, Delivery

# (records in the batch, 0 for a heartbeat; its wire bytes)
sends = st.lists(st.tuples(st.integers(0, 50), st.integers(1, 5000)), max_size=200)


@settings(max_examples=10 * settings.default.max_examples)  # cheap: explore more
@given(st.integers(0, 10**6), st.integers(1, 200_000), sends)
def test_the_resume_point_loses_nothing_and_replays_a_bounded_amount(
    start: int, window: int, batches: list[tuple[int, int]]
) -> None:
    delivery = Delivery(start, window)
    position, wire = start, 0
    history = [(0, start)]  # (wire bytes handed over after the batch, offset after it)
    for count, size in batches:
        position += count
        wire += size
        delivery.sent(position, size)
        history.append((wire, position))
        resume = delivery.resume_offset()
        # Safe: at least `window` wire bytes went out after the batch that ends at the
        # resume point (so the consumer read it), or it is the connection's start.
        assert resume == start or any(o == resume and wire - w >= window for w, o in history)
        # Tight: any batch followed by `window` plus two granules is behind the resume point.
        granule = max(1, window // MARKS_PER_WINDOW)
        settled = [o for w, o in history if wire - w >= window + 2 * granule]
        assert resume >= max(settled, default=start)
        assert start <= resume <= position == delivery.position
        assert len(delivery._marks) <= MARKS_PER_WINDOW + 2


@settings(max_examples=10 * settings.default.max_examples)  # cheap: explore more
@given(
    st.lists(
        st.tuples(st.sampled_from(["attach", "send", "detach"]), st.integers(0, 2), st.integers(0, 20)),
        max_size=60,
    )
)
def test_only_the_current_lease_moves_a_named_cursor(ops: list[tuple[str, int, int]]) -> None:
    book = CursorBook()
    leases = []  # every lease ever handed out, current or stale
    tail = 0
    for op, which, amount in ops:
        if op == "attach":
            leases.append(book.attach("c", reset=None, oldest=0, tail=tail, window_bytes=100))
            continue
        if not leases:
            continue
        lease = leases[which % len(leases)]
        cursor = book.get("c")
        assert cursor is not None
        before = (cursor.position, cursor.delivery.position if cursor.delivery else None)
        current = book.is_current(lease)
        if op == "send":
            tail += amount
            assert book.sent(lease, tail, 60) is current
        else:
            book.detach(lease)
        if not current:
            assert (cursor.position, cursor.delivery.position if cursor.delivery else None) == before
        assert 0 <= cursor.current <= tail
    assert all(not book.is_current(lease) for lease in leases[:-1])  # at most one holder
