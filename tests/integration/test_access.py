"""Consumers beyond localhost over real sockets: tokens, per-stream access, the admin
API (cursor moves while the consumer streams, reconnects under the 60 s rule), the
operator commands, and what must never appear in a log line."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lsproxy.simulator import SimSettings, SimStream
from tests.harness import ProxyUnderTest, StreamReader, running

TEAM_TOKEN = "team-token-Zq3yW9pL0sXk4r8Tn2Vb"
OPS_TOKEN = "ops-token-Hj7Kd1mQ5cRt9Ue3Wf6Ya"
WRONG_TOKEN = "wrong-token-Pz4Nx8Lb2Gv6Jh0Dk3Ms"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


CONSUMERS = f"""
[consumers.team]
token_sha256 = "{sha(TEAM_TOKEN)}"
streams = ["s1"]
[consumers.ops]
token_sha256 = "{sha(OPS_TOKEN)}"
admin = true
"""


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def request(
    proxy: ProxyUnderTest, method: str, path: str, token: str | None = None, body: Any = None
) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        return await client.request(
            method, f"http://127.0.0.1:{proxy.port}{path}", headers=auth(token) if token else {}, json=body
        )


async def stream_status(proxy: ProxyUnderTest, path: str, token: str | None) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON error body of a stream request that is refused."""
    reader = await StreamReader(proxy.port, path, headers=auth(token) if token else {}).connect()
    await reader.aclose()
    return reader.status, reader.response_headers, json.loads(reader.error_body) if reader.status != 200 else None


async def test_auth_matrix_over_real_sockets() -> None:
    async with running(streams=("s1", "s2"), extra=CONSUMERS) as (_sim, proxy):
        assert proxy is not None
        status, headers, body = await stream_status(proxy, "/api/1/stream/s1", None)
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="lsproxy"'
        assert body["error"] == "unauthorized" and "Bearer" in body["error_description"]
        status, headers, body = await stream_status(proxy, "/api/1/stream/s1", WRONG_TOKEN)
        assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
        status, _, body = await stream_status(proxy, "/api/1/stream/suite-s2", TEAM_TOKEN)  # any route key
        assert status == 403 and body == {
            "error": "forbidden",
            "error_description": "consumer 'team' may not read stream 's2'",
        }
        status, _, body = await stream_status(proxy, "/api/1/stream/nope", TEAM_TOKEN)
        assert status == 404 and "s2" not in body["error_description"]

        reader = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=x", headers=auth(TEAM_TOKEN)).connect()
        assert reader.status == 200
        await reader.read_records(20)
        admin_reader = await StreamReader(
            proxy.port, "/api/2/stream/s2?consumer=x", headers={"authorization": f"bearer {OPS_TOKEN}"}
        ).connect()
        assert admin_reader.status == 200  # no streams list: every stream
        admin_member = await StreamReader(
            proxy.port, "/api/1/stream/s1?consumer=g&maxConnections=2", headers=auth(OPS_TOKEN)
        ).connect()
        assert admin_member.status == 200

        assert (await request(proxy, "GET", "/status")).status_code == 401
        team_view = (await request(proxy, "GET", "/status", TEAM_TOKEN)).json()
        assert list(team_view["streams"]) == ["s1"]
        assert [c["id"] for c in team_view["streams"]["s1"]["consumers"]] == ["team/x"]
        assert team_view["streams"]["s1"]["groups"] == []  # another consumer's group stays hidden
        ops_view = (await request(proxy, "GET", "/status", OPS_TOKEN)).json()
        assert list(ops_view["streams"]) == ["s1", "s2"]
        assert [c["id"] for c in ops_view["streams"]["s2"]["consumers"]] == ["ops/x"]  # its own namespace
        assert [g["id"] for g in ops_view["streams"]["s1"]["groups"]] == ["ops/g"]
        await admin_member.aclose()

        assert (await request(proxy, "GET", "/admin/consumers")).status_code == 401
        assert (await request(proxy, "GET", "/admin/consumers", TEAM_TOKEN)).status_code == 403
        listing = await request(proxy, "GET", "/admin/consumers", OPS_TOKEN)
        assert listing.status_code == 200
        listed = {c["id"] for c in listing.json()["streams"]["s1"]["consumers"]}
        assert listed == {"team/x", "ops/g#0/2", "ops/g#1/2"}  # an admin's listing: every cursor
        assert (await request(proxy, "GET", "/healthz")).status_code == 200  # probes carry no token
        assert (await request(proxy, "GET", "/readyz")).status_code in (200, 503)
        await reader.aclose()
        await admin_reader.aclose()


