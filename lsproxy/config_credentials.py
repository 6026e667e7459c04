"""Credential sets of the lsproxy configuration, and the validation primitives
shared with :mod:`lsproxy.config`.

Pure stdlib (no trio, no httpx). The only I/O is checking (and reading, to
validate) the secret files a credential set names. Every problem raises
:class:`~lsproxy.errors.ConfigError` with one line ``"<file>: <dotted key>:
<problem>"``. No message, warning or ``repr`` ever contains a credential value:
values found under ``[credentials]`` are never echoed, and tokens, API keys and
client secrets are wrapped in :class:`~lsproxy.secret.Secret` as soon as they
are read.

Two kinds of credential set::

    [credentials.<name>]     # kind = "static" (the default)
    token | token_env | token_file          exactly one
    api_key | api_key_env                   optional (sent as x-api-key)

    [credentials.<name>]
    kind = "oauth"           # OAuth server-to-server (client-credentials grant)
    client_id | client_id_env               exactly one
    client_secret_env | client_secret_file  exactly one (never inline)
    scopes = ["openid", ...]                required
    token_url = "https://..."               optional (Adobe IMS)
    api_key | api_key_env                   optional, defaults to the client id

Relative file paths are relative to the directory of the configuration file.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import math
import os
import re
import shlex
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import SplitResult, urlsplit

from lsproxy.errors import ConfigError
from lsproxy.secret import Secret

__all__ = [
    "CREDENTIAL_KINDS",
    "DEFAULT_TOKEN_URL",
    "MAX_SECRET_FILE_BYTES",
    "Credentials",
    "OAuthSettings",
    "read_secret_file",
]

DEFAULT_TOKEN_URL = "https://ims-na1.adobelogin.com/ims/token/v3"
CREDENTIAL_KINDS = ("static", "oauth")
#: A token or client secret file larger than this is refused (not a secret file).
MAX_SECRET_FILE_BYTES = 64 * 1024


# --------------------------------------------------------------------------- #
# Public data model
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class OAuthSettings:
    #: Not a secret, but kept out of reprs and messages all the same.
    client_id: str = field(repr=False)
    #: From client_secret_env, resolved at load; None when client_secret_file is used.
    client_secret: Secret | None
    #: Absolute path, checked at load; read again at every token fetch.
    client_secret_file: str | None
    scopes: tuple[str, ...]
    token_url: str = DEFAULT_TOKEN_URL


@dataclass(frozen=True)
class Credentials:
    name: str
    kind: str  # "static" or "oauth"
    #: static: from token / token_env; None with token_file or kind = "oauth".
    token: Secret | None
    #: static: absolute path of a file holding the token (re-read when it changes).
    token_file: str | None
    #: static: api_key / api_key_env; oauth: the same, else the client id.
    api_key: Secret | None
    oauth: OAuthSettings | None  # set iff kind == "oauth"
    #: Safe to log: "inline", "env NAME", "file /path", "oauth client abcd… via host".
    source: str
    #: The configuration file itself holds the secret (token = "...").
    inline_secret: bool = False


def read_secret_file(path: str) -> Secret:
    """Read and validate a token or client secret file.

    Trailing line breaks are dropped (``echo "$TOKEN" > file`` is fine); any
    other whitespace is an error. Raises :class:`ConfigError` with a one-line
    ``"<path>: <problem>"`` message that never contains the file's content.
    Blocking: call it from a worker thread in async code.
    """
    secret, problem, _ = _read_secret_file(path)
    if secret is None:
        raise ConfigError(_one_line(f"{path}: {problem}"))
    return secret


# --------------------------------------------------------------------------- #
# Primitives shared with lsproxy.config
# --------------------------------------------------------------------------- #

_Key = tuple[str, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _one_line(message: str) -> str:
    return " ".join(message.splitlines())


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


def _is_loopback(host: str) -> bool:
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _secret_problem(value: str) -> str | None:
    """What is wrong with a token/API key/client secret, never mentioning its content."""
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


def _read_secret_file(path: str) -> tuple[Secret | None, str, int]:
    """(secret, "", st_mode) or (None, problem, 0); the problem never quotes the content."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, "is not a regular file", 0
        if st.st_size > MAX_SECRET_FILE_BYTES:
            return None, f"is larger than {MAX_SECRET_FILE_BYTES // 1024} KiB (not a secret file?)", 0
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except FileNotFoundError:
        return None, "does not exist", 0
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or type(exc).__name__})", 0
    if len(data) > MAX_SECRET_FILE_BYTES:
        return None, f"is larger than {MAX_SECRET_FILE_BYTES // 1024} KiB (not a secret file?)", 0
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "is not UTF-8 text", 0
    value = text.rstrip("\r\n")
    problem = _secret_problem(value)
    if problem:
        return None, problem, 0
    return Secret(value), "", st.st_mode


