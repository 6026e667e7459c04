"""/healthz, /readyz and /status: rendered from hub snapshots only, never blocking.

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


def render(
    name: str, hubs: Mapping[str, StreamHub], started_at: float, *, cursor_prefix: str | None = None
) -> tuple[int, bytes]:
    """(status code, JSON body) for one of the endpoints in ``routes.ENDPOINTS``.
    ``cursor_prefix``: /status lists only the consumers whose cursor names start so
    (a non-admin consumer's token sees its own cursors)."""
    if name == "healthz":
        return 200, _json({"status": "ok"})
    if name == "readyz":
        states = {stream: hub.state for stream, hub in hubs.items()}
        ready = all(state == "streaming" for state in states.values())
        return (200 if ready else 503), _json({"ready": ready, "streams": states})
    now = time.time()
    streams = {stream: hub.snapshot(now) for stream, hub in hubs.items()}
    if cursor_prefix is not None:
        for snap in streams.values():
            snap["consumers"] = [c for c in snap["consumers"] if (c["id"] or "").startswith(cursor_prefix)]
    return 200, _json({"version": __version__, "uptime": round(now - started_at, 3), "streams": streams})
