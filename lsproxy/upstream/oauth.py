"""OAuth server-to-server token provider (Adobe IMS, client-credentials grant).

See credentials.py for the theory of operation of every token provider; this
module is the OAuth one: fetches, the refresh loop driven by the pure
``RefreshSchedule`` (token_policy.py), and the secret hygiene of its errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio

from lsproxy.errors import CredentialsError
from lsproxy.secret import Secret, redact
from lsproxy.upstream.tls_context import client_tls_context
from lsproxy.upstream.token_policy import DEFAULT_EXPIRES_IN, RefreshSchedule

log = logging.getLogger("lsproxy.credentials")

DEFAULT_TOKEN_URL = "https://ims-na1.adobelogin.com/ims/token/v3"
FETCH_TIMEOUT = 10.0
TOKEN_BODY_LIMIT = 64 * 1024  # far above any token response; bounds what is read and parsed
GRANT_TYPE = "client_credentials"
_DETAIL_LIMIT = 200


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


class TokenRequestError(CredentialsError):
    """IMS refused the token request. ``status`` and ``error`` (IMS's error code, e.g.
    ``invalid_client``) let a caller tell a configuration problem from a transient one."""

    def __init__(self, message: str, *, status: int, error: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


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
                    extra={"credentials": self.name, "wait": round(retry_in, 3)},
                )
            else:
                log.warning(
                    "%s; retrying in %.1f s",
                    problem,
                    retry_in,
                    extra={"credentials": self.name, "wait": round(retry_in, 3)},
                )
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

    async def _client_secret(self) -> Secret:
        o = self._oauth
        if o.client_secret is not None:
            return o.client_secret
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
                return Secret(value)  # redacted from IMS's answer while this exists
            problem = f"client_secret_file {path} is empty"
        raise CredentialsError(f"credentials {self.name}: {problem}")

    async def _request(self) -> tuple[Secret, float]:
        """POST the client-credentials grant; the token and its lifetime in seconds."""
        o = self._oauth
        secret = await self._client_secret()
        form = {
            "grant_type": GRANT_TYPE,
            "client_id": o.client_id,
            "client_secret": secret.reveal(),
            "scope": ",".join(o.scopes),
        }
        headers = {"Accept": "application/json"}
        failed: str | None = None
        answer: tuple[int, bytes] | None = None
        try:
            with trio.fail_after(FETCH_TIMEOUT):
                if self._http is not None:
                    answer = await _post(self._http, o.token_url, form, headers)
                else:
                    async with httpx.AsyncClient(
                        verify=await client_tls_context(), trust_env=False, timeout=FETCH_TIMEOUT, follow_redirects=False
                    ) as client:
                        answer = await _post(client, o.token_url, form, headers)
        except (trio.TooSlowError, httpx.TimeoutException):
            failed = f"timed out after {FETCH_TIMEOUT:g} s"
        except (httpx.HTTPError, OSError) as exc:
            failed = f"network error ({type(exc).__name__})"
        del form
        if failed is not None or answer is None:
            raise CredentialsError(
                f"credentials {self.name}: token request to {self._url_shown} failed: {failed}"
            )
        return self._parse(*answer)  # ``secret`` is alive, so redacted, while it is parsed

    def _parse(self, status: int, raw: bytes) -> tuple[Secret, float]:
        prefix = f"credentials {self.name}: token request to {self._url_shown}"
        if len(raw) > TOKEN_BODY_LIMIT:
            raise CredentialsError(
                f"{prefix}: HTTP {status} with a body over {TOKEN_BODY_LIMIT // 1024} KiB, not a token response"
            )
        payload: object = None
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        body = payload if isinstance(payload, Mapping) else {}
        if status != 200:
            error = _clean(body.get("error"))
            desc = _clean(body.get("error_description"))
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
        if not header_safe(access):
            raise CredentialsError(f"{prefix}: the access_token is not a valid HTTP header value")
        expires_in = _expires_in(body.get("expires_in", DEFAULT_EXPIRES_IN))
        if expires_in is None:
            raise CredentialsError(f"{prefix}: unusable expires_in (expected a number of seconds > 0)")
        return Secret(access), expires_in


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


async def _post(
    client: httpx.AsyncClient, url: str, form: dict[str, str], headers: dict[str, str]
) -> tuple[int, bytes]:
    """POST ``form``: the status and the body, of which at most TOKEN_BODY_LIMIT + 1 bytes
    are read (a token response is a few hundred bytes; a larger one is never parsed)."""
    async with client.stream("POST", url, data=form, headers=headers, timeout=FETCH_TIMEOUT) as response:
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > TOKEN_BODY_LIMIT:
                break
        return response.status_code, body[: TOKEN_BODY_LIMIT + 1]


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


def _clean(value: object) -> str | None:
    """An IMS error field fit for a log line: a string, one line, bounded, secrets masked."""
    if not isinstance(value, str):
        return None
    text = redact(" ".join(redact(value).split()))
    if len(text) > _DETAIL_LIMIT:
        text = text[: _DETAIL_LIMIT - 3] + "..."
    return text or None


def header_safe(value: str) -> bool:
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
