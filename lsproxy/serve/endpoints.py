"""/healthz, /readyz, /status and /rates: rendered from hub snapshots only, never blocking.

``/healthz`` deliberately ignores the upstream: a liveness probe that fails
while Adobe is down would make an orchestrator restart the proxy, and every
restart is an upstream reconnect: the storm this project exists to prevent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from lsproxy import __version__
from lsproxy.hub.stream import StreamHub


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, indent=1, sort_keys=False).encode() + b"\n"


def render(name: str, hubs: Mapping[str, StreamHub], started_at: float) -> tuple[int, bytes]:
    """(status code, JSON body) for one of the endpoints in ``routes.ENDPOINTS``."""
    if name == "healthz":
        return 200, _json({"status": "ok"})
    if name == "rates":
        # The status page's chart: records appended per second, oldest first.
        now = time.time()
        series = {stream: hub.rates.series(now) for stream, hub in hubs.items()}
        return 200, _json(
            {"streams": {stream: {"end": end, "per_second": counts} for stream, (end, counts) in series.items()}}
        )
    if name == "readyz":
        states = {stream: hub.state for stream, hub in hubs.items()}
        ready = all(state == "streaming" for state in states.values())
        return (200 if ready else 503), _json({"ready": ready, "streams": states})
    now = time.time()
    return 200, _json(
        {
            "version": __version__,
            "uptime": round(now - started_at, 3),
            "streams": {stream: hub.snapshot(now) for stream, hub in hubs.items()},
        }
    )
