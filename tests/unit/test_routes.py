"""Router: pure request -> route decisions, Live Stream-style errors."""

import pytest

from lsproxy.serve.encoding import accepts_gzip
from lsproxy.serve.routes import EndpointRequest, ErrorReply, Router, StreamRequest

ROUTER = Router({"prod": "prod", "adobe-livestream-acme-prod": "prod", "acmeprod": "prod", "dev": "dev"})
GZ = [(b"accept-encoding", b"gzip")]


def route(target: str, method: bytes = b"GET", version: bytes = b"1.1", headers=()):  # type: ignore[no-untyped-def]
    return ROUTER.route(method, target.encode(), version, list(headers))


@pytest.mark.parametrize(
    "target",
    [
        "/api/1/stream/prod",
        "/api/2/stream/acmeprod",
        "/api/1/stream/adobe-livestream-acme-prod/",
        "/api/0/stream/prod",  # the "firehose" generation of clients
        "/api/9/stream/acmeprod",
        "/api/10/stream/prod",
    ],
)
def test_stream_routes_by_name_endpoint_or_suite(target: str) -> None:
    assert route(target, headers=GZ) == StreamRequest("prod", None, None, True)


def test_consumer_id_from_query_or_header_and_reset() -> None:
    assert route("/api/1/stream/dev?consumer=c1&reset=smallest") == StreamRequest(
        "dev", "c1", "smallest", False
    )
    assert route("/api/1/stream/dev", headers=[(b"x-consumer-id", b"c2")]).consumer == "c2"
    clash = route("/api/1/stream/dev?consumer=a", headers=[(b"x-consumer-id", b"b")])
    assert isinstance(clash, ErrorReply) and clash.status == 400


@pytest.mark.parametrize(
    ("target", "method", "version", "status"),
    [
        ("/api/1/stream/nope", b"GET", b"1.1", 404),
        ("/elsewhere", b"GET", b"1.1", 404),
        ("/api/1/stream/prod", b"POST", b"1.1", 405),
        ("/api/1/stream/prod", b"GET", b"1.0", 505),
        ("/api/1/stream/prod?maxConnections=9", b"GET", b"1.1", 400),
        ("/api/1/stream/prod?maxConnections=0", b"GET", b"1.1", 400),
        ("/api/1/stream/prod?maxConnections=x", b"GET", b"1.1", 400),
        ("/api/1/stream/prod?smoothingBucketSize=7201", b"GET", b"1.1", 400),
        ("/api/1/stream/prod?smoothing=maybe", b"GET", b"1.1", 400),
        ("/api/1/stream/prod?reset=middle", b"GET", b"1.1", 400),
        ("/api/1/stream/prod?consumer=has%20space", b"GET", b"1.1", 400),
        ("/api/1/stream/prod?reset=smallest&reset=largest", b"GET", b"1.1", 400),
        ("/healthz", b"POST", b"1.1", 405),
        ("/api/123/stream/prod", b"GET", b"1.1", 404),
        ("/api/x/stream/prod", b"GET", b"1.1", 404),
        ("/api//stream/prod", b"GET", b"1.1", 404),
        ("/api/%D9%A3/stream/prod", b"GET", b"1.1", 404),
        ("/api/1/stream/prod?consumer=c1%0A", b"GET", b"1.1", 400),
    ],
)
def test_errors(target: str, method: bytes, version: bytes, status: int) -> None:
    got = route(target, method, version)
    assert isinstance(got, ErrorReply) and got.status == status
    assert got.description  # says what was wrong


def test_live_stream_parameters_are_accepted_and_dropped() -> None:
    got = route("/api/1/stream/prod?maxConnections=8&smoothing=1&smoothingBucketSize=270&reset=largest")
    assert got == StreamRequest("prod", None, "largest", False, shares=8)  # maxConnections: a group


def test_endpoints() -> None:
    assert route("/healthz") == EndpointRequest("healthz", head=False)
    assert route("/status", method=b"HEAD") == EndpointRequest("status", head=True)
    assert route("/readyz", version=b"1.0") == EndpointRequest("readyz", head=False)


