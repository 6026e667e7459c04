"""Load and validate the lsproxy TOML configuration.

This is a pure module (no I/O besides reading the file, no trio, no httpx).
Every problem raises :class:`~lsproxy.errors.ConfigError` with one line of the
form ``"<file>: <dotted key>: <problem>"``. No message, warning or ``repr``
ever contains a credential value: tokens and API keys are wrapped in
:class:`~lsproxy.secret.Secret` as soon as they are read, and values found
under ``[credentials]`` are never echoed.

Layout (all tables but ``[credentials.*]`` and ``[streams.*]`` are optional)::

    [server]                 listen, heartbeat_interval, request_timeout,
                             write_timeout, shutdown_grace, replay_window_bytes
    [upstream]               reconnect_delay, max_reconnect_delay, connect_timeout,
                             idle_timeout, healthy_after  (defaults for every stream)
    [credentials.<name>]     token | token_env, optional api_key | api_key_env
    [streams.<name>]         url, report_suite, credentials, retention_bytes,
                             and any [upstream] key as an override
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn
from urllib.parse import urlsplit

from lsproxy.errors import ConfigError
from lsproxy.secret import Secret

__all__ = [
    "ADOBE_MIN_RECONNECT_DELAY",
    "DEFAULT_RETENTION_BYTES",
    "MIN_RETENTION_BYTES",
    "Config",
    "Credentials",
    "ServerConfig",
    "StreamConfig",
    "UpstreamSettings",
    "load_config",
    "parse_config",
]

DEFAULT_RETENTION_BYTES = 256 * 1024 * 1024
MIN_RETENTION_BYTES = 1024 * 1024
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


@dataclass(frozen=True)
class UpstreamSettings:
    reconnect_delay: float = 60.0
    max_reconnect_delay: float = 900.0
    connect_timeout: float = 10.0
    idle_timeout: float = 0.0
    healthy_after: float = 60.0


@dataclass(frozen=True)
class Credentials:
    name: str
    token: Secret
    api_key: Secret | None
    #: Where the token came from, safe to log: "env LSPROXY_ADOBE_TOKEN" or "inline".
    source: str


@dataclass(frozen=True)
class StreamConfig:
    name: str
    url: str
    endpoint: str
    report_suite: str | None
    credentials: Credentials
    upstream: UpstreamSettings
    retention_bytes: int = DEFAULT_RETENTION_BYTES

    @property
    def route_keys(self) -> tuple[str, ...]:
        """name, endpoint, report_suite -- deduplicated, in that order."""
        keys = [self.name, self.endpoint]
        if self.report_suite is not None:
            keys.append(self.report_suite)
        return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class Config:
    path: str
    server: ServerConfig
    streams: tuple[StreamConfig, ...]
    routes: Mapping[str, str] = field(hash=False)  # route key -> stream name (read-only)
    warnings: tuple[str, ...]


# --------------------------------------------------------------------------- #
# Entry points
# --------------------------------------------------------------------------- #


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the TOML file at *path*."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(_one_line(f"{name}: cannot read config: {reason}")) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            _one_line(f"{name}: cannot read config: not UTF-8 (bad byte at offset {exc.start})")
        ) from None
    return parse_config(text, path=name, environ=environ)


def parse_config(text: str, *, path: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Validate TOML *text*; *path* is only used in messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_one_line(f"{path}: {_toml_error(exc)}")) from None
    env = os.environ if environ is None else environ
    return _Parser(path, env).parse(raw)


# --------------------------------------------------------------------------- #
# Implementation
# --------------------------------------------------------------------------- #

_Key = tuple[str, ...]

_TOP_KEYS = ("server", "upstream", "credentials", "streams")
_SERVER_KEYS = (
    "listen",
    "heartbeat_interval",
    "request_timeout",
    "write_timeout",
    "shutdown_grace",
    "replay_window_bytes",
)
_UPSTREAM_KEYS = tuple(f.name for f in dataclasses.fields(UpstreamSettings))
_CREDENTIAL_KEYS = ("token", "token_env", "api_key", "api_key_env")
_STREAM_OWN_KEYS = ("url", "report_suite", "credentials", "retention_bytes")
_STREAM_KEYS = _STREAM_OWN_KEYS + _UPSTREAM_KEYS

# Durations where 0 would mean "time out immediately" rather than "off".
_POSITIVE_DURATIONS = frozenset({"request_timeout", "write_timeout", "connect_timeout"})

_CREDENTIALS_ELSEWHERE = (
    'credentials belong in a [credentials.<name>] table; reference it here with credentials = "<name>"'
)
_HINTS: dict[str, dict[str, str]] = {
    "server": {
        "host": 'use listen = "host:port"',
        "port": 'use listen = "host:port"',
        "retention_bytes": "retention_bytes is set per stream, in [streams.<name>]",
        **{k: f"{k} belongs in [upstream] or [streams.<name>]" for k in _UPSTREAM_KEYS},
    },
    "upstream": {
        "retention_bytes": "retention_bytes is set per stream, in [streams.<name>]",
        **{k: f"{k} belongs in [server]" for k in _SERVER_KEYS},
    },
    "stream": {
        "token": _CREDENTIALS_ELSEWHERE,
        "token_env": _CREDENTIALS_ELSEWHERE,
        "api_key": _CREDENTIALS_ELSEWHERE,
        "api_key_env": _CREDENTIALS_ELSEWHERE,
        "endpoint": "the endpoint is the last path segment of url",
        **{k: f"{k} belongs in [server]" for k in _SERVER_KEYS},
    },
    "credentials": {},
    "top": {},
}

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOML_POS = re.compile(r"^(?P<msg>.*?)\s*\((?:at )?line (?P<line>\d+), column (?P<col>\d+)\)$")
_TOML_END = re.compile(r"^(?P<msg>.*?)\s*\(at end of document\)$")


def _one_line(message: str) -> str:
    return " ".join(message.splitlines())


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    msg = _one_line(str(exc))
    m = _TOML_POS.match(msg)
    if m:
        return f"line {m['line']}, column {m['col']}: {m['msg']}"
    m = _TOML_END.match(msg)
    if m:
        return f"end of document: {m['msg']}"
    return f"invalid TOML: {msg}"


def _dotted(key: _Key) -> str:
    return ".".join(p if _BARE_KEY.fullmatch(p) else json.dumps(p) for p in key)


def _quote(s: str) -> str:
    if len(s) > 60:
        s = s[:57] + "..."
    return json.dumps(s, ensure_ascii=False)


def _describe(value: Any, *, show: bool = True) -> str:
    """Name a TOML value's type, with the value itself only when *show*."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}" if show else "boolean"
    if isinstance(value, int):
        return f"integer {value}" if show else "integer"
    if isinstance(value, float):
        return f"float {value}" if show else "float"
    if isinstance(value, str):
        return f"string {_quote(value)}" if show else "string"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return "array of tables"
        return "array"
    if isinstance(value, datetime.datetime):
        return "date-time"
    if isinstance(value, datetime.date):
        return "date"
    if isinstance(value, datetime.time):
        return "time"
    return type(value).__name__


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


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


