"""Token providers: the access token (and x-api-key) of one credential set.

Theory of operation
-------------------
One provider per credential set, made by ``make_provider`` and shared by
every stream and connection that uses the set. A connection attempt asks
``await provider.get()`` for a token believed valid *now*; when the upstream
answers 401 it calls ``provider.invalidate(token)`` and the next ``get()``
brings a new one. ``run()`` is the provider's background task (run it in a
nursery for as long as the provider is in use); ``status()`` is safe for
``/status``.

Static tokens (``kind = "static"``)
    An inline or environment token is returned as is; ``run()`` sleeps
    forever. With ``token_file`` the file is re-read whenever its
    ``(mtime_ns, size, inode)`` changes (stat first, then read: a change
    between the two is seen by the next ``get()``), whitespace stripped; an
    empty or unreadable file is a ``CredentialsError`` naming the path.
    ``invalidate()`` forces a re-read at the next ``get()``.

OAuth server-to-server (``kind = "oauth"``, Adobe IMS client credentials; oauth.py)
    A fetch is one form POST to ``token_url``: ``grant_type=
    client_credentials``, ``client_id``, ``client_secret`` (the env value, or
    ``client_secret_file`` read and stripped at fetch time, so a rotated
    secret is picked up without a restart) and ``scope`` (comma-joined). The
    answer's ``access_token`` is cached in memory for ``expires_in`` seconds
    (IMS v3 says seconds; an int, a float or a numeric string; 24 h when
    absent). When to fetch is decided by the pure ``RefreshSchedule``
    (token_policy.py): ``run()`` refreshes at 80 % of the lifetime, and on
    failure keeps the current token and retries with back-off (1, 2, 4 ...
    60 s, one last try just before expiry); ``get()`` fetches only when no
    usable token is cached; no fetch ever starts within 1 s of the previous
    one, whoever asks. Fetches are serialised by one ``trio.Lock``: callers
    that queue behind a fetch take its result (the new token, or the same
    error) instead of fetching again. The HTTP client is the caller's
    (``http=``), or a fresh one per fetch with ``trust_env=False`` (no proxy
    or netrc from the environment); every fetch has a 10 s deadline.

Secrets
    Tokens and client secrets travel as ``Secret`` (masked ``repr``/``str``)
    and appear in no log line, status field or exception. ``CredentialsError``
    messages name the credential set, the URL (without query), the HTTP
    status and IMS's ``error`` / ``error_description`` (truncated, with every
    secret masked: ``lsproxy.secret.redact``), or the exception *type* of a network
    error. Exceptions are raised outside ``except`` blocks so they carry no
    ``__context__``/``__cause__`` (an httpx exception references the request,
    whose body holds the secret).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import httpx
import trio

from lsproxy.errors import CredentialsError
from lsproxy.secret import Secret
from lsproxy.upstream.oauth import (
    DEFAULT_TOKEN_URL,
    FETCH_TIMEOUT,
    OAuthSettingsLike,
    OAuthTokenProvider,
    TokenRequestError,
    header_safe,
)

__all__ = [
    "DEFAULT_TOKEN_URL",
    "FETCH_TIMEOUT",
    "CredentialsError",
    "OAuthTokenProvider",
    "StaticTokenProvider",
    "TokenProvider",
    "TokenRequestError",
    "make_provider",
]

log = logging.getLogger("lsproxy.credentials")


# --------------------------------------------------------------------------- #
# What we are given (lsproxy.config.OAuthSettings / Credentials, by shape)
# --------------------------------------------------------------------------- #


class CredentialsLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def token(self) -> Secret | None: ...
    @property
    def token_file(self) -> str | None: ...
    @property
    def api_key(self) -> Secret | None: ...
    @property
    def oauth(self) -> OAuthSettingsLike | None: ...
    @property
    def source(self) -> str: ...


# --------------------------------------------------------------------------- #
# What we give
# --------------------------------------------------------------------------- #


class TokenProvider(Protocol):
    """The access token of one credential set; see the module docstring."""

    @property
    def api_key(self) -> Secret | None: ...

    async def get(self) -> Secret:
        """A token believed valid now; raises ``CredentialsError`` when none can be had."""
        ...

    def invalidate(self, token: Secret | None = None) -> None:
        """The upstream answered 401 to ``token`` (default: the current one)."""
        ...

    async def run(self) -> None:
        """Background refresher; run it in a nursery while the provider is in use."""
        ...

    def status(self) -> dict[str, object]:
        """For /status: no secret in it."""
        ...


def make_provider(credentials: CredentialsLike, *, http: httpx.AsyncClient | None = None) -> TokenProvider:
    """The provider for ``credentials``. ``http`` (oauth only) is used for token requests
    and stays the caller's to close; without it each fetch uses its own short-lived client."""
    if credentials.kind == "static":
        return StaticTokenProvider(
            credentials.name,
            credentials.source,
            token=credentials.token,
            token_file=credentials.token_file,
            api_key=credentials.api_key,
        )
    if credentials.kind == "oauth":
        if credentials.oauth is None:
            raise ValueError(f"credentials {credentials.name}: kind oauth without oauth settings")
        return OAuthTokenProvider(
            credentials.name, credentials.source, credentials.oauth, credentials.api_key, http=http
        )
    raise ValueError(f"credentials {credentials.name}: unknown kind {credentials.kind!r}")