class _ParserBase:
    """Message helpers and generic checks; :class:`lsproxy.config._Parser` builds on it."""

    def __init__(self, path: str, environ: Mapping[str, str], base_dir: str, file_mode: int | None) -> None:
        self.path = path
        self.environ = environ
        self.base_dir = base_dir  # absolute; relative paths in the file are relative to it
        self.file_mode = file_mode  # st_mode of the configuration file, when it is a real file
        self.warnings: list[str] = []

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
        self, table: Mapping[str, Any], allowed: Sequence[str], key: _Key, hints: Mapping[str, str]
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

    def duration(self, value: Any, key: _Key, *, nonzero: str | None = None) -> float:
        """Seconds >= 0; > 0 when *nonzero* (the reason, or "" for none) is given."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"expected a number of seconds, got {_describe(value)}")
        if not math.isfinite(value):
            self.fail(key, f"expected a finite number of seconds, got {value}")
        if value < 0:
            self.fail(key, f"must be >= 0 seconds, got {_seconds(value)}")
        if value == 0 and nonzero is not None:
            self.fail(key, f"must be > 0 seconds ({nonzero})" if nonzero else "must be > 0 seconds")
        return float(value)

    def path_value(self, value: Any, key: _Key, *, show: bool = True) -> str:
        """A file system path, made absolute against the configuration's directory."""
        if not isinstance(value, str):
            self.fail(key, f"expected a path (a string), got {_describe(value, show=show)}")
        if value == "":
            self.fail(key, "is empty (expected a path)")
        if "\x00" in value:
            self.fail(key, "contains a NUL character")
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(value)))

    def http_url(self, value: Any, key: _Key, *, example: str) -> tuple[str, SplitResult]:
        """An absolute http(s) URL without user info or fragment."""
        if not isinstance(value, str):
            self.fail(key, f"expected a URL string, got {_describe(value)}")
        if any(c.isspace() or not c.isprintable() for c in value):
            self.fail(key, "contains whitespace or control characters")
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            self.fail(key, f"not a valid URL ({exc})")
        if parts.scheme.lower() not in ("http", "https"):
            got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            self.fail(key, f"expected an http:// or https:// URL, got {got}")
        if "@" in parts.netloc:
            # Never echoed: it may hold a password.
            self.fail(
                key, "must not contain user info (user:password@); credentials go in [credentials.<name>]"
            )
        if not parts.hostname:
            self.fail(key, f"missing host (expected e.g. {example})")
        try:
            parts.port  # noqa: B018  (validates the port)
        except ValueError:
            self.fail(key, "invalid port in URL")
        if "#" in value:
            self.fail(key, "must not contain a fragment ('#...')")
        return value, parts


# --------------------------------------------------------------------------- #
# Credential sets
# --------------------------------------------------------------------------- #

_STATIC_ONLY = ("token", "token_env", "token_file")
_OAUTH_ONLY = (
    "client_id",
    "client_id_env",
    "client_secret_env",
    "client_secret_file",
    "scopes",
    "token_url",
)
_CREDENTIAL_KEYS = ("kind", *_STATIC_ONLY, "api_key", "api_key_env", *_OAUTH_ONLY)
#: Keys that belong in [credentials.<name>], for hints elsewhere.
CREDENTIAL_SET_KEYS = (*_CREDENTIAL_KEYS, "client_secret")
_SCOPES_EXAMPLE = (
    'scopes = ["openid", "AdobeID", "read_organizations", "additional_info.projectedProductContext"]'
)
_NO_INLINE_CLIENT_SECRET = "client_secret must not be inline: use client_secret_env or client_secret_file"


def _either(names: Sequence[str]) -> str:
    if len(names) == 2:
        return f"set either {names[0]} or {names[1]}, not both"
    return f"set only one of {', '.join(names)}"


