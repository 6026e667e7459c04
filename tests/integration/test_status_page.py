"""The status page in real headless Chromium: it loads, the chart draws with live
data, and the numbers it shows are /status's, through an upstream drop with its
back-off countdown. A screenshot is written under the test's temp dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lsproxy.simulator import SimSettings, SimStream
from tests.browser import Browser, find_chromium
from tests.harness import StreamReader, running

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_chromium() is None, reason="no chromium (scripts/test installs Debian's)"),
]
SECRET = "sim-secret-token-123"
DELAY = 30.0  # long enough to watch the countdown; the test never waits it out

# The chart's line colour (--chart: #2962c4) painted in the canvas's upper part, well
# above the zero line: pixels prove it drew non-zero rates.
CHART_DRAWN = """(() => {
  const canvas = document.querySelector('[data-stream="s1"] canvas');
  if (!canvas || Number(canvas.dataset.points || 0) < 2) return 0;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, Math.floor(canvas.height * 0.6)).data;
  let line = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - 41) < 40 && Math.abs(data[i + 1] - 98) < 40 && data[i + 2] > 150 && data[i + 3] > 200) line++;
  }
  return line > 20 ? line : 0;
})()"""

SHOWN = """(() => {
  const s = document.querySelector('[data-stream="s1"]');
  const f = (name) => s.querySelector(`[data-field="${name}"]`);
  const cell = (tr, key) => tr.querySelector(`[data-key="${key}"]`).textContent;
  const consumers = {};
  for (const tr of f("consumers").querySelectorAll("tr[data-consumer]")) {
    consumers[tr.dataset.consumer] = {lag: cell(tr, "lag"), lag_seconds: cell(tr, "lag_seconds"),
                                      connected: tr.children[1].textContent};
  }
  const conn = f("connections").querySelector("tr");
  return {
    updates: Number(document.body.dataset.updates), state: f("state").textContent,
    records_received: f("records_received").textContent, records_delivered: f("records_delivered").textContent,
    duplicates_dropped: f("duplicates_dropped").textContent, consumers_connected: f("consumers_connected").textContent,
    attempts: conn.children[2].textContent, connects: conn.children[3].textContent,
    connection_state: cell(conn, "state"), last_error: cell(conn, "last_error"),
    countdown: f("countdown").textContent, countdown_seconds: Number(f("countdown").dataset.seconds),
    errors: [...f("errors").children].map((li) => li.textContent), groups: f("groups").textContent,
    points: Number(f("chart").dataset.points), consumers,
    html: document.documentElement.outerHTML,
  };
})()"""


def number(text: str) -> float:
    return float(text.replace(",", ""))


async def drain(reader: StreamReader) -> None:
    """A consumer at the tail: reads and discards until the connection ends."""
    assert reader.stream is not None
    while await reader.stream.receive_some(65536):
        pass


async def test_status_page_shows_live_chart_and_the_numbers_of_status(tmp_path: Path) -> None:
    settings = SimSettings(streams=(SimStream("s1", "suite-s1", 200.0),), linger=0.0)
    async with running(settings, reconnect_delay=DELAY, max_reconnect_delay=2 * DELAY) as (sim, proxy):
        assert proxy is not None
        base = f"http://127.0.0.1:{proxy.port}"
        lagger = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=lagger").connect()
        await lagger.read_records(5)
        await lagger.aclose()
        tail = await StreamReader(proxy.port, "/api/1/stream/s1?consumer=dashboard").connect()
        browser: Browser | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, tail)
            try:
                profile = tmp_path / "chromium-profile"
                profile.mkdir()
                browser = await trio.to_thread.run_sync(Browser, base + "/", profile)

                async def page(expression: str, **kwargs: Any) -> Any:
                    assert browser is not None
                    return await trio.to_thread.run_sync(lambda: browser.wait_for(expression, **kwargs))

                assert await page(CHART_DRAWN) > 20  # the line is on the canvas, from live records
                assert sim.sim.drop("s1") == 1
                await page("""document.querySelector('[data-stream="s1"] [data-field="state"]').textContent === "backoff" """)
                async with httpx.AsyncClient(trust_env=False) as client:
                    status = (await client.get(base + "/status")).json()["streams"]["s1"]
                shown_before = await page(SHOWN)
                # Two page refreshes later the page shows a /status read after ours.
                shown = await page(f"(() => {{ const s = {SHOWN}; return s.updates >= {shown_before['updates'] + 2} && s; }})()")
                await trio.to_thread.run_sync(browser.screenshot, tmp_path / "status-page.png")
            finally:
                if browser is not None:
                    await trio.to_thread.run_sync(browser.close)
                nursery.cancel_scope.cancel()
        await tail.aclose()

    assert shown["state"] == status["state"] == "backoff" == shown["connection_state"]
    for key in ("records_received", "records_delivered", "duplicates_dropped"):
        assert number(shown[key]) == status[key], key
    connection = status["upstream_connections"][0]
    assert number(shown["attempts"]) == connection["attempts"] == 1
    assert number(shown["connects"]) == connection["connects"] == 1
    assert number(shown["consumers_connected"]) == sum(c["connected"] for c in status["consumers"]) == 1
    consumers = {c["id"]: c for c in status["consumers"]}
    assert set(shown["consumers"]) == set(consumers) == {"lagger", "dashboard"}
    for name, row in shown["consumers"].items():
        assert number(row["lag"]) == consumers[name]["lag"], name
        # seconds keep growing while nothing arrives: the page's reading is the later one
        assert consumers[name]["lag_seconds"] <= number(row["lag_seconds"]) <= consumers[name]["lag_seconds"] + 5
    assert consumers["lagger"]["lag"] > 0 and consumers["dashboard"]["lag"] == 0
    # The countdown to the next attempt and why, as /status says.
    wait = status["next_attempt_in"]
    assert DELAY - 5 < wait <= DELAY * 1.1
    assert wait - 6 <= shown["countdown_seconds"] <= wait
    message = connection["last_error"]["message"]
    assert message in shown["countdown"] and message in shown["last_error"] and message in shown["errors"][0]
    assert shown["groups"] == "no consumer groups"
    assert shown["points"] >= 2
    assert SECRET not in shown["html"] and SECRET not in json.dumps(status)
    screenshot = tmp_path / "status-page.png"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
