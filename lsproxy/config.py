"""Load and validate the lsproxy TOML configuration.

This is a pure module (stdlib only: no trio, no httpx; its only I/O is reading
the file and checking the paths it names). Every problem raises
:class:`~lsproxy.errors.ConfigError` with one line of the form
``"<file>: <dotted key>: <problem>"``. No message, warning or ``repr`` ever
contains a credential value: tokens, API keys and client secrets are wrapped in
:class:`~lsproxy.secret.Secret` as soon as they are read, and values found
under ``[credentials]`` are never echoed. Credential sets are parsed in
:mod:`lsproxy.config_credentials`; their public names are re-exported here.

Layout (all tables but ``[credentials.*]`` and ``[streams.*]`` are optional)::

    [server]                 listen, heartbeat_interval, request_timeout,
                             write_timeout, shutdown_grace, replay_window_bytes,
                             tls_cert, tls_key, allow_unauthenticated,
                             tcp_user_timeout, anonymous_resume,
                             anonymous_resume_linger, anonymous_group_linger,
                             cors_allow_origins,
                             log_format, metrics_max_consumers
    [storage]                dir, durable, retention_seconds, retention_bytes,
                             memory_bytes, commit_interval, heartbeat_interval
    [upstream]               reconnect_delay, max_reconnect_delay, connect_timeout,
                             idle_timeout, healthy_after, connections, smoothing,
                             smoothing_bucket_size, dedup_window_records,
                             dedup_window_seconds  (defaults for every stream)
    [credentials.<name>]     kind = "static": token | token_env | token_file,
                               optional api_key | api_key_env;
                             kind = "oauth": client_id | client_id_env,
                               client_secret_env | client_secret_file, scopes,
                               optional token_url, api_key | api_key_env
    [streams.<name>]         url, report_suite, credentials, initial_reset,
                             retention_bytes, retention_seconds (default from
                             [storage]), and any [upstream] key as an override
    [consumers.<name>]       token_sha256 | token_env | token_file, streams, admin
                             (config_consumers.py); any table turns authentication on

Relative paths (``storage.dir``, ``token_file``, ``client_secret_file``,
``tls_cert``, ``tls_key``) are relative to the directory of the configuration file.

A listen address that is not loopback needs ``[consumers.<name>]`` tables (or an
explicit ``allow_unauthenticated = true``): otherwise the configuration is an error.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import platform
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from lsproxy.config_consumers import ConsumerAccess, _ConsumersParser
from lsproxy.config_credentials import (
    CREDENTIAL_KINDS,
    CREDENTIAL_SET_KEYS,
    DEFAULT_TOKEN_URL,
    MAX_SECRET_FILE_BYTES,
    Credentials,
    OAuthSettings,
    _CredentialsParser,
    _describe,
    _dotted,
    _is_loopback,
    _Key,
    _one_line,
    _quote,
    _seconds,
    read_secret_file,
)
from lsproxy.errors import ConfigError
from lsproxy.secret import Secret
from lsproxy.tls_files import TlsFileError, server_context

__all__ = [
    "ADOBE_MIN_RECONNECT_DELAY",
    "CREDENTIAL_KINDS",
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_RETENTION_BYTES",
    "DEFAULT_RETENTION_SECONDS",
    "DEFAULT_STORAGE_DIR",
    "DEFAULT_TOKEN_URL",
    "INITIAL_RESETS",
    "MAX_CONNECTIONS",
    "MAX_SECRET_FILE_BYTES",
    "MAX_SMOOTHING_BUCKET_SIZE",
    "MIN_MEMORY_BYTES",
    "MIN_RETENTION_BYTES",
    "ClusterConfig",
    "Config",
    "ConsumerAccess",
    "Credentials",
    "OAuthSettings",
    "ServerConfig",
    "StorageConfig",
    "StreamConfig",
    "UpstreamSettings",
    "load_config",
    "load_server_config",
    "parse_config",
    "read_secret_file",
]

DEFAULT_RETENTION_BYTES = 2 * 1024**3
DEFAULT_RETENTION_SECONDS = 86400.0
DEFAULT_MEMORY_BYTES = 64 * 1024**2
MIN_RETENTION_BYTES = 1024 * 1024
MIN_MEMORY_BYTES = 1024 * 1024
#: storage.dir when absent, relative to the configuration file's directory.
DEFAULT_STORAGE_DIR = "data"
#: Adobe's maxConnections range is 1..8.
MAX_CONNECTIONS = 8
#: Adobe's smoothingBucketSize range is 1..7200 seconds.
MAX_SMOOTHING_BUCKET_SIZE = 7200
INITIAL_RESETS = ("smallest", "largest")
#: Adobe asks clients to wait about a minute before reconnecting.
ADOBE_MIN_RECONNECT_DELAY = 60.0


# --------------------------------------------------------------------------- #
# Public data model
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    heartbeat_interval: float = 20.0
    request_timeout: float = 10.0
    write_timeout: float = 30.0
    shutdown_grace: float = 5.0
    replay_window_bytes: int | None = None  # None = "auto"
    tls_cert: str | None = None  # absolute paths of PEM files; both or neither
    tls_key: str | None = None
    #: A non-loopback listen without [consumers] tables is refused unless this is true.
    allow_unauthenticated: bool = False
    #: Unacknowledged data to a consumer this long: its host is gone (TCP_USER_TIMEOUT; 0: the OS's).
    tcp_user_timeout: float = 30.0
    #: "api_key": anonymous consumers resume by their x-api-key header; "off": at the tail.
    anonymous_resume: str = "api_key"
    anonymous_resume_linger: float = 300.0
    #: How long the anonymous consumer group keeps its shares' positions after its last member left.
    anonymous_group_linger: float = 300.0
    #: Browser origins (Origin header) allowed to read streams, e.g. a dashboard's; "*": any.
    cors_allow_origins: tuple[str, ...] = ()
    log_format: str = "text"  # "text" or "json" (one JSON object per line)
    metrics_max_consumers: int = 100  # named consumers with their own /metrics lag series

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.host)


@dataclass(frozen=True)
class UpstreamSettings:
    reconnect_delay: float = 60.0
    max_reconnect_delay: float = 900.0
    connect_timeout: float = 10.0
    idle_timeout: float = 0.0
    healthy_after: float = 60.0
    #: Upstream connections for the stream, 1..8; each sends maxConnections=connections.
    connections: int = 1
    #: Sent as smoothing=1 when true.
    smoothing: bool = False
    #: 1..7200 s, sent as smoothingBucketSize; only with smoothing (None: Adobe's default).
    smoothing_bucket_size: int | None = None
    #: Records remembered for de-duplication (hitIdHigh + hitIdLow); 0 disables it.
    dedup_window_records: int = 200_000
    dedup_window_seconds: float = 900.0


@dataclass(frozen=True)
class StorageConfig:
    #: Absolute path of the data directory (it need not exist yet).
    dir: str
    #: False: in memory only, nothing on disk.
    durable: bool = True
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    retention_bytes: int = DEFAULT_RETENTION_BYTES
    #: Hot tail kept in RAM, per stream.
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    commit_interval: float = 1.0
    #: How often a connected stream records "still connected".
    heartbeat_interval: float = 1.0


@dataclass(frozen=True)
class StreamConfig:
    name: str
    url: str
    endpoint: str
    report_suite: str | None
    credentials: Credentials
    upstream: UpstreamSettings
    retention_bytes: int  # default: [storage] retention_bytes
    retention_seconds: float  # default: [storage] retention_seconds
    initial_reset: str | None = None  # "smallest", "largest" or None

    @property
    def route_keys(self) -> tuple[str, ...]:
        """name, endpoint, report_suite -- deduplicated, in that order."""
        keys = [self.name, self.endpoint]
        if self.report_suite is not None:
            keys.append(self.report_suite)
        return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: several lsproxy nodes on NATS JetStream (lsproxy/cluster/)."""

    nats: tuple[str, ...]  # seed servers, nats:// or tls:// URLs
    node: str  # unique per node
    replicas: int = 3  # for the streams and KV buckets lsproxy creates
    lease_ttl: float = 15.0
    #: Added to every wait computed from moments another node's clock wrote.
    clock_skew_margin: float = 1.0
    #: How long leading records wait in memory while JetStream cannot take them.
    publish_buffer_bytes: int = 64 * 1024 * 1024
    credentials_file: str | None = None  # a NATS .creds file (JWT + nkey)
    token: Secret | None = None  # from token_env
    user: str | None = None
    password: Secret | None = None  # from password_env
    tls_ca: str | None = None


