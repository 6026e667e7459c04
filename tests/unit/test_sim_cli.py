"""`lsproxy simulate` flags and the simulator's pure request rules."""

from __future__ import annotations

import argparse

import pytest

from lsproxy.simulator import SimSettings, SimStream, add_arguments, settings_from_args
from lsproxy.simulator.cli import parse_listen, parse_stream
from lsproxy.simulator.protocol import (
    Refusal,
    Request,
    StreamParams,
    accepts_gzip,
    check_stream_request,
    masked_headers,
    redirect_location,
)


def parse(*argv: str) -> SimSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(argv))


def test_defaults() -> None:
    s = parse()
    assert (s.host, s.port) == ("127.0.0.1", 8090)
    assert s.streams == (SimStream("demo-stream", "simsuite", 50.0),)
    assert (s.token, s.api_key, s.linger, s.resume_window, s.backfill, s.redirect, s.seed) == (
        "demo-token",
        None,
        60.0,
        300.0,
        0,
        False,
        1,
    )


def test_all_flags() -> None:
    s = parse(
        "--listen",
        "0.0.0.0:9000",
        "--stream",
        "a",
        "--stream",
        "b:0",
        "--stream",
        "c:12.5:suite-c",
        "--token",
        "t",
        "--api-key",
        "k",
        "--linger",
        "1.5",
        "--resume-window",
        "10",
        "--backfill",
        "3",
        "--redirect",
        "--seed",
        "9",
        "--run-id",
        "4",
        "--oauth-client-id",
        "cid",
        "--oauth-client-secret",
        "csecret",
        "--token-ttl",
        "0.5",
    )
    assert (s.host, s.port) == ("0.0.0.0", 9000)
    assert s.streams == (SimStream("a"), SimStream("b", rate=0.0), SimStream("c", "suite-c", 12.5))
    assert (s.token, s.api_key, s.linger, s.resume_window, s.backfill, s.redirect, s.seed) == (
        "t",
        "k",
        1.5,
        10.0,
        3,
        True,
        9,
    )
    assert (s.oauth_client_id, s.oauth_client_secret, s.token_ttl) == ("cid", "csecret", 0.5)
    assert s.oauth and s.expected_api_key == "k"
    assert s.run_id == 4


def test_run_id_defaults_to_none_a_new_random_one_per_start() -> None:
    assert parse().run_id is None


def test_help_names_the_default_token() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "(default demo-token)" in " ".join(parser.format_help().split())


