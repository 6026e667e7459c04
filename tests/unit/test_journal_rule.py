"""The upstream journal's pure part: the key, the rule, store losses, the file format."""

from __future__ import annotations

import json

import pytest

from lsproxy.hub.journal_rule import (
    FORGET_AFTER,
    MAX_JOURNAL_BYTES,
    JournalData,
    JournalUnreadable,
    Knowledge,
    Moments,
    earliest_attempt,
    first_attempt_not_before,
    forget_old,
    lost_stores,
    parse_journal,
    render_journal,
    settle,
    upstream_key,
)

DELAY = 60.0
SLACK = 2.0


def test_the_key_is_the_upstream_whatever_the_spelling_and_query() -> None:
    key = upstream_key("https://livestream.adobe.net/api/1/stream/ep")
    assert upstream_key("HTTPS://LiveStream.Adobe.NET/api/1/stream/ep/") == key
    assert upstream_key("https://livestream.adobe.net/api/1/stream/ep?reset=smallest") == key
    assert upstream_key("https://livestream.adobe.net/api/1/stream/other") != key
    assert upstream_key("https://livestream.adobe.net:8443/api/1/stream/ep") != key


def test_nothing_recorded_means_no_wait() -> None:
    assert earliest_attempt(Moments(), reconnect_delay=DELAY, alive_slack=SLACK) is None


def test_recorded_ends_count_exactly_when_nothing_was_left_open() -> None:
    m = Moments(attempt_at=100.0, alive_at=500.0, ended_at=400.0, open=0)
    assert earliest_attempt(m, reconnect_delay=DELAY, alive_slack=SLACK) == 400.0 + DELAY
    m = Moments(attempt_at=450.0, alive_at=450.0, ended_at=400.0, open=0)  # refused: an attempt, then its end
    assert earliest_attempt(m, reconnect_delay=DELAY, alive_slack=SLACK) == 450.0 + DELAY


def test_a_connection_left_open_counts_until_its_last_mark_plus_the_slack() -> None:
    # The process died while connected: it lived at most SLACK after its last durable mark.
    m = Moments(attempt_at=100.0, alive_at=500.0, ended_at=90.0, open=1)
    assert earliest_attempt(m, reconnect_delay=DELAY, alive_slack=SLACK) == 500.0 + SLACK + DELAY
    # Killed mid-attempt, before any mark: the attempt moment is the mark.
    m = Moments(attempt_at=100.0, open=1)
    assert earliest_attempt(m, reconnect_delay=DELAY, alive_slack=SLACK) == 100.0 + SLACK + DELAY
    # Of two connections one ended later than the other's mark: the latest wins.
    m = Moments(attempt_at=100.0, alive_at=500.0, ended_at=510.0, open=1)
    assert earliest_attempt(m, reconnect_delay=DELAY, alive_slack=SLACK) == 510.0 + DELAY


def test_loading_settles_a_dead_process_open_connections_as_ended_at_their_latest() -> None:
    data = JournalData(
        alive_slack=5.0,  # the dead process's heartbeat and write allowance, not ours
        upstreams={
            "open": Moments(attempt_at=100.0, alive_at=500.0, ended_at=90.0, open=2),
            "closed": Moments(attempt_at=100.0, alive_at=150.0, ended_at=200.0),
        },
    )
    settle(data)
    assert data.upstreams["open"] == Moments(attempt_at=100.0, alive_at=500.0, ended_at=505.0, open=0)
    assert data.upstreams["closed"] == Moments(attempt_at=100.0, alive_at=150.0, ended_at=200.0)
    # So this life's own connections count from zero, and the rule is unchanged.
    assert earliest_attempt(data.upstreams["open"], reconnect_delay=DELAY, alive_slack=0.1) == 505.0 + DELAY


@pytest.mark.parametrize("knowledge", [Knowledge.KNOWN, Knowledge.FIRST_RUN])
def test_a_known_or_first_run_journal_waits_only_for_what_it_recorded(knowledge: Knowledge) -> None:
    kw = {"started_at": 1000.0, "reconnect_delay": DELAY, "alive_slack": SLACK}
    assert first_attempt_not_before(None, knowledge, **kw) is None
    assert first_attempt_not_before(Moments(ended_at=990.0), knowledge, **kw) == 990.0 + DELAY


