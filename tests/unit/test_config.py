"""Tests for lsproxy.config: parsing, defaults, routes, errors, secret masking."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from lsproxy.config import (
    DEFAULT_RETENTION_BYTES,
    Config,
    Credentials,
    ServerConfig,
    StreamConfig,
    UpstreamSettings,
    load_config,
    parse_config,
)
from lsproxy.errors import ConfigError
from lsproxy.secret import Secret

REPO = Path(__file__).resolve().parents[2]
FILE = "demo.toml"
TOKEN = "TOPSECRET-tok3n-4242"
ENV = {"LSPROXY_ADOBE_TOKEN": TOKEN}

CREDS = f'[credentials.adobe]\ntoken = "{TOKEN}"\n'
STREAM = '[streams.prod]\nurl = "https://livestream.adobe.net/api/1/stream/acme-prod"\n'
MINIMAL = CREDS + STREAM


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(text, path=FILE, environ=ENV if environ is None else environ)


def error(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, environ)
    message = str(info.value)
    assert "\n" not in message
    assert TOKEN not in message
    assert message.startswith(f"{FILE}: ")
    return message


# --------------------------------------------------------------------------- #
# Valid configurations
# --------------------------------------------------------------------------- #

FULL = """
[server]
listen = "[::1]:9001"
heartbeat_interval = 15.5
request_timeout = 7
write_timeout = 45
shutdown_grace = 2
replay_window_bytes = 1048576

[upstream]
reconnect_delay = 90
max_reconnect_delay = 1200
connect_timeout = 12
idle_timeout = 300
healthy_after = 120

[credentials.adobe]
token_env = "LSPROXY_ADOBE_TOKEN"
api_key = "my-client-id"

[credentials.other]
token = "other-token"
api_key_env = "OTHER_KEY"

[streams.prod]
url = "https://livestream.adobe.net/api/1/stream/adobe-livestream-acme-prod?smallBatch=1"
report_suite = "acmeprod"
credentials = "adobe"
retention_bytes = 2097152
reconnect_delay = 120
max_reconnect_delay = 1800
connect_timeout = 5
idle_timeout = 60
healthy_after = 30

