"""``[consumers.<name>]`` tables: who may read which streams, and who is an admin.

Pure stdlib (no trio, no httpx); the only I/O is reading a ``token_file``.
When at least one table exists, every consumer request needs ``Authorization:
Bearer <token>`` (see ``serve/auth.py``)::

    [consumers.<name>]
    token_sha256 | token_env | token_file   exactly one
    streams = ["route", ...]                optional, default: every stream
    admin = true | false                    optional, default false

``token_sha256`` is the hex SHA-256 of the token, so the file holds no secret
(``lsproxy token new NAME`` prints a token and its line). With ``token_env``
or ``token_file`` the token itself is read at load (and at every reload) and
only its digest is kept for the comparison; the value is kept as a
:class:`~lsproxy.secret.Secret` solely to mask it in log lines.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lsproxy.config_credentials import (
    _ENV_NAME,
    _describe,
    _dotted,
    _Key,
    _ParserBase,
    _read_secret_file,
    _secret_problem,
)
from lsproxy.secret import Secret

__all__ = ["CONSUMER_NAME", "ConsumerAccess", "token_digest"]

#: A consumer table's name: it prefixes its cursors ("<name>/<consumer id>"), so no "/".
CONSUMER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CONSUMER_KEYS = ("token_sha256", "token_env", "token_file", "streams", "admin")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
MIN_TOKEN_CHARS = 20  # shorter tokens get a warning: they can be guessed


@dataclass(frozen=True)
class ConsumerAccess:
    name: str
    #: SHA-256 of the bearer token (32 bytes).
    token_sha256: bytes = field(repr=False)
    #: Stream (table) names this consumer may read; None: every stream.
    streams: frozenset[str] | None
    admin: bool = False
    #: Safe to show: "token_sha256", "env NAME" or "file /path".
    source: str = "token_sha256"
    #: token_env / token_file: the token itself, only to keep it out of log lines.
    token: Secret | None = field(default=None, repr=False, compare=False)

    def may_read(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class _ConsumersParser(_ParserBase):
    def consumers(self, value: Any, routes: Mapping[str, str]) -> tuple[ConsumerAccess, ...]:
        """Every ``[consumers.<name>]`` table; ``routes`` maps route keys to stream names."""
        if value is None:
            return ()
        key: _Key = ("consumers",)
        t = self.table(value, key, header="[consumers.<name>]", show=False)
        found = [self.consumer(name, body, routes) for name, body in t.items()]
        owners: dict[bytes, str] = {}
        for consumer in found:
            other = owners.setdefault(consumer.token_sha256, consumer.name)
            if other != consumer.name:
                self.fail(
                    ("consumers", consumer.name),
                    f"has the same token as {_dotted(('consumers', other))}: each consumer needs its own",
                )
        return tuple(found)

    def consumer(self, name: str, body: Any, routes: Mapping[str, str]) -> ConsumerAccess:
        ckey: _Key = ("consumers", name)
        body = self.table(body, ckey, header=f"[consumers.{_dotted((name,))}]", show=False)
        if not CONSUMER_NAME.fullmatch(name):
            self.fail(ckey, "a consumer name is 1-64 letters, digits, '.', '_' or '-' (it prefixes cursor names)")
        self.check_keys(body, _CONSUMER_KEYS, ckey, {"token": "give token_sha256, token_env or token_file"})
        present = [k for k in ("token_sha256", "token_env", "token_file") if k in body]
        if len(present) > 1:
            self.fail(ckey, f"set only one of {', '.join(present)}")
        if not present:
            self.fail(
                ckey,
                'missing token_sha256 (run "lsproxy token new NAME" to make a token and its line), '
                "token_env or token_file",
            )
        which = present[0]
        token: Secret | None = None
        if which == "token_sha256":
            digest = self.sha256_hex(body["token_sha256"], (*ckey, which))
            source = "token_sha256"
        elif which == "token_env":
            var, token = self.token_from_env(body["token_env"], (*ckey, which))
            source = f"env {var}"
        else:
            path, token = self.token_from_file(body["token_file"], (*ckey, which))
            source = f"file {path}"
        if token is not None:
            digest = token_digest(token.reveal())
            if len(token.reveal()) < MIN_TOKEN_CHARS:
                self.warn(
                    (*ckey, which),
                    f"the token has fewer than {MIN_TOKEN_CHARS} characters and can be guessed "
                    '("lsproxy token new NAME" makes a random one)',
                )
        admin = False
        if "admin" in body:
            admin = body["admin"]
            if not isinstance(admin, bool):
                self.fail((*ckey, "admin"), f"expected true or false, got {_describe(admin)}")
        streams = None
        if "streams" in body:
            streams = self.stream_list(body["streams"], (*ckey, "streams"), routes, admin=admin)
        return ConsumerAccess(name, digest, streams, admin, source, token)

    def sha256_hex(self, value: Any, key: _Key) -> bytes:
        # The value is never echoed: people paste the token itself here by mistake.
        if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
            got = "" if isinstance(value, str) else f", got {_describe(value, show=False)}"
            self.fail(
                key,
                f'expected the SHA-256 of the token as 64 hex digits ("lsproxy token new NAME" prints it){got}',
            )
        return bytes.fromhex(value)

    def token_from_env(self, var: Any, key: _Key) -> tuple[str, Secret]:
        if not isinstance(var, str) or not _ENV_NAME.fullmatch(var):
            self.fail(
                key,
                "expected the name of an environment variable (letters, digits, '_'); "
                "the token itself must not be in this file (use token_sha256)",
            )
        value = self.environ.get(var)
        if value is None:
            self.fail(key, f"environment variable {var} is not set")
        problem = _secret_problem(value)
        if problem:
            self.fail(key, f"environment variable {var} {problem}")
        return var, Secret(value)

    def token_from_file(self, value: Any, key: _Key) -> tuple[str, Secret]:
        path = self.path_value(value, key, show=False)
        secret, problem, mode = _read_secret_file(path)
        if secret is None:
            self.fail(key, f"{path} {problem}")
        if mode & 0o044:
            self.warn(key, f"{path} is readable by others (chmod 600 it)")
        return path, secret

    def stream_list(
        self, value: Any, key: _Key, routes: Mapping[str, str], *, admin: bool
    ) -> frozenset[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f'expected a list of stream routes (e.g. ["prod"]), got {_describe(value)}')
        if not value and not admin:
            self.fail(key, "lists no stream (leave streams out to allow every stream)")
        names = set()
        for i, route in enumerate(value, 1):
            if route not in routes:
                known = ", ".join(sorted(routes)) or "none"
                self.fail(key, f"item {i}: no stream or route named {route!r} (known: {known})")
            names.add(routes[route])
        return frozenset(names)
