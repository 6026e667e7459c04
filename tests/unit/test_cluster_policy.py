"""The cluster's pure rules: the lease holder's deadline, the takeover wait, the journal
value and the NATS names."""

from __future__ import annotations

import math

import pytest

from lsproxy.cluster import names
from lsproxy.cluster.slot_policy import (
    LeasePolicy,
    decode_moments,
    default_margin,
    encode_moments,
    journal_node,
    takeover_not_before,
)
from lsproxy.hub.journal_rule import Moments

TTL = 15.0
MARGIN = 2.0


def test_a_lease_is_valid_until_ttl_minus_margin_after_the_write_was_sent() -> None:
    policy = LeasePolicy(ttl=TTL, margin=MARGIN)
    assert not policy.held(0.0)
    policy.written(sent_at=100.0, revision=7)
    assert policy.held(100.0) and policy.held(112.999)
    assert not policy.held(113.0)  # 100 + 15 - 2: the key cannot have expired before 115
    assert policy.revision == 7


def test_a_late_answer_counts_from_when_the_renewal_was_sent() -> None:
    policy = LeasePolicy(ttl=TTL, margin=MARGIN)
    policy.written(sent_at=0.0, revision=1)
    policy.written(sent_at=3.75, revision=2)  # its answer came at 12 s: still 3.75 + 13
    assert policy.valid_until == pytest.approx(16.75)
    assert policy.renewal_timeout(12.0) == pytest.approx(4.75)


def test_renewals_that_fail_leave_the_deadline_where_the_last_success_put_it() -> None:
    policy = LeasePolicy(ttl=TTL, margin=MARGIN)
    policy.written(sent_at=0.0, revision=1)
    for now in (3.75, 7.5, 11.25):  # three failed renewals: nothing moves
        assert policy.held(now)
    assert not policy.held(13.0)
    assert policy.renewal_timeout(13.0) == 0.0


def test_a_refused_renewal_loses_the_lease_at_once() -> None:
    policy = LeasePolicy(ttl=TTL, margin=MARGIN)
    policy.written(sent_at=0.0, revision=1)
    policy.lost()
    assert not policy.held(0.1) and policy.revision is None and policy.valid_until == -math.inf


def test_renewal_and_poll_intervals() -> None:
    policy = LeasePolicy(ttl=TTL, margin=MARGIN)
    policy.written(sent_at=10.0, revision=1)
    assert policy.next_renewal() == pytest.approx(13.75)  # four renewals per TTL
    assert policy.poll_interval == 1.0
    assert LeasePolicy(ttl=2.0, margin=0.5).poll_interval == 0.5


def test_margin_must_be_below_the_ttl() -> None:
    with pytest.raises(ValueError, match="below lease_ttl"):
        LeasePolicy(ttl=2.0, margin=2.0)
    assert default_margin(15.0) == 2.0 and default_margin(2.0) == 0.5


def test_takeover_waits_reconnect_delay_after_a_recorded_end_plus_the_skew_margin() -> None:
    ended = Moments(attempt_at=100.0, alive_at=150.0, ended_at=160.0, open=0)
    got = takeover_not_before(ended, reconnect_delay=60.0, lease_ttl=TTL, clock_skew_margin=1.0)
    assert got == 221.0


def test_takeover_after_an_unrecorded_end_waits_from_the_last_mark_plus_the_lease_ttl() -> None:
    # The holder died or was cut off: it may have streamed until its lease ran out.
    open_ = Moments(attempt_at=100.0, alive_at=150.0, ended_at=90.0, open=1)
    got = takeover_not_before(open_, reconnect_delay=60.0, lease_ttl=TTL, clock_skew_margin=1.0)
    assert got == 150.0 + TTL + 60.0 + 1.0


def test_takeover_of_a_slot_never_used_is_immediate() -> None:
    assert takeover_not_before(None, reconnect_delay=60, lease_ttl=TTL, clock_skew_margin=1) is None
    assert takeover_not_before(Moments(), reconnect_delay=60, lease_ttl=TTL, clock_skew_margin=1) is None


def test_journal_values_round_trip_and_garbage_is_not_a_value() -> None:
    moments = Moments(attempt_at=1.5, alive_at=2.5, ended_at=None, open=1)
    raw = encode_moments(moments, "node-a")
    assert b'"node":"node-a"' in raw
    assert decode_moments(raw) == moments
    for bad in (
        b"",
        b"[]",
        b"{",
        b'{"attempt_at":"x"}',
        b'{"open":-1}',
        b'{"alive_at":1e999}',
        b'{"open":true}',
    ):
        assert decode_moments(bad) is None, bad
    assert journal_node(raw) == "node-a"
    for unknown in (None, b"", b"[]", b"{", b'{"open":0}'):
        assert journal_node(unknown) == "?", unknown


def test_names_are_valid_for_nats_and_unambiguous() -> None:
    assert names.stream_name("prod") == "LSPROXY_prod"
    assert names.subject("acme.prod") == "lsproxy.records.acme=2Eprod"
    assert names.escape("a_b-c") == "a_b-c"
    assert names.escape("a.b") != names.escape("a_b")
    assert names.escape("é") == "=C3=A9"
    assert names.escape("a=b") == "a=3Db"  # '=' itself is escaped: decoding is unambiguous
    key = names.slot_key("https://livestream.adobe.net/api/1/stream/x", 0)
    assert key.startswith("u") and key.endswith(".0") and len(key) == 19
    assert names.cursor_key("s1", "dash board") == "s1.dash=20board"


def test_msg_id_is_high_dash_low_and_absent_without_both_ids() -> None:
    record = b'{"hitIdHigh":12345678901234567890,"hitIdLow":42,"x":1}'
    assert names.msg_id(record) == "12345678901234567890-42"
    assert names.msg_id(b'{"hitIdHigh":1}') is None


def test_duplicate_window_is_capped() -> None:
    assert names.duplicate_window(900) == names.MAX_DUPLICATE_WINDOW
    assert names.duplicate_window(30) == 30
    assert names.duplicate_window(0) == 1.0


def test_escape_and_unescape_are_inverse() -> None:
    from lsproxy.cluster import names

    for text in ("g#0/2", "plain-id_9", "é.*> x", ""):
        assert names.unescape(names.escape(text)) == text
    assert names.unescape("a.b") is None and names.unescape("=Z1") is None