@dataclass(frozen=True)
class Config:
    path: str
    server: ServerConfig
    storage: StorageConfig
    streams: tuple[StreamConfig, ...]
    routes: Mapping[str, str] = field(hash=False)  # route key -> stream name (read-only)
    warnings: tuple[str, ...]
    cluster: ClusterConfig | None = None  # None: one node, the embedded store
    #: [consumers.<name>] tables; empty: consumers are not authenticated.
    consumers: tuple[ConsumerAccess, ...] = ()


# --------------------------------------------------------------------------- #
# Entry points
# --------------------------------------------------------------------------- #


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the TOML file at *path*.

    Relative paths in it are relative to its directory. Besides what
    :func:`parse_config` reports, warns when the file holds a secret inline
    and others may read it.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(_one_line(f"{name}: cannot read config: {reason}")) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name}: cannot read config: larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            _one_line(f"{name}: cannot read config: not UTF-8 (bad byte at offset {exc.start})")
        ) from None
    base_dir = os.path.dirname(os.path.abspath(name))
    return _parse(text, name, environ, base_dir, mode)


def load_server_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Only the ``[server]`` table of the file at *path*, for the operator commands
    (``lsproxy status``, ``lsproxy cursor``): they need the listen address and TLS
    files, not the credentials' environment variables."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(_one_line(f"{name}: cannot read config: {exc.strerror or exc}")) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(_one_line(f"{name}: cannot read config: {exc}")) from None
    parser = _Parser(name, os.environ, os.path.dirname(os.path.abspath(name)), None)
    return parser.server(raw.get("server", {}))


