"""The /metrics collector over real hubs (in-memory logs, real cursors), parsed back
with prometheus-client's own parser."""

from __future__ import annotations

from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from lsproxy.hub.log import MemoryLog
from lsproxy.hub.stream import StreamHub
from lsproxy.serve.metrics import OTHER_CONSUMERS, MetricsEndpoint

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(endpoint: MetricsEndpoint) -> Samples:
    text = endpoint.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def make_hub(name: str = "s1") -> StreamHub:
    return StreamHub(name, MemoryLog(64 * 1024 * 1024))


def attach(hub: StreamHub, consumer: str | None, **kwargs: Any) -> Any:
    return hub.subscribe(consumer, reset=None, window_bytes=0, cancel_scope=trio.CancelScope(), **kwargs)


async def test_lag_series_exist_for_named_consumers_up_to_the_cap_the_rest_summed() -> None:
    hub = make_hub()
    hub.append([b"r%d" % i for i in range(10)])
    subs = {name: attach(hub, name, start_at=start) for name, start in (("a", 0), ("b", 2), ("c", 4), ("d", 8))}
    anonymous = attach(hub, None, start_at=5)
    for name in ("c", "d"):
        hub.unsubscribe(subs[name])  # disconnected named cursors keep their lag
    samples = scrape(MetricsEndpoint({"s1": hub}, max_consumers=2))
    lag = series(samples, "lsproxy_consumer_lag_records")
    assert lag == {
        frozenset({("stream", "s1"), ("consumer", "a")}): 10,
        frozenset({("stream", "s1"), ("consumer", "b")}): 8,
        # c (6), d (2) past the cap, and the anonymous consumer (5): one series
        frozenset({("stream", "s1"), ("consumer", OTHER_CONSUMERS)}): 6 + 2 + 5,
    }
    assert value(samples, "lsproxy_consumer_lag_records_max", stream="s1") == 10
    assert value(samples, "lsproxy_consumers_connected", stream="s1") == 3  # a, b, anonymous
    assert value(samples, "lsproxy_consumer_cursors", stream="s1") == 4
    assert value(samples, "lsproxy_consumer_connected", stream="s1", consumer=OTHER_CONSUMERS) == 1
    assert value(samples, "lsproxy_consumer_lag_seconds", stream="s1", consumer="a") >= 0
    hub.unsubscribe(anonymous)
    capped = scrape(MetricsEndpoint({"s1": hub}, max_consumers=0))
    assert set(series(capped, "lsproxy_consumer_lag_records")) == {
        frozenset({("stream", "s1"), ("consumer", OTHER_CONSUMERS)})
    }


async def test_delivery_and_skip_counters_follow_the_subscriptions() -> None:
    hub = make_hub()
    hub.append([b"x" * 10] * 4)
    sub = attach(hub, "reader", start_at=0)
    assert sub.sent(3, 100)
    sub.skipped(1)  # retention overtook it by one record
    assert sub.sent(4, 20)  # delivery continues after the jump: 3 -> (skip 1) -> 4 is no record
    samples = scrape(MetricsEndpoint({"s1": hub}, max_consumers=10))
    assert value(samples, "lsproxy_records_delivered_total", stream="s1") == 3
    assert value(samples, "lsproxy_bytes_delivered_total", stream="s1") == 120
    assert value(samples, "lsproxy_records_skipped_total", stream="s1") == 1
    assert value(samples, "lsproxy_records_appended_total", stream="s1") == 4
    assert value(samples, "lsproxy_log_retained_records", stream="s1") == 4


async def test_label_values_are_escaped_and_every_stream_is_one_family() -> None:
    odd = 'we"ird\\name\nx'  # TOML table names may hold quotes, backslashes, newlines
    hubs = {"plain": make_hub("plain"), odd: make_hub(odd)}
    hubs[odd].append([b"r"])
    text = MetricsEndpoint(hubs, max_consumers=10).render().decode()
    assert text.count("# TYPE lsproxy_records_appended_total counter") == 1
    samples = scrape(MetricsEndpoint(hubs, max_consumers=10))
    assert value(samples, "lsproxy_records_appended_total", stream=odd) == 1
    assert value(samples, "lsproxy_upstream_state", stream=odd, connection="1", state="connecting") == 1
    assert value(samples, "lsproxy_upstream_state", stream=odd, connection="1", state="streaming") == 0


class SparseHub(StreamHub):
    """A hub whose snapshot lacks most fields (older or newer hubs may differ)."""

    def snapshot(self, now: float) -> dict[str, Any]:
        return {"state": "streaming", "consumers": [{"id": "x"}], "upstream_connections": [{}]}


async def test_a_snapshot_missing_fields_still_scrapes() -> None:
    hub = SparseHub("s1", MemoryLog(1024 * 1024))
    samples = scrape(MetricsEndpoint({"s1": hub}, max_consumers=10))
    assert value(samples, "lsproxy_consumer_cursors", stream="s1") == 1
    assert ("lsproxy_records_appended_total", frozenset({("stream", "s1")})) not in samples
    assert value(samples, "lsproxy_build_info", version=__import__("lsproxy").__version__) == 1
    assert any(name.startswith("process_") for name, _ in samples)  # process metrics ride along


async def test_groups_have_their_members_size_and_worst_share_lag() -> None:
    hub = make_hub()
    hub.append([b"r%d" % i for i in range(10)])
    members = [attach(hub, "workers", shares=3, start_at=0) for _ in range(2)]
    anonymous = attach(hub, None, shares=2, start_at=4)
    members[0].sent(6, 100)  # one share moved on; the other still has all 10 to read
    samples = scrape(MetricsEndpoint({"s1": hub}, max_consumers=10))
    assert value(samples, "lsproxy_group_members", stream="s1", group="workers") == 2
    assert value(samples, "lsproxy_group_connections", stream="s1", group="workers") == 3
    assert value(samples, "lsproxy_group_lag_records_max", stream="s1", group="workers") == 10
    assert value(samples, "lsproxy_group_members", stream="s1", group="~anonymous") == 1
    assert value(samples, "lsproxy_group_lag_records_max", stream="s1", group="~anonymous") == 6
    hub.unsubscribe(anonymous)
    capped = scrape(MetricsEndpoint({"s1": hub}, max_consumers=1))
    assert set(series(capped, "lsproxy_group_members")) == {frozenset({("stream", "s1"), ("group", "~anonymous")})}
