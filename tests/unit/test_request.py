"""UpstreamRequest: URL and headers, masking, and the redirect rule."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from lsproxy import __version__
from lsproxy.errors import RedirectError
from lsproxy.secret import Secret
from lsproxy.upstream.request import (
    MAX_REDIRECTS,
    REDIRECT_STATUSES,
    UpstreamRequest,
    build_request,
    follow_redirect,
)

URL = "https://livestream.adobe.net/api/1/stream/examplecomprod"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-token-value.signature"
KEY = "client-id-1234"


def query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def req(**kw: object) -> UpstreamRequest:
    args: dict[str, object] = {"token": TOKEN, "api_key": KEY}
    args.update(kw)
    return build_request(URL, **args)  # type: ignore[arg-type]


def test_headers() -> None:
    r = req()
    assert r.headers == (
        ("Authorization", f"Bearer {TOKEN}"),
        ("Accept-Encoding", "gzip"),
        ("x-api-key", KEY),
        ("User-Agent", f"lsproxy/{__version__}"),
    )
    assert r.header("authorization") == f"Bearer {TOKEN}"
    assert r.header("X-API-KEY") == KEY
    assert r.header("nope") is None


def test_no_api_key_no_header() -> None:
    for key in (None, ""):
        r = req(api_key=key)
        assert r.header("x-api-key") is None
        assert r.header("Authorization") == f"Bearer {TOKEN}"


def test_secret_credentials_are_revealed_into_headers() -> None:
    r = req(token=Secret(TOKEN), api_key=Secret(KEY))
    assert r.header("Authorization") == f"Bearer {TOKEN}"
    assert r.header("x-api-key") == KEY


def test_credentials_are_stripped() -> None:
    r = req(token=TOKEN + "\n", api_key=" " + KEY + "\r\n")
    assert r.header("Authorization") == f"Bearer {TOKEN}"
    assert r.header("x-api-key") == KEY


@pytest.mark.parametrize("token", ["", "  ", "abc\r\nX-Injected: 1", "tök"])
def test_bad_token_is_rejected_without_echo(token: str) -> None:
    with pytest.raises(ValueError) as info:
        req(token=token)
    if token.strip():
        assert token.strip() not in str(info.value)


def test_bad_api_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="api key"):
        req(api_key="k\ney")


def test_repr_masks_credentials() -> None:
    r = req()
    for text in (repr(r), str(r), f"{r}", repr([r])):
        assert TOKEN not in text
        assert KEY not in text
        assert "***" in text
        assert URL in text


def test_max_connections_default_and_set() -> None:
    assert query(req().url) == [("maxConnections", "1")]
    assert query(req(max_connections=4).url) == [("maxConnections", "4")]
    assert req().url.startswith(URL + "?")


def test_url_query_is_kept_and_max_connections_overridden() -> None:
    r = build_request(
        URL + "?reset=smallest&maxConnections=8&empty=#frag",
        token=TOKEN,
        api_key=None,
        max_connections=2,
    )
    assert query(r.url) == [("reset", "smallest"), ("empty", ""), ("maxConnections", "2")]
    assert "#" not in r.url


def test_params_are_added_and_override_url_params() -> None:
    r = build_request(
        URL + "?smoothing=0&x=1",
        token=TOKEN,
        api_key=None,
        params={"smoothing": "1", "smoothingBucketSize": "60", "reset": "largest"},
    )
    assert query(r.url) == [
        ("x", "1"),
        ("maxConnections", "1"),
        ("smoothing", "1"),
        ("smoothingBucketSize", "60"),
        ("reset", "largest"),
    ]


def test_params_are_encoded() -> None:
    r = req(params={"a b": "c&d=e"})
    assert ("a b", "c&d=e") in query(r.url)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_bad_max_connections(bad: object) -> None:
    with pytest.raises(ValueError):
        req(max_connections=bad)


def test_max_connections_in_params_is_refused() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        req(params={"maxConnections": "3"})


@pytest.mark.parametrize("url", ["ftp://x/y", "livestream.adobe.net/api", "https:///nohost", ""])
def test_bad_url(url: str) -> None:
    with pytest.raises(ValueError):
        build_request(url, token=TOKEN, api_key=None)


@pytest.mark.parametrize("status", sorted(REDIRECT_STATUSES))
def test_redirect_absolute_cross_origin_keeps_all_headers(status: int) -> None:
    r = req(max_connections=3)
    loc = "https://stream7.livestream.adobe.net/api/1/stream/examplecomprod?maxConnections=3&t=x"
    nxt = follow_redirect(r, status, loc, 0)
    assert nxt.url == loc
    assert nxt.headers == r.headers
    assert nxt.header("Authorization") == f"Bearer {TOKEN}"
    assert nxt.header("x-api-key") == KEY
    assert nxt.header("Accept-Encoding") == "gzip"


def test_redirect_relative_locations() -> None:
    r = req()
    base = "https://livestream.adobe.net"
    assert follow_redirect(r, 302, "/api/2/stream/x?maxConnections=1", 0).url == (
        f"{base}/api/2/stream/x?maxConnections=1"
    )
    assert follow_redirect(r, 302, "other?maxConnections=1", 0).url == (
        f"{base}/api/1/stream/other?maxConnections=1"
    )
    assert follow_redirect(r, 307, "//edge.example.net/s?maxConnections=1", 0).url == (
        "https://edge.example.net/s?maxConnections=1"
    )


def test_redirect_carries_max_connections_if_missing() -> None:
    r = req(max_connections=4)
    nxt = follow_redirect(r, 302, "https://edge.example.net/s?reset=smallest", 0)
    assert query(nxt.url) == [("reset", "smallest"), ("maxConnections", "4")]
    nxt = follow_redirect(r, 302, "https://edge.example.net/s", 0)
    assert nxt.url == "https://edge.example.net/s?maxConnections=4"
    # a value chosen by the Location is left alone
    nxt = follow_redirect(r, 302, "https://edge.example.net/s?maxConnections=2", 0)
    assert query(nxt.url) == [("maxConnections", "2")]


def test_redirect_drops_fragment_and_keeps_location_query_verbatim() -> None:
    loc = "https://edge.example.net/s?a=%2F+b&maxConnections=1#frag"
    assert follow_redirect(req(), 308, loc, 0).url == "https://edge.example.net/s?a=%2F+b&maxConnections=1"


def test_redirect_chain_up_to_the_limit() -> None:
    r = req()
    for hops in range(MAX_REDIRECTS):
        r = follow_redirect(r, 302, f"/hop{hops}", hops)
    with pytest.raises(RedirectError, match="too many redirects"):
        follow_redirect(r, 302, "/one-more", MAX_REDIRECTS)


@pytest.mark.parametrize("location", [None, "", "   "])
def test_redirect_without_location(location: str | None) -> None:
    with pytest.raises(RedirectError, match="no Location"):
        follow_redirect(req(), 302, location, 0)


@pytest.mark.parametrize(
    "location",
    ["ftp://example.net/x", "javascript:alert(1)", "file:///etc/passwd", "http:x", "mailto:a@b"],
)
def test_redirect_bad_scheme(location: str) -> None:
    with pytest.raises(RedirectError, match="not an http"):
        follow_redirect(req(), 302, location, 0)


def test_redirect_with_control_characters() -> None:
    with pytest.raises(RedirectError, match="whitespace"):
        follow_redirect(req(), 302, "/a\r\nX-Evil: 1", 0)


def test_redirect_https_to_http_downgrade_is_refused() -> None:
    with pytest.raises(RedirectError, match="clear text"):
        follow_redirect(req(), 302, "http://livestream.adobe.net/api/1/stream/x", 0)


def test_redirect_http_to_http_and_http_to_https() -> None:
    r = build_request("http://127.0.0.1:8080/api/1/stream/demo", token=TOKEN, api_key=None)
    assert follow_redirect(r, 302, "http://127.0.0.1:8081/s", 0).url.startswith("http://127.0.0.1:8081/s")
    assert follow_redirect(r, 302, "https://secure.example/s", 0).url.startswith("https://")


def test_non_redirect_status_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        follow_redirect(req(), 200, "/x", 0)


def test_redirect_errors_never_show_credentials() -> None:
    r = req()
    cases = [(None, 0), ("ftp://x", 0), ("/x", MAX_REDIRECTS), ("http://plain/x", 0), ("/a b", 0)]
    for location, hops in cases:
        with pytest.raises(RedirectError) as info:
            follow_redirect(r, 302, location, hops)
        assert TOKEN not in str(info.value) and KEY not in str(info.value)