def parse_config(
    text: str,
    *,
    path: str = "<config>",
    environ: Mapping[str, str] | None = None,
    base_dir: str | None = None,
) -> Config:
    """Validate TOML *text*; *path* is used in messages.

    Relative paths are resolved against *base_dir*; by default the directory
    of *path*, or the current directory when *path* is a placeholder such as
    ``"<config>"``.
    """
    if base_dir is None:
        pseudo = path.startswith("<") and path.endswith(">")
        base_dir = os.getcwd() if pseudo else os.path.dirname(os.path.abspath(path))
    return _parse(text, path, environ, os.path.abspath(base_dir), None)


def _parse(
    text: str, path: str, environ: Mapping[str, str] | None, base_dir: str, file_mode: int | None
) -> Config:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB")
    if deep := _DEEP_KEY.search(text):
        line = text.count("\n", 0, deep.start()) + 1
        raise ConfigError(f"{path}: line {line}: a dotted key of more than {MAX_KEY_PARTS} parts")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_one_line(f"{path}: {_toml_error(exc)}")) from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
    env = os.environ if environ is None else environ
    return _Parser(path, env, base_dir, file_mode).parse(raw)


# --------------------------------------------------------------------------- #
# Implementation
# --------------------------------------------------------------------------- #

# Bounds on the work of reading a config (a reload runs while the proxy serves):
# far beyond any real config, and tomllib's work grows with the square of the
# number of parts of a dotted key (``a.b.c = 1``), so those are bounded too.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_KEY_PARTS = 16
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_DEEP_KEY = re.compile(rf"^[ \t]*(?:{_KEY_PART}[ \t]*\.[ \t]*){{{MAX_KEY_PARTS}}}", re.MULTILINE)

_TOP_KEYS = ("server", "storage", "upstream", "credentials", "streams", "consumers", "cluster")
_CLUSTER_KEYS = (
    "nats",
    "node",
    "replicas",
    "lease_ttl",
    "clock_skew_margin",
    "publish_buffer_bytes",
    "credentials_file",
    "token_env",
    "user",
    "password_env",
    "tls_ca",
)
MAX_CLUSTER_REPLICAS = 5  # JetStream's limit
MIN_LEASE_TTL = 1.0
_SERVER_KEYS = (
    "listen",
    "heartbeat_interval",
    "request_timeout",
    "write_timeout",
    "shutdown_grace",
    "replay_window_bytes",
    "tls_cert",
    "tls_key",
    "allow_unauthenticated",
    "tcp_user_timeout",
    "anonymous_resume",
    "anonymous_resume_linger",
    "anonymous_group_linger",
    "cors_allow_origins",
    "log_format",
    "metrics_max_consumers",
)
LOG_FORMATS = ("text", "json")
_STORAGE_KEYS = tuple(f.name for f in dataclasses.fields(StorageConfig))
_STORAGE_ONLY_KEYS = ("dir", "durable", "memory_bytes", "commit_interval")
_RETENTION_KEYS = ("retention_bytes", "retention_seconds")
_UPSTREAM_KEYS = tuple(f.name for f in dataclasses.fields(UpstreamSettings))
_STREAM_OWN_KEYS = ("url", "report_suite", "credentials", "initial_reset", *_RETENTION_KEYS)
_STREAM_KEYS = _STREAM_OWN_KEYS + _UPSTREAM_KEYS