async def test_metrics_need_an_admin_rates_are_filtered_and_the_page_files_are_open() -> None:
    async with running(streams=("s1", "s2"), extra=CONSUMERS) as (_sim, proxy):
        assert proxy is not None
        assert (await request(proxy, "GET", "/metrics")).status_code == 401
        assert (await request(proxy, "GET", "/metrics", TEAM_TOKEN)).status_code == 403  # it names every stream
        scraped = await request(proxy, "GET", "/metrics", OPS_TOKEN)
        assert scraped.status_code == 200 and 'stream="s2"' in scraped.text
        assert (await request(proxy, "GET", "/rates")).status_code == 401
        assert list((await request(proxy, "GET", "/rates", TEAM_TOKEN)).json()["streams"]) == ["s1"]
        assert list((await request(proxy, "GET", "/rates", OPS_TOKEN)).json()["streams"]) == ["s1", "s2"]
        page = await request(proxy, "GET", "/")  # no data in it: its script asks /status with the token
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert (await request(proxy, "GET", "/static/app.js")).status_code == 200


async def test_twenty_failed_authentications_get_429_for_a_minute_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lsproxy")
    async with running(extra=CONSUMERS) as (_sim, proxy):
        assert proxy is not None
        statuses = [(await request(proxy, "GET", "/status", WRONG_TOKEN)).status_code for _ in range(25)]
        assert statuses == [401] * 20 + [429] * 5
        refused = await request(proxy, "GET", "/status", OPS_TOKEN)  # the address is blocked, not the token
        assert refused.status_code == 429 and 55 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["error"] == "too_many_requests"
        assert (await request(proxy, "GET", "/healthz")).status_code == 200
    blocked = [r for r in caplog.records if "failed authentications within" in r.getMessage()]
    assert len(blocked) == 1 and "127.0.0.1" in blocked[0].getMessage()


async def test_cursor_moves_through_the_admin_api_while_the_consumer_streams() -> None:
    async with running(extra=CONSUMERS) as (_sim, proxy):
        assert proxy is not None
        path = "/api/1/stream/s1?consumer=reader&reset=smallest"
        first = await StreamReader(proxy.port, path, headers=auth(TEAM_TOKEN)).connect()
        await first.read_records(300)
        by_offset = list(first.records)  # a fresh store: record i is at offset i
        moved = await request(
            proxy, "POST", "/admin/streams/s1/consumers/team%2Freader/cursor", OPS_TOKEN, {"offset": 100}
        )
        assert moved.status_code == 200, moved.text
        answer = moved.json()
        assert answer["position"] == 100 and answer["connection_ended"] and not answer["created"]
        assert answer["consumer"] == "team/reader" and answer["previous"] >= 300
        await first.read_until(lambda r: False, timeout=5)
        assert first.ended_cleanly  # a normal end of stream, not a reset
        second = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=reader", headers=auth(TEAM_TOKEN)).connect()
        await second.read_records(10)
        assert second.records[:10] == by_offset[100:110]  # resumed exactly at the new position

        # The unescaped form of the name, since and reset; a new cursor can be made ready for a consumer.
        since = await request(
            proxy, "POST", "/admin/streams/suite-s1/consumers/team/later/cursor", OPS_TOKEN, {"since": "2000-01-01T00:00:00Z"}
        )
        assert since.status_code == 200 and since.json()["created"] and since.json()["position"] == 0
        largest = await request(
            proxy, "POST", "/admin/streams/s1/consumers/team/later/cursor", OPS_TOKEN, {"reset": "largest"}
        )
        assert largest.json()["position"] >= 300 and not largest.json()["connection_ended"]
        for body, problem in [
            ({"offset": -1}, "offset must be"),
            ({"offset": 10**12}, "beyond the tail"),
            ({"offset": 1, "reset": "largest"}, "one key"),
            ({"since": "yesterday"}, "since must be"),
            ({"reset": "middle"}, "reset must be"),
            ([], "one JSON object"),
        ]:
            bad = await request(proxy, "POST", "/admin/streams/s1/consumers/team/later/cursor", OPS_TOKEN, body)
            assert bad.status_code == 400 and problem in bad.json()["error_description"], (body, bad.text)
        stray = await request(proxy, "POST", "/admin/streams/s1/consumers/reader/cursor", OPS_TOKEN, {"offset": 1})
        assert stray.status_code == 400 and "<consumer table>/<consumer id>" in stray.json()["error_description"]
        assert (await request(proxy, "POST", "/admin/streams/zz/consumers/team/a/cursor", OPS_TOKEN, {"offset": 1})).status_code == 404
        assert (await request(proxy, "GET", "/admin/streams/s1/reconnect", OPS_TOKEN)).headers["allow"] == "POST"

        deleted = await request(proxy, "DELETE", "/admin/streams/s1/consumers/team%2Freader", OPS_TOKEN)
        assert deleted.status_code == 200 and deleted.json()["connection_ended"]
        await second.read_until(lambda r: False, timeout=5)
        assert second.ended_cleanly
        listing = (await request(proxy, "GET", "/admin/consumers", OPS_TOKEN)).json()
        assert [c["id"] for c in listing["streams"]["s1"]["consumers"]] == ["team/later"]
        again = await request(proxy, "DELETE", "/admin/streams/s1/consumers/team%2Freader", OPS_TOKEN)
        assert again.status_code == 404
        third = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=reader", headers=auth(TEAM_TOKEN)).connect()
        await third.read_records(1)
        assert third.seqs()[0] > second.seqs()[-1]  # a forgotten cursor starts afresh, at the tail
        for r in (first, second, third):
            await r.aclose()