def test_an_unknown_journal_waits_the_delay_from_start_up_at_least() -> None:
    kw = {"started_at": 1000.0, "reconnect_delay": DELAY, "alive_slack": SLACK}
    assert first_attempt_not_before(None, Knowledge.UNKNOWN, **kw) == 1000.0 + DELAY
    assert first_attempt_not_before(Moments(ended_at=10.0), Knowledge.UNKNOWN, **kw) == 1000.0 + DELAY
    assert first_attempt_not_before(Moments(ended_at=1030.0), Knowledge.UNKNOWN, **kw) == 1030.0 + DELAY


def test_stores_gone_or_emptied_since_the_last_run_are_lost() -> None:
    recorded = {"a.sqlite3": 10, "b.sqlite3": 0, "c.sqlite3": 5}
    found = {"a.sqlite3": None, "b.sqlite3": 0, "c.sqlite3": 8192, "new.sqlite3": None, "z.sqlite3": 0}
    assert lost_stores(recorded, found) == {
        "a.sqlite3": "deleted",
        "b.sqlite3": "emptied",
        "z.sqlite3": "emptied",
    }
    assert lost_stores({}, {"new.sqlite3": None}) == {}  # a new stream: nothing to lose


def test_old_entries_are_forgotten_open_ones_never() -> None:
    now = 10 * FORGET_AFTER
    data = JournalData(
        upstreams={
            "old": Moments(ended_at=now - FORGET_AFTER - 1),
            "recent": Moments(ended_at=now - 60),
            "open": Moments(attempt_at=now - 2 * FORGET_AFTER, open=1),
            "empty": Moments(),
        }
    )
    forget_old(data, now)
    assert set(data.upstreams) == {"recent", "open"}


def test_the_file_format_round_trips() -> None:
    data = JournalData(
        alive_slack=2.0,
        upstreams={
            "https://h/api/1/stream/a": Moments(attempt_at=1.5, alive_at=2.25, ended_at=3.0),
            "https://h/api/1/stream/b": Moments(attempt_at=7.0, open=2),
        },
        stores={"a.sqlite3": 12345, "b%2F.sqlite3": 0},
    )
    raw = render_journal(data)
    assert parse_journal(raw) == data
    assert json.loads(raw)["upstreams"]["https://h/api/1/stream/b"] == {"attempt_at": 7.0, "open": 2}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "not JSON"),
        (b'{"version": 1, "alive_slack": 2, "upstreams": {', "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"version": 2, "upstreams": {}, "stores": {}}', "unknown version 2"),
        (
            b'{"version": 1, "alive_slack": 2, "upstreams": [], "stores": {}}',
            '"upstreams" and "stores" must be JSON objects',
        ),
        (b'{"version": 1, "upstreams": {}, "stores": {}}', "alive_slack is not a duration: None"),
        (
            b'{"version": 1, "alive_slack": -1, "upstreams": {}, "stores": {}}',
            "alive_slack is not a duration",
        ),
        (
            b'{"version": 1, "alive_slack": 2, "upstreams": {"u": {"attempt_at": "soon"}}, "stores": {}}',
            "attempt_at is not a time",
        ),
        (
            b'{"version": 1, "alive_slack": 2, "upstreams": {"u": {"ended_at": NaN}}, "stores": {}}',
            "ended_at is not a time",
        ),
        (
            b'{"version": 1, "alive_slack": 2, "upstreams": {"u": {"ended_at": -Infinity}}, "stores": {}}',
            "ended_at is not a time",
        ),
        (
            b'{"version": 1, "alive_slack": 2, "upstreams": {"u": {"alive_at": true}}, "stores": {}}',
            "alive_at is not a time",
        ),
        (
            b'{"version": 1, "alive_slack": 2, "upstreams": {"u": {"open": -1}}, "stores": {}}',
            "open is not a count",
        ),
        (
            b'{"version": 1, "alive_slack": 2, "upstreams": {"u": {"bogus": 1}}, "stores": {}}',
            "expected an object with",
        ),
        (
            b'{"version": 1, "alive_slack": 2, "upstreams": {}, "stores": {"s": 1.5}}',
            "offset is not a whole number",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "not"),
        (b" " * (MAX_JOURNAL_BYTES + 1), "more than a journal can be"),
    ],
)
def test_anything_else_is_unreadable_with_a_reason(raw: bytes, problem: str) -> None:
    with pytest.raises(JournalUnreadable) as info:
        parse_journal(raw)
    assert problem in str(info.value)
    assert len(str(info.value)) < 200