_CREDENTIALS_ELSEWHERE = (
    'credentials belong in a [credentials.<name>] table; reference it here with credentials = "<name>"'
)
_HEARTBEATS = (
    "heartbeat_interval belongs in [server] (keep-alive to consumers) "
    'or [storage] (the "still connected" record)'
)
_PER_STREAM = {"initial_reset": "initial_reset is set per stream, in [streams.<name>]"}
_HINTS: dict[str, dict[str, str]] = {
    "server": {
        "host": 'use listen = "host:port"',
        "port": 'use listen = "host:port"',
        **{k: f"{k} belongs in [upstream] or [streams.<name>]" for k in _UPSTREAM_KEYS},
        **{k: f"{k} belongs in [storage]" for k in _STORAGE_ONLY_KEYS},
        **{k: f"{k} belongs in [storage] or [streams.<name>]" for k in _RETENTION_KEYS},
        **_PER_STREAM,
    },
    "storage": {
        **{k: f"{k} belongs in [server]" for k in _SERVER_KEYS if k not in _STORAGE_KEYS},
        **{k: f"{k} belongs in [upstream] or [streams.<name>]" for k in _UPSTREAM_KEYS},
        **_PER_STREAM,
    },
    "upstream": {
        **{k: f"{k} belongs in [server]" for k in _SERVER_KEYS},
        "heartbeat_interval": _HEARTBEATS,
        **{k: f"{k} belongs in [storage]" for k in _STORAGE_ONLY_KEYS},
        **{k: f"{k} belongs in [storage] or [streams.<name>]" for k in _RETENTION_KEYS},
        **_PER_STREAM,
    },
    "stream": {
        **{k: _CREDENTIALS_ELSEWHERE for k in CREDENTIAL_SET_KEYS if k != "kind"},
        "endpoint": "the endpoint is the last path segment of url",
        **{k: f"{k} belongs in [server]" for k in _SERVER_KEYS},
        "heartbeat_interval": _HEARTBEATS,
        **{k: f"{k} is set for all streams, in [storage]" for k in _STORAGE_ONLY_KEYS},
    },
    "top": {},
}

_TOML_POS = re.compile(r"^(?P<msg>.*?)\s*\((?:at )?line (?P<line>\d+), column (?P<col>\d+)\)$")
_TOML_END = re.compile(r"^(?P<msg>.*?)\s*\(at end of document\)$")


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    msg = _one_line(str(exc))
    m = _TOML_POS.match(msg)
    if m:
        return f"line {m['line']}, column {m['col']}: {m['msg']}"
    m = _TOML_END.match(msg)
    if m:
        return f"end of document: {m['msg']}"
    return f"invalid TOML: {msg}"


def _route_problem(key: str) -> str | None:
    """Why *key* cannot be a URL path segment, or None if it can."""
    if not key:
        return "it is empty"
    if key in (".", ".."):
        return "'.' and '..' are not usable path segments"
    bad = sorted({c for c in key if c in "/?#%\\" or c.isspace() or not c.isprintable()})
    if bad:
        listed = ", ".join(repr(c) for c in bad)
        return f"it contains {listed} (use letters, digits, '-', '_', '.')"
    return None