async def test_admin_listing_has_lag_in_records_and_seconds_and_last_seen() -> None:
    async with running() as (_sim, proxy):  # no consumer tables: loopback clients may use it
        assert proxy is not None
        reader = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=slow&reset=smallest").connect()
        await reader.read_records(5)
        await reader.aclose()
        await trio.sleep(0.5)
        listing = (await request(proxy, "GET", "/admin/consumers")).json()
        (slow,) = listing["streams"]["s1"]["consumers"]
        assert slow["id"] == "slow" and not slow["connected"] and slow["lag"] > 0
        assert slow["lag_seconds"] > 0.3 and slow["last_seen"] is not None
        streams = (await request(proxy, "GET", "/admin/streams")).json()["streams"]
        assert streams["s1"]["state"] == "streaming" and streams["s1"]["rate"] > 0
        assert streams["s1"]["consumers"] == 1 and streams["s1"]["consumers_connected"] == 0


async def test_reconnect_is_refused_while_the_rule_forbids_and_attempts_at_once_when_it_allows() -> None:
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), linger=0.0)
    async with running(settings, max_reconnect_delay=30) as (sim, proxy):
        assert proxy is not None
        reader = await StreamReader(proxy.port, "/api/1/stream/s1").connect()
        await reader.read_records(5)
        sim.sim.fail_next("s1", 404, 1)  # the next attempt meets a config error: 30 s wait
        closing = await request(proxy, "POST", "/admin/streams/s1/reconnect")
        assert closing.status_code == 202 and closing.json()["connections"][0]["result"] == "closing"
        refused = await request(proxy, "POST", "/admin/streams/s1/reconnect")
        assert refused.status_code == 409 and refused.json()["error"] == "reconnect_refused"
        assert 0 < refused.json()["next_attempt_in"] <= 0.3 and refused.headers["retry-after"] == "1"
        with trio.fail_after(10):
            while proxy.proxy.hubs["s1"].state != "failed":
                await trio.sleep(0.05)
        stats = sim.stream_stats()
        # The rule counts from the proxy's loss; the simulator (same event loop) notices the
        # close a few ms later, more under load: without the rule the attempt would come at once.
        assert stats["attempts"] == 2 and stats["attempt_times"][1] - stats["disconnect_times"][0] >= 0.25
        await trio.sleep(0.35)  # past the rule's 0.3 s; the policy itself would wait 30 s
        scheduled = await request(proxy, "POST", "/admin/streams/s1/reconnect")
        assert scheduled.status_code == 202 and scheduled.json()["connections"][0]["result"] == "scheduled"
        with trio.fail_after(5):
            while proxy.proxy.hubs["s1"].state != "streaming":
                await trio.sleep(0.05)
        assert sim.stream_stats()["attempts"] == 3
        await reader.read_records(len(reader.records) + 20)  # the same consumer connection carries on
        await reader.aclose()


