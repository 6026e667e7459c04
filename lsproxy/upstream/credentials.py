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

OAuth server-to-server (``kind = "oauth"``, Adobe IMS client credentials)
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
    status and IMS's ``error`` / ``error_description`` (truncated, with any
    occurrence of the secret masked), or the exception *type* of a network
    error. Exceptions are raised outside ``except`` blocks so they carry no
    ``__context__``/``__cause__`` (an httpx exception references the request,
    whose body holds the secret).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio

from lsproxy.errors import CredentialsError
from lsproxy.secret import Secret
from lsproxy.upstream.token_policy import DEFAULT_EXPIRES_IN, RefreshSchedule

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

DEFAULT_TOKEN_URL = "https://ims-na1.adobelogin.com/ims/token/v3"
FETCH_TIMEOUT = 10.0
GRANT_TYPE = "client_credentials"
_DETAIL_LIMIT = 200


# --------------------------------------------------------------------------- #
# What we are given (lsproxy.config.OAuthSettings / Credentials, by shape)
# --------------------------------------------------------------------------- #


class OAuthSettingsLike(Protocol):
    @property
    def client_id(self) -> str: ...
    @property
    def client_secret(self) -> Secret | None: ...
    @property
    def client_secret_file(self) -> str | None: ...
    @property
    def scopes(self) -> tuple[str, ...]: ...
    @property
    def token_url(self) -> str: ...


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


