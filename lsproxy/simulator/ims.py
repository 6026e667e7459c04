"""An Adobe IMS look-alike: ``POST /ims/token/v3``, OAuth client-credentials grant.

Theory of operation
-------------------
Enabled when ``SimSettings.oauth_client_id`` and ``oauth_client_secret`` are
set. A token request is a form body (``application/x-www-form-urlencoded``;
query parameters are accepted too, the body wins) with ``grant_type=
client_credentials``, ``client_id``, ``client_secret`` and ``scope``. The
checks run in this order, with IMS-style JSON errors
``{"error": ..., "error_description": ...}``:

* not POST: 405 ``method_not_allowed``;
* a failure injected by a test (``fail(count, status)``): that status (500
  by default), ``server_error``;
* OAuth not configured: 400 ``invalid_client``;
* no ``grant_type``: 400 ``invalid_request``; another grant: 400
  ``unsupported_grant_type``;
* unknown or missing ``client_id``: 400 ``invalid_client``; wrong
  ``client_secret``: 401 ``invalid_client``;
* no ``scope``: 400 ``invalid_scope``.

Success issues a random opaque token valid for ``token_ttl`` seconds on the
trio clock (so MockClock works): ``{"access_token", "token_type": "bearer",
"expires_in"}``, ``expires_in`` an int when the ttl is whole seconds, else
the float (tests use 0.5 s). The stream endpoint accepts these tokens next
to the static ``token`` (``lookup`` says valid / expired / unknown). The
newest ``MAX_TOKENS`` tokens are remembered, so an expired one is told apart
from a made-up one; ``revoke()`` forgets all (the next stream connect with
one of them gets 401 ``invalid bearer token``, as after a revocation).

Secrets are never logged or put in stats; stats count requests, issued
tokens, and answers by status and error name.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from lsproxy.simulator.http import HttpConnection
from lsproxy.simulator.protocol import Refusal, Request
from lsproxy.simulator.settings import SimSettings

if TYPE_CHECKING:
    from lsproxy.simulator.server import Simulator

IMS_PATH = "/ims/token/v3"
GRANT_TYPE = "client_credentials"
MAX_TOKENS = 10_000


class ImsState:
    """Issued tokens, injected failures and counters of the IMS look-alike (no I/O)."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self._tokens: dict[str, float] = {}  # token -> expiry (trio clock), oldest first
        self.fail_status = 500
        self.fail_count = 0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests = 0
        self.issued = 0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()

    # --- token requests -----------------------------------------------------
    def token_request(self, req: Request, now: float) -> tuple[int, dict[str, object]]:
        """Answer one token request: (status, JSON body)."""
        self.requests += 1
        status, body = self._answer(req, now)
        self.statuses[status] += 1
        error = body.get("error")
        if isinstance(error, str):
            self.errors[error] += 1
        return status, body

    def _answer(self, req: Request, now: float) -> tuple[int, dict[str, object]]:
        s = self.settings
        if req.method != "POST":
            return _error(405, "method_not_allowed", "use POST")
        if self.fail_count > 0:
            self.fail_count -= 1
            return _error(self.fail_status, "server_error", "failure injected by the simulator")
        if s.oauth_client_id is None or s.oauth_client_secret is None:
            return _error(400, "invalid_client", "no OAuth client is configured in this simulator")
        form = parse_form(req)
        grant = form.get("grant_type")
        if not grant:
            return _error(400, "invalid_request", "missing grant_type parameter")
        if grant != GRANT_TYPE:
            return _error(400, "unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
        if not form.get("client_id"):
            return _error(400, "invalid_client", "missing client_id parameter")
        if not secrets.compare_digest(form["client_id"].encode(), s.oauth_client_id.encode()):
            return _error(400, "invalid_client", "invalid client_id parameter")
        secret = form.get("client_secret", "")
        if not secrets.compare_digest(secret.encode(), s.oauth_client_secret.encode()):
            return _error(401, "invalid_client", "invalid client_secret parameter")
        if not form.get("scope"):
            return _error(400, "invalid_scope", "missing scope parameter")
        return 200, self.issue(now)

    def issue(self, now: float) -> dict[str, object]:
        """A new token valid for ``token_ttl`` seconds from ``now``; the token response body."""
        token = "sim-" + secrets.token_urlsafe(24)
        ttl = self.settings.token_ttl
        self._tokens[token] = now + ttl
        while len(self._tokens) > MAX_TOKENS:
            del self._tokens[next(iter(self._tokens))]
        self.issued += 1
        expires_in: float = int(ttl) if ttl == int(ttl) else ttl
        return {"access_token": token, "token_type": "bearer", "expires_in": expires_in}

    # --- stream side ----------------------------------------------------------
    def lookup(self, token: str, now: float) -> str:
        """``valid``, ``expired`` or ``unknown`` (never issued, forgotten or revoked)."""
        expires = self._tokens.get(token)
        if expires is None:
            return "unknown"
        return "valid" if now < expires else "expired"

    # --- controls -------------------------------------------------------------
    def fail(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` token requests with ``status``."""
        self.fail_count, self.fail_status = count, status

    def revoke(self) -> int:
        """Forget every issued token; returns how many were still valid or not."""
        n = len(self._tokens)
        self._tokens.clear()
        return n

    def stats(self, now: float | None) -> dict[str, object]:
        valid = sum(1 for t in self._tokens.values() if now is None or now < t)
        return {
            "enabled": self.settings.oauth,
            "requests": self.requests,
            "issued": self.issued,
            "valid_tokens": valid,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(sorted(self.errors.items())),
            "fail_pending": self.fail_count,
        }


def parse_form(req: Request) -> dict[str, str]:
    """Query parameters, overridden by the urlencoded body: first value of each key."""
    form = dict(req.query)
    if req.body:
        text = req.body.decode("latin-1")
        form.update({k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()})
    return form


def _error(status: int, error: str, description: str) -> tuple[int, dict[str, object]]:
    return status, {"error": error, "error_description": description}


async def handle_token(sim: Simulator, http: HttpConnection, req: Request, now: float) -> None:
    status, body = sim.ims.token_request(req, now)
    if status == 200:
        await http.send_response(
            200, json.dumps(body).encode(), [("cache-control", "no-store"), ("pragma", "no-cache")]
        )
        return
    allow = [("allow", "POST")] if status == 405 else None
    await http.send_error(Refusal(status, str(body["error"]), str(body["error_description"])), allow)
