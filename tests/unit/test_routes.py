"""Router: pure request -> route decisions, Live Stream-style errors."""

import pytest

from lsproxy.serve.encoding import accepts_gzip
from lsproxy.serve.routes import EndpointRequest, ErrorReply, Router, StreamRequest

ROUTER = Router({"prod": "prod", "adobe-livestream-acme-prod": "prod", "acmeprod": "prod", "dev": "dev"})
GZ = [(b"accept-encoding", b"gzip")]


def route(target: str, method: bytes = b"GET", version: bytes = b"1.1", headers=()):  # type: ignore[no-untyped-def]
    return ROUTER.route(method, target.encode(), version, list(headers))


@pytest.mark.parametrize(
    "target", ["/api/1/stream/prod", "/api/2/stream/acmeprod", "/api/1/stream/adobe-livestream-acme-prod/"]
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
    ],
)
def test_errors(target: str, method: bytes, version: bytes, status: int) -> None:
    got = route(target, method, version)
    assert isinstance(got, ErrorReply) and got.status == status
    assert got.description  # says what was wrong


def test_live_stream_parameters_are_accepted_and_dropped() -> None:
    got = route("/api/1/stream/prod?maxConnections=8&smoothing=1&smoothingBucketSize=270&reset=largest")
    assert got == StreamRequest("prod", None, "largest", False)


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
    assert route("/", method=b"POST") == ErrorReply(405, "method_not_allowed", "/ accepts GET only")
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