class TokenRequestError(CredentialsError):
    """IMS refused the token request. ``status`` and ``error`` (IMS's error code, e.g.
    ``invalid_client``) let a caller tell a configuration problem from a transient one."""

    def __init__(self, message: str, *, status: int, error: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


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
            elif not _header_safe(value):
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


class OAuthTokenProvider:
    """Fetches and refreshes an IMS access token; see the module docstring."""

    def __init__(
        self,
        name: str,
        source: str,
        oauth: OAuthSettingsLike,
        api_key: Secret | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        schedule: RefreshSchedule | None = None,
    ) -> None:
        if oauth.client_secret is None and not oauth.client_secret_file:
            raise ValueError(f"credentials {name}: no client_secret and no client_secret_file")
        self.name = name
        self.source = source
        self._oauth = oauth
        self._api_key = api_key if api_key is not None else Secret(oauth.client_id)
        self._http = http
        self._schedule = schedule if schedule is not None else RefreshSchedule()
        self._url_shown = _url_without_query(oauth.token_url)
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._token: Secret | None = None
        self._completed = 0  # fetches ended (success or failure): waiters compare it
        self._refreshes = 0
        self._failures = 0
        self._invalidations = 0
        self._last_refresh_at: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_problem: CredentialsError | None = None  # the last fetch's error, if it failed

    @property
    def api_key(self) -> Secret | None:
        return self._api_key

    @property
    def schedule(self) -> RefreshSchedule:
        return self._schedule

    def _usable(self) -> Secret | None:
        if self._token is not None and self._schedule.token_usable(trio.current_time()):
            return self._token
        return None

    async def get(self) -> Secret:
        token = self._usable()
        if token is not None:
            return token
        seen = self._completed
        async with self._lock:
            token = self._usable()
            if token is not None:
                return token
            problem = self._last_problem
            if self._completed != seen and problem is not None:
                # We queued behind a fetch that failed: its error is our answer.
                raise _copy(problem)
            allowed = self._schedule.fetch_allowed_at()
            if allowed > trio.current_time():
                await trio.sleep_until(allowed)
            return await self._fetch_locked()

    def invalidate(self, token: Secret | None = None) -> None:
        if token is not None and token != self._token:
            return  # a 401 to a token already replaced: nothing to do
        if self._token is None:
            return
        self._invalidations += 1
        already = self._schedule.invalidated
        self._schedule.invalidate(trio.current_time())
        if not already:
            log.warning(
                "credentials %s: the upstream refused the access token (401); fetching a new one",
                self.name,
            )
        self._wake()

    async def run(self) -> None:
        while True:
            changed = self._changed
            due = self._schedule.next_fetch_at()
            if trio.current_time() < due:
                with trio.move_on_at(due):
                    await changed.wait()
                continue
            async with self._lock:
                if trio.current_time() < self._schedule.next_fetch_at():
                    continue  # someone fetched while we waited for the lock
                with contextlib.suppress(CredentialsError):  # logged and scheduled already
                    await self._fetch_locked()

    def status(self) -> dict[str, object]:
        now = _trio_now()
        s = self._schedule
        expires_in = next_in = None
        if self._token is None:
            state = "none"
        elif now is None:
            state = "unknown"  # called outside trio: no clock to compare with
        elif s.invalidated:
            state = "invalidated"
        else:
            state = "valid" if s.token_usable(now) else "expired"
        if now is not None:
            expires_in = s.expires_in(now)
            next_in = max(0.0, s.next_fetch_at() - now)
        return {
            "kind": "oauth",
            "source": self.source,
            "token_url": self._url_shown,
            "scopes": list(self._oauth.scopes),
            "state": state,
            "expires_in": None if expires_in is None else round(expires_in, 3),
            "next_refresh_in": None if next_in is None else round(next_in, 3),
            "last_refresh_at": self._last_refresh_at,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "refreshes": self._refreshes,
            "failures": self._failures,
            "consecutive_failures": s.consecutive_failures,
            "invalidations": self._invalidations,
        }

    # --- internals ------------------------------------------------------------
    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _fetch_locked(self) -> Secret:
        """One fetch, with the lock held and the floor respected by the caller."""
        started = trio.current_time()
        self._schedule.on_fetch_started(started)
        wall = time.time()
        problem: CredentialsError | None = None
        try:
            token, expires_in = await self._request()
        except CredentialsError as exc:
            problem = exc
        except Exception as exc:  # a bug: never let it kill run() or leak its text
            problem = CredentialsError(f"credentials {self.name}: internal error ({type(exc).__name__})")
        except BaseException:
            self._schedule.on_abandoned()  # cancelled: nothing learned
            raise
        self._completed += 1
        now = trio.current_time()
        if problem is not None:
            self._failures += 1
            self._last_problem = problem
            self._last_error = str(problem).removeprefix(f"credentials {self.name}: ")
            self._last_error_at = wall
            retry_at = self._schedule.on_failure(now)
            retry_in = max(retry_at, self._schedule.fetch_allowed_at()) - now
            if self._schedule.token_usable(now):
                remaining = self._schedule.expires_in(now) or 0.0
                log.warning(
                    "%s; keeping the current token (expires in %.0f s), retrying in %.1f s",
                    problem,
                    remaining,
                    retry_in,
                )
            else:
                log.warning("%s; retrying in %.1f s", problem, retry_in)
            self._wake()
            raise problem.with_traceback(None)
        self._schedule.on_success(now, issued_at=started, expires_in=expires_in)
        self._token = token
        self._refreshes += 1
        self._last_problem = None
        self._last_refresh_at = wall
        self._last_error = None
        log.info("credentials %s: new access token, expires in %g s", self.name, expires_in)
        self._wake()
        return token

    async def _client_secret(self) -> str:
        o = self._oauth
        if o.client_secret is not None:
            return o.client_secret.reveal()
        path = o.client_secret_file
        assert path is not None
        problem: str
        try:
            value = (await trio.Path(path).read_text(encoding="utf-8")).strip()
        except OSError as exc:
            problem = f"cannot read client_secret_file {path}: {exc.strerror or type(exc).__name__}"
        except UnicodeDecodeError:
            problem = f"client_secret_file {path} is not UTF-8 text"
        else:
            if value:
                return value
            problem = f"client_secret_file {path} is empty"
        raise CredentialsError(f"credentials {self.name}: {problem}")

    async def _request(self) -> tuple[Secret, float]:
        """POST the client-credentials grant; the token and its lifetime in seconds."""
        o = self._oauth
        secret = await self._client_secret()
        form = {
            "grant_type": GRANT_TYPE,
            "client_id": o.client_id,
            "client_secret": secret,
            "scope": ",".join(o.scopes),
        }
        headers = {"Accept": "application/json"}
        failed: str | None = None
        response: httpx.Response | None = None
        try:
            with trio.fail_after(FETCH_TIMEOUT):
                if self._http is not None:
                    response = await self._http.post(
                        o.token_url, data=form, headers=headers, timeout=FETCH_TIMEOUT
                    )
                else:
                    async with httpx.AsyncClient(
                        trust_env=False, timeout=FETCH_TIMEOUT, follow_redirects=False
                    ) as client:
                        response = await client.post(o.token_url, data=form, headers=headers)
        except (trio.TooSlowError, httpx.TimeoutException):
            failed = f"timed out after {FETCH_TIMEOUT:g} s"
        except (httpx.HTTPError, OSError) as exc:
            failed = f"network error ({type(exc).__name__})"
        del form
        if failed is not None or response is None:
            raise CredentialsError(
                f"credentials {self.name}: token request to {self._url_shown} failed: {failed}"
            )
        return self._parse(response, secret)

    def _parse(self, response: httpx.Response, secret: str) -> tuple[Secret, float]:
        status = response.status_code
        payload: object = None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        body = payload if isinstance(payload, Mapping) else {}
        prefix = f"credentials {self.name}: token request to {self._url_shown}"
        if status != 200:
            error = _clean(body.get("error"), secret)
            desc = _clean(body.get("error_description"), secret)
            detail = f"HTTP {status}"
            if error:
                detail += f" {error}"
            if desc:
                detail += f": {desc}"
            if not error and not desc:
                detail += " (no IMS error in the response)"
            raise TokenRequestError(f"{prefix} refused: {detail}", status=status, error=error)
        access = body.get("access_token")
        if not isinstance(access, str) or not access.strip():
            raise CredentialsError(f"{prefix}: HTTP 200 without an access_token")
        access = access.strip()
        if not _header_safe(access):
            raise CredentialsError(f"{prefix}: the access_token is not a valid HTTP header value")
        expires_in = _expires_in(body.get("expires_in", DEFAULT_EXPIRES_IN))
        if expires_in is None:
            raise CredentialsError(f"{prefix}: unusable expires_in (expected a number of seconds > 0)")
        return Secret(access), expires_in


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _copy(exc: CredentialsError) -> CredentialsError:
    """A fresh exception like ``exc`` (each waiter raises its own, with its own traceback)."""
    if isinstance(exc, TokenRequestError):
        return TokenRequestError(str(exc), status=exc.status, error=exc.error)
    return CredentialsError(str(exc))


def _expires_in(value: object) -> float | None:
    """Seconds from an int, float or numeric string; None when unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if 0 < seconds < math.inf else None


def _clean(value: object, secret: str) -> str | None:
    """An IMS error field fit for a log line: a string, one line, bounded, secret masked."""
    if not isinstance(value, str):
        return None
    if secret:
        value = value.replace(secret, "***")
    text = " ".join(value.split())
    if len(text) > _DETAIL_LIMIT:
        text = text[: _DETAIL_LIMIT - 3] + "..."
    return text or None


def _header_safe(value: str) -> bool:
    return value.isascii() and all(0x20 < ord(c) < 0x7F for c in value)


def _url_without_query(url: str) -> str:
    """``url`` fit for messages: no user info, query or fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _trio_now() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:
        return None
