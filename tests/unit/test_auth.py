"""serve/auth.py: token lookup, per-stream access, the admin gate, the failed-auth limiter."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from lsproxy.config_consumers import ConsumerAccess, token_digest
from lsproxy.serve import auth
from lsproxy.serve.auth import AccessControl, Admitted, FailedAuthLimiter, Refused, find_consumer, is_loopback
from lsproxy.serve.routes import AdminRequest, EndpointRequest, ErrorReply, StreamRequest

TEAM = ConsumerAccess("team", token_digest("team-token-0123456789"), frozenset({"s1"}))
OPS = ConsumerAccess("ops", token_digest("ops-token-0123456789ab"), None, admin=True)
PEER = "192.0.2.7"


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x"), (b"authorization", f"Bearer {token}".encode())]


def stream(name: str = "s1", consumer: str | None = "x") -> StreamRequest:
    return StreamRequest(name, consumer, None, gzip=False)


def admit(route, headers, peer: str = PEER, now: float = 0.0, control: AccessControl | None = None):  # type: ignore[no-untyped-def]
    return (control or AccessControl([TEAM, OPS])).admit(route, headers, peer, now)


def test_find_consumer_compares_every_digest_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    digest = hashlib.sha256(b"team-token-0123456789").digest()
    assert find_consumer([TEAM, OPS], b"team-token-0123456789") is TEAM
    # The match is the first table, yet the second is compared too: no early exit.
    assert calls == [(digest, TEAM.token_sha256), (digest, OPS.token_sha256)]
    calls.clear()
    assert find_consumer([TEAM, OPS], b"wrong") is None
    assert len(calls) == 2


def test_find_consumer_never_uses_plain_equality_on_digests() -> None:
    class NoEquality(bytes):
        def __eq__(self, other: object) -> bool:
            raise AssertionError("digests must be compared with hmac.compare_digest")

        __hash__ = bytes.__hash__

    table = ConsumerAccess("t", NoEquality(token_digest("some-token-0123456789")), None)
    assert find_consumer([table], b"some-token-0123456789") is table


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ([(b"authorization", b"Bearer abc")], b"abc"),
        ([(b"authorization", b"bearer   abc")], b"abc"),
        ([(b"authorization", b"BEARER abc")], b"abc"),
        ([(b"authorization", b"Basic abc")], None),
        ([(b"authorization", b"Bearer")], None),
        ([(b"authorization", b"Bearer a b")], None),
        ([(b"authorization", b"Bearer abc"), (b"authorization", b"Bearer abc")], None),
        ([], None),
    ],
)
def test_bearer_token(headers: list[tuple[bytes, bytes]], token: bytes | None) -> None:
    assert auth.bearer_token(headers) == token


def test_missing_and_unknown_tokens_are_401_with_a_bearer_challenge() -> None:
    missing = admit(stream(), [(b"host", b"x")])
    assert isinstance(missing, Refused) and missing.reply.status == 401
    assert missing.headers == ((b"www-authenticate", b'Bearer realm="lsproxy"'),)
    wrong = admit(stream(), bearer("not-a-token-of-anyone"))
    assert isinstance(wrong, Refused) and wrong.reply.status == 401
    assert wrong.headers == ((b"www-authenticate", b'Bearer realm="lsproxy", error="invalid_token"'),)
    assert "not-a-token" not in wrong.reply.description


def test_right_token_wrong_stream_is_403_and_cursors_are_namespaced() -> None:
    refused = admit(stream("s2"), bearer("team-token-0123456789"))
    assert isinstance(refused, Refused) and refused.reply.status == 403
    admitted = admit(stream("s1"), bearer("team-token-0123456789"))
    assert isinstance(admitted, Admitted) and admitted.identity is TEAM
    assert isinstance(admitted.route, StreamRequest) and admitted.route.consumer == "team/x"
    anonymous = admit(stream("s1", consumer=None), bearer("team-token-0123456789"))
    assert isinstance(anonymous, Admitted) and anonymous.route == stream("s1", consumer=None)
    every = admit(stream("s2"), bearer("ops-token-0123456789ab"))  # no streams list: all
    assert isinstance(every, Admitted) and every.route.consumer == "ops/x"  # type: ignore[union-attr]


def test_admin_api_needs_an_admin_token() -> None:
    route = AdminRequest("GET", "/admin/consumers")
    refused = admit(route, bearer("team-token-0123456789"))
    assert isinstance(refused, Refused) and refused.reply.status == 403
    assert isinstance(admit(route, bearer("ops-token-0123456789ab")), Admitted)
    assert isinstance(admit(route, []), Refused)


def test_probes_stay_open_and_status_needs_a_token() -> None:
    for name in ("healthz", "readyz"):
        assert admit(EndpointRequest(name, head=False), []) == Admitted(EndpointRequest(name, False), None)
    assert isinstance(admit(EndpointRequest("status", head=False), []), Refused)
    ok = admit(EndpointRequest("status", head=False), bearer("team-token-0123456789"))
    assert isinstance(ok, Admitted) and ok.identity is TEAM
    assert auth.cursor_prefix(TEAM) == "team/" and auth.cursor_prefix(OPS) is None


def test_a_restricted_consumer_does_not_learn_other_stream_names_from_a_404() -> None:
    listing = ErrorReply(404, "not_found", "no stream named 'q' (known: secret-stream, s1)")
    admitted = admit(listing, bearer("team-token-0123456789"))
    assert isinstance(admitted, Admitted) and "secret-stream" not in admitted.route.description  # type: ignore[union-attr]
    unauthenticated = admit(listing, [])
    assert isinstance(unauthenticated, Refused) and unauthenticated.reply.status == 401


def test_without_consumer_tables_everything_is_open_but_admin_only_from_loopback() -> None:
    open_ = AccessControl()
    assert isinstance(admit(stream(), [], control=open_), Admitted)
    assert admit(stream(), [], control=open_).route == stream()  # type: ignore[union-attr]  # no namespace
    route = AdminRequest("GET", "/admin/consumers")
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.3.4.5"):
        assert isinstance(admit(route, [], peer=peer, control=open_), Admitted), peer
    for peer in ("192.0.2.7", "::ffff:192.0.2.7", "2001:db8::1", "?"):
        refused = admit(route, [], peer=peer, control=open_)
        assert isinstance(refused, Refused) and refused.reply.status == 403, peer


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("fe80::1%lo") is False
    assert not is_loopback("localhost")  # a peer address is numeric; a name proves nothing


def test_twenty_failures_in_a_minute_block_the_address_for_a_minute_logged_once() -> None:
    control = AccessControl([TEAM])
    blocked_at = []
    for i in range(20):
        refused = admit(stream(), bearer("guess"), now=i * 2.0, control=control)
        assert isinstance(refused, Refused) and refused.reply.status == 401
        if refused.blocked:
            blocked_at.append(i)
    assert blocked_at == [19]  # the 20th failure blocks (and is the one to log)
    for now in (38.0, 60.0, 97.9):  # even the right token is turned away while blocked
        refused = admit(stream(), bearer("team-token-0123456789"), now=now, control=control)
        assert isinstance(refused, Refused) and refused.reply.status == 429 and not refused.blocked
        assert dict(refused.headers)[b"retry-after"] == str(int(-(-(98.0 - now) // 1))).encode()
    assert isinstance(admit(stream(), bearer("team-token-0123456789"), now=98.0, control=control), Admitted)
    assert isinstance(admit(stream(), [], peer="192.0.2.8", now=50.0, control=control), Refused)  # others: 401
    assert admit(stream(), [], peer="192.0.2.8", now=50.0, control=control).reply.status == 401  # type: ignore[union-attr]


def test_failures_spread_over_more_than_a_minute_do_not_block() -> None:
    limiter = FailedAuthLimiter()
    assert not any(limiter.failed(PEER, i * 3.2) for i in range(100))  # 20 failures span 60.8 s
    assert limiter.retry_after(PEER, 400.0) is None


def test_the_limiter_remembers_a_bounded_number_of_addresses() -> None:
    limiter = FailedAuthLimiter(max_addresses=100)
    for i in range(10_000):
        limiter.failed(f"2001:db8::{i:x}", i * 0.001)
        assert len(limiter) <= 100
    for _ in range(20):
        limiter.failed(PEER, 11.0)
    assert limiter.retry_after(PEER, 11.0) == 60.0
    for i in range(1000):  # a flood from elsewhere does not lift a block
        limiter.failed(f"2001:db8:1::{i:x}", 12.0)
    assert limiter.retry_after(PEER, 12.0) == 59.0


def test_reload_replaces_tables_but_keeps_blocks() -> None:
    control = AccessControl([TEAM])
    for i in range(20):
        control.admit(stream(), bearer("guess"), PEER, float(i))
    control.replace_consumers([OPS])
    assert control.admit(stream(), bearer("ops-token-0123456789ab"), PEER, 30.0).reply.status == 429  # type: ignore[union-attr]
    assert isinstance(control.admit(stream(), bearer("ops-token-0123456789ab"), "192.0.2.9", 30.0), Admitted)
    assert isinstance(control.admit(stream(), bearer("team-token-0123456789"), "192.0.2.9", 30.0), Refused)