class _CredentialsParser(_ParserBase):
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
        return {name: self.credential_set(name, body) for name, body in t.items()}

    def credential_set(self, name: str, body: Any) -> Credentials:
        ckey: _Key = ("credentials", name)
        body = self.table(body, ckey, header=f"[credentials.{_dotted((name,))}]", show=False)
        if "client_secret" in body:
            self.fail(ckey, _NO_INLINE_CLIENT_SECRET)
        self.check_keys(body, _CREDENTIAL_KEYS, ckey, {})
        kind = body.get("kind", "static")
        if not isinstance(kind, str):
            self.fail((*ckey, "kind"), f'expected "static" or "oauth", got {_describe(kind, show=False)}')
        if kind not in CREDENTIAL_KINDS:
            close = difflib.get_close_matches(kind, CREDENTIAL_KINDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.fail((*ckey, "kind"), f"unknown kind ({hint}valid kinds: {', '.join(CREDENTIAL_KINDS)})")
        for k in body:
            if kind == "oauth" and k in _STATIC_ONLY:
                self.fail(
                    (*ckey, k),
                    'not used with kind = "oauth" (lsproxy fetches the token with the client id and secret)',
                )
            if kind == "static" and k in _OAUTH_ONLY:
                note = "" if "kind" in body else ' (the default when kind is absent; add kind = "oauth")'
                self.fail((*ckey, k), f'not used with kind = "static"{note}')
        if kind == "oauth":
            return self.oauth_set(name, body, ckey)
        return self.static_set(name, body, ckey)

    def static_set(self, name: str, body: Mapping[str, Any], ckey: _Key) -> Credentials:
        which = self.one_of(body, ckey, ("token", "token_env", "token_file"))
        token: Secret | None = None
        token_file: str | None = None
        if which == "token":
            token, source = Secret(self.inline(body["token"], (*ckey, "token"))), "inline"
        elif which == "token_env":
            var, value = self.from_env(body["token_env"], (*ckey, "token_env"), inline="token")
            token, source = Secret(value), f"env {var}"
        elif which == "token_file":
            token_file = self.secret_file(body["token_file"], (*ckey, "token_file"))
            source = f"file {token_file}"
        else:
            self.fail(
                ckey,
                'missing token_env (e.g. token_env = "LSPROXY_ADOBE_TOKEN"), token_file or token '
                '(or kind = "oauth" for OAuth client credentials)',
            )
        return Credentials(
            name=name,
            kind="static",
            token=token,
            token_file=token_file,
            api_key=self.api_key(body, ckey),
            oauth=None,
            source=source,
            inline_secret=which == "token",
        )

    def oauth_set(self, name: str, body: Mapping[str, Any], ckey: _Key) -> Credentials:
        which = self.one_of(body, ckey, ("client_id", "client_id_env"))
        if which == "client_id":
            client_id = self.inline(body["client_id"], (*ckey, "client_id"))
        elif which == "client_id_env":
            _, client_id = self.from_env(body["client_id_env"], (*ckey, "client_id_env"), inline="client_id")
        else:
            self.fail(ckey, 'missing client_id (e.g. client_id = "<your client id>") or client_id_env')

        which = self.one_of(body, ckey, ("client_secret_env", "client_secret_file"))
        client_secret: Secret | None = None
        client_secret_file: str | None = None
        if which == "client_secret_env":
            _, value = self.from_env(body["client_secret_env"], (*ckey, "client_secret_env"), inline=None)
            client_secret = Secret(value)
        elif which == "client_secret_file":
            client_secret_file = self.secret_file(body["client_secret_file"], (*ckey, "client_secret_file"))
        else:
            self.fail(
                ckey,
                'missing client_secret_env (e.g. client_secret_env = "LSPROXY_ADOBE_CLIENT_SECRET") '
                "or client_secret_file",
            )

        if "scopes" not in body:
            self.fail(ckey, f"missing scopes (e.g. {_SCOPES_EXAMPLE})")
        scopes = self.scopes(body["scopes"], (*ckey, "scopes"))

        token_url = DEFAULT_TOKEN_URL
        if "token_url" in body:
            tkey = (*ckey, "token_url")
            token_url, parts = self.http_url(body["token_url"], tkey, example=DEFAULT_TOKEN_URL)
            assert parts.hostname is not None
            if parts.scheme.lower() == "http" and not _is_loopback(parts.hostname):
                self.fail(
                    tkey,
                    "plain http:// is only allowed to a loopback host: the client secret would travel unencrypted",
                )
        host = urlsplit(token_url).netloc

        api_key = self.api_key(body, ckey)
        shown = client_id[: min(4, len(client_id) // 2)]
        return Credentials(
            name=name,
            kind="oauth",
            token=None,
            token_file=None,
            api_key=Secret(client_id) if api_key is None else api_key,
            oauth=OAuthSettings(
                client_id=client_id,
                client_secret=client_secret,
                client_secret_file=client_secret_file,
                scopes=scopes,
                token_url=token_url,
            ),
            source=f"oauth client {shown}… via {host}",
        )

    # -- pieces ------------------------------------------------------------- #

    def one_of(self, body: Mapping[str, Any], ckey: _Key, names: Sequence[str]) -> str | None:
        present = [n for n in names if n in body]
        if len(present) > 1:
            self.fail(ckey, _either(present))
        return present[0] if present else None

    def api_key(self, body: Mapping[str, Any], ckey: _Key) -> Secret | None:
        which = self.one_of(body, ckey, ("api_key", "api_key_env"))
        if which == "api_key":
            return Secret(self.inline(body["api_key"], (*ckey, "api_key")))
        if which == "api_key_env":
            _, value = self.from_env(body["api_key_env"], (*ckey, "api_key_env"), inline="api_key")
            return Secret(value)
        return None

    def inline(self, value: Any, key: _Key) -> str:
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {_describe(value, show=False)}")
        problem = _secret_problem(value)
        if problem:
            self.fail(key, problem)
        return value

    def from_env(self, var: Any, key: _Key, *, inline: str | None) -> tuple[str, str]:
        """(variable name, value) of the environment variable named by *var*."""
        if not isinstance(var, str):
            self.fail(key, f"expected the name of an environment variable, got {_describe(var, show=False)}")
        if not _ENV_NAME.fullmatch(var):
            # Do not echo it: people paste the secret itself here by mistake.
            alternative = (
                f'to give the value itself use {inline} = "..."'
                if inline
                else "the value itself must not be in this file (use client_secret_file)"
            )
            self.fail(key, f"not a valid environment variable name (letters, digits, '_'); {alternative}")
        value = self.environ.get(var)
        if value is None:
            self.fail(key, f"environment variable {var} is not set")
        if value == "":
            self.fail(key, f"environment variable {var} is set but empty")
        problem = _secret_problem(value)
        if problem:
            self.fail(key, f"environment variable {var} {problem}")
        return var, value

    def secret_file(self, value: Any, key: _Key) -> str:
        """Absolute path of a readable, valid secret file; warns if others may read it."""
        path = self.path_value(value, key, show=False)
        secret, problem, mode = _read_secret_file(path)
        if secret is None:
            self.fail(key, f"{path} {problem}")
        if mode & 0o044:
            self.warn(key, f"{path} is readable by others (chmod 600 {shlex.quote(path)})")
        return path

    def scopes(self, value: Any, key: _Key) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(
                key,
                f"expected a list of strings (e.g. {_SCOPES_EXAMPLE}), got {_describe(value, show=False)}",
            )
        if not value:
            self.fail(key, f"must list at least one scope (e.g. {_SCOPES_EXAMPLE})")
        seen: dict[str, int] = {}
        for i, scope in enumerate(value, 1):
            if not isinstance(scope, str):
                self.fail(key, f"item {i}: expected a string, got {_describe(scope, show=False)}")
            if scope == "":
                self.fail(key, f"item {i} is empty")
            if "," in scope or any(c.isspace() or not c.isprintable() for c in scope):
                self.fail(
                    key,
                    f"item {i} contains a comma, whitespace or control characters (give each scope as its own string)",
                )
            if scope in seen:
                self.fail(key, f"item {i} repeats item {seen[scope]}")
            seen[scope] = i
        return tuple(value)

    def inline_secret_warnings(
        self, credentials: Mapping[str, Credentials], users: Mapping[str, list[str]]
    ) -> None:
        """Warn about inline secrets in a configuration file that others may read.

        *users* maps a credential set to the URLs of the streams using it. A set
        used only by plain-http loopback streams (the simulator) is exempt.
        """
        if self.file_mode is None or not self.file_mode & 0o044:
            return
        for name, creds in credentials.items():
            if not creds.inline_secret:
                continue
            urls = users.get(name, [])
            if urls and all(_is_plain_loopback(u) for u in urls):
                continue
            self.warn(
                ("credentials", name, "token"),
                f"the file holds a secret inline and is readable by others "
                f"(chmod 600 {shlex.quote(self.path)}, or use token_env / token_file)",
            )


def _is_plain_loopback(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme.lower() == "http" and _is_loopback(parts.hostname or "")
