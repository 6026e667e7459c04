"""Outcome: status / ending -> failure class, label, operator message."""

from __future__ import annotations

import pytest

from lsproxy.upstream.backoff import Failure
from lsproxy.upstream.outcome import (
    END_ERRORS,
    MAX_DESCRIPTION,
    Outcome,
    attempt_kind,
    classify_end,
    classify_status,
    parse_error_description,
)

STREAM = "examplecomprod"
JWT = "eyJhbGciOiJSUzI1NiIsIng1dSI6Imltc19uYTEta2V5LWF0LTEuY2VyIn0.eyJpZCI6IjE2OTk.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("status", "failure", "error", "words"),
    [
        (400, Failure.CONFIG, "bad_request", ["configuration error", "maxConnections"]),
        (401, Failure.REFUSED, "unauthorized", ["missing, wrong or expired", "credential set"]),
        (404, Failure.CONFIG, "not_found", ["wrong endpoint", "90 days", "re-enable", "url"]),
        (405, Failure.CONFIG, "method_not_allowed", ["lsproxy bug", "report"]),
        (406, Failure.CONFIG, "not_acceptable", ["lsproxy bug", "gzip"]),
        (409, Failure.REFUSED, "too_many_connections", ["maxConnections", "waiting before retry"]),
        (429, Failure.REFUSED, "too_many_requests", ["waiting before retrying"]),
        (500, Failure.REFUSED, "upstream_error", ["Live Stream failure"]),
        (502, Failure.REFUSED, "bad_gateway", ["waiting before retrying"]),
        (503, Failure.REFUSED, "no_hits", ["sends no hits", "load balancer"]),
        (504, Failure.REFUSED, "gateway_timeout", ["waiting before retrying"]),
        (505, Failure.CONFIG, "http_version_not_supported", ["lsproxy bug", "HTTP/1.1"]),
        (418, Failure.REFUSED, "unexpected_status", ["unexpected status 418"]),
        (304, Failure.REFUSED, "unexpected_status", ["unexpected status 304"]),
        (599, Failure.REFUSED, "unexpected_status", ["unexpected status 599"]),
    ],
)
def test_classify_status(status: int, failure: Failure, error: str, words: list[str]) -> None:
    out = classify_status(status, b"", stream=STREAM)
    assert out == Outcome(failure, status, error, out.message, None)
    assert STREAM in out.message
    for word in words:
        assert word in out.message
    assert out.message.endswith(".")
    assert "\n" not in out.message


def test_409_includes_error_description() -> None:
    body = b'{"error":"conflict","error_description":"Maximum number of connections (1) reached"}'
    out = classify_status(409, body, stream=STREAM)
    assert out.failure is Failure.REFUSED
    assert out.description == "Maximum number of connections (1) reached"
    assert "Maximum number of connections (1) reached" in out.message
    assert "waiting before retrying" in out.message


def test_2xx_is_not_classified() -> None:
    with pytest.raises(ValueError):
        classify_status(200, b"", stream=STREAM)


