"""How long a /metrics scrape (and a /status render) holds the event loop, with many consumers.

Theory of operation
-------------------
Collection is synchronous on the event loop (it reads in-memory counters, see
lsproxy/serve/metrics.py), so its duration is exactly how long every consumer
waits for the loop during a scrape. This builds real hubs on in-memory logs,
attaches ``--consumers`` real cursors spread over the log (named ones, plus
``--anonymous``), and times ``MetricsEndpoint.render()`` (the whole text
exposition, process metrics included) and ``endpoints.render("status")``,
``--repeat`` times each, for a cap of ``metrics_max_consumers`` below and
above the number of named consumers.

Run: ``python -m bench.metrics_bench [--consumers 1000] [--anonymous 0] [--repeat 50]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import trio

from lsproxy.hub.log import MemoryLog
from lsproxy.hub.stream import StreamHub
from lsproxy.serve import endpoints
from lsproxy.serve.metrics import MetricsEndpoint


def build_hub(named: int, anonymous: int, records: int = 20_000) -> StreamHub:
    hub = StreamHub("bench", MemoryLog(1 << 30))
    batch = [b'{"hitIdHigh":1,"hitIdLow":%d,"pageURL":"https://example.com/"}' % i for i in range(100)]
    for _ in range(records // len(batch)):
        hub.append(batch)
    for i in range(named + anonymous):
        name = f"consumer-{i:05d}" if i < named else None
        sub = hub.subscribe(
            name, reset=None, window_bytes=0, cancel_scope=trio.CancelScope(), start_at=(i * 37) % records
        )
        if name is not None and i % 3 == 0:
            hub.unsubscribe(sub)  # a third of the named consumers are disconnected (a lagging cursor)
    return hub


def timed(render: object, repeat: int) -> tuple[float, float, int]:
    """(median ms, max ms, body bytes)."""
    samples, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        body = render()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
        size = len(body)
    return statistics.median(samples), max(samples), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--consumers", type=int, default=1000, help="named consumers")
    parser.add_argument("--anonymous", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    hub = build_hub(args.consumers, args.anonymous)
    hubs = {"bench": hub}
    print(f"{args.consumers} named + {args.anonymous} anonymous consumers, one stream, {args.repeat} runs each")
    print(f"{'what':<40} {'median ms':>10} {'max ms':>8} {'bytes':>9}")
    for cap in (100, max(args.consumers, 1)):
        endpoint = MetricsEndpoint(hubs, max_consumers=cap)
        median, worst, size = timed(endpoint.render, args.repeat)
        print(f"{'/metrics, metrics_max_consumers=' + str(cap):<40} {median:>10.2f} {worst:>8.2f} {size:>9,}")
    median, worst, size = timed(lambda: endpoints.render("status", hubs, time.time())[1], args.repeat)
    print(f"{'/status':<40} {median:>10.2f} {worst:>8.2f} {size:>9,}")
    median, worst, size = timed(lambda: endpoints.render("rates", hubs, time.time())[1], args.repeat)
    print(f"{'/rates':<40} {median:>10.2f} {worst:>8.2f} {size:>9,}")


if __name__ == "__main__":
    main()