class _Parser(_CredentialsParser, _ConsumersParser):
    def __init__(self, path: str, environ: Mapping[str, str], base_dir: str, file_mode: int | None) -> None:
        super().__init__(path, environ, base_dir, file_mode)
        self.inherit_reconnect = False  # some stream uses [upstream]'s reconnect_delay

    # -- typed values ------------------------------------------------------- #

    def boolean(self, value: Any, key: _Key) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {_describe(value)}")
        return value

    def integer(self, value: Any, key: _Key, *, unit: str, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer number of {unit}, got {_describe(value)}")
        if high is None and value < low:
            self.fail(key, f"must be >= {low}, got {value}")
        if high is not None and not low <= value <= high:
            self.fail(key, f"must be {low}..{high} {unit}, got {value}")
        return value

    def byte_count(self, value: Any, key: _Key, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer number of bytes, got {_describe(value)}")
        if value < minimum:
            self.fail(key, f"must be at least {minimum} ({minimum // (1024 * 1024)} MiB), got {value}")
        return value

    # -- sections ----------------------------------------------------------- #

    def parse(self, raw: dict[str, Any]) -> Config:
        self.check_keys(raw, _TOP_KEYS, (), _HINTS["top"])
        server = self.server(raw.get("server", {}))
        storage = self.storage(raw.get("storage", {}))
        upstream_raw = self.table(raw.get("upstream", {}), ("upstream",), header="[upstream]")
        upstream, upstream_set = self.upstream(
            upstream_raw, ("upstream",), UpstreamSettings(), inherited=False
        )
        credentials = self.credentials(raw.get("credentials"))
        streams = self.streams(raw.get("streams"), credentials, upstream, storage)
        routes = self.routes(streams)
        cluster = self.cluster(raw["cluster"]) if "cluster" in raw else None
        consumers = self.consumers(raw.get("consumers"), routes)
        self.exposure(server, consumers)

        if (
            upstream.reconnect_delay < ADOBE_MIN_RECONNECT_DELAY
            and "reconnect_delay" in upstream_set
            and self.inherit_reconnect
        ):
            self.warn(("upstream", "reconnect_delay"), _reconnect_note(upstream.reconnect_delay))
        users: dict[str, list[str]] = {}
        for s in streams:
            users.setdefault(s.credentials.name, []).append(s.url)
        for name in credentials:
            if name not in users:
                self.warn(("credentials", name), "not used by any stream")
        self.inline_secret_warnings(credentials, users)

        return Config(
            path=self.path,
            server=server,
            storage=storage,
            streams=tuple(streams),
            routes=MappingProxyType(routes),
            warnings=tuple(self.warnings),
            cluster=cluster,
            consumers=consumers,
        )

    def server(self, value: Any) -> ServerConfig:
        key: _Key = ("server",)
        t = self.table(value, key, header="[server]")
        self.check_keys(t, _SERVER_KEYS, key, _HINTS["server"])
        kwargs: dict[str, Any] = {}
        if "listen" in t:
            kwargs["host"], kwargs["port"] = self.listen(t["listen"], (*key, "listen"))
        for name in (
            "heartbeat_interval",
            "shutdown_grace",
            "tcp_user_timeout",
            "anonymous_resume_linger",
            "anonymous_group_linger",
        ):
            if name in t:
                kwargs[name] = self.duration(t[name], (*key, name))
        for name in ("request_timeout", "write_timeout"):
            if name in t:
                kwargs[name] = self.duration(t[name], (*key, name), nonzero="0 would time out at once")
        if "replay_window_bytes" in t:
            kwargs["replay_window_bytes"] = self.replay_window(
                t["replay_window_bytes"], (*key, "replay_window_bytes")
            )
        if "allow_unauthenticated" in t:
            kwargs["allow_unauthenticated"] = self.boolean(
                t["allow_unauthenticated"], (*key, "allow_unauthenticated")
            )
        if "anonymous_resume" in t:
            value = t["anonymous_resume"]
            if value not in ("api_key", "off") or not isinstance(value, str):
                self.fail((*key, "anonymous_resume"), f'expected "api_key" or "off", got {_describe(value)}')
            kwargs["anonymous_resume"] = value
        if "cors_allow_origins" in t:
            kwargs["cors_allow_origins"] = self.origins(t["cors_allow_origins"], (*key, "cors_allow_origins"))
        if "log_format" in t:
            if t["log_format"] not in LOG_FORMATS:
                self.fail((*key, "log_format"), f'expected "text" or "json", got {_describe(t["log_format"])}')
            kwargs["log_format"] = t["log_format"]
        if "metrics_max_consumers" in t:
            kwargs["metrics_max_consumers"] = self.integer(
                t["metrics_max_consumers"], (*key, "metrics_max_consumers"), unit="consumers", low=0
            )
        kwargs.update(self.tls(t, key))
        return ServerConfig(**kwargs)

    def tls(self, t: Mapping[str, Any], key: _Key) -> dict[str, str]:
        """tls_cert and tls_key (both or neither), checked by loading them as the server will."""
        present = [name for name in ("tls_cert", "tls_key") if name in t]
        if not present:
            return {}
        if len(present) == 1:
            missing = "tls_key" if present == ["tls_cert"] else "tls_cert"
            self.fail((*key, present[0]), f"needs {missing} too (PEM files of the certificate and its key)")
        paths = {name: self.path_value(t[name], (*key, name)) for name in present}
        try:
            server_context(paths["tls_cert"], paths["tls_key"])
        except TlsFileError as exc:
            self.fail((*key, exc.which), exc.problem)
        if _mode(paths["tls_key"]) & 0o044:
            self.warn((*key, "tls_key"), f"{paths['tls_key']} is readable by others (chmod 600 it)")
        return paths

    def exposure(self, server: ServerConfig, consumers: tuple[ConsumerAccess, ...]) -> None:
        """A listener others can reach must authenticate its consumers, unless told otherwise."""
        key: _Key = ("server",)
        if consumers and server.allow_unauthenticated:
            self.warn(
                (*key, "allow_unauthenticated"),
                "has no effect: [consumers] tables exist, so every request needs a token",
            )
        if server.loopback:
            return
        if not consumers and not server.allow_unauthenticated:
            self.fail(
                (*key, "listen"),
                f"listening on {server.host} without [consumers.<name>] tables would let anyone who "
                "can reach it read every stream: add consumer tables (lsproxy token new NAME) "
                "or set allow_unauthenticated = true",
            )
        if not consumers:
            self.warn(
                (*key, "listen"),
                f"listening on {server.host}: consumers are not authenticated, "
                "anyone who can reach this address can read the stream",
            )
        elif server.tls_cert is None:
            self.warn(
                (*key, "listen"),
                f"listening on {server.host} without TLS: tokens and records travel unencrypted "
                "(set tls_cert and tls_key)",
            )

    def cluster(self, value: Any) -> ClusterConfig:
        key: _Key = ("cluster",)
        t = self.table(value, key, header="[cluster]")
        self.check_keys(t, _CLUSTER_KEYS, key, {"token": "use token_env", "password": "use password_env"})
        nkey = (*key, "nats")
        seeds = t.get("nats")
        if isinstance(seeds, str):
            seeds = [seeds]
        if not isinstance(seeds, list) or not seeds:
            self.fail(
                nkey,
                f'expected a list of NATS server URLs (e.g. ["nats://127.0.0.1:4222"]), got {_describe(seeds, show=False)}',
            )
        urls = tuple(self.nats_url(url, (*nkey,)) for url in seeds)
        node = t.get("node", platform.node())
        if not isinstance(node, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", node):
            self.fail(
                (*key, "node"),
                f"expected a node name of 1-64 letters, digits, '-', '_', '.', got {_describe(node)}"
                + ("" if "node" in t else " (the host name; set node)"),
            )
        kwargs: dict[str, Any] = {"nats": urls, "node": node}
        if "replicas" in t:
            kwargs["replicas"] = self.integer(
                t["replicas"], (*key, "replicas"), unit="replicas", low=1, high=MAX_CLUSTER_REPLICAS
            )
        if "lease_ttl" in t:
            ttl = self.duration(t["lease_ttl"], (*key, "lease_ttl"), nonzero="")
            if ttl < MIN_LEASE_TTL:
                self.fail(
                    (*key, "lease_ttl"), f"must be at least {_seconds(MIN_LEASE_TTL)} s, got {_seconds(ttl)}"
                )
            kwargs["lease_ttl"] = ttl
        if "clock_skew_margin" in t:
            kwargs["clock_skew_margin"] = self.duration(t["clock_skew_margin"], (*key, "clock_skew_margin"))
        if "publish_buffer_bytes" in t:
            kwargs["publish_buffer_bytes"] = self.byte_count(
                t["publish_buffer_bytes"], (*key, "publish_buffer_bytes"), minimum=MIN_MEMORY_BYTES
            )
        auth = [k for k in ("credentials_file", "token_env", "user") if k in t]
        if len(auth) > 1:
            self.fail(
                key,
                f"set only one of credentials_file, token_env, user + password_env (got {', '.join(auth)})",
            )
        if "credentials_file" in t:
            path = self.path_value(t["credentials_file"], (*key, "credentials_file"))
            if not os.path.isfile(path):
                self.fail((*key, "credentials_file"), f"{path} is not a readable file")
            kwargs["credentials_file"] = path
        if "token_env" in t:
            kwargs["token"] = Secret(self.from_env(t["token_env"], (*key, "token_env"), inline=None)[1])
        if "password_env" in t and "user" not in t:
            self.fail((*key, "password_env"), "needs user")
        if "user" in t:
            user = t["user"]
            if not isinstance(user, str) or not user:
                self.fail((*key, "user"), f"expected a user name, got {_describe(user, show=False)}")
            if "password_env" not in t:
                self.fail((*key, "user"), "needs password_env")
            kwargs["user"] = user
            kwargs["password"] = Secret(
                self.from_env(t["password_env"], (*key, "password_env"), inline=None)[1]
            )
        if "tls_ca" in t:
            path = self.path_value(t["tls_ca"], (*key, "tls_ca"))
            if not os.path.isfile(path):
                self.fail((*key, "tls_ca"), f"{path} is not a readable file")
            kwargs["tls_ca"] = path
        return ClusterConfig(**kwargs)

    def nats_url(self, value: Any, key: _Key) -> str:
        if not isinstance(value, str):
            self.fail(key, f"expected a NATS server URL string, got {_describe(value, show=False)}")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            self.fail(key, "not a valid URL (nats://host:port)")
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            self.fail(key, "expected nats://host:port or tls://host:port")
        if "@" in parts.netloc:  # never echoed: it may hold a password
            self.fail(
                key, "must not contain user info; use token_env, user + password_env or credentials_file"
            )
        if port is None:
            self.fail(key, "missing port (NATS listens on 4222 by default)")
        return value

    def listen(self, value: Any, key: _Key) -> tuple[str, int]:
        example = 'e.g. "127.0.0.1:8080" or "[::1]:8080"'
        if not isinstance(value, str):
            self.fail(key, f'expected "host:port" ({example}), got {_describe(value)}')
        m = re.fullmatch(r"\[([^\[\]]*)\]:([^:]*)", value)
        if m:
            host, port_text = m[1], m[2]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                self.fail(key, f"{_quote(host)} in brackets is not an IPv6 address")
        else:
            host, sep, port_text = value.rpartition(":")
            if not sep:
                self.fail(key, f'expected "host:port" ({example}), got {_quote(value)}')
            if ":" in host:
                self.fail(key, f"an IPv6 address needs brackets, {example}")
            if not host:
                self.fail(key, f"missing host before ':' ({example})")
            if any(c.isspace() or not c.isprintable() or c in "[]/" for c in host):
                self.fail(key, f"invalid host {_quote(host)}")
        if not re.fullmatch(r"[0-9]+", port_text):
            self.fail(key, f"port must be a number, got {_quote(port_text)}")
        port = int(port_text)
        if port > 65535:
            self.fail(key, f"port {port} is outside 0..65535")
        return host, port

    def origins(self, value: Any, key: _Key) -> tuple[str, ...]:
        example = '["https://dashboard.example.com"] or ["*"]'
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"expected a list of origins ({example}), got {_describe(value)}")
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                self.fail(key, f"{_quote(origin)} is not an origin (scheme://host[:port], no path)")
        return tuple(value)

    def replay_window(self, value: Any, key: _Key) -> int | None:
        if value == "auto" and isinstance(value, str):
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        self.fail(key, f'expected "auto" or an integer >= 0 (bytes), got {_describe(value)}')

    def storage(self, value: Any) -> StorageConfig:
        key: _Key = ("storage",)
        t = self.table(value, key, header="[storage]")
        self.check_keys(t, _STORAGE_KEYS, key, _HINTS["storage"])
        dkey = (*key, "dir")
        if "dir" in t:
            directory = self.path_value(t["dir"], dkey)
        else:
            directory = os.path.normpath(os.path.join(self.base_dir, DEFAULT_STORAGE_DIR))
        kwargs: dict[str, Any] = {"dir": directory}
        if "durable" in t:
            kwargs["durable"] = self.boolean(t["durable"], (*key, "durable"))
        for name in ("retention_seconds", "commit_interval", "heartbeat_interval"):
            if name in t:
                kwargs[name] = self.duration(t[name], (*key, name), nonzero="")
        if "retention_bytes" in t:
            kwargs["retention_bytes"] = self.byte_count(
                t["retention_bytes"], (*key, "retention_bytes"), minimum=MIN_RETENTION_BYTES
            )
        if "memory_bytes" in t:
            kwargs["memory_bytes"] = self.byte_count(
                t["memory_bytes"], (*key, "memory_bytes"), minimum=MIN_MEMORY_BYTES
            )
        storage = StorageConfig(**kwargs)
        if os.path.lexists(directory) and not os.path.isdir(directory):  # durable or not: the journal
            self.fail(dkey, f"{directory} exists but is not a directory")
        return storage

    def upstream_value(self, name: str, value: Any, key: _Key) -> Any:
        if name == "connections":
            return self.integer(value, key, unit="connections", low=1, high=MAX_CONNECTIONS)
        if name == "smoothing":
            return self.boolean(value, key)
        if name == "smoothing_bucket_size":
            return self.integer(value, key, unit="seconds", low=1, high=MAX_SMOOTHING_BUCKET_SIZE)
        if name == "dedup_window_records":
            return self.integer(value, key, unit="records", low=0)
        if name == "connect_timeout":
            return self.duration(value, key, nonzero="0 would time out at once")
        return self.duration(value, key)

    def upstream(
        self, t: Mapping[str, Any], key: _Key, base: UpstreamSettings, *, inherited: bool
    ) -> tuple[UpstreamSettings, set[str]]:
        """Apply the upstream keys present in *t* on top of *base*."""
        if not inherited:
            self.check_keys(t, _UPSTREAM_KEYS, key, _HINTS["upstream"])
        values = {
            name: self.upstream_value(name, t[name], (*key, name)) for name in _UPSTREAM_KEYS if name in t
        }
        settings = dataclasses.replace(base, **values)
        low, high = settings.reconnect_delay, settings.max_reconnect_delay
        if high < low:
            origin = " from [upstream]" if inherited else ""
            if "max_reconnect_delay" in values or "reconnect_delay" not in values:
                low_origin = "" if "reconnect_delay" in values else origin
                self.fail(
                    (*key, "max_reconnect_delay"),
                    f"must be >= reconnect_delay ({_seconds(low)} s{low_origin}), got {_seconds(high)}",
                )
            self.fail(
                (*key, "reconnect_delay"),
                f"{_seconds(low)} s exceeds max_reconnect_delay ({_seconds(high)} s{origin})",
            )
        if not settings.smoothing and settings.smoothing_bucket_size is not None:
            if "smoothing_bucket_size" in values:
                self.fail(key, "smoothing_bucket_size needs smoothing = true")
            # The stream turned off the smoothing [upstream] turned on: drop its bucket size too.
            settings = dataclasses.replace(settings, smoothing_bucket_size=None)
        return settings, set(values)

    def streams(
        self,
        value: Any,
        credentials: Mapping[str, Credentials],
        upstream: UpstreamSettings,
        storage: StorageConfig,
    ) -> list[StreamConfig]:
        key: _Key = ("streams",)
        none_msg = (
            "no streams defined: add one, e.g. [streams.prod] with "
            'url = "https://livestream.adobe.net/api/1/stream/<endpoint>"'
        )
        if value is None:
            self.fail(key, none_msg)
        t = self.table(value, key, header="[streams.<name>]")
        if not t:
            self.fail(key, none_msg)
        return [self.stream(name, body, credentials, upstream, storage) for name, body in t.items()]

    def stream(
        self,
        name: str,
        body: Any,
        credentials: Mapping[str, Credentials],
        upstream: UpstreamSettings,
        storage: StorageConfig,
    ) -> StreamConfig:
        skey: _Key = ("streams", name)
        body = self.table(body, skey, header=f"[streams.{_dotted((name,))}]")
        problem = _route_problem(name)
        if problem:
            self.fail(skey, f"the stream name is used as a route but {problem}")
        self.check_keys(body, _STREAM_KEYS, skey, _HINTS["stream"])

        if "url" not in body:
            self.fail(skey, 'missing url (e.g. url = "https://livestream.adobe.net/api/1/stream/<endpoint>")')
        url, endpoint = self.url(body["url"], (*skey, "url"))

        report_suite = body.get("report_suite")
        if report_suite is not None:
            rkey = (*skey, "report_suite")
            if not isinstance(report_suite, str):
                self.fail(rkey, f"expected a string, got {_describe(report_suite)}")
            problem = _route_problem(report_suite)
            if problem:
                self.fail(rkey, f"the report suite is used as a route but {problem}")

        creds = self.stream_credentials(body, skey, credentials)

        retention_bytes = storage.retention_bytes
        if "retention_bytes" in body:
            retention_bytes = self.byte_count(
                body["retention_bytes"], (*skey, "retention_bytes"), minimum=MIN_RETENTION_BYTES
            )
        retention_seconds = storage.retention_seconds
        if "retention_seconds" in body:
            retention_seconds = self.duration(
                body["retention_seconds"], (*skey, "retention_seconds"), nonzero=""
            )

        initial_reset = body.get("initial_reset")
        if initial_reset is not None and (
            not isinstance(initial_reset, str) or initial_reset not in INITIAL_RESETS
        ):
            self.fail(
                (*skey, "initial_reset"),
                f'expected "smallest" or "largest", got {_describe(initial_reset)}',
            )

        settings, overridden = self.upstream(body, skey, upstream, inherited=True)
        if "reconnect_delay" not in overridden:
            self.inherit_reconnect = True
        elif settings.reconnect_delay < ADOBE_MIN_RECONNECT_DELAY:
            self.warn((*skey, "reconnect_delay"), _reconnect_note(settings.reconnect_delay))
        if settings.connections > 1 and settings.dedup_window_records == 0:
            self.warn(
                skey,
                f"connections = {settings.connections} with dedup_window_records = 0: "
                "duplicates from multiple connections will reach consumers",
            )

        return StreamConfig(
            name=name,
            url=url,
            endpoint=endpoint,
            report_suite=report_suite,
            credentials=creds,
            upstream=settings,
            retention_bytes=retention_bytes,
            retention_seconds=retention_seconds,
            initial_reset=initial_reset,
        )

    def url(self, value: Any, key: _Key) -> tuple[str, str]:
        url, parts = self.http_url(value, key, example="https://livestream.adobe.net/...")
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            self.fail(
                key, "missing path: the URL must end in the stream endpoint, e.g. /api/1/stream/<endpoint>"
            )
        endpoint = segments[-1]
        problem = _route_problem(endpoint)
        if problem:
            self.fail(
                key, f"the endpoint (last path segment) {_quote(endpoint)} is used as a route but {problem}"
            )
        assert parts.hostname is not None
        if parts.scheme.lower() == "http" and not _is_loopback(parts.hostname):
            self.warn(key, f"plain http:// to {parts.hostname}: the token travels unencrypted")
        return url, endpoint

    def stream_credentials(
        self, body: Mapping[str, Any], skey: _Key, credentials: Mapping[str, Credentials]
    ) -> Credentials:
        known = ", ".join(credentials)
        if "credentials" not in body:
            if len(credentials) == 1:
                return next(iter(credentials.values()))
            names = ", ".join(repr(n) for n in credentials)
            self.fail(skey, f"no credentials: name one of {names} with 'credentials = \"<name>\"'")
        ref = body["credentials"]
        ckey = (*skey, "credentials")
        if not isinstance(ref, str):
            self.fail(
                ckey, f"expected the name of a credential set (a string), got {_describe(ref, show=False)}"
            )
        if ref not in credentials:
            self.fail(ckey, f"no credential set named {ref!r} (known: {known})")
        return credentials[ref]

    def routes(self, streams: list[StreamConfig]) -> dict[str, str]:
        owners: dict[str, tuple[str, str]] = {}
        for s in streams:
            for role, route in (("name", s.name), ("endpoint", s.endpoint), ("report_suite", s.report_suite)):
                if route is None:
                    continue
                if route in owners and owners[route][0] != s.name:
                    other, other_role = owners[route]
                    self.fail(
                        ("streams", s.name),
                        f"route {route!r} is already used by {_dotted(('streams', other))} ({other_role})",
                    )
                owners.setdefault(route, (s.name, role))
        return {route: owner for route, (owner, _) in owners.items()}


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def _reconnect_note(delay: float) -> str:
    return (
        f"{_seconds(delay)} s is below {_seconds(ADOBE_MIN_RECONNECT_DELAY)} s; "
        "Adobe asks ~60 s between reconnects"
    )