async def run_cli(*args: str, env: dict[str, str] | None = None) -> trio.CompletedProcess[bytes]:
    import os

    return await trio.run_process(
        [sys.executable, "-m", "lsproxy", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


async def test_cli_token_status_and_cursor_commands_while_the_consumer_streams() -> None:
    made = await run_cli("token", "new", "cli-team")
    assert made.returncode == 0
    lines = made.stdout.decode().splitlines()
    token = lines[1]
    table = "\n".join(line for line in lines if not line.startswith("#") and line and line != token)
    assert table.startswith("[consumers.cli-team]\ntoken_sha256 = ") and sha(token) in table
    extra = table + '\nadmin = true\n' + CONSUMERS
    async with running(extra=extra) as (_sim, proxy):
        assert proxy is not None
        url = f"http://127.0.0.1:{proxy.port}"
        path = "/api/1/stream/s1?consumer=reader&reset=smallest"
        first = await StreamReader(proxy.port, path, headers=auth(TEAM_TOKEN)).connect()
        await first.read_records(200)
        by_offset = list(first.records)

        unauthorized = await run_cli("status", "--url", url)
        assert unauthorized.returncode == 1
        assert unauthorized.stderr.decode().startswith("lsproxy: 401: ") and "LSPROXY_TOKEN" in unauthorized.stderr.decode()
        status = await run_cli("status", "--url", url, "--token-env", "CLI_TOKEN", env={"CLI_TOKEN": token})
        assert status.returncode == 0, status.stderr
        out = status.stdout.decode()
        assert "STREAM" in out and "streaming" in out and "team/reader" in out and "LAG" in out

        moved = await run_cli(
            "cursor", "set", "s1", "team/reader", "--offset", "50", "--url", url, env={"LSPROXY_TOKEN": token}
        )
        assert moved.returncode == 0, moved.stderr
        assert "cursor team/reader at 50" in moved.stdout.decode() and "resumes there" in moved.stdout.decode()
        await first.read_until(lambda r: False, timeout=5)
        assert first.ended_cleanly
        second = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=reader", headers=auth(TEAM_TOKEN)).connect()
        await second.read_records(5)
        assert second.records[:5] == by_offset[50:55]

        listed = await run_cli("cursor", "list", "s1", "--url", url, env={"LSPROXY_TOKEN": token})
        assert listed.returncode == 0 and "team/reader" in listed.stdout.decode()
        deleted = await run_cli("cursor", "delete", "s1", "team/reader", "--url", url, env={"LSPROXY_TOKEN": token})
        assert deleted.returncode == 0 and "deleted" in deleted.stdout.decode()
        await second.read_until(lambda r: False, timeout=5)
        assert second.ended_cleanly
        missing = await run_cli("cursor", "delete", "s1", "team/reader", "--url", url, env={"LSPROXY_TOKEN": token})
        assert missing.returncode == 1 and missing.stderr.decode().startswith("lsproxy: 404: ")
        for r in (first, second):
            await r.aclose()


async def test_no_token_reaches_a_log_line_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(streams=("s1", "s2"), extra=CONSUMERS) as (_sim, proxy):
        assert proxy is not None
        for token in (TEAM_TOKEN, OPS_TOKEN, WRONG_TOKEN):
            for path in ("/api/1/stream/s1?consumer=c", "/api/1/stream/s2", "/api/1/stream/none"):
                reader = await StreamReader(proxy.port, path, headers=auth(token)).connect()
                if reader.status == 200:
                    await reader.read_records(1)
                await reader.aclose()
            for method, path in (("GET", "/status"), ("GET", "/admin/consumers"), ("POST", "/admin/streams/s1/reconnect")):
                await request(proxy, method, path, token)
        await request(proxy, "POST", "/admin/streams/s1/consumers/team%2Fc/cursor", OPS_TOKEN, {"reset": "largest"})
        await request(proxy, "DELETE", "/admin/streams/s1/consumers/team%2Fc", OPS_TOKEN)
    assert len(caplog.records) > 20
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    for token in (TEAM_TOKEN, OPS_TOKEN, WRONG_TOKEN):
        assert token not in logged
        assert token[-12:] not in logged  # nor a part of one


def test_refuses_to_start_on_0_0_0_0_without_consumer_tables(tmp_path: Path) -> None:
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "exposed.toml"
    body = (
        f'[storage]\ndir = "{tmp_path / "data"}"\n[credentials.c]\ntoken = "upstream-token"\n'
        '[streams.s]\nurl = "http://127.0.0.1:9/api/1/stream/s"\n'
    )
    config.write_text(f'[server]\nlisten = "0.0.0.0:{port}"\n' + body)
    for command in ("run", "check"):
        result = subprocess.run(
            [sys.executable, "-m", "lsproxy", command, "--config", str(config)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert lines == [
            f"lsproxy: configuration error: {config}: server.listen: listening on 0.0.0.0 without "
            "[consumers.<name>] tables would let anyone who can reach it read every stream: add consumer "
            "tables (lsproxy token new NAME) or set allow_unauthenticated = true"
        ], result.stderr
    assert not (tmp_path / "data").exists()  # nothing started
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    config.write_text(f'[server]\nlisten = "0.0.0.0:{port}"\nallow_unauthenticated = true\n' + body)
    checked = subprocess.run(
        [sys.executable, "-m", "lsproxy", "check", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0 and "warning: " in checked.stdout and "not authenticated" in checked.stdout
