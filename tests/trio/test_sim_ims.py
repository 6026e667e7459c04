"""The simulator's IMS look-alike (POST /ims/token/v3) and issued tokens on the stream endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from lsproxy.simulator import SimSettings, SimStream, Simulator

CLIENT_ID = "sim-client"
CLIENT_SECRET = "s3cr3t-value"
PATH = "/api/1/stream/s1"
FORM = {
    "grant_type": "client_credentials",
    "client_id": CLIENT_ID,
    "client_secret": CLIENT_SECRET,
    "scope": "openid,AdobeID,read_organizations",
}


async def start(nursery: trio.Nursery, **kw: Any) -> tuple[Simulator, str]:
    base: dict[str, Any] = {
        "streams": (SimStream("s1", rate=200),),
        "linger": 0.0,
        "oauth_client_id": CLIENT_ID,
        "oauth_client_secret": CLIENT_SECRET,
    }
    sim = Simulator(SimSettings(**{**base, **kw}))
    host, port = await nursery.start(sim.serve)
    return sim, f"http://{host}:{port}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False, timeout=5) as c:
        yield c


def stream_headers(token: str, api_key: str | None = CLIENT_ID) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
    if api_key is not None:
        headers["x-api-key"] = api_key
    return headers


async def connect_status(client: httpx.AsyncClient, base: str, headers: dict[str, str]) -> int:
    async with client.stream("GET", base + PATH, headers=headers) as r:
        return r.status_code


async def test_token_request_issues_a_usable_token(nursery, client) -> None:
    sim, base = await start(nursery)
    r = await client.post(base + "/ims/token/v3", data=FORM)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 86400 and isinstance(body["expires_in"], int)
    token = body["access_token"]
    assert token and token != "demo-token"
    second = (await client.post(base + "/ims/token/v3", data=FORM)).json()["access_token"]
    assert second != token  # random, opaque
    assert await connect_status(client, base, stream_headers(token)) == 200
    assert await connect_status(client, base, stream_headers(second)) == 200
    # The static token still works too.
    assert await connect_status(client, base, stream_headers("demo-token")) == 200
    ims = sim.stats()["ims"]
    assert ims["requests"] == 2 and ims["issued"] == 2 and ims["statuses"] == {"200": 2}
    assert ims["valid_tokens"] == 2 and ims["enabled"] is True
    text = str(sim.stats())
    assert CLIENT_SECRET not in text and token not in text


async def test_x_api_key_defaults_to_the_client_id(nursery, client) -> None:
    sim, base = await start(nursery)
    token = (await client.post(base + "/ims/token/v3", data=FORM)).json()["access_token"]
    assert await connect_status(client, base, stream_headers(token, api_key=None)) == 401
    assert await connect_status(client, base, stream_headers(token, api_key="other")) == 401
    assert await connect_status(client, base, stream_headers(token)) == 200
    assert sim.stats()["auth_failures"] == {"api_key": 2}


async def test_explicit_api_key_wins(nursery, client) -> None:
    _, base = await start(nursery, api_key="explicit")
    token = (await client.post(base + "/ims/token/v3", data=FORM)).json()["access_token"]
    assert await connect_status(client, base, stream_headers(token)) == 401
    assert await connect_status(client, base, stream_headers(token, api_key="explicit")) == 200


async def test_expired_token_is_401_invalid_token(nursery, client) -> None:
    sim, base = await start(nursery, token_ttl=0.3)
    body = (await client.post(base + "/ims/token/v3", data=FORM)).json()
    assert body["expires_in"] == pytest.approx(0.3)
    token = body["access_token"]
    assert await connect_status(client, base, stream_headers(token)) == 200
    await trio.sleep(0.35)
    r = await client.get(base + PATH, headers=stream_headers(token))
    assert r.status_code == 401
    assert r.json() == {"error": "invalid_token", "error_description": "token expired"}
    r = await client.get(base + PATH, headers=stream_headers("made-up"))
    assert r.status_code == 401 and r.json()["error_description"] == "invalid bearer token"
    r = await client.get(base + PATH, headers={"Accept-Encoding": "gzip", "x-api-key": CLIENT_ID})
    assert r.status_code == 401 and r.json()["error_description"] == "missing bearer token"
    assert sim.stats()["auth_failures"] == {"expired_token": 1, "invalid_token": 1, "missing_token": 1}
    assert sim.stats()["ims"]["valid_tokens"] == 0
    last = sim.stats()["streams"]["s1"]["last_headers"]
    assert last["authorization_ok"] is False


async def test_whole_second_ttl_is_an_int_and_fraction_a_float(nursery, client) -> None:
    _, base = await start(nursery, token_ttl=5.0)
    assert (await client.post(base + "/ims/token/v3", data=FORM)).json()["expires_in"] == 5
    _, base2 = await start(nursery, token_ttl=1.5)
    assert (await client.post(base2 + "/ims/token/v3", data=FORM)).json()["expires_in"] == 1.5


@pytest.mark.parametrize(
    ("change", "status", "error", "needle"),
    [
        ({"grant_type": None}, 400, "invalid_request", "grant_type"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", "client_credentials"),
        ({"client_id": None}, 400, "invalid_client", "client_id"),
        ({"client_id": "someone-else"}, 400, "invalid_client", "client_id"),
        ({"client_secret": "wrong"}, 401, "invalid_client", "client_secret"),
        ({"client_secret": None}, 401, "invalid_client", "client_secret"),
        ({"scope": None}, 400, "invalid_scope", "scope"),
        ({"scope": ""}, 400, "invalid_scope", "scope"),
    ],
)
async def test_token_request_errors(nursery, client, change, status, error, needle) -> None:
    sim, base = await start(nursery)
    form = {k: v for k, v in {**FORM, **change}.items() if v is not None}
    r = await client.post(base + "/ims/token/v3", data=form)
    assert r.status_code == status
    body = r.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error and needle in body["error_description"]
    assert CLIENT_SECRET not in r.text and "wrong" not in r.text
    ims = sim.stats()["ims"]
    assert ims["requests"] == 1 and ims["issued"] == 0
    assert ims["statuses"] == {str(status): 1} and ims["errors"] == {error: 1}


async def test_get_is_405_and_query_parameters_are_accepted(nursery, client) -> None:
    _, base = await start(nursery)
    r = await client.get(base + "/ims/token/v3")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = await client.post(base + "/ims/token/v3", params=FORM)
    assert r.status_code == 200 and r.json()["access_token"]


async def test_oauth_off_refuses_token_requests_and_issued_tokens(nursery, client) -> None:
    sim, base = await start(nursery, oauth_client_id=None, oauth_client_secret=None)
    r = await client.post(base + "/ims/token/v3", data=FORM)
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"
    # No x-api-key is required without OAuth (and without --api-key).
    assert await connect_status(client, base, stream_headers("demo-token", api_key=None)) == 200
    assert sim.stats()["ims"]["enabled"] is False


async def test_ims_fail_control_then_recovery(nursery, client) -> None:
    sim, base = await start(nursery)
    ctl = await client.post(base + "/_sim/ims_fail?count=2")
    assert ctl.json() == {"ok": True, "count": 2, "status": 500}
    for _ in range(2):
        r = await client.post(base + "/ims/token/v3", data=FORM)
        assert r.status_code == 500 and r.json()["error"] == "server_error"
    assert (await client.post(base + "/ims/token/v3", data=FORM)).status_code == 200
    sim.fail_ims(1, 503)
    assert (await client.post(base + "/ims/token/v3", data=FORM)).status_code == 503
    ims = sim.stats()["ims"]
    assert ims["statuses"] == {"200": 1, "500": 2, "503": 1} and ims["fail_pending"] == 0
    assert (await client.post(base + "/_sim/ims_fail?count=x")).status_code == 400
    assert (await client.post(base + "/_sim/ims_fail?status=99")).status_code == 400
    assert (await client.get(base + "/_sim/ims_fail")).status_code == 405


async def test_revoke_control(nursery, client) -> None:
    sim, base = await start(nursery)
    assert sim.revoke_tokens() == 0
    token = (await client.post(base + "/ims/token/v3", data=FORM)).json()["access_token"]
    r = await client.post(base + "/_sim/ims_revoke")
    assert r.json() == {"ok": True, "revoked": 1}
    r = await client.get(base + PATH, headers=stream_headers(token))
    assert r.status_code == 401 and r.json()["error_description"] == "invalid bearer token"


async def test_reset_clears_ims_stats_but_keeps_tokens(nursery, client) -> None:
    sim, base = await start(nursery)
    token = (await client.post(base + "/ims/token/v3", data=FORM)).json()["access_token"]
    await client.get(base + PATH, headers=stream_headers("nope"))
    assert sim.stats()["auth_failures"] == {"invalid_token": 1}
    assert (await client.post(base + "/_sim/reset")).status_code == 200
    stats = sim.stats()
    assert stats["ims"]["requests"] == 0 and stats["auth_failures"] == {}
    assert await connect_status(client, base, stream_headers(token)) == 200


ONE_HOUR = 3600.0


async def test_token_expiry_follows_the_trio_clock(nursery, autojump_clock) -> None:
    sim, _ = await start(nursery, token_ttl=3600.0, batch_interval=100.0)
    body = sim.ims.issue(trio.current_time())
    token = str(body["access_token"])
    assert sim.token_state(token) == "valid"
    await trio.sleep(ONE_HOUR - 1)  # the mock clock jumps
    assert sim.token_state(token) == "valid"
    await trio.sleep(2)
    assert sim.token_state(token) == "expired"
    assert sim.token_state("never-issued") == "unknown"


async def test_request_bodies_are_bounded_and_keep_alive_works(nursery, client) -> None:
    sim, base = await start(nursery)
    try:
        r = await client.post(base + "/ims/token/v3", content=b"x" * (64 * 1024 + 1))
        assert r.status_code == 413
    except httpx.TransportError:
        pass  # the simulator answered 413 and hung up while the client was still sending
    assert sim.stats()["ims"]["requests"] == 0
    # A body on another path is read and ignored; the connection is reused for the next request.
    r = await client.post(base + "/_sim/stats", content=b"ignored")
    assert r.status_code == 405
    r = await client.post(base + "/ims/token/v3", data=FORM)
    assert r.status_code == 200
    assert sim.stats()["ims"]["requests"] == 1