def _is_loopback(host: str) -> bool:
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _secret_problem(value: str) -> str | None:
    """What is wrong with a token/API key, never mentioning its content."""
    if value == "":
        return "is empty"
    if all("\x21" <= c <= "\x7e" for c in value):
        return None
    if value.lower().startswith("bearer "):
        return "starts with 'Bearer ': give the bare token, lsproxy adds the prefix"
    stripped = value.strip()
    if stripped != value and all("\x21" <= c <= "\x7e" for c in stripped):
        return "has leading or trailing whitespace (a stray newline?)"
    return "contains whitespace, control or non-ASCII characters"


class _Parser:
    def __init__(self, path: str, environ: Mapping[str, str]) -> None:
        self.path = path
        self.environ = environ
        self.warnings: list[str] = []
        self.inherit_reconnect = False  # some stream uses [upstream]'s reconnect_delay

    # -- helpers ------------------------------------------------------------ #

    def fail(self, key: _Key, problem: str) -> NoReturn:
        raise ConfigError(_one_line(f"{self.path}: {_dotted(key)}: {problem}"))

    def warn(self, key: _Key, note: str) -> None:
        self.warnings.append(_one_line(f"{self.path}: {_dotted(key)}: {note}"))

    def table(self, value: Any, key: _Key, *, header: str, show: bool = True) -> dict[str, Any]:
        if not isinstance(value, dict):
            got = _describe(value, show=show)
            self.fail(key, f"expected a table ({header}), got {got}")
        return value

    def check_keys(
        self, table: Mapping[str, Any], allowed: tuple[str, ...], key: _Key, hints: Mapping[str, str]
    ) -> None:
        for name in table:
            if name in allowed:
                continue
            if name in hints:
                self.fail((*key, name), f"unknown key ({hints[name]})")
            close = difflib.get_close_matches(name, allowed, n=1)
            if close:
                self.fail((*key, name), f"unknown key (did you mean {close[0]!r}?)")
            self.fail((*key, name), f"unknown key (expected one of: {', '.join(allowed)})")

    def duration(self, value: Any, key: _Key) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"expected a number of seconds, got {_describe(value)}")
        if not math.isfinite(value):
            self.fail(key, f"expected a finite number of seconds, got {value}")
        if value < 0:
            self.fail(key, f"must be >= 0 seconds, got {_seconds(value)}")
        if value == 0 and key[-1] in _POSITIVE_DURATIONS:
            self.fail(key, "must be > 0 seconds (0 would time out at once)")
        return float(value)

    # -- sections ----------------------------------------------------------- #

    def parse(self, raw: dict[str, Any]) -> Config:
        self.check_keys(raw, _TOP_KEYS, (), _HINTS["top"])
        server = self.server(raw.get("server", {}))
        upstream_raw = self.table(raw.get("upstream", {}), ("upstream",), header="[upstream]")
        upstream, upstream_set = self.upstream(
            upstream_raw, ("upstream",), UpstreamSettings(), inherited=False
        )
        credentials = self.credentials(raw.get("credentials"))
        streams = self.streams(raw.get("streams"), credentials, upstream)
        routes = self.routes(streams)

        if (
            upstream.reconnect_delay < ADOBE_MIN_RECONNECT_DELAY
            and "reconnect_delay" in upstream_set
            and self.inherit_reconnect
        ):
            self.warn(("upstream", "reconnect_delay"), _reconnect_note(upstream.reconnect_delay))
        used = {s.credentials.name for s in streams}
        for name in credentials:
            if name not in used:
                self.warn(("credentials", name), "not used by any stream")

        return Config(
            path=self.path,
            server=server,
            streams=tuple(streams),
            routes=MappingProxyType(routes),
            warnings=tuple(self.warnings),
        )

    def server(self, value: Any) -> ServerConfig:
        key: _Key = ("server",)
        t = self.table(value, key, header="[server]")
        self.check_keys(t, _SERVER_KEYS, key, _HINTS["server"])
        kwargs: dict[str, Any] = {}
        if "listen" in t:
            kwargs["host"], kwargs["port"] = self.listen(t["listen"], (*key, "listen"))
        for name in ("heartbeat_interval", "request_timeout", "write_timeout", "shutdown_grace"):
            if name in t:
                kwargs[name] = self.duration(t[name], (*key, name))
        if "replay_window_bytes" in t:
            kwargs["replay_window_bytes"] = self.replay_window(
                t["replay_window_bytes"], (*key, "replay_window_bytes")
            )
        server = ServerConfig(**kwargs)
        if not _is_loopback(server.host):
            self.warn(
                (*key, "listen"),
                f"listening on {server.host}: consumers are not authenticated, "
                "anyone who can reach this address can read the stream",
            )
        return server

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

    def replay_window(self, value: Any, key: _Key) -> int | None:
        if value == "auto" and isinstance(value, str):
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        self.fail(key, f'expected "auto" or an integer >= 0 (bytes), got {_describe(value)}')

    def upstream(
        self, t: Mapping[str, Any], key: _Key, base: UpstreamSettings, *, inherited: bool
    ) -> tuple[UpstreamSettings, set[str]]:
        """Apply the upstream keys present in *t* on top of *base*."""
        if not inherited:
            self.check_keys(t, _UPSTREAM_KEYS, key, _HINTS["upstream"])
        values = {name: self.duration(t[name], (*key, name)) for name in _UPSTREAM_KEYS if name in t}
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
        return settings, set(values)

    def credentials(self, value: Any) -> dict[str, Credentials]:
        key: _Key = ("credentials",)
        none_msg = (
            "no credential sets defined: add one, e.g. [credentials.adobe] "
            'with token_env = "LSPROXY_ADOBE_TOKEN"'
        )
        if value is None:
            self.fail(key, none_msg)
        t = self.table(value, key, header="[credentials.<name>]", show=False)
        if not t:
            self.fail(key, none_msg)
        result: dict[str, Credentials] = {}
        for name, body in t.items():
            ckey = (*key, name)
            body = self.table(body, ckey, header=f"[credentials.{_dotted((name,))}]", show=False)
            self.check_keys(body, _CREDENTIAL_KEYS, ckey, _HINTS["credentials"])
            token, source = self.secret(body, ckey, "token", required=True)
            assert token is not None
            api_key, _ = self.secret(body, ckey, "api_key", required=False)
            result[name] = Credentials(name=name, token=token, api_key=api_key, source=source)
        return result

    def secret(
        self, body: Mapping[str, Any], ckey: _Key, name: str, *, required: bool
    ) -> tuple[Secret | None, str]:
        env_name = f"{name}_env"
        if name in body and env_name in body:
            self.fail(ckey, f"set either {name} or {env_name}, not both")
        if name in body:
            value = body[name]
            if not isinstance(value, str):
                self.fail((*ckey, name), f"expected a string, got {_describe(value, show=False)}")
            problem = _secret_problem(value)
            if problem:
                self.fail((*ckey, name), problem)
            return Secret(value), "inline"
        if env_name in body:
            var = body[env_name]
            vkey = (*ckey, env_name)
            if not isinstance(var, str):
                self.fail(
                    vkey, f"expected the name of an environment variable, got {_describe(var, show=False)}"
                )
            if not _ENV_NAME.fullmatch(var):
                # Do not echo it: people paste the token itself here by mistake.
                self.fail(
                    vkey,
                    "not a valid environment variable name (letters, digits, '_'); "
                    f'to give the value itself use {name} = "..."',
                )
            value = self.environ.get(var)
            if value is None:
                self.fail(vkey, f"environment variable {var} is not set")
            if value == "":
                self.fail(vkey, f"environment variable {var} is set but empty")
            problem = _secret_problem(value)
            if problem:
                self.fail(vkey, f"environment variable {var} {problem}")
            return Secret(value), f"env {var}"
        if required:
            self.fail(ckey, f'missing {env_name} (e.g. {env_name} = "LSPROXY_ADOBE_TOKEN") or {name}')
        return None, ""

    def streams(
        self, value: Any, credentials: Mapping[str, Credentials], upstream: UpstreamSettings
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
        return [self.stream(name, body, credentials, upstream) for name, body in t.items()]

    def stream(
        self, name: str, body: Any, credentials: Mapping[str, Credentials], upstream: UpstreamSettings
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

        retention = body.get("retention_bytes", DEFAULT_RETENTION_BYTES)
        if isinstance(retention, bool) or not isinstance(retention, int):
            self.fail(
                (*skey, "retention_bytes"), f"expected an integer number of bytes, got {_describe(retention)}"
            )
        if retention < MIN_RETENTION_BYTES:
            self.fail(
                (*skey, "retention_bytes"), f"must be at least {MIN_RETENTION_BYTES} (1 MiB), got {retention}"
            )

        settings, overridden = self.upstream(body, skey, upstream, inherited=True)
        if "reconnect_delay" not in overridden:
            self.inherit_reconnect = True
        elif settings.reconnect_delay < ADOBE_MIN_RECONNECT_DELAY:
            self.warn((*skey, "reconnect_delay"), _reconnect_note(settings.reconnect_delay))

        return StreamConfig(
            name=name,
            url=url,
            endpoint=endpoint,
            report_suite=report_suite,
            credentials=creds,
            upstream=settings,
            retention_bytes=retention,
        )

    def url(self, value: Any, key: _Key) -> tuple[str, str]:
        if not isinstance(value, str):
            self.fail(key, f"expected a URL string, got {_describe(value)}")
        if any(c.isspace() or not c.isprintable() for c in value):
            self.fail(key, "contains whitespace or control characters")
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            self.fail(key, f"not a valid URL ({exc})")
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            self.fail(key, f"expected an http:// or https:// URL, got {got}")
        if "@" in parts.netloc:
            # Never echoed: it may hold a password.
            self.fail(
                key, "must not contain user info (user:password@); credentials go in [credentials.<name>]"
            )
        if not parts.hostname:
            self.fail(key, "missing host (expected e.g. https://livestream.adobe.net/...)")
        try:
            parts.port  # noqa: B018  (validates the port)
        except ValueError:
            self.fail(key, "invalid port in URL")
        if "#" in value:
            self.fail(key, "must not contain a fragment ('#...')")
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
        if scheme == "http" and not _is_loopback(parts.hostname):
            self.warn(key, f"plain http:// to {parts.hostname}: the token travels unencrypted")
        return value, endpoint

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


def _reconnect_note(delay: float) -> str:
    return (
        f"{_seconds(delay)} s is below {_seconds(ADOBE_MIN_RECONNECT_DELAY)} s; "
        "Adobe asks ~60 s between reconnects"
    )
