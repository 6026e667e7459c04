"""The cursor bucket's values (lsproxy/cluster/cursor_sync.py): what another node, an
older version or a damaged write may leave there is refused, never guessed at."""

from __future__ import annotations

import pytest

from lsproxy.cluster.cursor_sync import SharedCursor, decode_cursor, encode_cursor


@pytest.mark.parametrize(
    "cursor",
    [
        SharedCursor("team/reader", 12, 0, 99.5, "node-a"),
        SharedCursor("g#1/4", 7, 3, 50.0, "node-b", "move"),
        SharedCursor("gone", 0, 0, 10.0, "node-c", "delete"),
    ],
)
def test_a_value_decodes_to_what_was_encoded(cursor: SharedCursor) -> None:
    assert decode_cursor(encode_cursor(cursor), now=100.0) == cursor


def test_a_value_without_a_seen_time_or_from_the_future_is_seen_now() -> None:
    old = b'{"name": "x", "position": 5, "skipped": 0, "node": "n"}'  # before "seen" was written
    assert decode_cursor(old, now=100.0) == SharedCursor("x", 5, 0, 100.0, "n")
    future = b'{"name": "x", "position": 5, "skipped": 0, "node": "n", "seen": 500}'
    assert decode_cursor(future, now=100.0) == SharedCursor("x", 5, 0, 100.0, "n")  # a clock ahead


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"name": "x", "position": -1, "skipped": 0, "node": "n"}',
        b'{"name": "x", "position": true, "skipped": 0, "node": "n"}',
        b'{"name": "x", "position": 1.5, "skipped": 0, "node": "n"}',
        b'{"name": 3, "position": 1, "skipped": 0, "node": "n"}',
        b'{"name": "x", "position": 1, "skipped": 0}',
        b'{"name": "x", "position": 1, "skipped": 0, "node": "n", "op": "drop"}',
        b"[" * 100_000,
    ],
)
def test_anything_else_is_refused(raw: bytes) -> None:
    assert decode_cursor(raw, now=100.0) is None
