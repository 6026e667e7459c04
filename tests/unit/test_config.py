"""Tests for lsproxy.config: parsing, defaults, routes, errors, secret masking."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import MappingProxyType

import pytest

from lsproxy.config import (
    DEFAULT_RETENTION_BYTES,
    DEFAULT_RETENTION_SECONDS,
    DEFAULT_TOKEN_URL,
    Config,
    Credentials,
    OAuthSettings,
    ServerConfig,
    StorageConfig,
    StreamConfig,
    UpstreamSettings,
    load_config,
    parse_config,
    read_secret_file,
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
client_buffer_bytes = 65536
max_named_consumers = 500
consumer_ttl = 86400

[storage]
dir = "/var/lib/lsproxy"
durable = false
retention_seconds = 3600
retention_bytes = 10485760
memory_bytes = 2097152
commit_interval = 0.5
heartbeat_interval = 2

[upstream]
reconnect_delay = 90
max_reconnect_delay = 1200
connect_timeout = 12
idle_timeout = 300
healthy_after = 120
connections = 2
smoothing = true
smoothing_bucket_size = 300
dedup_window_records = 1000
dedup_window_seconds = 60

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
connections = 3
smoothing_bucket_size = 60
dedup_window_records = 5000
dedup_window_seconds = 30.5
retention_seconds = 7200
initial_reset = "smallest"

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
        client_buffer_bytes=65536,
        max_named_consumers=500,
        consumer_ttl=86400.0,
    )
    assert cfg.storage == StorageConfig(
        dir="/var/lib/lsproxy",
        durable=False,
        retention_seconds=3600.0,
        retention_bytes=10485760,
        memory_bytes=2097152,
        commit_interval=0.5,
        heartbeat_interval=2.0,
    )
    prod, dev = cfg.streams
    adobe = Credentials(
        name="adobe",
        kind="static",
        token=Secret(TOKEN),
        token_file=None,
        api_key=Secret("my-client-id"),
        oauth=None,
        source="env LSPROXY_ADOBE_TOKEN",
    )
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
            connections=3,
            smoothing=True,
            smoothing_bucket_size=60,
            dedup_window_records=5000,
            dedup_window_seconds=30.5,
        ),
        retention_bytes=2097152,
        retention_seconds=7200.0,
        initial_reset="smallest",
    )
    assert dev.url == "http://127.0.0.1:8090/api/1/stream/dev-stream/"
    assert dev.endpoint == "dev-stream"
    assert dev.report_suite is None
    assert dev.retention_bytes == 10485760
    assert dev.retention_seconds == 3600.0
    assert dev.initial_reset is None
    assert dev.credentials == Credentials(
        name="other",
        kind="static",
        token=Secret("other-token"),
        token_file=None,
        api_key=Secret("other-key"),
        oauth=None,
        source="inline",
        inline_secret=True,
    )
    assert dev.upstream == UpstreamSettings(90.0, 1200.0, 12.0, 300.0, 120.0, 2, True, 300, 1000, 60.0)
    assert dict(cfg.routes) == {
        "prod": "prod",
        "adobe-livestream-acme-prod": "prod",
        "acmeprod": "prod",
        "dev": "dev",
        "dev-stream": "dev",
    }
    assert cfg.warnings == ()
    for value in (
        cfg.server.heartbeat_interval,
        prod.upstream.reconnect_delay,
        dev.upstream.dedup_window_seconds,
        cfg.storage.retention_seconds,
        cfg.storage.heartbeat_interval,
        dev.retention_seconds,
    ):
        assert type(value) is float


def test_defaults() -> None:
    cfg = parse(MINIMAL)
    assert cfg.server == ServerConfig()
    assert cfg.server.host == "127.0.0.1" and cfg.server.port == 8080
    assert cfg.server.replay_window_bytes is None
    assert cfg.server.client_buffer_bytes == 1024 * 1024
    assert cfg.server.max_named_consumers == 10_000 and cfg.server.consumer_ttl == 7 * 86400.0
    (stream,) = cfg.streams
    assert stream.upstream == UpstreamSettings()
    assert stream.upstream == UpstreamSettings(60.0, 900.0, 10.0, 0.0, 60.0, 1, False, None, 200_000, 900.0)
    assert stream.retention_bytes == DEFAULT_RETENTION_BYTES == 2 * 1024**3
    assert stream.retention_seconds == DEFAULT_RETENTION_SECONDS == 86400.0
    assert stream.initial_reset is None
    assert stream.report_suite is None
    assert stream.credentials.name == "adobe"
    assert stream.credentials.kind == "static"
    assert stream.credentials.token == Secret(TOKEN)
    assert stream.credentials.token_file is None
    assert stream.credentials.api_key is None
    assert stream.credentials.oauth is None
    assert stream.credentials.source == "inline"
    assert stream.credentials.inline_secret is True
    assert cfg.storage == StorageConfig(
        dir=os.path.join(os.getcwd(), "data"),
        durable=True,
        retention_seconds=86400.0,
        retention_bytes=2 * 1024**3,
        memory_bytes=64 * 1024**2,
        commit_interval=1.0,
        heartbeat_interval=1.0,
    )
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
    assert prod.retention_bytes == other.retention_bytes == DEFAULT_RETENTION_BYTES


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
    assert two.credentials.token == Secret("bbb")


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
    server = parse(f'[server]\nlisten = "{listen}"\nallow_unauthenticated = true\n' + MINIMAL).server
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
        "upstream.retention_bytes: unknown key (retention_bytes belongs in [storage] or [streams.<name>])",
    ),
    (
        "unknown upstream key",
        "[upstream]\nzzz = 1\n" + MINIMAL,
        "upstream.zzz: unknown key (expected one of: reconnect_delay, max_reconnect_delay, "
        "connect_timeout, idle_timeout, healthy_after, connections, smoothing, smoothing_bucket_size, "
        "dedup_window_records, dedup_window_seconds)",
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
    # -- named consumers and the client allowance
    (
        "max named consumers zero",
        "[server]\nmax_named_consumers = 0\n" + MINIMAL,
        "server.max_named_consumers: must be >= 1, got 0",
    ),
    (
        "max named consumers float",
        "[server]\nmax_named_consumers = 1e4\n" + MINIMAL,
        "server.max_named_consumers: expected an integer number of consumers, got float 10000.0",
    ),
    (
        "max named consumers string",
        '[server]\nmax_named_consumers = "many"\n' + MINIMAL,
        'server.max_named_consumers: expected an integer number of consumers, got string "many"',
    ),
    (
        "consumer ttl negative",
        "[server]\nconsumer_ttl = -1\n" + MINIMAL,
        "server.consumer_ttl: must be >= 0 seconds, got -1",
    ),
    (
        "consumer ttl string",
        '[server]\nconsumer_ttl = "7d"\n' + MINIMAL,
        'server.consumer_ttl: expected a number of seconds, got string "7d"',
    ),
    (
        "consumer ttl infinite",
        "[server]\nconsumer_ttl = inf\n" + MINIMAL,
        "server.consumer_ttl: expected a finite number of seconds, got inf",
    ),
    (
        "client buffer negative",
        "[server]\nclient_buffer_bytes = -5\n" + MINIMAL,
        "server.client_buffer_bytes: must be >= 0, got -5",
    ),
    (
        "client buffer bool",
        "[server]\nclient_buffer_bytes = true\n" + MINIMAL,
        "server.client_buffer_bytes: expected an integer number of bytes, got boolean true",
    ),
    (
        "consumer ttl in upstream",
        "[upstream]\nconsumer_ttl = 60\n" + MINIMAL,
        "upstream.consumer_ttl: unknown key (consumer_ttl belongs in [server])",
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
        'credentials.adobe: missing token_env (e.g. token_env = "LSPROXY_ADOBE_TOKEN"), token_file or '
        'token (or kind = "oauth" for OAuth client credentials)',
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
            '[server]\nlisten = "0.0.0.0:8080"\nallow_unauthenticated = true\n' + MINIMAL,
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
# [storage]
# --------------------------------------------------------------------------- #


def test_storage_values_and_types() -> None:
    text = (
        '[storage]\ndir = "/srv/lsproxy"\ndurable = true\nretention_seconds = 60\n'
        "retention_bytes = 1048576\nmemory_bytes = 1048576\ncommit_interval = 0.25\n"
        "heartbeat_interval = 5\n" + MINIMAL
    )
    storage = parse(text).storage
    assert storage == StorageConfig("/srv/lsproxy", True, 60.0, 1048576, 1048576, 0.25, 5.0)
    assert type(storage.retention_seconds) is float and type(storage.heartbeat_interval) is float


def test_empty_storage_table_means_defaults() -> None:
    assert parse("[storage]\n" + MINIMAL).storage == parse(MINIMAL).storage


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "{base}/data"),
        ('"data"', "{base}/data"),
        ('"var/spool/"', "{base}/var/spool"),
        ('"./a/../b"', "{base}/b"),
        ('"../shared"', "{parent}/shared"),
        ('"/abs/dir"', "/abs/dir"),
        ('"~/lsproxy-data"', "{home}/lsproxy-data"),
    ],
)
def test_storage_dir_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str
) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "lsproxy.toml"
    path.write_text(("" if value is None else f"[storage]\ndir = {value}\n") + MINIMAL)
    path.chmod(0o600)
    want = expected.format(base=conf_dir, parent=tmp_path, home="/home/someone")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory does not matter
    assert load_config(path, environ={}).storage.dir == want
    assert load_config(os.path.relpath(path), environ={}).storage.dir == want
    # parse_config resolves against the directory of the path it is told
    assert parse_config(path.read_text(), path=str(path), environ={}).storage.dir == want


def test_storage_dir_without_a_real_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = '[storage]\ndir = "spool"\n' + MINIMAL
    assert parse_config(text, environ={}).storage.dir == str(tmp_path / "spool")
    assert parse_config(MINIMAL, environ={}).storage.dir == str(tmp_path / "data")
    assert parse_config(text, environ={}, base_dir="/opt/x").storage.dir == "/opt/x/spool"
    assert parse_config(text, path="/etc/lsproxy/x.toml", environ={}).storage.dir == "/etc/lsproxy/spool"


def test_storage_dir_may_exist_as_a_directory_and_must_not_be_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert parse_config(MINIMAL, environ={}, base_dir=str(tmp_path)).storage.dir == str(tmp_path / "data")
    (tmp_path / "afile").write_text("x")
    text = '[storage]\ndir = "afile"\n' + MINIMAL
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=FILE, environ={}, base_dir=str(tmp_path))
    assert str(info.value) == f"{FILE}: storage.dir: {tmp_path / 'afile'} exists but is not a directory"
    # not durable: the directory still holds the upstream journal (and the lock)
    with pytest.raises(ConfigError):
        parse_config('[storage]\ndir = "afile"\ndurable = false\n' + MINIMAL, environ={}, base_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("stream_keys", "storage_keys", "retention_bytes", "retention_seconds"),
    [
        ("", "", 2 * 1024**3, 86400.0),
        ("", "retention_bytes = 5000000\nretention_seconds = 600\n", 5000000, 600.0),
        ("retention_bytes = 3000000\n", "retention_bytes = 5000000\n", 3000000, 86400.0),
        ("retention_seconds = 30.5\n", "retention_seconds = 600\n", 2 * 1024**3, 30.5),
        ("retention_bytes = 1048576\nretention_seconds = 1\n", "", 1048576, 1.0),
    ],
)
def test_retention_defaults_from_storage_and_per_stream_overrides(
    stream_keys: str, storage_keys: str, retention_bytes: int, retention_seconds: float
) -> None:
    text = "[storage]\n" + storage_keys + MINIMAL + stream_keys
    text += '[streams.other]\nurl = "https://h.example/x/other-ep"\n'
    prod, other = parse(text).streams
    assert (prod.retention_bytes, prod.retention_seconds) == (retention_bytes, retention_seconds)
    storage = parse(text).storage
    assert (other.retention_bytes, other.retention_seconds) == (
        storage.retention_bytes,
        storage.retention_seconds,
    )
    assert type(prod.retention_seconds) is float


STORAGE_ERRORS: list[tuple[str, str, str]] = [
    ("not a table", 'storage = "x"\n', 'storage: expected a table ([storage]), got string "x"'),
    ("dir int", "[storage]\ndir = 3\n", "storage.dir: expected a path (a string), got integer 3"),
    ("dir empty", '[storage]\ndir = ""\n', "storage.dir: is empty (expected a path)"),
    ("dir nul", '[storage]\ndir = "a\\u0000b"\n', "storage.dir: contains a NUL character"),
    ("durable int", "[storage]\ndurable = 1\n", "storage.durable: expected true or false, got integer 1"),
    (
        "durable string",
        '[storage]\ndurable = "yes"\n',
        'storage.durable: expected true or false, got string "yes"',
    ),
    (
        "retention_seconds zero",
        "[storage]\nretention_seconds = 0\n",
        "storage.retention_seconds: must be > 0 seconds",
    ),
    (
        "retention_seconds negative",
        "[storage]\nretention_seconds = -5\n",
        "storage.retention_seconds: must be >= 0 seconds, got -5",
    ),
    (
        "retention_seconds string",
        '[storage]\nretention_seconds = "1d"\n',
        'storage.retention_seconds: expected a number of seconds, got string "1d"',
    ),
    (
        "retention_bytes small",
        "[storage]\nretention_bytes = 1000\n",
        "storage.retention_bytes: must be at least 1048576 (1 MiB), got 1000",
    ),
    (
        "memory_bytes small",
        "[storage]\nmemory_bytes = 1048575\n",
        "storage.memory_bytes: must be at least 1048576 (1 MiB), got 1048575",
    ),
    (
        "memory_bytes float",
        "[storage]\nmemory_bytes = 64e6\n",
        "storage.memory_bytes: expected an integer number of bytes, got float 64000000.0",
    ),
    (
        "commit_interval zero",
        "[storage]\ncommit_interval = 0\n",
        "storage.commit_interval: must be > 0 seconds",
    ),
    (
        "commit_interval inf",
        "[storage]\ncommit_interval = inf\n",
        "storage.commit_interval: expected a finite number of seconds, got inf",
    ),
    (
        "heartbeat_interval zero",
        "[storage]\nheartbeat_interval = 0\n",
        "storage.heartbeat_interval: must be > 0 seconds",
    ),
    (
        "heartbeat_interval bool",
        "[storage]\nheartbeat_interval = true\n",
        "storage.heartbeat_interval: expected a number of seconds, got boolean true",
    ),
    (
        "typo",
        "[storage]\nretention_second = 5\n",
        "storage.retention_second: unknown key (did you mean 'retention_seconds'?)",
    ),
    (
        "upstream key in storage",
        "[storage]\nreconnect_delay = 60\n",
        "storage.reconnect_delay: unknown key (reconnect_delay belongs in [upstream] or [streams.<name>])",
    ),
    (
        "server key in storage",
        '[storage]\nlisten = "127.0.0.1:1"\n',
        "storage.listen: unknown key (listen belongs in [server])",
    ),
    (
        "initial_reset in storage",
        '[storage]\ninitial_reset = "smallest"\n',
        "storage.initial_reset: unknown key (initial_reset is set per stream, in [streams.<name>])",
    ),
    (
        "storage key in server",
        '[server]\ndir = "x"\n',
        "server.dir: unknown key (dir belongs in [storage])",
    ),
    (
        "retention_seconds in server",
        "[server]\nretention_seconds = 5\n",
        "server.retention_seconds: unknown key (retention_seconds belongs in [storage] or [streams.<name>])",
    ),
    (
        "storage key in upstream",
        "[upstream]\nmemory_bytes = 5\n",
        "upstream.memory_bytes: unknown key (memory_bytes belongs in [storage])",
    ),
    (
        "heartbeat in upstream",
        "[upstream]\nheartbeat_interval = 5\n",
        "upstream.heartbeat_interval: unknown key (heartbeat_interval belongs in [server] (keep-alive "
        'to consumers) or [storage] (the "still connected" record))',
    ),
]


@pytest.mark.parametrize(
    ("text", "message"),
    [pytest.param(text, message, id=case_id) for case_id, text, message in STORAGE_ERRORS],
)
def test_storage_errors(text: str, message: str) -> None:
    assert error(text + MINIMAL) == f"{FILE}: {message}"


STREAM_STORAGE_ERRORS: list[tuple[str, str, str]] = [
    (
        "retention_seconds zero",
        "retention_seconds = 0\n",
        "streams.prod.retention_seconds: must be > 0 seconds",
    ),
    (
        "retention_seconds string",
        'retention_seconds = "1h"\n',
        'streams.prod.retention_seconds: expected a number of seconds, got string "1h"',
    ),
    (
        "memory_bytes per stream",
        "memory_bytes = 2000000\n",
        "streams.prod.memory_bytes: unknown key (memory_bytes is set for all streams, in [storage])",
    ),
    (
        "dir per stream",
        'dir = "x"\n',
        "streams.prod.dir: unknown key (dir is set for all streams, in [storage])",
    ),
    (
        "heartbeat per stream",
        "heartbeat_interval = 1\n",
        "streams.prod.heartbeat_interval: unknown key (heartbeat_interval belongs in [server] "
        '(keep-alive to consumers) or [storage] (the "still connected" record))',
    ),
]


@pytest.mark.parametrize(
    ("keys", "message"),
    [pytest.param(keys, message, id=case_id) for case_id, keys, message in STREAM_STORAGE_ERRORS],
)
def test_stream_storage_errors(keys: str, message: str) -> None:
    assert error(MINIMAL + keys) == f"{FILE}: {message}"


# --------------------------------------------------------------------------- #
# New [upstream] keys and initial_reset
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("keys", "field", "value"),
    [
        ("connections = 1", "connections", 1),
        ("connections = 8", "connections", 8),
        ("smoothing = true", "smoothing", True),
        ("smoothing = false", "smoothing", False),
        ("smoothing = true\nsmoothing_bucket_size = 1", "smoothing_bucket_size", 1),
        ("smoothing = true\nsmoothing_bucket_size = 7200", "smoothing_bucket_size", 7200),
        ("smoothing = true", "smoothing_bucket_size", None),
        ("dedup_window_records = 0", "dedup_window_records", 0),
        ("dedup_window_records = 10_000_000", "dedup_window_records", 10_000_000),
        ("dedup_window_seconds = 0", "dedup_window_seconds", 0.0),
        ("dedup_window_seconds = 1.5", "dedup_window_seconds", 1.5),
    ],
)
def test_new_upstream_keys_in_upstream_and_per_stream(keys: str, field: str, value: object) -> None:
    (stream,) = parse(f"[upstream]\n{keys}\n" + MINIMAL).streams
    assert getattr(stream.upstream, field) == value
    assert type(getattr(stream.upstream, field)) is type(value)
    (stream,) = parse(MINIMAL + keys + "\n").streams
    assert getattr(stream.upstream, field) == value


def test_new_upstream_keys_inherit_and_override_per_key() -> None:
    text = (
        "[upstream]\nconnections = 4\nsmoothing = true\nsmoothing_bucket_size = 300\n"
        "dedup_window_records = 1000\n"
        + CREDS
        + '[streams.a]\nurl = "https://h.example/x/a-ep"\n'
        + '[streams.b]\nurl = "https://h.example/x/b-ep"\nsmoothing = false\n'
        + '[streams.c]\nurl = "https://h.example/x/c-ep"\nsmoothing_bucket_size = 60\nconnections = 1\n'
        + '[streams.d]\nurl = "https://h.example/x/d-ep"\ndedup_window_records = 0\nconnections = 2\n'
    )
    cfg = parse(text)
    a, b, c, d = (s.upstream for s in cfg.streams)
    assert (a.connections, a.smoothing, a.smoothing_bucket_size, a.dedup_window_records) == (
        4,
        True,
        300,
        1000,
    )
    # turning smoothing off drops the bucket size inherited from [upstream]
    assert (b.smoothing, b.smoothing_bucket_size, b.connections) == (False, None, 4)
    assert (c.smoothing, c.smoothing_bucket_size, c.connections) == (True, 60, 1)
    assert (d.dedup_window_records, d.connections, d.smoothing_bucket_size) == (0, 2, 300)
    assert list(cfg.warnings) == [
        f"{FILE}: streams.d: connections = 2 with dedup_window_records = 0: duplicates from multiple "
        "connections will reach consumers"
    ]


@pytest.mark.parametrize("reset", ["smallest", "largest"])
def test_initial_reset(reset: str) -> None:
    (stream,) = parse(MINIMAL + f'initial_reset = "{reset}"\n').streams
    assert stream.initial_reset == reset


UPSTREAM_ERRORS: list[tuple[str, str, str]] = [
    ("connections zero", "connections = 0", "connections: must be 1..8 connections, got 0"),
    ("connections nine", "connections = 9", "connections: must be 1..8 connections, got 9"),
    (
        "connections float",
        "connections = 2.0",
        "connections: expected an integer number of connections, got float 2.0",
    ),
    (
        "connections string",
        'connections = "2"',
        'connections: expected an integer number of connections, got string "2"',
    ),
    (
        "connections bool",
        "connections = true",
        "connections: expected an integer number of connections, got boolean true",
    ),
    ("smoothing int", "smoothing = 1", "smoothing: expected true or false, got integer 1"),
    ("smoothing string", 'smoothing = "true"', 'smoothing: expected true or false, got string "true"'),
    (
        "bucket zero",
        "smoothing = true\nsmoothing_bucket_size = 0",
        "smoothing_bucket_size: must be 1..7200 seconds, got 0",
    ),
    (
        "bucket too big",
        "smoothing = true\nsmoothing_bucket_size = 7201",
        "smoothing_bucket_size: must be 1..7200 seconds, got 7201",
    ),
    (
        "bucket float",
        "smoothing = true\nsmoothing_bucket_size = 2.5",
        "smoothing_bucket_size: expected an integer number of seconds, got float 2.5",
    ),
    (
        "dedup records negative",
        "dedup_window_records = -1",
        "dedup_window_records: must be >= 0, got -1",
    ),
    (
        "dedup records float",
        "dedup_window_records = 1e5",
        "dedup_window_records: expected an integer number of records, got float 100000.0",
    ),
    (
        "dedup seconds negative",
        "dedup_window_seconds = -1",
        "dedup_window_seconds: must be >= 0 seconds, got -1",
    ),
    (
        "dedup seconds string",
        'dedup_window_seconds = "15m"',
        'dedup_window_seconds: expected a number of seconds, got string "15m"',
    ),
]


@pytest.mark.parametrize(
    ("keys", "message"),
    [pytest.param(keys, message, id=case_id) for case_id, keys, message in UPSTREAM_ERRORS],
)
def test_new_upstream_key_errors(keys: str, message: str) -> None:
    assert error(f"[upstream]\n{keys}\n" + MINIMAL) == f"{FILE}: upstream.{message}"
    assert error(MINIMAL + keys + "\n") == f"{FILE}: streams.prod.{message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[upstream]\nsmoothing_bucket_size = 60\n" + MINIMAL,
            "upstream: smoothing_bucket_size needs smoothing = true",
        ),
        (
            "[upstream]\nsmoothing = false\nsmoothing_bucket_size = 60\n" + MINIMAL,
            "upstream: smoothing_bucket_size needs smoothing = true",
        ),
        (
            MINIMAL + "smoothing_bucket_size = 60\n",
            "streams.prod: smoothing_bucket_size needs smoothing = true",
        ),
        (
            "[upstream]\nsmoothing = true\n" + MINIMAL + "smoothing = false\nsmoothing_bucket_size = 60\n",
            "streams.prod: smoothing_bucket_size needs smoothing = true",
        ),
        (
            MINIMAL + 'initial_reset = "oldest"\n',
            'streams.prod.initial_reset: expected "smallest" or "largest", got string "oldest"',
        ),
        (
            MINIMAL + "initial_reset = 1\n",
            'streams.prod.initial_reset: expected "smallest" or "largest", got integer 1',
        ),
        (
            MINIMAL + 'initial_reset = "SMALLEST"\n',
            'streams.prod.initial_reset: expected "smallest" or "largest", got string "SMALLEST"',
        ),
        (
            '[upstream]\ninitial_reset = "smallest"\n' + MINIMAL,
            "upstream.initial_reset: unknown key (initial_reset is set per stream, in [streams.<name>])",
        ),
        (
            '[server]\ninitial_reset = "smallest"\n' + MINIMAL,
            "server.initial_reset: unknown key (initial_reset is set per stream, in [streams.<name>])",
        ),
        (
            MINIMAL + "initial_rest = 1\n",
            "streams.prod.initial_rest: unknown key (did you mean 'initial_reset'?)",
        ),
    ],
)
def test_smoothing_and_initial_reset_errors(text: str, message: str) -> None:
    assert error(text) == f"{FILE}: {message}"


@pytest.mark.parametrize(
    ("text", "warned"),
    [
        ("[upstream]\nconnections = 2\n" + MINIMAL, []),
        ("[upstream]\ndedup_window_records = 0\n" + MINIMAL, []),
        (MINIMAL + "connections = 3\ndedup_window_records = 0\n", ["prod: connections = 3"]),
        (
            "[upstream]\nconnections = 8\ndedup_window_records = 0\n"
            + MINIMAL
            + '[streams.two]\nurl = "https://h.example/x/two-ep"\n'
            + '[streams.three]\nurl = "https://h.example/x/three-ep"\ndedup_window_records = 10\n',
            ["prod: connections = 8", "two: connections = 8"],
        ),
    ],
)
def test_connections_without_dedup_warns(text: str, warned: list[str]) -> None:
    warnings = parse(text).warnings
    assert [w.split(" with ")[0] for w in warnings] == [f"{FILE}: streams.{w}" for w in warned]
    for w in warnings:
        assert w.endswith(": duplicates from multiple connections will reach consumers")


# --------------------------------------------------------------------------- #
# Credentials: static sets with token_file, kinds
# --------------------------------------------------------------------------- #

CLIENT_ID = "0123456789abcdef0123456789abcdef"
CLIENT_SECRET = "p8e-CL1ENT-s3cret-XYZ"
OAUTH_ENV = {"LSPROXY_ADOBE_CLIENT_SECRET": CLIENT_SECRET}
SCOPES = '["openid", "AdobeID", "read_organizations", "additional_info.projectedProductContext"]'
OAUTH = (
    f'[credentials.adobe]\nkind = "oauth"\nclient_id = "{CLIENT_ID}"\n'
    f'client_secret_env = "LSPROXY_ADOBE_CLIENT_SECRET"\nscopes = {SCOPES}\n'
)


def secret_file(directory: Path, content: str, mode: int = 0o600, name: str = "secret") -> Path:
    path = directory / name
    path.write_text(content)
    path.chmod(mode)
    return path


def oauth_error(text: str, environ: dict[str, str] | None = None) -> str:
    message = error(text, OAUTH_ENV if environ is None else environ)
    assert CLIENT_SECRET not in message
    assert CLIENT_ID not in message
    return message


def test_token_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, TOKEN + "\r\n")
    cfg = parse(f'[credentials.adobe]\ntoken_file = "{path}"\napi_key = "k"\n' + STREAM)
    creds = cfg.streams[0].credentials
    assert creds == Credentials(
        name="adobe",
        kind="static",
        token=None,
        token_file=str(path),
        api_key=Secret("k"),
        oauth=None,
        source=f"file {path}",
        inline_secret=False,
    )
    assert cfg.warnings == ()
    assert read_secret_file(str(path)) == Secret(TOKEN)


def test_token_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    path = secret_file(tmp_path / "secrets", TOKEN)
    config = tmp_path / "lsproxy.toml"
    config.write_text('[credentials.adobe]\ntoken_file = "secrets/secret"\n' + STREAM)
    creds = load_config(config, environ={}).streams[0].credentials
    assert creds.token_file == str(path)
    assert creds.source == f"file {path}"


def test_explicit_static_kind() -> None:
    creds = (
        parse('[credentials.adobe]\nkind = "static"\n' + f'token = "{TOKEN}"\n' + STREAM)
        .streams[0]
        .credentials
    )
    assert (creds.kind, creds.token, creds.oauth) == ("static", Secret(TOKEN), None)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        (f"Bearer {TOKEN}\n", "starts with 'Bearer ': give the bare token, lsproxy adds the prefix"),
        (f"{TOKEN} \n", "has leading or trailing whitespace (a stray newline?)"),
        (f"{TOKEN}\n{TOKEN}\n", "contains whitespace, control or non-ASCII characters"),
        ("x" * (64 * 1024 + 1), "is larger than 64 KiB (not a secret file?)"),
    ],
)
def test_bad_token_file_content(tmp_path: Path, content: str, problem: str) -> None:
    path = secret_file(tmp_path, content)
    message = error(f'[credentials.adobe]\ntoken_file = "{path}"\n' + STREAM)
    assert message == f"{FILE}: credentials.adobe.token_file: {path} {problem}"
    with pytest.raises(ConfigError) as info:
        read_secret_file(str(path))
    assert str(info.value) == f"{path}: {problem}"
    assert TOKEN not in str(info.value)


def test_token_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfe")
    assert error(f'[credentials.adobe]\ntoken_file = "{path}"\n' + STREAM) == (
        f"{FILE}: credentials.adobe.token_file: {path} is not UTF-8 text"
    )


def test_token_file_missing_or_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert error(f'[credentials.adobe]\ntoken_file = "{missing}"\n' + STREAM) == (
        f"{FILE}: credentials.adobe.token_file: {missing} does not exist"
    )
    assert error(f'[credentials.adobe]\ntoken_file = "{tmp_path}"\n' + STREAM) == (
        f"{FILE}: credentials.adobe.token_file: {tmp_path} is not a regular file"
    )
    with pytest.raises(ConfigError, match="does not exist"):
        read_secret_file(str(missing))


STATIC_ERRORS: list[tuple[str, str, str]] = [
    (
        "token and token_file",
        f'token = "{TOKEN}"\ntoken_file = "/x"\n',
        "credentials.adobe: set either token or token_file, not both",
    ),
    (
        "token_env and token_file",
        'token_env = "X"\ntoken_file = "/x"\n',
        "credentials.adobe: set either token_env or token_file, not both",
    ),
    (
        "all three",
        f'token = "{TOKEN}"\ntoken_env = "X"\ntoken_file = "/x"\n',
        "credentials.adobe: set only one of token, token_env, token_file",
    ),
    (
        "token_file int",
        "token_file = 3\n",
        "credentials.adobe.token_file: expected a path (a string), got integer",
    ),
    (
        "token_file empty",
        'token_file = ""\n',
        "credentials.adobe.token_file: is empty (expected a path)",
    ),
    (
        "kind unknown",
        f'kind = "oauht"\ntoken = "{TOKEN}"\n',
        "credentials.adobe.kind: unknown kind (did you mean 'oauth'? valid kinds: static, oauth)",
    ),
    (
        "kind unrelated",
        f'kind = "jwt"\ntoken = "{TOKEN}"\n',
        "credentials.adobe.kind: unknown kind (valid kinds: static, oauth)",
    ),
    (
        "kind not a string",
        f'kind = 1\ntoken = "{TOKEN}"\n',
        'credentials.adobe.kind: expected "static" or "oauth", got integer',
    ),
    (
        "oauth key without kind",
        f'token = "{TOKEN}"\nclient_id = "abc"\n',
        'credentials.adobe.client_id: not used with kind = "static" (the default when kind is absent; '
        'add kind = "oauth")',
    ),
    (
        "oauth key with static kind",
        f'kind = "static"\ntoken = "{TOKEN}"\nscopes = ["openid"]\n',
        'credentials.adobe.scopes: not used with kind = "static"',
    ),
    (
        "client_secret_env under static",
        f'token = "{TOKEN}"\nclient_secret_env = "S"\n',
        'credentials.adobe.client_secret_env: not used with kind = "static" (the default when kind is '
        'absent; add kind = "oauth")',
    ),
    (
        "inline client_secret under static",
        f'token = "{TOKEN}"\nclient_secret = "{TOKEN}"\n',
        "credentials.adobe: client_secret must not be inline: use client_secret_env or client_secret_file",
    ),
    (
        "token_url under static",
        f'token = "{TOKEN}"\ntoken_url = "https://h.example/t"\n',
        'credentials.adobe.token_url: not used with kind = "static" (the default when kind is absent; '
        'add kind = "oauth")',
    ),
    (
        "token_file typo",
        'token_fle = "/x"\n',
        "credentials.adobe.token_fle: unknown key (did you mean 'token_file'?)",
    ),
]


@pytest.mark.parametrize(
    ("keys", "message"),
    [pytest.param(keys, message, id=case_id) for case_id, keys, message in STATIC_ERRORS],
)
def test_static_credential_errors(keys: str, message: str) -> None:
    assert error("[credentials.adobe]\n" + keys + STREAM) == f"{FILE}: {message}"


# --------------------------------------------------------------------------- #
# Credentials: OAuth
# --------------------------------------------------------------------------- #


def test_oauth_minimal() -> None:
    cfg = parse(OAUTH + STREAM, OAUTH_ENV)
    creds = cfg.streams[0].credentials
    assert creds == Credentials(
        name="adobe",
        kind="oauth",
        token=None,
        token_file=None,
        api_key=Secret(CLIENT_ID),
        oauth=OAuthSettings(
            client_id=CLIENT_ID,
            client_secret=Secret(CLIENT_SECRET),
            client_secret_file=None,
            scopes=("openid", "AdobeID", "read_organizations", "additional_info.projectedProductContext"),
            token_url=DEFAULT_TOKEN_URL,
        ),
        source="oauth client 0123… via ims-na1.adobelogin.com",
        inline_secret=False,
    )
    assert DEFAULT_TOKEN_URL == "https://ims-na1.adobelogin.com/ims/token/v3"
    assert cfg.warnings == ()


def test_oauth_with_env_client_id_file_secret_api_key_and_token_url(tmp_path: Path) -> None:
    path = secret_file(tmp_path, CLIENT_SECRET + "\n")
    text = (
        '[credentials.ims]\nkind = "oauth"\nclient_id_env = "CID"\n'
        f'client_secret_file = "{path}"\nscopes = ["openid"]\n'
        'token_url = "http://127.0.0.1:8090/ims/token/v3"\napi_key_env = "KEY"\n' + STREAM
    )
    cfg = parse(text, {"CID": "ab", "KEY": "the-api-key"})
    creds = cfg.streams[0].credentials
    assert creds.kind == "oauth" and creds.token is None and creds.token_file is None
    assert creds.api_key == Secret("the-api-key")
    assert creds.oauth == OAuthSettings(
        "ab", None, str(path), ("openid",), "http://127.0.0.1:8090/ims/token/v3"
    )
    assert creds.source == "oauth client a… via 127.0.0.1:8090"
    assert read_secret_file(str(path)) == Secret(CLIENT_SECRET)
    assert cfg.warnings == ()


@pytest.mark.parametrize(
    "token_url",
    [
        "https://ims-eu1.adobelogin.com/ims/token/v3",
        "https://ims.example:8443/token?x=1",
        "http://localhost:9000/ims/token/v3",
        "http://[::1]:9000/t",
    ],
)
def test_oauth_token_urls(token_url: str) -> None:
    cfg = parse(OAUTH + f'token_url = "{token_url}"\napi_key = "k"\n' + STREAM, OAUTH_ENV)
    creds = cfg.streams[0].credentials
    assert creds.oauth is not None and creds.oauth.token_url == token_url
    assert creds.api_key == Secret("k")


OAUTH_BASE = '[credentials.adobe]\nkind = "oauth"\n'
ID = f'client_id = "{CLIENT_ID}"\n'
SECRET_ENV = 'client_secret_env = "LSPROXY_ADOBE_CLIENT_SECRET"\n'
SC = f"scopes = {SCOPES}\n"

OAUTH_ERRORS: list[tuple[str, str, str]] = [
    (
        "inline client_secret",
        ID + f'client_secret = "{CLIENT_SECRET}"\n' + SC,
        "credentials.adobe: client_secret must not be inline: use client_secret_env or client_secret_file",
    ),
    (
        "missing client id",
        SECRET_ENV + SC,
        'credentials.adobe: missing client_id (e.g. client_id = "<your client id>") or client_id_env',
    ),
    (
        "client id twice",
        ID + 'client_id_env = "CID"\n' + SECRET_ENV + SC,
        "credentials.adobe: set either client_id or client_id_env, not both",
    ),
    (
        "client id not a string",
        "client_id = 5\n" + SECRET_ENV + SC,
        "credentials.adobe.client_id: expected a string, got integer",
    ),
    (
        "client id with space",
        f'client_id = "{CLIENT_ID} x"\n' + SECRET_ENV + SC,
        "credentials.adobe.client_id: contains whitespace, control or non-ASCII characters",
    ),
    (
        "client id env unset",
        'client_id_env = "CID"\n' + SECRET_ENV + SC,
        "credentials.adobe.client_id_env: environment variable CID is not set",
    ),
    (
        "missing secret",
        ID + SC,
        'credentials.adobe: missing client_secret_env (e.g. client_secret_env = "LSPROXY_ADOBE_CLIENT_SECRET") '
        "or client_secret_file",
    ),
    (
        "secret twice",
        ID + SECRET_ENV + 'client_secret_file = "/x"\n' + SC,
        "credentials.adobe: set either client_secret_env or client_secret_file, not both",
    ),
    (
        "secret pasted into client_secret_env",
        ID + f'client_secret_env = "{CLIENT_SECRET}"\n' + SC,
        "credentials.adobe.client_secret_env: not a valid environment variable name (letters, digits, "
        "'_'); the value itself must not be in this file (use client_secret_file)",
    ),
    (
        "secret env unset",
        ID + 'client_secret_env = "NOPE"\n' + SC,
        "credentials.adobe.client_secret_env: environment variable NOPE is not set",
    ),
    (
        "secret file missing",
        ID + 'client_secret_file = "/nonexistent/lsproxy/secret"\n' + SC,
        "credentials.adobe.client_secret_file: /nonexistent/lsproxy/secret does not exist",
    ),
    (
        "missing scopes",
        ID + SECRET_ENV,
        'credentials.adobe: missing scopes (e.g. scopes = ["openid", "AdobeID", "read_organizations", '
        '"additional_info.projectedProductContext"])',
    ),
    (
        "scopes as one string",
        ID + SECRET_ENV + 'scopes = "openid,AdobeID"\n',
        'credentials.adobe.scopes: expected a list of strings (e.g. scopes = ["openid", "AdobeID", '
        '"read_organizations", "additional_info.projectedProductContext"]), got string',
    ),
    (
        "scopes empty",
        ID + SECRET_ENV + "scopes = []\n",
        'credentials.adobe.scopes: must list at least one scope (e.g. scopes = ["openid", "AdobeID", '
        '"read_organizations", "additional_info.projectedProductContext"])',
    ),
    (
        "scope not a string",
        ID + SECRET_ENV + 'scopes = ["openid", 3]\n',
        "credentials.adobe.scopes: item 2: expected a string, got integer",
    ),
    (
        "scope empty",
        ID + SECRET_ENV + 'scopes = [""]\n',
        "credentials.adobe.scopes: item 1 is empty",
    ),
    (
        "scope with comma",
        ID + SECRET_ENV + 'scopes = ["openid,AdobeID"]\n',
        "credentials.adobe.scopes: item 1 contains a comma, whitespace or control characters (give "
        "each scope as its own string)",
    ),
    (
        "scope with space",
        ID + SECRET_ENV + 'scopes = ["openid", "Adobe ID"]\n',
        "credentials.adobe.scopes: item 2 contains a comma, whitespace or control characters (give "
        "each scope as its own string)",
    ),
    (
        "scope repeated",
        ID + SECRET_ENV + 'scopes = ["openid", "AdobeID", "openid"]\n',
        "credentials.adobe.scopes: item 3 repeats item 1",
    ),
    (
        "token_url plain http",
        ID + SECRET_ENV + SC + 'token_url = "http://ims.example/token"\n',
        "credentials.adobe.token_url: plain http:// is only allowed to a loopback host: the client "
        "secret would travel unencrypted",
    ),
    (
        "token_url scheme",
        ID + SECRET_ENV + SC + 'token_url = "ftp://ims.example/token"\n',
        "credentials.adobe.token_url: expected an http:// or https:// URL, got scheme 'ftp'",
    ),
    (
        "token_url user info",
        ID + SECRET_ENV + SC + f'token_url = "https://u:{CLIENT_SECRET}@ims.example/t"\n',
        "credentials.adobe.token_url: must not contain user info (user:password@); credentials go in "
        "[credentials.<name>]",
    ),
    (
        "token_url not a string",
        ID + SECRET_ENV + SC + "token_url = 1\n",
        "credentials.adobe.token_url: expected a URL string, got integer 1",
    ),
    (
        "token_url no host",
        ID + SECRET_ENV + SC + 'token_url = "https:///t"\n',
        "credentials.adobe.token_url: missing host (expected e.g. https://ims-na1.adobelogin.com/ims/token/v3)",
    ),
    (
        "token under oauth",
        ID + SECRET_ENV + SC + f'token = "{TOKEN}"\n',
        'credentials.adobe.token: not used with kind = "oauth" (lsproxy fetches the token with the '
        "client id and secret)",
    ),
    (
        "token_env under oauth",
        'token_env = "LSPROXY_ADOBE_TOKEN"\n' + ID + SECRET_ENV + SC,
        'credentials.adobe.token_env: not used with kind = "oauth" (lsproxy fetches the token with the '
        "client id and secret)",
    ),
    (
        "token_file under oauth",
        ID + SECRET_ENV + SC + 'token_file = "/x"\n',
        'credentials.adobe.token_file: not used with kind = "oauth" (lsproxy fetches the token with the '
        "client id and secret)",
    ),
    (
        "api_key twice",
        ID + SECRET_ENV + SC + 'api_key = "a"\napi_key_env = "B"\n',
        "credentials.adobe: set either api_key or api_key_env, not both",
    ),
    (
        "scope typo",
        ID + SECRET_ENV + 'scope = ["openid"]\n',
        "credentials.adobe.scope: unknown key (did you mean 'scopes'?)",
    ),
]


@pytest.mark.parametrize(
    ("keys", "message"),
    [pytest.param(keys, message, id=case_id) for case_id, keys, message in OAUTH_ERRORS],
)
def test_oauth_errors(keys: str, message: str) -> None:
    assert oauth_error(OAUTH_BASE + keys + STREAM) == f"{FILE}: {message}"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is set but empty"),
        (f"{CLIENT_SECRET}\n", "has leading or trailing whitespace (a stray newline?)"),
        (f"a {CLIENT_SECRET}", "contains whitespace, control or non-ASCII characters"),
    ],
)
def test_oauth_client_secret_env_values(value: str, problem: str) -> None:
    message = oauth_error(OAUTH + STREAM, {"LSPROXY_ADOBE_CLIENT_SECRET": value})
    assert message == (
        f"{FILE}: credentials.adobe.client_secret_env: environment variable LSPROXY_ADOBE_CLIENT_SECRET {problem}"
    )


def test_oauth_client_secret_file_bad_content(tmp_path: Path) -> None:
    path = secret_file(tmp_path, f" {CLIENT_SECRET}")
    text = OAUTH_BASE + ID + f'client_secret_file = "{path}"\n' + SC + STREAM
    assert oauth_error(text) == (
        f"{FILE}: credentials.adobe.client_secret_file: {path} has leading or trailing whitespace "
        "(a stray newline?)"
    )


def test_oauth_secrets_never_in_repr(tmp_path: Path) -> None:
    cfg = parse(OAUTH + STREAM, OAUTH_ENV)
    path = secret_file(tmp_path, CLIENT_SECRET)
    cfg2 = parse(OAUTH_BASE + ID + f'client_secret_file = "{path}"\n' + SC + STREAM, {})
    for c in (cfg, cfg2):
        for text in (repr(c), str(c), repr(c.streams[0].credentials), repr(c.streams[0].credentials.oauth)):
            assert CLIENT_SECRET not in text
            assert CLIENT_ID not in text
    assert "Secret('***')" in repr(cfg.streams[0].credentials.oauth)


# --------------------------------------------------------------------------- #
# Permission warnings (real files)
# --------------------------------------------------------------------------- #


def write_config(directory: Path, text: str, mode: int) -> Path:
    path = directory / "lsproxy.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


INLINE_WARNING = (
    "{path}: credentials.adobe.token: the file holds a secret inline and is readable by others "
    "(chmod 600 {path}, or use token_env / token_file)"
)


@pytest.mark.parametrize(
    ("mode", "warned"),
    [(0o644, True), (0o640, True), (0o604, True), (0o600, False), (0o400, False), (0o700, False)],
)
def test_inline_token_in_a_file_others_can_read(tmp_path: Path, mode: int, warned: bool) -> None:
    path = write_config(tmp_path, MINIMAL, mode)
    cfg = load_config(path, environ={})
    expected = [INLINE_WARNING.format(path=path)] if warned else []
    assert list(cfg.warnings) == expected
    for w in cfg.warnings:
        assert TOKEN not in w
    # parse_config knows no file, so no such warning
    assert parse_config(MINIMAL, path=str(path), environ={}).warnings == ()


def test_inline_token_warning_for_a_set_no_stream_uses(tmp_path: Path) -> None:
    text = CREDS + '[credentials.env]\ntoken_env = "T"\n' + STREAM + 'credentials = "env"\n'
    cfg = load_config(write_config(tmp_path, text, 0o644), environ={"T": "t"})
    assert [w.split(": ", 2)[1] for w in cfg.warnings] == ["credentials.adobe", "credentials.adobe.token"]


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://127.0.0.1:8090/api/1/stream/sim", False),  # the simulator: not a real secret
        ("http://localhost:8090/api/1/stream/sim", False),
        ("https://127.0.0.1:8443/api/1/stream/sim", True),  # a tunnel to the real thing?
        ("https://livestream.adobe.net/api/1/stream/ep", True),
    ],
)
def test_inline_token_for_the_local_simulator_is_not_warned(tmp_path: Path, url: str, warned: bool) -> None:
    path = write_config(tmp_path, CREDS + f'[streams.prod]\nurl = "{url}"\n', 0o644)
    cfg = load_config(path, environ={})
    assert list(cfg.warnings) == ([INLINE_WARNING.format(path=path)] if warned else [])


def test_env_token_and_inline_api_key_are_not_inline_secrets(tmp_path: Path) -> None:
    text = '[credentials.adobe]\ntoken_env = "T"\napi_key = "client-id"\n' + STREAM
    cfg = load_config(write_config(tmp_path, text, 0o644), environ={"T": TOKEN})
    assert cfg.streams[0].credentials.inline_secret is False
    assert cfg.warnings == ()
    cfg = load_config(write_config(tmp_path, OAUTH + STREAM, 0o644), environ=OAUTH_ENV)
    assert cfg.streams[0].credentials.inline_secret is False
    assert cfg.warnings == ()


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False), (0o400, False)])
@pytest.mark.parametrize("kind", ["token_file", "client_secret_file"])
def test_secret_file_others_can_read(tmp_path: Path, kind: str, mode: int, warned: bool) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    path = secret_file(secrets, TOKEN, mode=mode)
    if kind == "token_file":
        text = '[credentials.adobe]\ntoken_file = "secrets/secret"\n' + STREAM
    else:
        text = OAUTH_BASE + ID + 'client_secret_file = "secrets/secret"\n' + SC + STREAM
    cfg = load_config(write_config(tmp_path, text, 0o644), environ={})
    expected = [
        f"{tmp_path / 'lsproxy.toml'}: credentials.adobe.{kind}: {path} is readable by others (chmod 600 {path})"
    ]
    assert list(cfg.warnings) == (expected if warned else [])


def test_secret_file_missing_via_load_config(tmp_path: Path) -> None:
    text = OAUTH_BASE + ID + 'client_secret_file = "missing-secret"\n' + SC + STREAM
    config = write_config(tmp_path, text, 0o600)
    with pytest.raises(ConfigError) as info:
        load_config(config, environ={})
    assert str(info.value) == (
        f"{config}: credentials.adobe.client_secret_file: {tmp_path / 'missing-secret'} does not exist"
    )


# --------------------------------------------------------------------------- #
# Shipped example files
# --------------------------------------------------------------------------- #

EXAMPLE_ENV = {"LSPROXY_ADOBE_CLIENT_SECRET": CLIENT_SECRET, "LSPROXY_ADOBE_TOKEN": TOKEN}


def test_demo_config_loads_without_env() -> None:
    cfg = load_config(REPO / "config" / "demo.toml", environ={})
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)
    assert cfg.server.heartbeat_interval == 20.0
    assert cfg.storage == StorageConfig(dir=str(REPO / "config" / "data"))
    (stream,) = cfg.streams
    assert stream.name == "demo"
    assert stream.url == "http://127.0.0.1:8090/api/1/stream/demo-stream"
    assert stream.endpoint == "demo-stream"
    assert stream.report_suite == "simsuite"
    assert stream.credentials.name == "sim"
    assert stream.credentials.token == Secret("demo-token")
    assert stream.credentials.inline_secret is True
    assert stream.upstream.reconnect_delay == 60.0
    assert dict(cfg.routes) == {"demo": "demo", "demo-stream": "demo", "simsuite": "demo"}
    assert cfg.warnings == ()


def test_example_config_loads_with_fake_env() -> None:
    cfg = load_config(
        REPO / "config" / "example.toml", environ={"LSPROXY_ADOBE_CLIENT_SECRET": CLIENT_SECRET}
    )
    (stream,) = cfg.streams
    assert stream.url.startswith("https://livestream.adobe.net/api/1/stream/")
    creds = stream.credentials
    assert creds.kind == "oauth" and creds.oauth is not None
    assert creds.oauth.client_secret == Secret(CLIENT_SECRET)
    assert creds.oauth.scopes == (
        "openid",
        "AdobeID",
        "read_organizations",
        "additional_info.projectedProductContext",
    )
    assert creds.oauth.token_url == DEFAULT_TOKEN_URL
    assert creds.api_key is not None
    assert cfg.storage == StorageConfig(dir=str(REPO / "config" / "data"))
    assert stream.upstream == UpstreamSettings()
    assert cfg.warnings == ()
    assert CLIENT_SECRET not in repr(cfg)


def test_example_config_without_env_fails_clearly() -> None:
    path = REPO / "config" / "example.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == (
        f"{path}: credentials.adobe.client_secret_env: environment variable LSPROXY_ADOBE_CLIENT_SECRET is not set"
    )


_COMMENTED = re.compile(r"^# ?(?P<code>\[[A-Za-z0-9_.\"-]+\].*|[a-z_][a-z0-9_]* = .*)$")


@pytest.mark.parametrize("name", ["demo.toml", "example.toml"])
def test_commented_out_settings_in_example_files_are_valid(tmp_path: Path, name: str) -> None:
    """Every commented-out table and key, uncommented all at once, still loads."""
    original = (REPO / "config" / name).read_text()
    lines = original.splitlines()
    uncommented = [m["code"] if (m := _COMMENTED.match(line)) else line for line in lines]
    assert uncommented != lines, "expected some commented-out settings"
    path = tmp_path / name
    path.write_text("\n".join(uncommented) + "\n")
    path.chmod(0o600)
    if "tls_cert" in path.read_text():  # the files it names, made for the test
        import trustme

        issued = trustme.CA().issue_cert("proxy.example")
        issued.cert_chain_pems[0].write_to_path(str(tmp_path / "proxy.pem"))
        issued.private_key_pem.write_to_path(str(tmp_path / "proxy.key"))
        (tmp_path / "proxy.key").chmod(0o600)
    cfg = load_config(path, environ=EXAMPLE_ENV)
    assert cfg.streams
    for w in cfg.warnings:  # only the spare credential set of the example may be unused
        assert w.endswith(": credentials.bearer: not used by any stream"), w


# --------------------------------------------------------------------------- #
# [consumers.<name>], TLS, and the exposed-listener rule
# --------------------------------------------------------------------------- #

CONSUMER_TOKEN = "consumer-token-for-tests-0123"
CONSUMER_SHA = "b" * 64


def test_consumer_tables() -> None:
    import hashlib

    text = (
        MINIMAL
        + '[streams.two]\nurl = "https://h.example/s/two-ep"\nreport_suite = "suite2"\n'
        + f'[consumers.team-a]\ntoken_sha256 = "{CONSUMER_SHA.upper()}"\nstreams = ["prod", "suite2"]\n'
        + '[consumers.ops]\ntoken_env = "OPS_TOKEN"\nadmin = true\n'
    )
    cfg = parse(text, {**ENV, "OPS_TOKEN": CONSUMER_TOKEN})
    team, ops = cfg.consumers
    assert (team.name, team.streams, team.admin, team.source) == (
        "team-a", frozenset({"prod", "two"}), False, "token_sha256",
    )  # fmt: skip
    assert team.token_sha256 == bytes.fromhex(CONSUMER_SHA) and team.may_read("two") and not team.may_read("x")
    assert ops.token_sha256 == hashlib.sha256(CONSUMER_TOKEN.encode()).digest()
    assert (ops.streams, ops.admin, ops.source) == (None, True, "env OPS_TOKEN")
    assert CONSUMER_TOKEN not in repr(cfg) and CONSUMER_SHA not in repr(cfg)
    assert parse(MINIMAL).consumers == ()


def test_consumer_token_file_is_hashed_and_checked(tmp_path: Path) -> None:
    import hashlib

    token_file = tmp_path / "t"
    token_file.write_text(CONSUMER_TOKEN + "\n")
    token_file.chmod(0o600)
    cfg = parse(MINIMAL + f'[consumers.c]\ntoken_file = "{token_file}"\n')
    assert cfg.consumers[0].token_sha256 == hashlib.sha256(CONSUMER_TOKEN.encode()).digest()
    assert cfg.consumers[0].source == f"file {token_file}" and not cfg.warnings
    token_file.write_text("short")
    cfg = parse(MINIMAL + f'[consumers.c]\ntoken_file = "{token_file}"\n')
    assert [w for w in cfg.warnings if "fewer than 20 characters" in w]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[consumers.a]\nstreams = ["prod"]\n', "consumers.a: missing token_sha256 (run \"lsproxy token new NAME\""),
        (f'[consumers.a]\ntoken_sha256 = "{CONSUMER_SHA}"\ntoken_env = "X"\n', "consumers.a: set only one of"),
        ('[consumers.a]\ntoken_sha256 = "TOPSECRET-tok3n-4242"\n', "consumers.a.token_sha256: expected the SHA-256"),
        ("[consumers.a]\ntoken_sha256 = 5\n", "consumers.a.token_sha256: expected the SHA-256 of the token"),
        ('[consumers.a]\ntoken = "x"\n', "consumers.a.token: unknown key (give token_sha256, token_env"),
        (f'[consumers.a]\ntoken_sha256 = "{CONSUMER_SHA}"\nstream = []\n', "did you mean 'streams'?"),
        (f'[consumers.a]\ntoken_sha256 = "{CONSUMER_SHA}"\nstreams = ["nope"]\n',
         "consumers.a.streams: item 1: no stream or route named 'nope' (known: acme-prod, prod)"),
        (f'[consumers.a]\ntoken_sha256 = "{CONSUMER_SHA}"\nstreams = "prod"\n', "expected a list of stream routes"),
        (f'[consumers.a]\ntoken_sha256 = "{CONSUMER_SHA}"\nstreams = []\n', "lists no stream"),
        (f'[consumers.a]\ntoken_sha256 = "{CONSUMER_SHA}"\nadmin = "yes"\n', "consumers.a.admin: expected true or false"),
        (f'[consumers."a/b"]\ntoken_sha256 = "{CONSUMER_SHA}"\n', 'consumers."a/b": a consumer name is 1-64'),
        ('[consumers.a]\ntoken_env = "TOPSECRET-tok3n-4242"\n', "consumers.a.token_env: expected the name of an environment variable"),
        ('[consumers.a]\ntoken_env = "UNSET_VAR"\n', "consumers.a.token_env: environment variable UNSET_VAR is not set"),
        ('[consumers.a]\ntoken_file = "/nonexistent/t"\n', "consumers.a.token_file: /nonexistent/t does not exist"),
        (f'[consumers.a]\ntoken_sha256 = "{CONSUMER_SHA}"\n[consumers.b]\ntoken_sha256 = "{CONSUMER_SHA}"\n',
         "consumers.b: has the same token as consumers.a"),
        ('consumers = 1\n', "consumers: expected a table ([consumers.<name>])"),
    ],
)
def test_consumer_table_errors(text: str, expected: str) -> None:
    # A top-level key must come before the first table.
    message = error(text + MINIMAL) if text.startswith("consumers =") else error(MINIMAL + text)
    assert expected in message


def test_an_empty_stream_list_is_allowed_for_an_admin_only_token() -> None:
    cfg = parse(MINIMAL + f'[consumers.ops]\ntoken_sha256 = "{CONSUMER_SHA}"\nstreams = []\nadmin = true\n')
    assert cfg.consumers[0].streams == frozenset() and cfg.consumers[0].admin


def test_a_non_loopback_listener_needs_consumer_tables_or_an_explicit_opt_out() -> None:
    for listen in ("0.0.0.0:8080", "[::]:8080", "192.0.2.1:80", "proxy.internal:8080"):
        message = error(f'[server]\nlisten = "{listen}"\n' + MINIMAL)
        host = listen.rsplit(":", 1)[0].strip("[]")
        assert message == (
            f"{FILE}: server.listen: listening on {host} without [consumers.<name>] tables would let anyone "
            "who can reach it read every stream: add consumer tables (lsproxy token new NAME) or set "
            "allow_unauthenticated = true"
        )
    with_auth = parse('[server]\nlisten = "0.0.0.0:8080"\n' + MINIMAL + f'[consumers.a]\ntoken_sha256 = "{CONSUMER_SHA}"\n')
    assert list(with_auth.warnings) == [
        f"{FILE}: server.listen: listening on 0.0.0.0 without TLS: tokens and records travel unencrypted "
        "(set tls_cert and tls_key)"
    ]
    assert parse('[server]\nlisten = "localhost:80"\n' + MINIMAL).server.loopback
    moot = parse('[server]\nallow_unauthenticated = true\n' + MINIMAL + f'[consumers.a]\ntoken_sha256 = "{CONSUMER_SHA}"\n')
    assert [w for w in moot.warnings if "allow_unauthenticated: has no effect" in w]
    assert error('[server]\nallow_unauthenticated = 1\n' + MINIMAL).endswith(
        "server.allow_unauthenticated: expected true or false, got integer 1"
    )


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import trustme

    base = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    cert, stranger = ca.issue_cert("proxy.example"), other.issue_cert("proxy.example")
    files = {"cert": base / "cert.pem", "key": base / "key.pem", "other_key": base / "other.pem"}
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    stranger.private_key_pem.write_to_path(files["other_key"])
    for path in files.values():
        path.chmod(0o600)
    return files


def test_tls_files_are_loaded_at_parse_time(pem_files: dict[str, Path]) -> None:
    text = f'[server]\ntls_cert = "{pem_files["cert"]}"\ntls_key = "{pem_files["key"]}"\n' + MINIMAL
    server = parse(text).server
    assert (server.tls_cert, server.tls_key) == (str(pem_files["cert"]), str(pem_files["key"]))
    assert not parse(text).warnings
    relative = parse_config(
        '[server]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n' + MINIMAL,
        path=str(pem_files["cert"].parent / "p.toml"),
        environ=ENV,
    )
    assert relative.server.tls_cert == str(pem_files["cert"])


def test_tls_file_errors_name_the_key_and_the_problem(pem_files: dict[str, Path]) -> None:
    cert, key, other = pem_files["cert"], pem_files["key"], pem_files["other_key"]
    cases = [
        (f'tls_cert = "{cert}"\n', "server.tls_cert: needs tls_key too (PEM files of the certificate and its key)"),
        (f'tls_key = "{key}"\n', "server.tls_key: needs tls_cert too (PEM files of the certificate and its key)"),
        (f'tls_cert = "{cert}"\ntls_key = "{other}"\n', f"server.tls_key: {other} does not match the certificate in {cert}"),
        (f'tls_cert = "{cert}.missing"\ntls_key = "{key}"\n', f"server.tls_cert: {cert}.missing does not exist"),
        (f'tls_cert = "{key}"\ntls_key = "{key}"\n', f"server.tls_cert: {key} holds no PEM certificate"),
        (f'tls_cert = "{cert}"\ntls_key = "{cert}"\n', f"server.tls_key: {cert} holds no PEM private key"),
        ('tls_cert = 1\ntls_key = 2\n', "server.tls_cert: expected a path (a string), got integer 1"),
    ]
    for server, expected in cases:
        assert error("[server]\n" + server + MINIMAL) == f"{FILE}: {expected}"


def test_a_tls_key_readable_by_others_is_a_warning(pem_files: dict[str, Path], tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(pem_files["key"].read_bytes())
    key.chmod(0o644)
    cfg = parse(f'[server]\ntls_cert = "{pem_files["cert"]}"\ntls_key = "{key}"\n' + MINIMAL)
    assert list(cfg.warnings) == [f"{FILE}: server.tls_key: {key} is readable by others (chmod 600 it)"]


def test_load_server_config_reads_only_the_server_table(tmp_path: Path) -> None:
    from lsproxy.config import load_server_config

    path = tmp_path / "p.toml"
    path.write_text('[server]\nlisten = "0.0.0.0:9000"\n[credentials.a]\ntoken_env = "UNSET_VAR"\n')
    server = load_server_config(path)
    assert (server.host, server.port) == ("0.0.0.0", 9000)
    path.write_text("[server]\nlisten = 5\n")
    with pytest.raises(ConfigError, match=r"p.toml: server.listen: expected"):
        load_server_config(path)


def test_consumer_group_resume_and_browser_keys() -> None:
    cfg = parse(
        "[server]\ntcp_user_timeout = 10\nanonymous_resume = \"off\"\nanonymous_resume_linger = 60\n"
        'anonymous_group_linger = 0\ncors_allow_origins = ["https://dash.example.com", "*"]\n' + MINIMAL
    )
    assert cfg.server.tcp_user_timeout == 10.0 and cfg.server.anonymous_resume == "off"
    assert cfg.server.anonymous_resume_linger == 60.0 and cfg.server.anonymous_group_linger == 0.0
    assert cfg.server.cors_allow_origins == ("https://dash.example.com", "*")
    defaults = ServerConfig()
    assert defaults.tcp_user_timeout == 30.0 and defaults.anonymous_resume == "api_key"
    assert defaults.anonymous_resume_linger == defaults.anonymous_group_linger == 300.0
    assert defaults.cors_allow_origins == ()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('anonymous_resume = "yes"', 'server.anonymous_resume: expected "api_key" or "off"'),
        ("anonymous_resume = true", 'server.anonymous_resume: expected "api_key" or "off"'),
        ("anonymous_group_linger = -1", "server.anonymous_group_linger: must be >= 0"),
        ('cors_allow_origins = "*"', "server.cors_allow_origins: expected a list of origins"),
        ('cors_allow_origins = ["https://x.com/path"]', "is not an origin"),
    ],
)
def test_bad_consumer_group_resume_and_browser_keys(line: str, expected: str) -> None:
    assert expected in error(f"[server]\n{line}\n" + MINIMAL)


# -- bounded work: a reload reads and parses the file while the proxy serves -----------


def test_a_config_file_over_1_mib_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_text(MINIMAL + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"huge\.toml: cannot read config: larger than 1024 KiB"):
        load_config(path, environ={})


def test_tables_or_arrays_nested_too_deeply_are_a_config_error() -> None:
    for value in ("[" * 50_000 + "]" * 50_000, "{a = " * 5_000 + "1" + "}" * 5_000):
        with pytest.raises(ConfigError, match="nested too deeply"):
            parse(MINIMAL + f"x = {value}\n")


def test_a_dotted_key_of_many_parts_is_refused_before_tomllib_sees_it() -> None:
    # tomllib's work grows with the square of the number of parts: 100,000 would exhaust memory.
    with pytest.raises(ConfigError, match=r"line 5: a dotted key of more than 16 parts"):
        parse(MINIMAL + "a." * 100_000 + "b = 1\n")
    with pytest.raises(ConfigError, match="dotted key"):
        parse(MINIMAL + ' "a\\".b" . ' * 20 + "b = 1\n")
    config = parse(MINIMAL.replace("[streams.prod]\nurl", '[streams]\nprod . "url"'))  # a few parts are fine
    assert config.streams[0].url.endswith("/acme-prod")
