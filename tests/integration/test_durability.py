"""The proxy killed with SIGKILL and restarted, again and again, while the simulator
keeps producing and a named consumer reads: the consumer ends with every record, in
order (duplicates only around restarts), and Live Stream never sees two connection
attempts less than reconnect_delay apart, across restarts too."""

from __future__ import annotations

import random
import signal
import socket
import sys
from pathlib import Path

import httpx
import trio

from lsproxy.simulator import SimSettings, SimStream, Simulator

CLIENTS = Path(__file__).parent.parent / "clients"
DELAY = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


async def wait_ready(port: int, timeout: float = 15) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(timeout):
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.05)


def seen(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()]


async def test_proxy_and_consumer_killed_at_any_moment_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(11)
    settings = SimSettings(
        port=0,
        streams=(SimStream("s1", "suite-s1", 200.0),),
        token="durable-test-token",
        linger=0.5,  # shorter than DELAY: the proxy's wait is what keeps it out of 409s
        backfill=150,  # Live Stream replays from before the disconnect: covers uncommitted records
    )
    proxy_port = free_port()
    config = tmp_path / "proxy.toml"
    out = tmp_path / "seen.txt"
    out.write_text("")
    async with trio.open_nursery() as nursery:
        sim = Simulator(settings)
        _, sim_port = await nursery.start(sim.serve)
        config.write_text(
            f"""
[server]
listen = "127.0.0.1:{proxy_port}"
heartbeat_interval = 0.5
[storage]
dir = "{tmp_path / "data"}"
commit_interval = 0.2
heartbeat_interval = 0.2
[upstream]
reconnect_delay = {DELAY}
max_reconnect_delay = 4
[credentials.sim]
token = "durable-test-token"
[streams.s1]
url = "http://127.0.0.1:{sim_port}/api/1/stream/s1"
"""
        )
        url = f"http://127.0.0.1:{proxy_port}/api/1/stream/s1?consumer=archiver"
        proxy_cmd = [
            sys.executable,
            "-m",
            "lsproxy",
            "run",
            "--config",
            str(config),
            "--log-level",
            "warning",
        ]
        consumer_cmd = [sys.executable, str(CLIENTS / "py_consumer.py"), url]
        with out.open("ab") as sink:
            proxy = await trio.lowlevel.open_process(proxy_cmd)
            await wait_ready(proxy_port)
            consumer = await trio.lowlevel.open_process(consumer_cmd, stdout=sink)
            with trio.fail_after(10):
                # Past the backfill (150 hits): a replay never reaches before the first connection.
                while len(seen(out)) < 200:
                    await trio.sleep(0.05)
            for round_ in range(4):
                await trio.sleep(rng.uniform(0.3, 1.2))
                victims = [proxy] if round_ % 2 == 0 else [proxy, consumer]
                for victim in victims:
                    victim.send_signal(signal.SIGKILL)
                    await victim.wait()
                proxy = await trio.lowlevel.open_process(proxy_cmd)
                await wait_ready(proxy_port)
                if consumer.returncode is not None or consumer in victims:
                    consumer = await trio.lowlevel.open_process(consumer_cmd, stdout=sink)
                # The consumer (re)connects at once: its stream is served from the store
                # while the upstream waits out the delay.
            # The last life reconnects upstream (after the delay), then the consumer
            # catches up with everything the simulator has sent by then.
            with trio.fail_after(15):
                while sim.stats()["streams"]["s1"]["open"] == 0:
                    await trio.sleep(0.05)
            await trio.sleep(0.5)
            produced_at_end = sim.stats()["streams"]["s1"]["position"]
            with trio.fail_after(20):
                while not seen(out) or max(seen(out)) < produced_at_end - 1:
                    await trio.sleep(0.1)
            for p in (consumer, proxy):
                p.send_signal(signal.SIGTERM)
                await p.wait()
        stats = sim.stats()["streams"]["s1"]
        nursery.cancel_scope.cancel()

    seqs = seen(out)
    unique = sorted(set(seqs))
    assert unique == list(range(seqs[0], unique[-1] + 1)), "a record was lost"
    first_seen: dict[int, int] = {}
    for i, s in enumerate(seqs):
        first_seen.setdefault(s, i)
    assert sorted(first_seen, key=first_seen.__getitem__) == unique, "records out of order"
    # Across restarts: every attempt at least DELAY after the previous connection was lost.
    attempts, drops = stats["attempt_times"], stats["disconnect_times"]
    # Some lives were killed while still waiting out the delay: fewer connections than lives.
    assert 2 <= stats["accepted"] <= 5
    for attempt in attempts[1:]:
        last_drop = max(d for d in drops if d <= attempt)
        assert attempt - last_drop >= DELAY, (attempt, last_drop)
    assert stats["statuses"].get("409", 0) == 0 and stats["statuses"].get("503", 0) == 0
