"""``/_sim/*`` control endpoints for tests and demos (JSON in the query, JSON out).

``GET /_sim/stats``; ``POST /_sim/drop?stream=E``, ``/_sim/rate?stream=E&rate=R``,
``/_sim/stall?stream=E&seconds=S``, ``/_sim/fail?stream=E&status=S&count=N``,
``/_sim/corrupt?stream=E``, ``/_sim/reset``; for the IMS look-alike
``/_sim/ims_fail?count=N[&status=S]`` (the next N token requests fail, 500 by
default) and ``/_sim/ims_revoke`` (every issued token becomes unknown).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lsproxy.simulator.http import HttpConnection
from lsproxy.simulator.protocol import Request, refusal

if TYPE_CHECKING:
    from lsproxy.simulator.server import Simulator


class _BadParam(ValueError):
    pass


def _number(
    req: Request,
    name: str,
    *,
    integer: bool = False,
    default: float | None = None,
) -> float:
    raw = req.query.get(name)
    if raw is None:
        if default is None:
            raise _BadParam(f"missing query parameter {name}")
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise _BadParam(f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise _BadParam(f"{name} must be a finite number >= 0")
    return value


def _status(req: Request, default: float | None = None) -> int:
    status = int(_number(req, "status", integer=True, default=default))
    if not 100 <= status <= 599:
        raise _BadParam("status must be an HTTP status code")
    return status


async def handle_control(sim: Simulator, http: HttpConnection, req: Request) -> None:
    action = req.path.removeprefix("/_sim/")
    if action == "stats":
        if req.method != "GET":
            await http.send_error(refusal(405, "use GET"), [("allow", "GET")])
            return
        await http.send_json(200, sim.stats())
        return
    if action not in ("drop", "rate", "stall", "fail", "corrupt", "reset", "ims_fail", "ims_revoke"):
        await http.send_error(refusal(404, f"no such control {req.path}"))
        return
    if req.method != "POST":
        await http.send_error(refusal(405, "use POST"), [("allow", "POST")])
        return
    if action == "reset":
        sim.reset_stats()
        await http.send_json(200, {"ok": True})
        return
    if action == "ims_revoke":
        await http.send_json(200, {"ok": True, "revoked": sim.revoke_tokens()})
        return
    if action == "ims_fail":
        try:
            count = int(_number(req, "count", integer=True, default=1))
            status = _status(req, default=500)
        except _BadParam as exc:
            await http.send_error(refusal(400, str(exc)))
            return
        sim.fail_ims(count, status)
        await http.send_json(200, {"ok": True, "count": count, "status": status})
        return
    endpoint = req.query.get("stream", "")
    if endpoint not in sim.streams:
        await http.send_error(refusal(404, f"unknown stream {endpoint!r}"))
        return
    result: dict[str, object] = {"ok": True, "stream": endpoint}
    try:
        if action == "drop":
            result["dropped"] = sim.drop(endpoint)
        elif action == "rate":
            rate = _number(req, "rate")
            sim.set_rate(endpoint, rate)
            result["rate"] = rate
        elif action == "stall":
            seconds = _number(req, "seconds")
            sim.stall(endpoint, seconds)
            result["seconds"] = seconds
        elif action == "fail":
            status = _status(req)
            count = int(_number(req, "count", integer=True, default=1))
            sim.fail_next(endpoint, status, count)
            result.update(status=status, count=count)
        else:  # corrupt
            result["connections"] = sim.corrupt(endpoint)
    except _BadParam as exc:
        await http.send_error(refusal(400, str(exc)))
        return
    await http.send_json(200, result)