# --------------------------------------------------------------------------- #
# Static
# --------------------------------------------------------------------------- #


class StaticTokenProvider:
    """An inline/env token, or one read from ``token_file`` whenever the file changes."""

    def __init__(
        self,
        name: str,
        source: str,
        *,
        token: Secret | None = None,
        token_file: str | None = None,
        api_key: Secret | None = None,
    ) -> None:
        if (token is None) == (token_file is None):
            raise ValueError(f"credentials {name}: give exactly one of token and token_file")
        self.name = name
        self.source = source
        self._token = token
        self._file = token_file
        self._file_key: tuple[int, int, int] | None = None
        self._api_key = api_key
        self._reads = 0
        self._failures = 0
        self._invalidations = 0
        self._last_read_at: float | None = None
        self._last_error: str | None = None

    @property
    def api_key(self) -> Secret | None:
        return self._api_key

    async def get(self) -> Secret:
        if self._file is None:
            assert self._token is not None
            return self._token
        path = self._file
        problem: str | None = None
        try:
            st = await trio.Path(path).stat()
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if key == self._file_key and self._token is not None:
                return self._token
            text = await trio.Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            problem = f"cannot read token_file {path}: {exc.strerror or type(exc).__name__}"
        except UnicodeDecodeError:
            problem = f"token_file {path} is not UTF-8 text"
        if problem is None:
            value = text.strip()
            if not value:
                problem = f"token_file {path} is empty"
            elif not header_safe(value):
                problem = f"token_file {path}: the token contains characters not allowed in an HTTP header"
        if problem is not None:
            self._file_key = None
            self._failures += 1
            self._last_error = problem
            raise CredentialsError(f"credentials {self.name}: {problem}")
        changed = self._token is not None
        self._token, self._file_key = Secret(value), key
        self._reads += 1
        self._last_read_at = time.time()
        self._last_error = None
        log.info("credentials %s: %s token from %s", self.name, "new" if changed else "read", path)
        return self._token

    def invalidate(self, token: Secret | None = None) -> None:
        if token is not None and self._token is not None and token != self._token:
            return  # a 401 to a token already replaced
        self._invalidations += 1
        if self._file is not None:
            self._file_key = None  # re-read at the next get(), even if the stat looks the same
            log.warning(
                "credentials %s: the upstream refused the token from %s (401); re-reading the file",
                self.name,
                self._file,
            )
        else:
            log.warning(
                "credentials %s: the upstream refused the static token (%s, 401); it must be replaced",
                self.name,
                self.source,
            )

    async def run(self) -> None:
        await trio.sleep_forever()

    def status(self) -> dict[str, object]:
        return {
            "kind": "static",
            "source": self.source,
            "token_file": self._file,
            "expires_in": None,
            "last_refresh_at": self._last_read_at,
            "last_error": self._last_error,
            "refreshes": self._reads,
            "failures": self._failures,
            "invalidations": self._invalidations,
        }


# --------------------------------------------------------------------------- #
# OAuth (Adobe IMS, client credentials)
# --------------------------------------------------------------------------- #
