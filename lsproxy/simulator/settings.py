"""Frozen settings of the Live Stream simulator."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SimStream:
    """One simulated report-suite stream.

    Served at ``/api/1/stream/<endpoint>`` and ``/api/2/stream/<endpoint>``.
    ``rate`` is hits per second; 0 means no traffic (a connect answers 503).
    """

    endpoint: str
    report_suite: str = "simsuite"
    rate: float = 50.0


@dataclass(frozen=True)
class SimSettings:
    """Everything the simulator needs; see the field comments."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    streams: tuple[SimStream, ...] = (SimStream("demo-stream"),)
    token: str = "demo-token"  # required bearer token
    api_key: str | None = None  # when set, x-api-key must equal it (else 401)
    linger: float = 60.0  # seconds a closed connection keeps its slot counted
    resume_window: float = 300.0  # reconnect within this resumes where the stream left off
    backfill: int = 0  # on resume, re-send this many already-sent hits
    redirect: bool = False  # /api/N/stream/<endpoint> answers 302 to a node URL
    # Hostile, as some servers are: 401 bodies and redirect Locations repeat the bearer token.
    echo_token: bool = False
    retain: int = 200_000  # hits kept per stream for resume / reset=smallest
    batch_interval: float = 0.01  # seconds between generated batches
    seed: int = 1  # deterministic hit content
    run_id: int | None = None  # mixed into hitIdHigh; None = random per Simulator (ids unique across runs)
    # OAuth (IMS) look-alike at POST /ims/token/v3, off unless both are set (see ``ims``).
    oauth_client_id: str | None = None
    oauth_client_secret: str | None = None
    token_ttl: float = 86400.0  # lifetime of issued tokens, seconds (may be fractional)

    def __post_init__(self) -> None:
        names = [s.endpoint for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stream endpoint in {names}")
        for s in self.streams:
            if not s.endpoint or "/" in s.endpoint or "?" in s.endpoint:
                raise ValueError(f"bad stream endpoint name {s.endpoint!r}")
            if s.rate < 0:
                raise ValueError(f"stream {s.endpoint}: rate must be >= 0")
        if self.retain < 1:
            raise ValueError("retain must be >= 1")
        if self.batch_interval <= 0:
            raise ValueError("batch_interval must be > 0")
        if self.backfill < 0 or self.linger < 0 or self.resume_window < 0:
            raise ValueError("backfill, linger and resume_window must be >= 0")
        if (self.oauth_client_id is None) != (self.oauth_client_secret is None):
            raise ValueError("set both oauth_client_id and oauth_client_secret, or neither")
        if self.oauth_client_id == "" or self.oauth_client_secret == "":
            raise ValueError("oauth_client_id and oauth_client_secret must not be empty")
        if not 0 < self.token_ttl < math.inf:
            raise ValueError("token_ttl must be a finite number > 0")

    @property
    def oauth(self) -> bool:
        """The IMS token endpoint is enabled."""
        return self.oauth_client_id is not None

    @property
    def expected_api_key(self) -> str | None:
        """The x-api-key a stream request must carry: ``api_key``, else the OAuth client id
        (as Adobe expects with OAuth credentials), else None (not checked)."""
        return self.api_key if self.api_key is not None else self.oauth_client_id

    def stream(self, endpoint: str) -> SimStream | None:
        for s in self.streams:
            if s.endpoint == endpoint:
                return s
        return None