def test_oauth_defaults_and_settings_rules() -> None:
    s = parse()
    assert (s.oauth_client_id, s.oauth_client_secret, s.token_ttl) == (None, None, 86400.0)
    assert not s.oauth and s.expected_api_key is None
    s = parse("--oauth-client-id", "cid", "--oauth-client-secret", "x")
    assert s.oauth and s.expected_api_key == "cid"  # x-api-key defaults to the client id
    for bad in (
        {"oauth_client_id": "cid"},
        {"oauth_client_secret": "x"},
        {"oauth_client_id": "", "oauth_client_secret": "x"},
        {"oauth_client_id": "cid", "oauth_client_secret": "x", "token_ttl": 0.0},
        {"token_ttl": float("inf")},
    ):
        with pytest.raises(ValueError):
            SimSettings(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0", "-1", "x", "inf", "nan"])
def test_bad_token_ttl(text: str) -> None:
    with pytest.raises(SystemExit):
        parse("--token-ttl", text)


@pytest.mark.parametrize("text", ["nope", "host:", "host:99999", "h:p"])
def test_bad_listen(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_listen(text)


def test_listen_forms() -> None:
    assert parse_listen(":8091") == ("127.0.0.1", 8091)
    assert parse_listen("[::1]:8091") == ("::1", 8091)


@pytest.mark.parametrize("text", ["", ":5", "a:x", "a:-1", "a:nan", "a:1:s:extra", "a/b:1"])
def test_bad_stream(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_stream(text)


def test_duplicate_streams_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        SimSettings(streams=(SimStream("a"), SimStream("a")))


def req(
    target: str = "/api/1/stream/s", method: str = "GET", version: str = "1.1", **headers: str
) -> Request:
    base = {"authorization": "Bearer demo-token", "accept-encoding": "gzip"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return Request(method, target, version, {k: v for k, v in base.items() if v})


def test_check_order_and_defaults() -> None:
    settings = SimSettings(api_key="k")
    ok = req(x_api_key="k")
    assert check_stream_request(ok, settings) == StreamParams(1, None, 270)
    # Several faults at once: the documented order decides which one is reported.
    bad = req(
        "/api/1/stream/s?maxConnections=9",
        method="POST",
        version="1.0",
        authorization="",
        accept_encoding="identity",
    )
    statuses = []
    for fix in (
        {"method": "GET"},
        {"version": "1.1"},
        {"authorization": "Bearer demo-token"},
        {"x-api-key": "k"},
        {"accept-encoding": "gzip"},
    ):
        result = check_stream_request(bad, settings)
        assert isinstance(result, Refusal)
        statuses.append(result.status)
        headers = dict(bad.headers)
        headers.update({k: v for k, v in fix.items() if k not in ("method", "version")})
        bad = Request(
            fix.get("method", bad.method), bad.target, fix.get("version", bad.http_version), headers
        )
    assert statuses == [405, 505, 401, 401, 406]
    last = check_stream_request(bad, settings)
    assert isinstance(last, Refusal) and last.status == 400


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("identity", False),
        ("", False),
        ("x-gzip", False),
    ],
)
def test_accepts_gzip(value: str, ok: bool) -> None:
    assert accepts_gzip({"accept-encoding": value} if value else {}) is ok


def test_issued_tokens_and_401_reasons() -> None:
    states = {"good": "valid", "old": "expired"}
    settings = SimSettings(oauth_client_id="cid", oauth_client_secret="x")

    def lookup(token: str) -> str:
        return states.get(token, "unknown")

    def check(auth: str, key: str = "cid") -> StreamParams | Refusal:
        return check_stream_request(req(authorization=auth, x_api_key=key), settings, lookup)

    assert check("Bearer good") == StreamParams(1, None, 270)
    assert check("Bearer demo-token") == StreamParams(1, None, 270)  # the static token still works
    expired = check("Bearer old")
    assert isinstance(expired, Refusal) and expired.reason == "expired_token"
    assert (expired.status, expired.error, expired.description) == (401, "invalid_token", "token expired")
    reasons = []
    for auth, key in (("Bearer nope", "cid"), ("", "cid"), ("Bearer good", ""), ("Bearer good", "zz")):
        result = check(auth, key)
        assert isinstance(result, Refusal) and result.status == 401
        reasons.append(result.reason)
    assert reasons == ["invalid_token", "missing_token", "api_key", "api_key"]
    # Without a lookup (OAuth off) issued tokens mean nothing.
    plain = check_stream_request(req(authorization="Bearer good", x_api_key="cid"), settings)
    assert isinstance(plain, Refusal) and plain.reason == "invalid_token"
    masked = masked_headers({"authorization": "Bearer good"}, "demo-token", lookup)
    assert masked == {"authorization": "Bearer ***", "authorization_ok": True}


def test_request_body_is_not_in_repr() -> None:
    r = Request("POST", "/ims/token/v3", "1.1", {}, b"client_secret=hidden")
    assert r.body == b"client_secret=hidden" and "hidden" not in repr(r)


def test_masked_headers_and_redirect_location() -> None:
    masked = masked_headers({"authorization": "Bearer secret", "x-api-key": "k"}, "secret")
    assert masked == {"authorization": "Bearer ***", "x-api-key": "k", "authorization_ok": True}
    assert masked_headers({}, "t") == {"authorization_ok": False}
    r = req("/api/2/stream/s?maxConnections=2", host="127.0.0.1:8090")
    assert redirect_location(r, "2", "s", 8090) == (
        "http://localhost:8090/_sim/node/2/stream/s?maxConnections=2"
    )
    r = req("/api/1/stream/s", host="localhost:8090")
    assert redirect_location(r, "1", "s", 8090) == "http://127.0.0.1:8090/_sim/node/1/stream/s"