def test_message_never_contains_a_token() -> None:
    body = b'{"error_description":"bad token Bearer %s for you"}' % JWT.encode()
    out = classify_status(401, body, stream=STREAM)
    assert JWT not in out.message
    assert out.description is not None and JWT not in out.description
    assert "***" in out.description
    # a bare JWT or a long opaque token, not preceded by "Bearer"
    for secret in (JWT, "A" * 64):
        out = classify_status(401, b"invalid: " + secret.encode(), stream=STREAM)
        assert secret not in out.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error_description":"too many"}', "too many"),
        (b'{"error":"invalid_token","error_description":"expired"}', "expired"),
        (b'{"error":"invalid_token"}', "invalid_token"),
        (b'{"message":"nope"}', "nope"),
        (b'{"error_description":"","error":"fallback"}', "fallback"),
        (b'{"error_description":42,"error":"fallback"}', "fallback"),
        (b'{"something":"else"}', '{"something":"else"}'),
        (b'"just a string"', "just a string"),
        (b"Service Unavailable\r\nmore text", "Service Unavailable"),
        (b"\n\n  second line first  \n", "second line first"),
        (
            b"<html><head><title>503 Service Temporarily Unavailable</title></head></html>",
            "503 Service Temporarily Unavailable",
        ),
        (b"", None),
        (b"   \r\n", None),
        (b"<html></html>", None),
        (b"[1, 2]", "[1, 2]"),
        (b'{"error_description":"line1\\nline2\\u0007\\ttab"}', "line1 line2 tab"),
        (b"caf\xc3\xa9 \xff broken utf-8", "café \ufffd broken utf-8"),
        (b'{"error_description": "not closed', '{"error_description": "not closed'),
    ],
)
def test_parse_error_description(body: bytes, expected: str | None) -> None:
    assert parse_error_description(body) == expected


def test_description_is_truncated() -> None:
    desc = parse_error_description(b'{"error_description":"%s"}' % (b"word " * 200))
    assert desc is not None
    assert len(desc) == MAX_DESCRIPTION
    assert desc.endswith("…")


def test_huge_body_is_bounded() -> None:
    desc = parse_error_description(b"x " * 500_000)
    assert desc is not None and len(desc) <= MAX_DESCRIPTION


@pytest.mark.parametrize("error", sorted(END_ERRORS - {"redirect"}))
def test_classify_end_after_2xx_is_lost(error: str) -> None:
    out = classify_end(error, "boom", stream=STREAM, streamed=True)
    assert out.failure is Failure.LOST
    assert out.status is None
    assert out.error == error
    assert out.description is None
    assert STREAM in out.message and "boom" in out.message


@pytest.mark.parametrize("error", sorted(END_ERRORS - {"redirect"}))
def test_classify_end_before_2xx_is_refused(error: str) -> None:
    out = classify_end(error, "", stream=STREAM, streamed=False)
    assert out.failure is Failure.REFUSED
    assert STREAM in out.message
    assert "()" not in out.message


@pytest.mark.parametrize("streamed", [False, True])
def test_classify_end_redirect_is_config(streamed: bool) -> None:
    out = classify_end("redirect", "too many redirects (5)", stream=STREAM, streamed=streamed)
    assert out.failure is Failure.CONFIG
    assert "too many redirects (5)" in out.message
    assert "url" in out.message


def test_classify_end_cleans_detail() -> None:
    out = classify_end("network", "reset\r\nInjected: header " + JWT, stream=STREAM, streamed=True)
    assert "\r" not in out.message and "\n" not in out.message
    assert JWT not in out.message


def test_classify_end_keeps_urls_readable() -> None:
    detail = "cannot connect to https://livestream.adobe.net/api/1/stream/examplecomprod_live"
    out = classify_end("connect_timeout", detail, stream=STREAM, streamed=False)
    assert detail in out.message


def test_classify_end_unknown_label_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        classify_end("oops", "", stream=STREAM, streamed=True)


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (classify_end("eof", "", stream="s", streamed=True), "2xx"),
        (classify_end("network", "reset", stream="s", streamed=True), "2xx"),
        (classify_end("network", "refused", stream="s", streamed=False), "network"),
        (classify_end("connect_timeout", "", stream="s", streamed=False), "connect_timeout"),
        (classify_status(401, b"", stream="s"), "401"),
        (classify_status(409, b'{"error_description": "too many"}', stream="s"), "409"),
        (classify_status(503, b"", stream="s"), "503"),
        (classify_status(418, b"", stream="s"), "4xx"),  # undocumented codes: bounded labels
        (classify_status(599, b"", stream="s"), "5xx"),
    ],
)
def test_attempt_kind_is_a_bounded_metrics_label(outcome: Outcome, kind: str) -> None:
    assert attempt_kind(outcome) == kind
