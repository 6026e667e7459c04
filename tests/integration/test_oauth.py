"""OAuth server-to-server credentials end to end: the simulator's IMS issues expiring
tokens, its stream rejects expired ones with 401, and the proxy keeps streaming."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from lsproxy.app import Proxy
from lsproxy.config import parse_config
from lsproxy.simulator import SimSettings, SimStream, Simulator
from tests.harness import StreamReader

CLIENT_ID = "lsproxy-test-client"


async def accepted_reaches(sim: Simulator, n: int, timeout: float = 10) -> dict:  # type: ignore[type-arg]
    with trio.fail_after(timeout):
        while sim.stats()["streams"]["s1"]["accepted"] < n:
            await trio.sleep(0.02)
    return sim.stats()  # type: ignore[no-any-return]


SECRET = "oauth-client-secret-value-42"


@asynccontextmanager
async def oauth_setup(tmp_path: Path, token_ttl: float) -> AsyncIterator[tuple[Simulator, Proxy, int]]:
    settings = SimSettings(
        port=0,
        streams=(SimStream("s1", "suite-s1", 200.0),),
        linger=0.0,
        oauth_client_id=CLIENT_ID,
        oauth_client_secret=SECRET,
        token_ttl=token_ttl,
        token="static-token-the-proxy-does-not-have",
    )
    secret_file = tmp_path / "client_secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    async with trio.open_nursery() as nursery:
        sim = Simulator(settings)
        _, sim_port = await nursery.start(sim.serve)
        config = parse_config(
            f"""
[server]
listen = "127.0.0.1:0"
heartbeat_interval = 0.2
[storage]
dir = "{tmp_path / "data"}"
[upstream]
reconnect_delay = 0.3
max_reconnect_delay = 2
healthy_after = 0.2
[credentials.ims]
kind = "oauth"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret_file}"
scopes = ["openid", "AdobeID", "read_organizations"]
token_url = "http://127.0.0.1:{sim_port}/ims/token/v3"
[streams.s1]
url = "http://127.0.0.1:{sim_port}/api/1/stream/s1"
""",
            path="oauth.toml",
            environ={},
        )
        proxy = Proxy(config)
        addresses = await nursery.start(proxy.run)
        try:
            yield sim, proxy, addresses[0][1]
        finally:
            proxy.request_shutdown()
            with trio.move_on_after(5):
                await proxy.server.finished.wait()
            nursery.cancel_scope.cancel()


async def test_tokens_are_fetched_refreshed_ahead_of_expiry_and_renewed_after_a_401(tmp_path: Path) -> None:
    async with oauth_setup(tmp_path, token_ttl=1.5) as (sim, _proxy, port):
        reader = await StreamReader(port, "/api/1/stream/s1").connect()
        await reader.read_records(20)
        assert sim.stats()["ims"]["issued"] >= 1
        # The connection outlives its token: the token is only needed to connect.
        await trio.sleep(2.0)
        before = len(reader.records)
        await reader.read_records(before + 50)
        assert sim.stats()["streams"]["s1"]["accepted"] == 1
        assert sim.stats()["ims"]["issued"] >= 2  # refreshed ahead of expiry meanwhile
        # A drop now: the reconnect uses the refreshed (valid) token, no 401.
        sim.drop("s1")
        stats = await accepted_reaches(sim, 2)
        assert stats["streams"]["s1"]["statuses"].get("401", 0) == 0
        # The token service forgets every token: the next connect gets a 401, which makes
        # the proxy fetch a new token for the attempt after the wait.
        sim.revoke_tokens()
        sim.drop("s1")
        stats = await accepted_reaches(sim, 3)
        assert stats["streams"]["s1"]["statuses"].get("401", 0) >= 1
        times = stats["streams"]["s1"]["attempt_times"]
        assert times[-1] - times[-2] >= 0.3  # the 401 was backed off like any refusal
        before = len(reader.records)
        await reader.read_records(before + 50)
        async with httpx.AsyncClient(trust_env=False) as client:
            text = (await client.get(f"http://127.0.0.1:{port}/status")).text
        token_status = json.loads(text)["streams"]["s1"]["token"]
        assert token_status["kind"] == "oauth" and token_status["refreshes"] >= 3
        assert SECRET not in text
        await reader.aclose()


async def test_token_service_outage_does_not_disturb_the_established_stream(tmp_path: Path) -> None:
    async with oauth_setup(tmp_path, token_ttl=1.0) as (sim, _proxy, port):
        reader = await StreamReader(port, "/api/1/stream/s1").connect()
        await reader.read_records(10)
        sim.fail_ims(1000)  # every refresh fails from now on
        await trio.sleep(2.0)
        before = len(reader.records)
        await reader.read_records(before + 100)
        assert sim.stats()["streams"]["s1"]["accepted"] == 1
        async with httpx.AsyncClient(trust_env=False) as client:
            status = (await client.get(f"http://127.0.0.1:{port}/status")).json()["streams"]["s1"]
        assert status["state"] == "streaming"
        assert status["token"]["failures"] >= 1 and status["token"]["last_error"]
        await reader.aclose()
