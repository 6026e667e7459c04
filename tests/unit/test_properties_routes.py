"""Properties of consumer request routing: any request line and headers get a Route
(a stream, an endpoint or a JSON error), never an exception."""

from __future__ import annotations

import math
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from lsproxy.serve.encoding import accepts_gzip
from lsproxy.serve.routes import AdminRequest, EndpointRequest, ErrorReply, Router, StreamRequest, parse_since

ROUTER = Router({"prod": "prod", "adobe-livestream-acme-prod": "prod", "dev": "dev"})
PARAMS = [
    "maxConnections", "smoothingBucketSize", "smoothing", "reset", "since", "consumer",
    "offset", "after", "last_event_id", "fields", "format",
]  # fmt: skip

# Query values: numbers, digit strings of any script (str.isdigit() accepts what int()
# rejects), runs past int()'s 4,300-digit limit, the words the parameters take, free text.
DIGITS = st.characters(categories=("Nd", "No"))
LONGEST = 5000
values = st.one_of(
    st.integers(-10, 10_000).map(str),
    st.text(alphabet=DIGITS, min_size=1, max_size=8),
    st.builds(lambda digit, n: digit * n, DIGITS, st.integers(1, LONGEST)),  # long
    st.sampled_from(
        ["", "0", "1", "8", "9", "true", "smallest", "largest", "1700000000", "2026-11-26T18:00:00Z"]
    ),
    st.text(max_size=40),
)


@st.composite
def stream_targets(draw: st.DrawFn) -> bytes:
    """Plausible stream requests: a known or unknown name, any mix of the Live Stream query
    parameters (repeated, percent-encoded or not), maybe junk after."""
    version = draw(st.sampled_from(["1", "2", "0", "3", "x"]))
    name = draw(st.sampled_from(["prod", "dev", "adobe-livestream-acme-prod", "nope", "%70rod", ""]))
    pairs = draw(st.lists(st.tuples(st.sampled_from(PARAMS), values), max_size=5))
    encode = draw(st.booleans())
    query = "&".join(f"{k}={quote(v) if encode else v}" for k, v in pairs)
    tail = draw(st.sampled_from(["", "/", "//", "#frag", "?"]))
    target = f"/api/{version}/stream/{name}{tail}" + (f"?{query}" if query else "")
    return target.encode("ascii", errors="replace")


header_names = st.one_of(
    st.sampled_from([b"x-consumer-id", b"accept-encoding", b"host", b"connection"]),
    st.binary(min_size=1, max_size=20),
)
headers = st.lists(st.tuples(header_names, st.binary(max_size=60)), max_size=6)
methods = st.one_of(st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS"]), st.binary(max_size=10))
versions = st.one_of(st.sampled_from([b"1.1", b"1.0", b"2"]), st.binary(max_size=4))
targets = st.one_of(
    stream_targets(),
    st.sampled_from([b"/healthz", b"/readyz", b"/status", b"/status?x=1", b"/admin/consumers", b"/admin/streams/prod/reconnect", b"*", b"", b"/"]),
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8")),
)


@settings(max_examples=10 * settings.default.max_examples)  # cheap: explore more
@given(methods, targets, versions, headers)
def test_any_request_gets_a_route_never_an_exception(
    method: bytes, target: bytes, version: bytes, hdrs: list[tuple[bytes, bytes]]
) -> None:
    got = ROUTER.route(method, target, version, hdrs)
    assert isinstance(got, (StreamRequest, EndpointRequest, AdminRequest, ErrorReply))
    if isinstance(got, ErrorReply):
        assert 400 <= got.status < 600 and got.error and got.description
    elif isinstance(got, StreamRequest):
        assert got.stream in ("prod", "dev") and method == b"GET"
        assert got.consumer is None or 1 <= len(got.consumer) <= 128
        assert got.since is None or (math.isfinite(got.since) and got.since >= 0)


@settings(max_examples=10 * settings.default.max_examples)  # cheap: explore more
@given(stream_targets(), headers)
def test_any_stream_query_gets_a_stream_or_a_400(target: bytes, hdrs: list[tuple[bytes, bytes]]) -> None:
    got = ROUTER.route(b"GET", target, b"1.1", hdrs)
    assert isinstance(got, (StreamRequest, ErrorReply))
    assert isinstance(got, StreamRequest) or got.status in (400, 404)


@settings(max_examples=10 * settings.default.max_examples)  # cheap: explore more
@given(st.text(max_size=80))
def test_since_is_a_time_or_none(value: str) -> None:
    got = parse_since(value)
    assert got is None or (math.isfinite(got) and got >= 0)


@settings(max_examples=10 * settings.default.max_examples)  # cheap: explore more
@given(st.text(max_size=80))
def test_accept_encoding_never_raises(value: str) -> None:
    assert accepts_gzip(value) in (True, False)
