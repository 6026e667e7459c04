"""/healthz, /readyz, /status and /rates: rendered from hub snapshots only, never blocking.

``/healthz`` deliberately ignores the upstream: a liveness probe that fails
while Adobe is down would make an orchestrator restart the proxy, and every
restart is an upstream reconnect: the storm this project exists to prevent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

from lsproxy import __version__
from lsproxy.hub.stream import StreamHub
from lsproxy.serve.routes import ConsumerPage


class ClusterView(Protocol):
    """Cluster mode's state, as the endpoints show it."""

    def ready(self) -> bool: ...
    def status(self) -> dict[str, Any]: ...


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, indent=1, sort_keys=False).encode() + b"\n"


def render(
    name: str,
    hubs: Mapping[str, StreamHub],
    started_at: float,
    page: ConsumerPage | None = None,
    *,
    cursor_prefix: str | None = None,
    cluster: ClusterView | None = None,
) -> tuple[int, bytes]:
    """(status code, JSON body) for one of the endpoints in ``routes.ENDPOINTS``.
    ``page`` says which consumers /status lists per stream. ``cursor_prefix``: /status
    lists only the consumers whose cursor names start so (a non-admin consumer's token
    sees its own cursors). In cluster mode a stream is ready when NATS is, its JetStream
    log is followed here, and its slots stream here or stand by (another node holds them)."""
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
        if cluster is None:
            ready = all(state == "streaming" for state in states.values())
            return (200 if ready else 503), _json({"ready": ready, "streams": states})
        status = cluster.status()
        # Ready only once every stream's JetStream log is followed here: before that its
        # consumers would get 503 (stream_unavailable) from a node that says it is ready.
        jetstream = status.get("jetstream") or {}
        followed = all(bool((jetstream.get(stream) or {}).get("ready")) for stream in hubs)
        ready = cluster.ready() and followed and all(state in ("streaming", "standby") for state in states.values())
        body = {"ready": ready, "streams": states, "cluster": status}
        return (200 if ready else 503), _json(body)
    page = page or ConsumerPage()
    now = time.time()
    streams = {
        stream: hub.snapshot(now, page.offset, page.limit, prefix=cursor_prefix) for stream, hub in hubs.items()
    }
    body = {"version": __version__, "uptime": round(now - started_at, 3), "streams": streams}
    if cluster is not None:
        body["cluster"] = cluster.status()
    return 200, _json(body)