def test_operator_endpoints() -> None:
    assert route("/metrics") == EndpointRequest("metrics", head=False)
    assert route("/") == EndpointRequest("", head=False)  # the status page
    assert route("/?refresh=1", method=b"HEAD") == EndpointRequest("", head=True)
    assert route("/static/app.js") == EndpointRequest("static/app.js", head=False)
    assert route("/rates") == EndpointRequest("rates", head=False)
    assert route("/", method=b"POST") == ErrorReply(405, "method_not_allowed", "/ accepts GET and HEAD only", allow=b"GET, HEAD")
    assert route("/static/other.js").status == 404  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate", False),
        ("", False),
        ("gzip;q=0", False),
        ("GZIP;q=0.5", True),
        ("*", True),
        ("identity, gzip;q=bogus", False),
    ],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000", 1700000000.0),
        ("1700000000.25", 1700000000.25),
        ("2023-11-14T22:13:20Z", 1700000000.0),
        ("2023-11-14T23:13:20+01:00", 1700000000.0),
        ("2023-11-14T22:13:20", None),
        ("yesterday", None),
        ("-5", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_since_parameter(value: str, expected: float | None) -> None:
    got = route(f"/api/1/stream/prod?consumer=c&since={value.replace('+', '%2B')}")
    if expected is None:
        assert isinstance(got, ErrorReply) and got.status == 400 and "since" in got.description
    else:
        assert isinstance(got, StreamRequest) and got.since == expected


@pytest.mark.parametrize("name", ["maxConnections", "smoothingBucketSize"])
@pytest.mark.parametrize(
    "value",
    [
        "%C2%B2",  # "²": str.isdigit() says yes, int() says no
        "%D9%A3",  # Arabic-Indic three: int() would take it as 3
        "%EF%BC%93",  # fullwidth three
        "9" * 5000,  # int() refuses more than 4300 digits
        "1" + "0" * 40,
        "1%0A",
        "%201",
        "+1",
        "-1",
        "1.0",
        "",
    ],
)
def test_integer_parameters_take_ascii_digits_only(name: str, value: str) -> None:
    got = route(f"/api/1/stream/prod?{name}={value}")
    assert isinstance(got, ErrorReply), got
    assert got.status == 400 and name in got.description
    assert len(got.description) < 200  # a huge value is not echoed whole


def test_integer_parameters_accept_plain_ascii_digits() -> None:
    got = route("/api/1/stream/prod?maxConnections=03&smoothingBucketSize=000270")
    assert isinstance(got, StreamRequest)


@pytest.mark.parametrize(
    "value",
    [
        "%D9%A1%D9%A7%D9%A0%D9%A0%D9%A0%D9%A0%D9%A0%D9%A0%D9%A0%D9%A0",  # Arabic-Indic digits
        "1e9",
        "1_700_000_000",
        "%201700000000",
        "1700000000%0A",
        "9" * 5000,
        "2023-11-14T22:13:20Z" + "0" * 5000,
        "infinity",
        "0x10",
    ],
)
def test_since_refuses_what_float_would_stretch_to(value: str) -> None:
    got = route(f"/api/1/stream/prod?consumer=c&since={value}")
    assert isinstance(got, ErrorReply), got
    assert got.status == 400 and "since" in got.description


def test_method_not_allowed_says_what_is() -> None:
    head = route("/api/1/stream/prod", method=b"HEAD")
    assert isinstance(head, ErrorReply) and head.status == 405 and head.allow == b"GET"
    post = route("/status", method=b"POST")
    assert isinstance(post, ErrorReply) and post.status == 405 and post.allow == b"GET, HEAD"


def test_group_resume_sse_and_fields_parameters() -> None:
    got = route(
        "/api/1/stream/prod?maxConnections=4&consumer=w&after=2948027281753079808:0004948646782672799561"
        "&fields=hitIdHigh,hitIdLow",
        headers=[(b"accept", b"text/event-stream"), (b"x-api-key", b"secret-key"), (b"origin", b"http://x")],
    )
    assert isinstance(got, StreamRequest)
    assert got.shares == 4 and got.consumer == "w" and got.sse and got.origin == "http://x"
    assert got.after == b"2948027281753079808:4948646782672799561"  # canonical digits, as dedup keys
    assert got.fields == frozenset({"hitIdHigh", "hitIdLow"})
    assert got.resume_key is not None and b"secret-key" not in got.resume_key  # a digest only
    assert route("/api/1/stream/prod?offset=17").offset == 17  # type: ignore[union-attr]
    assert route("/api/1/stream/prod?format=sse&last_event_id=17").offset == 18  # type: ignore[union-attr]
    assert route("/api/1/stream/prod?format=json", headers=[(b"accept", b"text/event-stream")]).sse is False  # type: ignore[union-attr]


def test_last_event_id_header_wins_over_the_query_it_repeats() -> None:
    got = route("/api/1/stream/prod?after=1:2&format=sse", headers=[(b"last-event-id", b"99")])
    assert isinstance(got, StreamRequest) and got.offset == 100 and got.after is None


def test_resume_keys_differ_per_stream() -> None:
    a = route("/api/1/stream/prod", headers=[(b"x-api-key", b"k")])
    b = route("/api/1/stream/dev", headers=[(b"x-api-key", b"k")])
    assert a.resume_key != b.resume_key  # type: ignore[union-attr]
    assert route("/api/1/stream/prod", headers=[(b"x-api-key", b"")]).resume_key is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("target", "headers", "names"),
    [
        ("/api/1/stream/prod?after=12", [], "after"),
        ("/api/1/stream/prod?after=-1:2", [], "after"),
        ("/api/1/stream/prod?after=1:2&offset=3", [], "after and offset"),
        ("/api/1/stream/prod?since=0&offset=3", [], "since and offset"),
        ("/api/1/stream/prod?offset=x", [], "offset"),
        ("/api/1/stream/prod?offset=99999999999999999999", [], "offset"),
        ("/api/1/stream/prod?last_event_id=-3", [], "last_event_id"),
        ("/api/1/stream/prod?format=xml", [], "format"),
        ("/api/1/stream/prod?fields=", [], "fields"),
        ("/api/1/stream/prod", [(b"last-event-id", b"abc")], "Last-Event-ID"),
    ],
)
def test_bad_start_parameters_name_the_parameter(
    target: str, headers: list[tuple[bytes, bytes]], names: str
) -> None:
    got = route(target, headers=headers)
    assert isinstance(got, ErrorReply) and got.status == 400 and names in got.description
