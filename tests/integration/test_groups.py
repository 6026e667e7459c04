"""Consumer groups with real worker processes (stdlib http.client): shares, affinity, 409s,
SIGKILLed members, N changes; anonymous consumers resuming by x-api-key."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from lsproxy.app import Proxy
from lsproxy.simulator import SimSettings, SimStream
from tests.harness import ProxyUnderTest, SimUnderTest, StreamReader, proxy_config, running, seq_of

CLIENTS = Path(__file__).parent.parent / "clients"
WORKER = [sys.executable, str(CLIENTS / "py_consumer.py")]


def lines_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for line in path.read_text().split():
        seq, _, visitor = line.partition(",")
        found.append((int(seq), visitor))
    return found


async def start_worker(url: str, out: Path, *args: str) -> trio.Process:
    """A worker appending to ``out``, returned once the proxy accepted it (it says so on
    stderr); retried while refused: a dead member's share is freed when the proxy has seen
    its connection close (at once on loopback, but not before, and later under load)."""
    with trio.fail_after(20):
        while True:
            with out.open("ab") as sink:
                process = await trio.lowlevel.open_process(
                    [*WORKER, url, "--visitors", "--ready", *args], stdout=sink, stderr=subprocess.PIPE
                )
            assert process.stderr is not None
            said = b""
            while b"\n" not in said and (data := await process.stderr.receive_some()):
                said += data
            await process.stderr.aclose()
            if said.startswith(b"connected"):
                return process
            await process.wait()
            assert process.returncode == 2, said
            await trio.sleep(0.1)


async def refused(url: str) -> str:
    with trio.fail_after(10):
        result = await trio.run_process([*WORKER, url], capture_stderr=True, check=False)
    assert result.returncode == 2
    return result.stderr.decode()


async def wait_for(predicate, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def last_seq(proxy: ProxyUnderTest) -> int:
    log = proxy.proxy.hubs["s1"].log
    batch = await log.read(log.next_offset - 1, 1)
    return seq_of(batch.data.split(b"\r\n")[0])


async def stop_the_stream(sim: SimUnderTest, proxy: ProxyUnderTest) -> int:
    """The simulator stops producing; once the proxy holds every hit it produced, the last
    hit's seq. Without this the workers, killed one by one, would leave a ragged tail:
    a record of a share whose worker is already dead, followed by records the others
    still received."""
    sim.sim.set_rate("s1", 0)
    last = sim.stream_stats()["produced"] - 1
    with trio.fail_after(15):
        while await last_seq(proxy) < last:
            await trio.sleep(0.05)
    return last


async def wait_until_complete(
    proxy: ProxyUnderTest, files: Sequence[Path], target: int | None = None
) -> None:
    """Every record up to ``target`` (default: all the proxy has now) has reached some worker."""
    if target is None:
        target = await last_seq(proxy)

    def complete() -> bool:
        union = {s for f in files for s, _ in lines_of(f)}
        return bool(union) and set(range(min(union), target + 1)) <= union

    await wait_for(complete)


def assert_disjoint_with_affinity(files: Sequence[Path]) -> None:
    seqs = [{s for s, _ in lines_of(f)} for f in files]
    for i in range(len(seqs)):
        for j in range(i + 1, len(seqs)):
            assert not seqs[i] & seqs[j], f"workers {i} and {j} both got {sorted(seqs[i] & seqs[j])[:5]}"
    owner: dict[str, int] = {}
    for i, f in enumerate(files):
        for _, visitor in lines_of(f):
            assert owner.setdefault(visitor, i) == i, (
                f"visitor {visitor} went to workers {owner[visitor]} and {i}"
            )


@pytest.mark.parametrize("named", [True, False], ids=["named", "anonymous"])
async def test_four_workers_split_the_stream_by_visitor_and_a_killed_one_continues(
    tmp_path: Path, named: bool
) -> None:
    async with running() as (sim, proxy):
        assert proxy is not None
        query = "maxConnections=4" + ("&consumer=workers" if named else "")
        url = proxy.url("s1", query)
        files = [tmp_path / f"worker{i}.txt" for i in range(4)]
        workers = [await start_worker(url, f) for f in files]
        await wait_for(lambda: all(len(lines_of(f)) >= 5 for f in files))

        assert "409" in (fifth := await refused(url)) and "maximum number of connections (4)" in fifth
        mismatch = await refused(proxy.url("s1", query.replace("=4", "=3")))
        assert "409" in mismatch and "disagrees" in mismatch

        code, body = await proxy.get_json("/status")
        assert code == 200
        (group,) = body["streams"]["s1"]["groups"]
        assert group["id"] == ("workers" if named else None)
        assert group["connections"] == 4 and group["members"] == 4 and len(group["shares"]) == 4
        assert all(c["id"] is None or "#" not in c["id"] for c in body["streams"]["s1"]["consumers"])

        before = [len(lines_of(f)) for f in files]
        workers[2].send_signal(signal.SIGKILL)
        await workers[2].wait()
        workers[2] = await start_worker(url, files[2])
        await wait_for(lambda: len(lines_of(files[2])) > before[2] + 20)
        last = await stop_the_stream(sim, proxy)
        await wait_until_complete(proxy, files, last)
        assert all(w.returncode is None for w in workers)  # the others were never disturbed
        assert_disjoint_with_affinity(files)
        for w in workers:
            w.kill()
            await w.wait()
    union = sorted({s for f in files for s, _ in lines_of(f)})
    assert union == list(range(union[0], last + 1))  # nothing skipped, the killed share included


async def test_a_group_changing_its_size_after_all_left_skips_nothing(tmp_path: Path) -> None:
    async with running() as (sim, proxy):
        assert proxy is not None
        old = [tmp_path / f"old{i}.txt" for i in range(2)]
        workers = [await start_worker(proxy.url("s1", "maxConnections=2&consumer=g"), f) for f in old]
        await wait_for(lambda: all(len(lines_of(f)) >= 20 for f in old))
        for w in workers:
            w.send_signal(signal.SIGKILL)
            await w.wait()
        await trio.sleep(0.5)  # records arrive while nobody is connected
        new = [tmp_path / f"new{i}.txt" for i in range(3)]
        url = proxy.url("s1", "maxConnections=3&consumer=g")
        workers = [await start_worker(url, f) for f in new]
        last = await stop_the_stream(sim, proxy)
        await wait_until_complete(proxy, old + new, last)
        assert_disjoint_with_affinity(new)
        for w in workers:
            w.kill()
            await w.wait()
    union = sorted({s for f in old + new for s, _ in lines_of(f)})
    assert union == list(range(union[0], last + 1))


async def test_anonymous_client_with_an_api_key_resumes_after_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "seen.txt"
    out.touch()
    header = ["--header", "x-api-key:client-id-123"]
    async with running() as (_sim, proxy):  # anonymous_resume_linger: 300 s by default
        assert proxy is not None
        url = proxy.url("s1")
        for life in range(4):
            process = await start_worker(url, out, *header)
            await wait_for(lambda life=life: len(lines_of(out)) >= 20 * (life + 1))
            process.send_signal(signal.SIGKILL)
            await process.wait()
            await trio.sleep(0.3)  # records the client misses while down
        process = await start_worker(url, out, *header)
        await wait_until_complete(proxy, [out])
        process.kill()
        await process.wait()
    seqs = sorted({s for s, _ in lines_of(out)})
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # every restart continued, no gap


async def test_two_clients_sharing_an_api_key_both_keep_streaming(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    header = ["--header", "x-api-key:shared"]
    async with running() as (_sim, proxy):
        assert proxy is not None
        first = await start_worker(proxy.url("s1"), a, *header)
        await wait_for(lambda: len(lines_of(a)) >= 10)
        second = await start_worker(proxy.url("s1"), b, *header)
        at = len(lines_of(a))
        await wait_for(lambda: len(lines_of(b)) >= 40 and len(lines_of(a)) >= at + 40)
        assert first.returncode is None and second.returncode is None
        for w in (first, second):
            w.kill()
            await w.wait()


async def test_named_share_cursors_survive_a_proxy_restart() -> None:
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), linger=0.1)  # quick reconnect
    async with running(settings, start_proxy=False) as (sim, _):
        config = proxy_config(sim, replay_window_bytes=0)  # cursors exactly where reading stopped
        saved: dict[str, tuple[int, int]] = {}
        for life in range(2):
            proxy = Proxy(config)
            async with trio.open_nursery() as nursery:
                port = (await nursery.start(proxy.run))[0][1]
                path = "/api/1/stream/s1?maxConnections=2&consumer=g"
                members = [await StreamReader(port, path).connect() for _ in range(2)]
                offsets = [int(m.response_headers["x-lsproxy-offset"]) for m in members]
                if life == 1:
                    assert offsets == [saved["g#0/2"][0], saved["g#1/2"][0]]  # where they left off
                for m in members:
                    await m.read_records(20)
                    await m.aclose()
                with trio.fail_after(5):
                    while any(c.connected for c in proxy.hubs["s1"].book.cursors()):
                        await trio.sleep(0.01)
                saved = proxy.hubs["s1"].book.persistent()
                assert set(saved) == {"g#0/2", "g#1/2"}
                assert all(
                    position > offset for (position, _), offset in zip(saved.values(), offsets, strict=True)
                )
                proxy.request_shutdown()
