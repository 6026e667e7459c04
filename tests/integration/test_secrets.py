"""A hostile upstream that echoes the token: it reaches neither /status nor a log line.

The simulator (``echo_token``) repeats the bearer token in 401 bodies and in
redirect Locations. The tokens here are 3 characters: no length floor.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from lsproxy.app import Proxy
from lsproxy.simulator import SimSettings, SimStream, Simulator
from tests.harness import ProxyUnderTest, SimUnderTest, proxy_config
from tests.integration.test_cli import free_port, wait_until

GOOD, WRONG = "Zq7", "Wx3"  # the simulator's token, and one it refuses
CREDENTIALS = f"""
[credentials.good]
token = "{GOOD}"
[credentials.wrong]
token = "{WRONG}"
"""


async def test_echoed_short_tokens_reach_neither_status_nor_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = SimSettings(
        port=0,
        token=GOOD,
        redirect=True,
        echo_token=True,
        streams=(SimStream("s1", "suite-s1", 100.0), SimStream("s2", "suite-s2", 100.0)),
    )
    async with trio.open_nursery() as nursery:
        sim = Simulator(settings)
        _host, port = await nursery.start(sim.serve)
        # s1 (good token): 302 to a node URL that carries the token, where a 302 without a
        # Location ends the attempt: the error quotes that URL. s2 (wrong token): 302 with
        # the token, then 401 whose body repeats it.
        sim.fail_next("s1", 302, count=1000)
        under_test = SimUnderTest(sim, port)
        config = proxy_config(
            under_test,
            streams=("s1", "s2"),
            extra=CREDENTIALS,
            stream_keys={"s1": {"credentials": '"good"'}, "s2": {"credentials": '"wrong"'}},
        )
        proxy = Proxy(config)
        addresses = await nursery.start(proxy.run)
        p = ProxyUnderTest(proxy, addresses[0][1])
        try:
            with trio.fail_after(10):
                while True:
                    _, status = await p.get_json("/status")
                    errors = {name: s["last_error"] for name, s in status["streams"].items()}
                    if all(errors.values()) and sim.stats()["streams"]["s1"]["attempts"] >= 2:
                        break
                    await trio.sleep(0.05)
            async with httpx.AsyncClient(trust_env=False) as client:
                text = (await client.get(f"http://127.0.0.1:{p.port}/status")).text
        finally:
            proxy.request_shutdown()
            with trio.move_on_after(5):
                await proxy.server.finished.wait()
            nursery.cancel_scope.cancel()
    shutil.rmtree(under_test.storage_dir, ignore_errors=True)
    # The attempts did go where the tokens were echoed.
    assert "has no Location" in errors["s1"]["message"] and "token=***" in errors["s1"]["message"]
    assert errors["s2"]["status"] == 401 and errors["s2"]["description"].endswith("***")
    assert GOOD not in text and WRONG not in text
    ours = [
        r for r in caplog.records if r.name.startswith("lsproxy") and not r.name.startswith("lsproxy.sim")
    ]
    assert any("has no Location" in r.getMessage() for r in ours)
    for record in ours:
        assert GOOD not in record.getMessage() and WRONG not in record.getMessage(), record.getMessage()


def test_the_command_line_proxy_logs_no_echoed_token(tmp_path: Path) -> None:
    sim_port, proxy_port = free_port(), free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{proxy_port}"
[storage]
dir = "state"
[upstream]
reconnect_delay = 0.2
{CREDENTIALS}
[streams.s1]
url = "http://127.0.0.1:{sim_port}/api/1/stream/s1"
credentials = "wrong"
"""
    )
    sim = subprocess.Popen(
        [
            *(sys.executable, "-m", "lsproxy", "simulate", "--listen", f"127.0.0.1:{sim_port}"),
            *("--token", GOOD, "--redirect", "--echo-token", "--stream", "s1"),
        ],
        stderr=subprocess.DEVNULL,
    )
    proxy = None
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{sim_port}/_sim/stats").status_code == 200)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "lsproxy", "run", "--config", str(config), "--log-level", "debug"],
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        status = wait_until(
            lambda: (
                (r := httpx.get(f"http://127.0.0.1:{proxy_port}/status")).json()["streams"]["s1"][
                    "last_error"
                ]
                and r.text
            )
        )
        assert WRONG not in status
        stats = httpx.get(f"http://127.0.0.1:{sim_port}/_sim/stats").json()
        assert stats["auth_failures"].get("invalid_token", 0) >= 1
        proxy.send_signal(signal.SIGINT)
        _, stderr = proxy.communicate(timeout=15)
    finally:
        for p in (proxy, sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert "(401)" in stderr and "Adobe says" in stderr
    assert WRONG not in stderr
