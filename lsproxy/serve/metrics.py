"""GET /metrics: the Prometheus text format, produced by prometheus-client.

Theory of operation
-------------------
Nothing is counted twice: a scrape reads the very snapshot ``/status`` serves
(``StreamHub.snapshot``) and turns it into metric families in a custom
collector, so a number on the status page, in ``/status`` and in Prometheus is
the same number. The exceptions are the two histograms, whose bucket counts
live where the work happens (the durable log's commits, ``LoopLagProbe``), and
the process metrics of prometheus-client's own collectors.

Collection runs on the event loop, synchronously: it reads in-memory counters
only (no I/O, no await), linear in the number of consumers (1,000 consumers:
see README, Health probes and status). Snapshot fields are read with ``.get``
so a stream snapshot that gains or loses a field does not break a scrape.

Label cardinality is bounded: ``stream`` and ``connection`` come from the
config; ``status`` is ``outcome.attempt_kind`` (a fixed set); per-consumer
series exist for named consumers only, the first ``max_consumers`` by name,
and everything else (anonymous consumers, names past the cap) is one
``consumer="~other"`` series: lag in records summed, lag in seconds the
maximum. ``*_max`` gauges cover every consumer whatever the cap.

No secret can appear: the snapshot holds none (``/status`` is tested for
that), label values are stream names, consumer ids and fixed words, and
prometheus-client escapes every label value.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from lsproxy import __version__
from lsproxy.histogram import LOOP_LAG_SECONDS, Histogram
from lsproxy.hub.stream import StreamHub

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
ANONYMOUS_GROUP = "~anonymous"  # the stream's one anonymous consumer group
OTHER_CONSUMERS = "~other"  # anonymous consumers and named ones past the cap, in one series
STATES = ("connecting", "streaming", "backoff", "failed", "stopped")


class LoopLagProbe:
    """How late the event loop wakes a sleeping task: the delay every task sees."""

    def __init__(self, interval: float = 0.25, window: float = 60.0) -> None:
        self.interval = interval
        self.histogram = Histogram(LOOP_LAG_SECONDS)
        self._recent: deque[float] = deque(maxlen=max(1, round(window / interval)))

    @property
    def recent_max(self) -> float:
        """The worst lag over the last ``window`` seconds."""
        return max(self._recent, default=0.0)

    def observe(self, lag: float) -> None:
        self.histogram.observe(lag)
        self._recent.append(lag)

    async def run(self) -> None:
        while True:
            due = trio.current_time() + self.interval
            await trio.sleep_until(due)
            self.observe(max(0.0, trio.current_time() - due))


#: HELP text of every lsproxy metric; counters are named without their ``_total``.
HELP = {
    "lsproxy_build_info": "lsproxy version (value 1)",
    "lsproxy_connections_accepted": "TCP connections accepted from consumers and probes",
    "lsproxy_metrics_collection_seconds": "time the previous /metrics scrape took",
    "lsproxy_event_loop_lag_seconds": "how late the event loop woke a sleeping task",
    "lsproxy_event_loop_lag_max_seconds": "worst event-loop wake-up delay over the last minute",
    # per stream
    "lsproxy_records_appended": "records appended to the stream's log (after de-duplication)",
    "lsproxy_duplicates_dropped": "records dropped as duplicates (hit id seen within the window)",
    "lsproxy_seconds_since_last_record": "seconds since the stream's newest record arrived",
    "lsproxy_records_delivered": "records handed to consumers' sockets",
    "lsproxy_bytes_delivered": "wire bytes handed to consumers' sockets (after gzip and chunk framing)",
    "lsproxy_records_skipped": "records consumers jumped over because retention overtook them",
    "lsproxy_log_retained_bytes": "bytes the stream's log retains",
    "lsproxy_log_retained_records": "records the stream's log retains",
    "lsproxy_log_trimmed_records": "records retention removed from the log",
    "lsproxy_log_next_offset": "offset the next record will get",
    "lsproxy_storage_persisting": "1 while commits to the durable log succeed, 0 while they fail",
    "lsproxy_storage_pending_records": "records waiting for the next commit",
    "lsproxy_storage_disk_bytes": "size of the stream's database file",
    "lsproxy_storage_dropped_records": "records not persisted because the disk queue was full",
    "lsproxy_storage_commit_seconds": "duration of successful storage commits",
    "lsproxy_token_expires_in_seconds": "seconds until the access token expires (OAuth credential sets)",
    "lsproxy_token_refreshes": "tokens fetched or re-read by the stream's credential set",
    "lsproxy_token_refresh_failures": "failed token fetches or reads of the stream's credential set",
    # per upstream connection
    "lsproxy_upstream_state": "1 for the upstream connection's current state, else 0",
    "lsproxy_upstream_next_attempt_seconds": "seconds until the next upstream attempt (0: none pending)",
    "lsproxy_upstream_records_received": "records received from the upstream (before de-duplication)",
    "lsproxy_upstream_bytes_received": "body bytes received from the upstream (gzip, as on the wire)",
    "lsproxy_upstream_connects": "upstream attempts that got a 2xx and streamed",
    "lsproxy_upstream_attempts": "ended upstream attempts by how they ended (2xx: streamed, then lost)",
    # consumers
    "lsproxy_consumers_connected": "consumer connections streaming",
    "lsproxy_consumer_cursors": "named cursors known (connected or not)",
    "lsproxy_consumer_lag_records_max": "the largest lag in records over every consumer",
    "lsproxy_group_members": "members of a consumer group connected (maxConnections 2..8)",
    "lsproxy_group_connections": "the consumer group's N (maxConnections): its number of shares",
    "lsproxy_group_lag_records_max": "the largest lag in records over the group's shares",
    "lsproxy_consumer_lag_seconds_max": "the largest lag in seconds over every consumer",
    "lsproxy_consumer_lag_records": f"records between the consumer's cursor and the tail ({OTHER_CONSUMERS}: summed)",
    "lsproxy_consumer_lag_seconds": f"age of the consumer's next record, 0 at the tail ({OTHER_CONSUMERS}: the maximum)",
    "lsproxy_consumer_connected": f"1 while the named consumer is connected ({OTHER_CONSUMERS}: how many are)",
    "lsproxy_cluster_node_info": "cluster mode: this node's name (value 1)",
    "lsproxy_cluster_ready": "cluster mode: 1 once connected to NATS with the KV buckets set up",
    "lsproxy_cluster_nats_connected": "cluster mode: 1 while connected to a NATS server",
    "lsproxy_cluster_leases_held": "cluster mode: upstream connection leases this node holds",
    "lsproxy_cluster_lease_held": "cluster mode: 1 while this node holds the connection's lease",
    "lsproxy_cluster_leases_acquired": "cluster mode: times this node took the connection's lease",
    "lsproxy_cluster_leases_lost": "cluster mode: times this node lost the connection's lease",
    "lsproxy_jetstream_ready": "cluster mode: 1 once the stream's JetStream stream is set up and followed",
    "lsproxy_jetstream_messages": "cluster mode: messages in the JetStream stream (polled every second)",
    "lsproxy_jetstream_bytes": "cluster mode: bytes in the JetStream stream",
    "lsproxy_jetstream_first_sequence": "cluster mode: the JetStream stream's first sequence",
    "lsproxy_jetstream_last_sequence": "cluster mode: the JetStream stream's last sequence",
    "lsproxy_jetstream_publish_pending_records": "cluster mode: records waiting to be published",
    "lsproxy_jetstream_publish_failing": "cluster mode: 1 while publishing to JetStream fails",
    "lsproxy_jetstream_published_records": "cluster mode: records this node published (acked)",
    "lsproxy_jetstream_dropped_records": "cluster mode: records dropped, the publish buffer full",
}


def _number(value: Any) -> float | None:
    """A snapshot field as a float; None when absent or not a number."""
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


class _Families:
    """The metric families of one scrape, created on first use (so a family is
    exported once, whatever the number of streams, with its HELP and TYPE)."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def _family(self, kind: Callable[..., Metric], name: str, labels: Mapping[str, str]) -> Metric:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = kind(name, HELP[name], labels=list(labels))
        return family

    def gauge(self, name: str, labels: Mapping[str, str], value: Any) -> None:
        self._add(GaugeMetricFamily, name, labels, value)

    def counter(self, name: str, labels: Mapping[str, str], value: Any) -> None:
        self._add(CounterMetricFamily, name, labels, value)

    def _add(self, kind: Callable[..., Metric], name: str, labels: Mapping[str, str], value: Any) -> None:
        family = self._family(kind, name, labels)
        number = _number(value)
        if number is not None:  # an absent field: the family stays, without this sample
            family.add_metric(list(labels.values()), number)  # type: ignore[attr-defined]

    def histogram(self, name: str, labels: Mapping[str, str], hist: Histogram) -> None:
        family = self._family(HistogramMetricFamily, name, labels)
        buckets = [("+Inf" if math.isinf(b) else repr(b), n) for b, n in hist.cumulative()]
        family.add_metric(list(labels.values()), buckets, hist.sum)  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class ProxyCollector:
    """prometheus-client collector over the hubs' snapshots (see the module doc)."""

    def __init__(
        self,
        hubs: Mapping[str, StreamHub],
        *,
        max_consumers: int,
        connections_accepted: Callable[[], int] | None = None,
        loop_lag: LoopLagProbe | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hubs = hubs
        self.max_consumers = max_consumers
        self.connections_accepted = connections_accepted
        self.loop_lag = loop_lag
        self.clock = clock
        self.last_seconds = 0.0  # how long the previous scrape took
        self.cluster_status: Callable[[], Mapping[str, Any]] | None = None  # cluster mode's /status part

    def collect(self) -> Iterator[Metric]:
        out = _Families()
        now = self.clock()
        out.gauge("lsproxy_build_info", {"version": __version__}, 1)
        out.gauge("lsproxy_metrics_collection_seconds", {}, self.last_seconds)
        if self.connections_accepted is not None:
            out.counter("lsproxy_connections_accepted", {}, self.connections_accepted())
        if self.loop_lag is not None:
            out.gauge("lsproxy_event_loop_lag_max_seconds", {}, self.loop_lag.recent_max)
            out.histogram("lsproxy_event_loop_lag_seconds", {}, self.loop_lag.histogram)
        for stream, hub in list(self.hubs.items()):
            self._stream(out, stream, hub, hub.snapshot(now), now)
        if self.cluster_status is not None:
            self._cluster(out, self.cluster_status())
        yield from out

    @staticmethod
    def _cluster(out: _Families, cluster: Mapping[str, Any]) -> None:
        """Cluster mode: this node, its NATS connection, the leases it holds, and each
        JetStream stream's state as this node last saw it."""
        node = {"node": str(cluster.get("node", ""))}
        out.gauge("lsproxy_cluster_node_info", node, 1)
        out.gauge("lsproxy_cluster_ready", {}, bool(cluster.get("ready")))
        out.gauge("lsproxy_cluster_nats_connected", {}, bool((cluster.get("nats") or {}).get("connected")))
        leases = cluster.get("leases") or {}
        out.gauge("lsproxy_cluster_leases_held", {}, len(leases))
        for slot in (cluster.get("slots") or {}).values():
            labels = {"stream": str(slot.get("stream")), "connection": str(slot.get("slot"))}
            out.gauge("lsproxy_cluster_lease_held", labels, bool(slot.get("held")))
            out.counter("lsproxy_cluster_leases_acquired", labels, slot.get("acquired"))
            out.counter("lsproxy_cluster_leases_lost", labels, slot.get("lost"))
        for stream, js in (cluster.get("jetstream") or {}).items():
            labels = {"stream": str(stream)}
            state = js.get("state") or {}
            out.gauge("lsproxy_jetstream_ready", labels, bool(js.get("ready")))
            out.gauge("lsproxy_jetstream_messages", labels, state.get("messages"))
            out.gauge("lsproxy_jetstream_bytes", labels, state.get("bytes"))
            out.gauge("lsproxy_jetstream_first_sequence", labels, state.get("first_seq"))
            out.gauge("lsproxy_jetstream_last_sequence", labels, state.get("last_seq"))
            out.gauge("lsproxy_jetstream_publish_pending_records", labels, js.get("publish_pending"))
            out.gauge("lsproxy_jetstream_publish_failing", labels, js.get("publish_error") is not None)
            out.counter("lsproxy_jetstream_published_records", labels, js.get("published"))
            out.counter("lsproxy_jetstream_dropped_records", labels, js.get("dropped"))

    def _stream(self, out: _Families, stream: str, hub: StreamHub, snap: Mapping[str, Any], now: float) -> None:
        s = {"stream": stream}
        out.counter("lsproxy_records_appended", s, snap.get("records_received"))
        out.counter("lsproxy_duplicates_dropped", s, snap.get("duplicates_dropped"))
        last = _number(snap.get("last_record_at"))
        out.gauge("lsproxy_seconds_since_last_record", s, None if last is None else max(0.0, now - last))
        for i, conn in enumerate(snap.get("upstream_connections") or []):
            self._connection(out, {**s, "connection": str(i + 1)}, conn)
        self._consumers(out, s, snap.get("consumers") or [])
        out.counter("lsproxy_records_delivered", s, snap.get("records_delivered"))
        out.counter("lsproxy_bytes_delivered", s, snap.get("bytes_delivered"))
        out.counter("lsproxy_records_skipped", s, snap.get("records_skipped"))
        log = snap.get("log") or {}
        oldest, tail = _number(log.get("oldest")), _number(log.get("next"))
        out.gauge("lsproxy_log_retained_bytes", s, log.get("retained_bytes"))
        out.gauge("lsproxy_log_retained_records", s, None if oldest is None or tail is None else tail - oldest)
        out.counter("lsproxy_log_trimmed_records", s, log.get("trimmed_records"))
        out.gauge("lsproxy_log_next_offset", s, tail)
        storage = snap.get("storage")
        if isinstance(storage, Mapping):  # durable logs only
            out.gauge("lsproxy_storage_persisting", s, bool(storage.get("persisting")))
            out.gauge("lsproxy_storage_pending_records", s, storage.get("pending_records"))
            out.gauge("lsproxy_storage_disk_bytes", s, storage.get("disk_bytes"))
            out.counter("lsproxy_storage_dropped_records", s, storage.get("dropped_from_disk"))
            commits = getattr(hub.log, "commit_seconds", None)
            if isinstance(commits, Histogram):
                out.histogram("lsproxy_storage_commit_seconds", s, commits)
        token = snap.get("token")
        if isinstance(token, Mapping):
            out.gauge("lsproxy_token_expires_in_seconds", s, token.get("expires_in"))
            out.counter("lsproxy_token_refreshes", s, token.get("refreshes"))
            out.counter("lsproxy_token_refresh_failures", s, token.get("failures"))
        self._groups(out, s, snap.get("groups") or [])

    @staticmethod
    def _connection(out: _Families, labels: Mapping[str, str], conn: Mapping[str, Any]) -> None:
        state = conn.get("state")
        for name in STATES:
            out.gauge("lsproxy_upstream_state", {**labels, "state": name}, name == state)
        out.gauge("lsproxy_upstream_next_attempt_seconds", labels, conn.get("next_attempt_in") or 0.0)
        out.counter("lsproxy_upstream_records_received", labels, conn.get("records_received"))
        out.counter("lsproxy_upstream_bytes_received", labels, conn.get("bytes_received"))
        out.counter("lsproxy_upstream_connects", labels, conn.get("connects"))
        outcomes = conn.get("outcomes") or {"2xx": 0}  # the family's labels, before any attempt ended
        for kind, count in sorted(outcomes.items()):
            out.counter("lsproxy_upstream_attempts", {**labels, "status": str(kind)}, count)

    def _consumers(self, out: _Families, labels: Mapping[str, str], consumers: list[Mapping[str, Any]]) -> None:
        named = sorted((c for c in consumers if c.get("id") is not None), key=lambda c: str(c["id"]))
        shown, rest = named[: self.max_consumers], named[self.max_consumers :]
        rest += [c for c in consumers if c.get("id") is None]
        out.gauge("lsproxy_consumers_connected", labels, sum(1 for c in consumers if c.get("connected")))
        out.gauge("lsproxy_consumer_cursors", labels, len(named))
        lags = [_number(c.get("lag")) or 0.0 for c in consumers]
        ages = [_number(c.get("lag_seconds")) or 0.0 for c in consumers]
        out.gauge("lsproxy_consumer_lag_records_max", labels, max(lags, default=0.0))
        out.gauge("lsproxy_consumer_lag_seconds_max", labels, max(ages, default=0.0))
        for consumer in shown:
            each = {**labels, "consumer": str(consumer["id"])}
            out.gauge("lsproxy_consumer_lag_records", each, consumer.get("lag"))
            out.gauge("lsproxy_consumer_lag_seconds", each, consumer.get("lag_seconds"))
            out.gauge("lsproxy_consumer_connected", each, bool(consumer.get("connected")))
        other = {**labels, "consumer": OTHER_CONSUMERS}
        out.gauge("lsproxy_consumer_lag_records", other, sum(_number(c.get("lag")) or 0.0 for c in rest))
        out.gauge(
            "lsproxy_consumer_lag_seconds", other, max((_number(c.get("lag_seconds")) or 0.0 for c in rest), default=0.0)
        )
        out.gauge("lsproxy_consumer_connected", other, sum(1 for c in rest if c.get("connected")))


    def _groups(self, out: _Families, labels: Mapping[str, str], groups: list[Mapping[str, Any]]) -> None:
        """Per group (bounded like consumers: the first ``max_consumers`` by id; the anonymous
        group is ``~anonymous``): members connected, N, and its worst share's lag."""
        named = sorted(groups, key=lambda g: "" if g.get("id") is None else str(g["id"]))
        for group in named[: self.max_consumers]:
            each = {**labels, "group": ANONYMOUS_GROUP if group.get("id") is None else str(group["id"])}
            shares = group.get("shares") or []
            out.gauge("lsproxy_group_members", each, group.get("members"))
            out.gauge("lsproxy_group_connections", each, group.get("connections"))
            out.gauge(
                "lsproxy_group_lag_records_max", each, max((_number(x.get("lag")) or 0.0 for x in shares), default=0.0)
            )


class MetricsEndpoint:
    """What ``GET /metrics`` serves: this proxy's registry (never the global one, so several
    proxies in one process, as in the tests, do not share metrics)."""

    def __init__(
        self,
        hubs: Mapping[str, StreamHub],
        *,
        max_consumers: int,
        connections_accepted: Callable[[], int] | None = None,
    ) -> None:
        self.loop_lag = LoopLagProbe()  # its task runs in the proxy's root nursery
        self.collector = ProxyCollector(
            hubs, max_consumers=max_consumers, connections_accepted=connections_accepted, loop_lag=self.loop_lag
        )
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def render(self) -> bytes:
        started = time.perf_counter()
        body = generate_latest(self.registry)
        self.collector.last_seconds = time.perf_counter() - started
        return body