[streams.dev]
url = "http://127.0.0.1:8090/api/1/stream/dev-stream/"
credentials = "other"
"""


def test_full_config_round_trip() -> None:
    cfg = parse(FULL, {"LSPROXY_ADOBE_TOKEN": TOKEN, "OTHER_KEY": "other-key"})
    assert cfg.path == FILE
    assert cfg.server == ServerConfig(
        host="::1",
        port=9001,
        heartbeat_interval=15.5,
        request_timeout=7.0,
        write_timeout=45.0,
        shutdown_grace=2.0,
        replay_window_bytes=1048576,
    )
    prod, dev = cfg.streams
    adobe = Credentials("adobe", Secret(TOKEN), Secret("my-client-id"), "env LSPROXY_ADOBE_TOKEN")
    assert prod == StreamConfig(
        name="prod",
        url="https://livestream.adobe.net/api/1/stream/adobe-livestream-acme-prod?smallBatch=1",
        endpoint="adobe-livestream-acme-prod",
        report_suite="acmeprod",
        credentials=adobe,
        upstream=UpstreamSettings(
            reconnect_delay=120.0,
            max_reconnect_delay=1800.0,
            connect_timeout=5.0,
            idle_timeout=60.0,
            healthy_after=30.0,
        ),
        retention_bytes=2097152,
    )
    assert dev.url == "http://127.0.0.1:8090/api/1/stream/dev-stream/"
    assert dev.endpoint == "dev-stream"
    assert dev.report_suite is None
    assert dev.retention_bytes == DEFAULT_RETENTION_BYTES
    assert dev.credentials == Credentials("other", Secret("other-token"), Secret("other-key"), "inline")
    assert dev.upstream == UpstreamSettings(90.0, 1200.0, 12.0, 300.0, 120.0)
    assert dict(cfg.routes) == {
        "prod": "prod",
        "adobe-livestream-acme-prod": "prod",
        "acmeprod": "prod",
        "dev": "dev",
        "dev-stream": "dev",
    }
    assert cfg.warnings == ()
    for value in (cfg.server.heartbeat_interval, prod.upstream.reconnect_delay):
        assert type(value) is float


def test_defaults() -> None:
    cfg = parse(MINIMAL)
    assert cfg.server == ServerConfig()
    assert cfg.server.host == "127.0.0.1" and cfg.server.port == 8080
    assert cfg.server.replay_window_bytes is None
    (stream,) = cfg.streams
    assert stream.upstream == UpstreamSettings()
    assert stream.upstream == UpstreamSettings(60.0, 900.0, 10.0, 0.0, 60.0)
    assert stream.retention_bytes == DEFAULT_RETENTION_BYTES == 256 * 1024 * 1024
    assert stream.report_suite is None
    assert stream.credentials.name == "adobe"
    assert stream.credentials.token.reveal() == TOKEN
    assert stream.credentials.api_key is None
    assert stream.credentials.source == "inline"
    assert cfg.warnings == ()


def test_empty_server_and_upstream_tables_are_fine() -> None:
    cfg = parse("[server]\n[upstream]\n" + MINIMAL)
    assert cfg.server == ServerConfig()
    assert cfg.streams[0].upstream == UpstreamSettings()


def test_stream_overrides_upstream_per_key() -> None:
    text = (
        "[upstream]\nreconnect_delay = 70\nidle_timeout = 30\n"
        + CREDS
        + STREAM
        + "idle_timeout = 0\nhealthy_after = 5.5\n"
        + '[streams.other]\nurl = "https://h.example/x/other-ep"\n'
    )
    prod, other = parse(text).streams
    assert prod.upstream == UpstreamSettings(70.0, 900.0, 10.0, 0.0, 5.5)
    assert other.upstream == UpstreamSettings(70.0, 900.0, 10.0, 30.0, 60.0)


def test_single_credential_set_is_implicit_and_named_set_is_used() -> None:
    text = (
        CREDS
        + '[credentials.b]\ntoken = "bbb"\n'
        + STREAM
        + 'credentials = "adobe"\n'
        + '[streams.two]\nurl = "https://h.example/s/two-ep"\ncredentials = "b"\n'
    )
    prod, two = parse(text).streams
    assert prod.credentials.name == "adobe"
    assert two.credentials.name == "b"
    assert two.credentials.token.reveal() == "bbb"


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("localhost:0", "localhost", 0),
        ("[::1]:8080", "::1", 8080),
        ("[::]:65535", "::", 65535),
        ("proxy.internal:1234", "proxy.internal", 1234),
    ],
)
def test_listen_forms(listen: str, host: str, port: int) -> None:
    server = parse(f'[server]\nlisten = "{listen}"\n' + MINIMAL).server
    assert (server.host, server.port) == (host, port)


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://livestream.adobe.net/api/1/stream/ep", "ep"),
        ("https://livestream.adobe.net/api/1/stream/ep/", "ep"),
        ("https://livestream.adobe.net//ep//", "ep"),
        ("HTTPS://livestream.adobe.net:443/ep?a=1&b=2", "ep"),
        ("http://[::1]:8090/api/1/stream/sim", "sim"),
    ],
)
def test_url_endpoint(url: str, endpoint: str) -> None:
    (stream,) = parse(CREDS + f'[streams.prod]\nurl = "{url}"\n').streams
    assert stream.url == url
    assert stream.endpoint == endpoint


def test_replay_window_auto_and_zero() -> None:
    assert parse('[server]\nreplay_window_bytes = "auto"\n' + MINIMAL).server.replay_window_bytes is None
    assert parse("[server]\nreplay_window_bytes = 0\n" + MINIMAL).server.replay_window_bytes == 0


def test_zero_durations_where_zero_means_off() -> None:
    text = (
        "[server]\nheartbeat_interval = 0\nshutdown_grace = 0\n"
        "[upstream]\nreconnect_delay = 0\nmax_reconnect_delay = 0\n"
        "idle_timeout = 0\nhealthy_after = 0\n" + MINIMAL
    )
    cfg = parse(text)
    assert cfg.server.heartbeat_interval == 0.0
    assert cfg.streams[0].upstream.reconnect_delay == 0.0


def test_retention_minimum_is_accepted() -> None:
    (stream,) = parse(MINIMAL + "retention_bytes = 1048576\n").streams
    assert stream.retention_bytes == 1048576


def test_stream_order_is_file_order() -> None:
    text = CREDS + "".join(
        f'[streams.{n}]\nurl = "https://h.example/s/{n}-ep"\n' for n in ("zeta", "alpha", "mid")
    )
    assert [s.name for s in parse(text).streams] == ["zeta", "alpha", "mid"]


# --------------------------------------------------------------------------- #
# Routes
# --------------------------------------------------------------------------- #


def test_route_keys_are_deduplicated_in_order() -> None:
    text = CREDS + '[streams.acme]\nurl = "https://h.example/s/acme"\nreport_suite = "acme"\n'
    (stream,) = parse(text).streams
    assert stream.route_keys == ("acme",)
    assert dict(parse(text).routes) == {"acme": "acme"}

    (stream,) = parse(MINIMAL + 'report_suite = "rs"\n').streams
    assert stream.route_keys == ("prod", "acme-prod", "rs")

    (stream,) = parse(MINIMAL).streams
    assert stream.route_keys == ("prod", "acme-prod")


def test_routes_is_read_only() -> None:
    cfg = parse(MINIMAL)
    assert isinstance(cfg.routes, MappingProxyType)
    with pytest.raises(TypeError):
        cfg.routes["x"] = "prod"  # type: ignore[index]


@pytest.mark.parametrize(
    ("b_table", "message"),
    [
        (
            '[streams.b]\nurl = "https://h.example/s/b-ep"\nreport_suite = "acme"\n',
            "streams.b: route 'acme' is already used by streams.a (report_suite)",
        ),
        (
            '[streams.b]\nurl = "https://h.example/s/a-ep"\n',
            "streams.b: route 'a-ep' is already used by streams.a (endpoint)",
        ),
        (
            '[streams.b]\nurl = "https://h.example/s/a"\n',
            "streams.b: route 'a' is already used by streams.a (name)",
        ),
        (
            '[streams.acme]\nurl = "https://h.example/s/other"\n',
            "streams.acme: route 'acme' is already used by streams.a (report_suite)",
        ),
        (
            '[streams.b]\nurl = "https://h.example/s/b-ep"\nreport_suite = "a-ep"\n',
            "streams.b: route 'a-ep' is already used by streams.a (endpoint)",
        ),
    ],
)
def test_duplicate_routes(b_table: str, message: str) -> None:
    a = '[streams.a]\nurl = "https://h.example/s/a-ep"\nreport_suite = "acme"\n'
    assert error(CREDS + a + b_table) == f"{FILE}: {message}"


# --------------------------------------------------------------------------- #
# Errors: one line, "<file>: <dotted key>: <problem>"
# --------------------------------------------------------------------------- #

ERROR_CASES: list[tuple[str, str, str]] = [
    # -- structure / unknown keys
    ("unknown top-level", MINIMAL + "[stream]\n", "stream: unknown key (did you mean 'streams'?)"),
    (
        "unknown stream key",
        MINIMAL + "reconect_delay = 60\n",
        "streams.prod.reconect_delay: unknown key (did you mean 'reconnect_delay'?)",
    ),
    (
        "unknown server key",
        "[server]\nheartbeat = 3\n" + MINIMAL,
        "server.heartbeat: unknown key (did you mean 'heartbeat_interval'?)",
    ),
    (
        "port key hint",
        "[server]\nport = 3\n" + MINIMAL,
        'server.port: unknown key (use listen = "host:port")',
    ),
    (
        "upstream key in server",
        "[server]\nreconnect_delay = 3\n" + MINIMAL,
        "server.reconnect_delay: unknown key (reconnect_delay belongs in [upstream] or [streams.<name>])",
    ),
    (
        "retention in upstream",
        "[upstream]\nretention_bytes = 2000000\n" + MINIMAL,
        "upstream.retention_bytes: unknown key (retention_bytes is set per stream, in [streams.<name>])",
    ),
    (
        "unknown upstream key",
        "[upstream]\nzzz = 1\n" + MINIMAL,
        "upstream.zzz: unknown key (expected one of: reconnect_delay, max_reconnect_delay, "
        "connect_timeout, idle_timeout, healthy_after)",
    ),
    (
        "token in stream",
        MINIMAL + f'token = "{TOKEN}"\n',
        "streams.prod.token: unknown key (credentials belong in a [credentials.<name>] table; "
        'reference it here with credentials = "<name>")',
    ),
    (
        "unknown credential key",
        CREDS + f'tokn = "{TOKEN}"\n' + STREAM,
        "credentials.adobe.tokn: unknown key (did you mean 'token'?)",
    ),
    (
        "streams not a table",
        "streams = 3\n" + CREDS,
        "streams: expected a table ([streams.<name>]), got integer 3",
    ),
    (
        "stream not a table",
        CREDS + "[streams]\nprod = 3\n",
        "streams.prod: expected a table ([streams.prod]), got integer 3",
    ),
    (
        "array of tables",
        CREDS + '[[streams]]\nurl = "https://h/x"\n',
        "streams: expected a table ([streams.<name>]), got array of tables",
    ),
    ("server not a table", 'server = "x"\n' + MINIMAL, 'server: expected a table ([server]), got string "x"'),
    (
        "upstream not a table",
        "upstream = [1]\n" + MINIMAL,
        "upstream: expected a table ([upstream]), got array",
    ),
    (
        "credentials not a table",
        f'credentials = "{TOKEN}"\n' + STREAM,
        "credentials: expected a table ([credentials.<name>]), got string",
    ),
    (
        "credential set not a table",
        f'[credentials]\nadobe = "{TOKEN}"\n' + STREAM,
        "credentials.adobe: expected a table ([credentials.adobe]), got string",
    ),
    (
        "no streams",
        CREDS,
        "streams: no streams defined: add one, e.g. [streams.prod] with "
        'url = "https://livestream.adobe.net/api/1/stream/<endpoint>"',
    ),
    (
        "empty streams",
        CREDS + "[streams]\n",
        "streams: no streams defined: add one, e.g. [streams.prod] with "
        'url = "https://livestream.adobe.net/api/1/stream/<endpoint>"',
    ),
    (
        "no credentials",
        STREAM,
        "credentials: no credential sets defined: add one, e.g. [credentials.adobe] with "
        'token_env = "LSPROXY_ADOBE_TOKEN"',
    ),
    (
        "empty credentials",
        "[credentials]\n" + STREAM,
        "credentials: no credential sets defined: add one, e.g. [credentials.adobe] with "
        'token_env = "LSPROXY_ADOBE_TOKEN"',
    ),
    # -- durations
    (
        "string duration",
        '[server]\nheartbeat_interval = "20"\n' + MINIMAL,
        'server.heartbeat_interval: expected a number of seconds, got string "20"',
    ),
    (
        "bool duration",
        "[upstream]\nidle_timeout = true\n" + MINIMAL,
        "upstream.idle_timeout: expected a number of seconds, got boolean true",
    ),
    (
        "negative duration",
        "[server]\nshutdown_grace = -1\n" + MINIMAL,
        "server.shutdown_grace: must be >= 0 seconds, got -1",
    ),
    (
        "negative float duration",
        MINIMAL + "healthy_after = -0.5\n",
        "streams.prod.healthy_after: must be >= 0 seconds, got -0.5",
    ),
    (
        "inf duration",
        "[upstream]\nconnect_timeout = inf\n" + MINIMAL,
        "upstream.connect_timeout: expected a finite number of seconds, got inf",
    ),
    (
        "nan duration",
        "[server]\nwrite_timeout = nan\n" + MINIMAL,
        "server.write_timeout: expected a finite number of seconds, got nan",
    ),
    (
        "zero timeout",
        "[server]\nrequest_timeout = 0\n" + MINIMAL,
        "server.request_timeout: must be > 0 seconds (0 would time out at once)",
    ),
    (
        "zero connect timeout",
        MINIMAL + "connect_timeout = 0\n",
        "streams.prod.connect_timeout: must be > 0 seconds (0 would time out at once)",
    ),
    (
        "date duration",
        "[upstream]\nhealthy_after = 2024-01-01\n" + MINIMAL,
        "upstream.healthy_after: expected a number of seconds, got date",
    ),
    # -- reconnect ordering
    (
        "max < reconnect in upstream",
        "[upstream]\nreconnect_delay = 100\nmax_reconnect_delay = 50\n" + MINIMAL,
        "upstream.max_reconnect_delay: must be >= reconnect_delay (100 s), got 50",
    ),
    (
        "max < default reconnect",
        "[upstream]\nmax_reconnect_delay = 30\n" + MINIMAL,
        "upstream.max_reconnect_delay: must be >= reconnect_delay (60 s), got 30",
    ),
    (
        "stream reconnect > inherited max",
        MINIMAL + "reconnect_delay = 1000\n",
        "streams.prod.reconnect_delay: 1000 s exceeds max_reconnect_delay (900 s from [upstream])",
    ),
    (
        "stream max < inherited reconnect",
        MINIMAL + "max_reconnect_delay = 10\n",
        "streams.prod.max_reconnect_delay: must be >= reconnect_delay (60 s from [upstream]), got 10",
    ),
    (
        "stream max < own reconnect",
        MINIMAL + "reconnect_delay = 70\nmax_reconnect_delay = 65\n",
        "streams.prod.max_reconnect_delay: must be >= reconnect_delay (70 s), got 65",
    ),
    # -- listen
    (
        "listen no port",
        '[server]\nlisten = "localhost"\n' + MINIMAL,
        'server.listen: expected "host:port" (e.g. "127.0.0.1:8080" or "[::1]:8080"), got "localhost"',
    ),
    (
        "listen int",
        "[server]\nlisten = 8080\n" + MINIMAL,
        'server.listen: expected "host:port" (e.g. "127.0.0.1:8080" or "[::1]:8080"), got integer 8080',
    ),
    (
        "listen port range",
        '[server]\nlisten = "127.0.0.1:65536"\n' + MINIMAL,
        "server.listen: port 65536 is outside 0..65535",
    ),
    (
        "listen port text",
        '[server]\nlisten = "127.0.0.1:http"\n' + MINIMAL,
        'server.listen: port must be a number, got "http"',
    ),
    (
        "listen negative port",
        '[server]\nlisten = "127.0.0.1:-1"\n' + MINIMAL,
        'server.listen: port must be a number, got "-1"',
    ),
    (
        "listen empty port",
        '[server]\nlisten = "127.0.0.1:"\n' + MINIMAL,
        'server.listen: port must be a number, got ""',
    ),
    (
        "listen no host",
        '[server]\nlisten = ":8080"\n' + MINIMAL,
        'server.listen: missing host before \':\' (e.g. "127.0.0.1:8080" or "[::1]:8080")',
    ),
    (
        "listen bare ipv6",
        '[server]\nlisten = "::1:8080"\n' + MINIMAL,
        'server.listen: an IPv6 address needs brackets, e.g. "127.0.0.1:8080" or "[::1]:8080"',
    ),
    (
        "listen bad ipv6",
        '[server]\nlisten = "[nothost]:8080"\n' + MINIMAL,
        'server.listen: "nothost" in brackets is not an IPv6 address',
    ),
    (
        "listen spaces",
        '[server]\nlisten = "my host:8080"\n' + MINIMAL,
        'server.listen: invalid host "my host"',
    ),
    # -- replay window
    (
        "replay window string",
        '[server]\nreplay_window_bytes = "big"\n' + MINIMAL,
        'server.replay_window_bytes: expected "auto" or an integer >= 0 (bytes), got string "big"',
    ),
    (
        "replay window negative",
        "[server]\nreplay_window_bytes = -1\n" + MINIMAL,
        'server.replay_window_bytes: expected "auto" or an integer >= 0 (bytes), got integer -1',
    ),
    (
        "replay window float",
        "[server]\nreplay_window_bytes = 1.5\n" + MINIMAL,
        'server.replay_window_bytes: expected "auto" or an integer >= 0 (bytes), got float 1.5',
    ),
    (
        "replay window bool",
        "[server]\nreplay_window_bytes = false\n" + MINIMAL,
        'server.replay_window_bytes: expected "auto" or an integer >= 0 (bytes), got boolean false',
    ),
    # -- retention
    (
        "retention too small",
        MINIMAL + "retention_bytes = 1048575\n",
        "streams.prod.retention_bytes: must be at least 1048576 (1 MiB), got 1048575",
    ),
    (
        "retention float",
        MINIMAL + "retention_bytes = 1e9\n",
        "streams.prod.retention_bytes: expected an integer number of bytes, got float 1000000000.0",
    ),
    (
        "retention string",
        MINIMAL + 'retention_bytes = "256MiB"\n',
        'streams.prod.retention_bytes: expected an integer number of bytes, got string "256MiB"',
    ),
    # -- credentials of a stream
    (
        "unknown credential set",
        MINIMAL + 'credentials = "adobe2"\n',
        "streams.prod.credentials: no credential set named 'adobe2' (known: adobe)",
    ),
    (
        "credentials not a string",
        MINIMAL + "credentials = 1\n",
        "streams.prod.credentials: expected the name of a credential set (a string), got integer",
    ),
    (
        "ambiguous credentials",
        CREDS + '[credentials.b]\ntoken = "x"\n' + STREAM,
        "streams.prod: no credentials: name one of 'adobe', 'b' with 'credentials = \"<name>\"'",
    ),
    # -- credential sets
    (
        "token and token_env",
        CREDS + 'token_env = "X"\n' + STREAM,
        "credentials.adobe: set either token or token_env, not both",
    ),
    (
        "api_key and api_key_env",
        CREDS + 'api_key = "k"\napi_key_env = "K"\n' + STREAM,
        "credentials.adobe: set either api_key or api_key_env, not both",
    ),
    (
        "no token",
        '[credentials.adobe]\napi_key = "k"\n' + STREAM,
        'credentials.adobe: missing token_env (e.g. token_env = "LSPROXY_ADOBE_TOKEN") or token',
    ),
    (
        "token not a string",
        "[credentials.adobe]\ntoken = 12345\n" + STREAM,
        "credentials.adobe.token: expected a string, got integer",
    ),
    ("empty token", '[credentials.adobe]\ntoken = ""\n' + STREAM, "credentials.adobe.token: is empty"),
    (
        "token with space",
        f'[credentials.adobe]\ntoken = "{TOKEN} x"\n' + STREAM,
        "credentials.adobe.token: contains whitespace, control or non-ASCII characters",
    ),
    (
        "token with control char",
        f'[credentials.adobe]\ntoken = "{TOKEN}\\u0007"\n' + STREAM,
        "credentials.adobe.token: contains whitespace, control or non-ASCII characters",
    ),
    (
        "token non-ascii",
        f'[credentials.adobe]\ntoken = "{TOKEN}é"\n' + STREAM,
        "credentials.adobe.token: contains whitespace, control or non-ASCII characters",
    ),
    (
        "token trailing newline",
        f'[credentials.adobe]\ntoken = "{TOKEN}\\n"\n' + STREAM,
        "credentials.adobe.token: has leading or trailing whitespace (a stray newline?)",
    ),
    (
        "bearer prefix",
        f'[credentials.adobe]\ntoken = "Bearer {TOKEN}"\n' + STREAM,
        "credentials.adobe.token: starts with 'Bearer ': give the bare token, lsproxy adds the prefix",
    ),
    (
        "bad api key",
        CREDS + 'api_key = "a b"\n' + STREAM,
        "credentials.adobe.api_key: contains whitespace, control or non-ASCII characters",
    ),
    (
        "token_env not a string",
        "[credentials.adobe]\ntoken_env = 1\n" + STREAM,
        "credentials.adobe.token_env: expected the name of an environment variable, got integer",
    ),
    (
        "token in token_env",
        f'[credentials.adobe]\ntoken_env = "{TOKEN}"\n' + STREAM,
        "credentials.adobe.token_env: not a valid environment variable name (letters, digits, "
        "'_'); to give the value itself use token = \"...\"",
    ),
    # -- url
    (
        "url missing",
        CREDS + '[streams.prod]\nreport_suite = "x"\n',
        'streams.prod: missing url (e.g. url = "https://livestream.adobe.net/api/1/stream/<endpoint>")',
    ),
    (
        "url not a string",
        CREDS + "[streams.prod]\nurl = 5\n",
        "streams.prod.url: expected a URL string, got integer 5",
    ),
    (
        "url no scheme",
        CREDS + '[streams.prod]\nurl = "livestream.adobe.net/api/x"\n',
        "streams.prod.url: expected an http:// or https:// URL, got no scheme",
    ),
    (
        "url bad scheme",
        CREDS + '[streams.prod]\nurl = "ftp://h.example/x"\n',
        "streams.prod.url: expected an http:// or https:// URL, got scheme 'ftp'",
    ),
    (
        "url no host",
        CREDS + '[streams.prod]\nurl = "https:///api/x"\n',
        "streams.prod.url: missing host (expected e.g. https://livestream.adobe.net/...)",
    ),
    (
        "url no path",
        CREDS + '[streams.prod]\nurl = "https://livestream.adobe.net"\n',
        "streams.prod.url: missing path: the URL must end in the stream endpoint, "
        "e.g. /api/1/stream/<endpoint>",
    ),
    (
        "url slash only",
        CREDS + '[streams.prod]\nurl = "https://livestream.adobe.net//?q=1"\n',
        "streams.prod.url: missing path: the URL must end in the stream endpoint, "
        "e.g. /api/1/stream/<endpoint>",
    ),
    (
        "url fragment",
        CREDS + '[streams.prod]\nurl = "https://h.example/x/ep#frag"\n',
        "streams.prod.url: must not contain a fragment ('#...')",
    ),
    (
        "url user info",
        CREDS + f'[streams.prod]\nurl = "https://u:{TOKEN}@h.example/x/ep"\n',
        "streams.prod.url: must not contain user info (user:password@); credentials go in "
        "[credentials.<name>]",
    ),
    (
        "url bad port",
        CREDS + '[streams.prod]\nurl = "https://h.example:99999/x/ep"\n',
        "streams.prod.url: invalid port in URL",
    ),
    (
        "url whitespace",
        CREDS + '[streams.prod]\nurl = "https://h.example/x/e p"\n',
        "streams.prod.url: contains whitespace or control characters",
    ),
    (
        "url bad endpoint",
        CREDS + '[streams.prod]\nurl = "https://h.example/x/e%20p"\n',
        'streams.prod.url: the endpoint (last path segment) "e%20p" is used as a route but it '
        "contains '%' (use letters, digits, '-', '_', '.')",
    ),
    (
        "url dot endpoint",
        CREDS + '[streams.prod]\nurl = "https://h.example/x/.."\n',
        'streams.prod.url: the endpoint (last path segment) ".." is used as a route but '
        "'.' and '..' are not usable path segments",
    ),
    # -- route keys
    (
        "stream name with space",
        CREDS + '[streams."my stream"]\nurl = "https://h.example/x/ep"\n',
        "streams.\"my stream\": the stream name is used as a route but it contains ' ' (use "
        "letters, digits, '-', '_', '.')",
    ),
    (
        "stream name with slash",
        CREDS + '[streams."a/b"]\nurl = "https://h.example/x/ep"\n',
        "streams.\"a/b\": the stream name is used as a route but it contains '/' (use letters, "
        "digits, '-', '_', '.')",
    ),
    (
        "empty stream name",
        CREDS + '[streams.""]\nurl = "https://h.example/x/ep"\n',
        'streams."": the stream name is used as a route but it is empty',
    ),
    (
        "report suite with slash",
        MINIMAL + 'report_suite = "a/b"\n',
        "streams.prod.report_suite: the report suite is used as a route but it contains '/' "
        "(use letters, digits, '-', '_', '.')",
    ),
    (
        "empty report suite",
        MINIMAL + 'report_suite = ""\n',
        "streams.prod.report_suite: the report suite is used as a route but it is empty",
    ),
    (
        "report suite not a string",
        MINIMAL + "report_suite = 7\n",
        "streams.prod.report_suite: expected a string, got integer 7",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"),
    [pytest.param(text, message, id=case_id) for case_id, text, message in ERROR_CASES],
)
def test_errors(text: str, message: str) -> None:
    assert error(text) == f"{FILE}: {message}"


# --------------------------------------------------------------------------- #
# Environment
# --------------------------------------------------------------------------- #

ENV_CREDS = '[credentials.adobe]\ntoken_env = "LSPROXY_ADOBE_TOKEN"\n'


def test_token_from_environ() -> None:
    (stream,) = parse(
        ENV_CREDS + 'api_key_env = "LSPROXY_KEY"\n' + STREAM,
        {"LSPROXY_ADOBE_TOKEN": TOKEN, "LSPROXY_KEY": "client-id"},
    ).streams
    assert stream.credentials.token.reveal() == TOKEN
    assert stream.credentials.api_key is not None
    assert stream.credentials.api_key.reveal() == "client-id"
    assert stream.credentials.source == "env LSPROXY_ADOBE_TOKEN"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "credentials.adobe.token_env: environment variable LSPROXY_ADOBE_TOKEN is not set"),
        (
            {"LSPROXY_ADOBE_TOKEN": ""},
            "credentials.adobe.token_env: environment variable LSPROXY_ADOBE_TOKEN is set but empty",
        ),
        (
            {"LSPROXY_ADOBE_TOKEN": f"{TOKEN}\n"},
            "credentials.adobe.token_env: environment variable LSPROXY_ADOBE_TOKEN has leading or "
            "trailing whitespace (a stray newline?)",
        ),
        (
            {"LSPROXY_ADOBE_TOKEN": f"a {TOKEN}"},
            "credentials.adobe.token_env: environment variable LSPROXY_ADOBE_TOKEN contains "
            "whitespace, control or non-ASCII characters",
        ),
        (
            {"lsproxy_adobe_token": TOKEN},
            "credentials.adobe.token_env: environment variable LSPROXY_ADOBE_TOKEN is not set",
        ),
    ],
)
def test_token_env_errors(environ: dict[str, str], message: str) -> None:
    assert error(ENV_CREDS + STREAM, environ) == f"{FILE}: {message}"


def test_api_key_env_missing() -> None:
    message = error(ENV_CREDS + 'api_key_env = "LSPROXY_KEY"\n' + STREAM)
    assert message == (f"{FILE}: credentials.adobe.api_key_env: environment variable LSPROXY_KEY is not set")


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSPROXY_TEST_CONFIG_TOKEN", TOKEN)
    text = '[credentials.adobe]\ntoken_env = "LSPROXY_TEST_CONFIG_TOKEN"\n' + STREAM
    cfg = parse_config(text, path=FILE)
    assert cfg.streams[0].credentials.token.reveal() == TOKEN


def test_explicit_environ_is_not_merged_with_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSPROXY_TEST_CONFIG_TOKEN", TOKEN)
    text = '[credentials.adobe]\ntoken_env = "LSPROXY_TEST_CONFIG_TOKEN"\n' + STREAM
    with pytest.raises(ConfigError, match="is not set"):
        parse_config(text, path=FILE, environ={})


# --------------------------------------------------------------------------- #
# Secrets never leak
# --------------------------------------------------------------------------- #


def test_repr_and_str_do_not_contain_secrets() -> None:
    cfg = parse(ENV_CREDS + f'api_key = "{TOKEN}-key"\n' + STREAM)
    for text in (repr(cfg), str(cfg), repr(cfg.streams), repr(cfg.streams[0].credentials)):
        assert TOKEN not in text
        assert "Secret('***')" in text
    assert cfg.streams[0].credentials.token.reveal() == TOKEN


@pytest.mark.parametrize(
    "text",
    [
        # an error right next to an inline token
        CREDS + STREAM + "reconect_delay = 60\n",
        CREDS + "api_key = 5\n" + STREAM,
        CREDS + "[streams.prod]\nurl = 3\n",
        CREDS + STREAM + 'credentials = "nope"\n',
        # the token itself in odd places
        f'[credentials.adobe]\ntoken = ["{TOKEN}"]\n' + STREAM,
        f'[credentials.adobe]\ntoken_env = ["{TOKEN}"]\n' + STREAM,
        f'[credentials.adobe]\ntoken = "{TOKEN}"\ntoken_env = "{TOKEN}"\n' + STREAM,
        f'[credentials]\nadobe = {{ tokn = "{TOKEN}" }}\n' + STREAM,
        f'[credentials.adobe]\ntoken = "{TOKEN}\\t"\n' + STREAM,
        f'[credentials.adobe]\napi_key_env = "{TOKEN}"\ntoken = "x"\n' + STREAM,
        CREDS + f'[streams.prod]\nurl = "https://user:{TOKEN}@h.example/x/ep"\n',
        CREDS + STREAM + f'credentials = {{ token = "{TOKEN}" }}\n',
        # syntax errors after the token
        CREDS + "oops\n" + STREAM,
        f'[credentials.adobe]\ntoken = "{TOKEN}\n' + STREAM,
        f'[credentials.adobe]\ntoken = "{TOKEN}"\ntoken = "{TOKEN}"\n' + STREAM,
    ],
)
def test_error_messages_do_not_contain_secrets(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)


def test_env_token_not_in_messages() -> None:
    message = error(ENV_CREDS + STREAM, {"LSPROXY_ADOBE_TOKEN": f"{TOKEN} trailing junk"})
    assert "LSPROXY_ADOBE_TOKEN" in message


# --------------------------------------------------------------------------- #
# TOML syntax and file errors
# --------------------------------------------------------------------------- #


def test_toml_syntax_error_names_file_line_and_column() -> None:
    message = error("[server]\nlisten = \n" + MINIMAL)
    assert message == f"{FILE}: line 2, column 10: Invalid value"


def test_toml_syntax_error_at_end_of_document() -> None:
    message = error(CREDS + '[streams.prod]\nurl = "https://h')
    assert message.startswith(f"{FILE}: ")
    assert "Unterminated string" in message


def test_toml_duplicate_table_is_an_error() -> None:
    message = error(MINIMAL + STREAM)
    assert message.startswith(f"{FILE}: ")


def test_load_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: cannot read config: No such file or directory"


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: cannot read config: ")


def test_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"# \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read config: not UTF-8 (bad byte at offset 2)"


def test_load_uses_path_in_messages_and_config(tmp_path: Path) -> None:
    path = tmp_path / "my.toml"
    path.write_text(MINIMAL + "bogus = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: streams.prod.bogus: unknown key")

    path.write_text("\ufeff" + MINIMAL)  # a BOM is tolerated
    cfg = load_config(str(path), environ={})
    assert cfg.path == str(path)


# --------------------------------------------------------------------------- #
# Warnings
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("text", "warnings"),
    [
        (MINIMAL, []),
        (
            MINIMAL + "reconnect_delay = 5\n",
            ["streams.prod.reconnect_delay: 5 s is below 60 s; Adobe asks ~60 s between reconnects"],
        ),
        (
            "[upstream]\nreconnect_delay = 0.5\n" + MINIMAL,
            ["upstream.reconnect_delay: 0.5 s is below 60 s; Adobe asks ~60 s between reconnects"],
        ),
        # every stream overrides it: the [upstream] value is never used
        ("[upstream]\nreconnect_delay = 5\n" + MINIMAL + "reconnect_delay = 60\n", []),
        (
            '[server]\nlisten = "0.0.0.0:8080"\n' + MINIMAL,
            [
                "server.listen: listening on 0.0.0.0: consumers are not authenticated, anyone who "
                "can reach this address can read the stream"
            ],
        ),
        ('[server]\nlisten = "[::1]:8080"\n' + MINIMAL, []),
        ('[server]\nlisten = "localhost:8080"\n' + MINIMAL, []),
        (
            CREDS + '[streams.prod]\nurl = "http://stream.example/x/ep"\n',
            ["streams.prod.url: plain http:// to stream.example: the token travels unencrypted"],
        ),
        (CREDS + '[streams.prod]\nurl = "http://127.0.0.1:8090/x/ep"\n', []),
        (
            CREDS + '[credentials.spare]\ntoken = "t"\n' + STREAM + 'credentials = "adobe"\n',
            ["credentials.spare: not used by any stream"],
        ),
    ],
)
def test_warnings(text: str, warnings: list[str]) -> None:
    cfg = parse(text)
    assert list(cfg.warnings) == [f"{FILE}: {w}" for w in warnings]
    for w in cfg.warnings:
        assert TOKEN not in w


# --------------------------------------------------------------------------- #
# Shipped example files
# --------------------------------------------------------------------------- #


def test_demo_config_loads_without_env() -> None:
    cfg = load_config(REPO / "config" / "demo.toml", environ={})
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)
    assert cfg.server.heartbeat_interval == 20.0
    (stream,) = cfg.streams
    assert stream.name == "demo"
    assert stream.url == "http://127.0.0.1:8090/api/1/stream/demo-stream"
    assert stream.endpoint == "demo-stream"
    assert stream.report_suite == "simsuite"
    assert stream.credentials.name == "sim"
    assert stream.credentials.token.reveal() == "demo-token"
    assert stream.upstream.reconnect_delay == 60.0
    assert dict(cfg.routes) == {"demo": "demo", "demo-stream": "demo", "simsuite": "demo"}
    assert cfg.warnings == ()


def test_example_config_loads_with_fake_env() -> None:
    cfg = load_config(REPO / "config" / "example.toml", environ={"LSPROXY_ADOBE_TOKEN": TOKEN})
    (stream,) = cfg.streams
    assert stream.url.startswith("https://livestream.adobe.net/api/1/stream/")
    assert stream.credentials.source == "env LSPROXY_ADOBE_TOKEN"
    assert stream.credentials.token.reveal() == TOKEN
    assert stream.credentials.api_key is not None
    assert cfg.warnings == ()
    assert TOKEN not in repr(cfg)


def test_example_config_without_env_fails_clearly() -> None:
    path = REPO / "config" / "example.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == (
        f"{path}: credentials.adobe.token_env: environment variable LSPROXY_ADOBE_TOKEN is not set"
    )
