"""GET /metrics scraped during a scenario (drop, 409s, a lagging consumer, a restart),
parsed with prometheus-client's parser: the numbers move as the scenario says.
Real simulator, real proxy, real sockets."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from lsproxy.app import Proxy
from lsproxy.serve.metrics import CONTENT_TYPE
from lsproxy.simulator import SimSettings, SimStream
from tests.harness import ProxyUnderTest, SimUnderTest, StreamReader, proxy_config, running

SECRET = "sim-secret-token-123"  # the harness's upstream token
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scraper:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.texts: list[str] = []  # every body scraped, for the secret check

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(self.base + path)
        self.texts.append(response.text)
        return response

    async def scrape(self) -> Samples:
        response = await self.get("/metrics")
        assert response.status_code == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }

    async def until(self, predicate: Callable[[Samples], bool], timeout: float = 10) -> Samples:
        with trio.fail_after(timeout):
            while not predicate(samples := await self.scrape()):
                await trio.sleep(0.05)
        return samples


def v(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), float("nan"))


def conn(name: str, **labels: str) -> Callable[[Samples], float]:
    """A sample of upstream connection 1 of stream s1."""
    return lambda samples: v(samples, name, stream="s1", connection="1", **labels)


attempts = {kind: conn("lsproxy_upstream_attempts_total", status=kind) for kind in ("2xx", "409")}
connects = conn("lsproxy_upstream_connects_total")
streaming = conn("lsproxy_upstream_state", state="streaming")
backing_off = conn("lsproxy_upstream_state", state="backoff")
next_attempt = conn("lsproxy_upstream_next_attempt_seconds")


@asynccontextmanager
async def proxy_on(sim: SimUnderTest, **cfg: Any) -> AsyncIterator[ProxyUnderTest]:
    """A proxy in front of ``sim`` on the sim's storage dir (so a second one is a restart)."""
    async with trio.open_nursery() as nursery:
        proxy = Proxy(proxy_config(sim, **cfg))
        addresses = await nursery.start(proxy.run)
        try:
            yield ProxyUnderTest(proxy, addresses[0][1])
        finally:
            proxy.request_shutdown()


async def test_metrics_follow_drops_refusals_lag_and_a_restart() -> None:
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), linger=0.0)
    async with running(settings, start_proxy=False) as (sim, _):
        async with proxy_on(sim) as proxy:
            scraper = Scraper(proxy.port)
            head = await scraper.get("/metrics")
            assert head.headers["content-type"] == CONTENT_TYPE.decode()
            samples = await scraper.until(lambda s: v(s, "lsproxy_records_appended_total", stream="s1") > 50)
            assert streaming(samples) == 1 and connects(samples) == 1 and attempts["2xx"](samples) == 0
            assert v(samples, "lsproxy_upstream_bytes_received_total", stream="s1", connection="1") > 0
            assert v(samples, "lsproxy_storage_persisting", stream="s1") == 1
            assert v(samples, "process_open_fds") > 0

            # A drop: one attempt that streamed then ended, one reconnect.
            assert sim.sim.drop("s1") == 1
            samples = await scraper.until(lambda s: connects(s) == 2)
            assert attempts["2xx"](samples) == 1 and streaming(samples) == 1

            # Three 409s in a row: each counted; the back-off countdown is visible meanwhile.
            sim.sim.fail_next("s1", 409, 3)
            sim.sim.drop("s1")
            samples = await scraper.until(lambda s: backing_off(s) == 1 and next_attempt(s) > 0)
            assert next_attempt(samples) <= 2.0 * 1.1  # max_reconnect_delay, plus jitter
            samples = await scraper.until(lambda s: connects(s) == 3)
            assert attempts["409"](samples) == 3 and attempts["2xx"](samples) == 2

            # A named consumer reads a little and leaves: its lag grows with the stream.
            reader = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=lagger").connect()
            await reader.read_records(10)
            samples = await scraper.until(
                lambda s: v(s, "lsproxy_consumer_connected", stream="s1", consumer="lagger") == 1
            )
            await reader.aclose()
            samples = await scraper.until(
                lambda s: v(s, "lsproxy_consumer_connected", stream="s1", consumer="lagger") == 0
                and v(s, "lsproxy_consumer_lag_records", stream="s1", consumer="lagger") > 100
            )
            assert v(samples, "lsproxy_consumer_lag_seconds", stream="s1", consumer="lagger") > 0
            assert v(samples, "lsproxy_records_delivered_total", stream="s1") >= 10
            assert v(samples, "lsproxy_bytes_delivered_total", stream="s1") > 0
            status = (await scraper.get("/status")).json()["streams"]["s1"]
            (cursor,) = [c for c in status["consumers"] if c["id"] == "lagger"]
            # /status was read after /metrics: the same numbers, only later.
            assert cursor["lag"] >= v(samples, "lsproxy_consumer_lag_records", stream="s1", consumer="lagger")
            offset_before = v(samples, "lsproxy_log_next_offset", stream="s1")
            assert v(samples, "lsproxy_storage_commit_seconds_count", stream="s1") > 0
            texts = scraper.texts

        # A restart on the same storage: counters start again, the cursor and the log carry on.
        async with proxy_on(sim) as proxy:
            scraper = Scraper(proxy.port)
            samples = await scraper.until(lambda s: streaming(s) == 1)
            assert connects(samples) == 1 and math.isnan(attempts["409"](samples))  # no 409 in this life
            assert v(samples, "lsproxy_log_next_offset", stream="s1") >= offset_before
            assert v(samples, "lsproxy_consumer_lag_records", stream="s1", consumer="lagger") > 100
            assert v(samples, "lsproxy_consumer_cursors", stream="s1") == 1
            await scraper.get("/")
            await scraper.get("/static/app.js")
            await scraper.get("/rates")
            texts += scraper.texts
    assert not any(SECRET in text for text in texts)
    assert len(texts) > 10


async def test_head_metrics_and_the_status_page_assets() -> None:
    async with running() as (_sim, proxy):
        assert proxy is not None
        async with httpx.AsyncClient(trust_env=False, base_url=f"http://127.0.0.1:{proxy.port}") as client:
            head = await client.head("/metrics")
            assert head.status_code == 200 and head.content == b""
            page = await client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in page.headers["content-security-policy"]
            links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
            assert "/static/app.js" in links and "/static/style.css" in links
            assert all(link.startswith(("/", "data:")) for link in links)  # no CDN: nothing from elsewhere
            for asset, kind in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
                response = await client.get(asset)
                assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
            rates = (await client.get("/rates")).json()["streams"]["s1"]
            assert len(rates["per_second"]) == 600 and isinstance(rates["end"], int)
