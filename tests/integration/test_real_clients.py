"""Real clients against the real proxy: curl, Python's http.client, Node; and SIGKILLed consumers."""

from __future__ import annotations

import random
import shutil
import signal
import sys
from pathlib import Path

import pytest
import trio

from tests.harness import running

CLIENTS = Path(__file__).parent.parent / "clients"


async def wait_for_lines(path: Path, n: int, timeout: float = 10) -> list[int]:
    with trio.fail_after(timeout):
        while True:
            seqs = [int(x) for x in path.read_text().split()]
            if len(seqs) >= n:
                return seqs
            await trio.sleep(0.05)


async def test_curl_compressed_receives_records() -> None:
    curl = shutil.which("curl")
    assert curl, "curl is required (scripts/test installs it)"
    async with running() as (_sim, proxy):
        result = await trio.run_process(
            [curl, "-sN", "--compressed", "--max-time", "2", "-D", "-", proxy.url("suite-s1")],
            capture_stdout=True,
            check=False,
        )
        assert result.returncode == 28  # curl's "operation timed out": the stream never ends by itself
        head, body = result.stdout.split(b"\r\n\r\n", 1)
        assert b"content-encoding: gzip" in head.lower()
        records = [r for r in body.split(b"\r\n") if r]
        assert len(records) >= 100  # 2 s at 200 hits/s, minus the start
        assert all(r.startswith(b"{") and r.endswith(b"}") for r in records[:-1])


async def test_node_client_with_zlib_gunzip() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required on the test machine")
    async with running() as (_sim, proxy):
        result = await trio.run_process(
            [node, str(CLIENTS / "node_consumer.js"), proxy.url("s1"), "50"], capture_stdout=True, check=True
        )
        seqs = [int(x) for x in result.stdout.split()]
        assert len(seqs) == 50 and seqs == list(range(seqs[0], seqs[0] + 50))


async def test_java_client_with_gzip_input_stream() -> None:
    java = shutil.which("java")
    if java is None:
        pytest.fail("java is required on the test machine")
    async with running() as (_, proxy):
        result = await trio.run_process(
            [java, str(CLIENTS / "JavaConsumer.java"), proxy.url("suite-s1", "consumer=java"), "50"],
            capture_stdout=True,
            check=True,
        )
        seqs = [int(x) for x in result.stdout.split()]
        assert len(seqs) == 50 and seqs == list(range(seqs[0], seqs[0] + 50))


async def test_killed_named_consumer_receives_every_record_in_order(tmp_path: Path) -> None:
    """SIGKILL a named consumer again and again: together its lives saw every record."""
    rng = random.Random(3)
    out = tmp_path / "seen.txt"
    out.write_text("")
    async with running() as (sim, proxy):
        url = proxy.url("s1", "consumer=victim")
        with out.open("ab") as sink:
            for life in range(8):
                process = await trio.lowlevel.open_process(
                    [sys.executable, str(CLIENTS / "py_consumer.py"), url], stdout=sink
                )
                await wait_for_lines(out, 1 + life)
                await trio.sleep(rng.uniform(0.05, 0.5))
                process.send_signal(signal.SIGKILL)
                await process.wait()
            process = await trio.lowlevel.open_process(
                [sys.executable, str(CLIENTS / "py_consumer.py"), url], stdout=sink
            )
            tail_at_end = proxy.proxy.hubs["s1"].log.next_offset
            seqs = await wait_for_lines(out, 1, timeout=5)
            # Wait until the last life has caught up with what the proxy had when we stopped killing.
            last_seq_needed = seqs[0] + tail_at_end - 1
            with trio.fail_after(10):
                while max(seqs) < last_seq_needed:
                    await trio.sleep(0.05)
                    seqs = [int(x) for x in out.read_text().split()]
            process.kill()
            await process.wait()
        assert sim.stream_stats()["attempts"] == 1  # nine consumer lives, one upstream connection
    unique = sorted(set(seqs))
    assert unique == list(range(seqs[0], unique[-1] + 1))  # nothing skipped
    first_seen: dict[int, int] = {}
    for i, s in enumerate(seqs):
        first_seen.setdefault(s, i)
    assert sorted(first_seen, key=first_seen.__getitem__) == unique  # in order (duplicates aside)
