"""JetStreamLog: a StreamLog kept in a JetStream stream, shared by every node.

Theory of operation
-------------------
``JetStreamLog`` has ``MemoryLog``'s interface, so the hub and ``serve/`` use it
unchanged. The stream's names are in ``names.py``; offsets *are* JetStream
sequence numbers (so ``offset=``, ``Last-Event-ID`` and named cursors mean the
same record on every node), and each message's payload is one record's bytes,
unchanged.

Writing (on the node that holds an upstream lease): ``append`` never awaits.
It queues the records (at most ``publish_buffer_bytes``; past that they are
counted as ``dropped`` and logged, never lost silently), and the publisher
task hands them to the bridge in batches, published with
``Nats-Msg-Id = <hitIdHigh>-<hitIdLow>`` so JetStream drops duplicates (from
backfills, reconnects, two leaders overlapping) cluster-wide. A batch that
fails is retried from its start: the ids make that safe. Appending does *not*
add to the local tail: records reach every node, this one included, the same
way.

Reading: one ordered push consumer per stream per node delivers every new
message; the feeder turns each hand-off into segments of the in-memory
*tail* (at most ``memory_bytes``), and wakes the waiters. Consumers at the
tail are served from memory exactly as by ``MemoryLog``. A read below the
tail fetches an aligned block of ``FETCH_RECORDS`` from JetStream (an
ephemeral pull consumer) and keeps full blocks in a small cache, so consumers
replaying the same stretch share the fetch and its compression. Below the
stream's first sequence (trimmed by its limits) reads as a skip.

``offset_at`` (``since=``) is exact while the tail holds the time asked for;
``offset_at_deep`` asks JetStream for older times (a consumer started by time:
the server's receive time of each message, which is when the leader published
it).

Until the stream is set up (NATS unreachable at start) the log is not
``ready``: the hub answers consumers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

import nats.js.errors
import trio
from nats.js import api

from lsproxy.cluster import names
from lsproxy.cluster.bridge import BridgeClosed, Inbox
from lsproxy.cluster.node import ClusterNode, NatsUnavailable, _describe
from lsproxy.config import StreamConfig
from lsproxy.hub.segment import Segment, SegmentRun, Slice, make_segment, slice_segments
from lsproxy.secret import redact

log = logging.getLogger("lsproxy.cluster")

FETCH_RECORDS = 1000  # one read below the tail: an aligned block of this many records
FETCH_TIMEOUT = 2.0
MAX_READERS = 4  # pull consumers kept for sequential replays, per stream per node
READER_REUSE_SECONDS = 5.0  # an idle reader is used again within this ...
READER_INACTIVE_SECONDS = 15.0  # ... well before the server deletes it
CACHE_BYTES = 32 * 1024 * 1024
SEGMENT_RECORDS = 1000  # the feeder cuts segments at this many records ...
SEGMENT_BYTES = 256 * 1024  # ... or bytes
PUBLISH_BATCH = 2000  # at most this many records per hand-off to the bridge ...
PUBLISH_BATCH_BYTES = 4 * 1024 * 1024  # ... and about this many bytes
PUBLISH_PIPELINE = 3  # batches sent and awaiting their acks at once
PUBLISH_TIMEOUT = 10.0  # for sending a batch, and for its acks
INFO_INTERVAL = 1.0  # how often the stream's state (first sequence, bytes) is refreshed
DROP_LOG_INTERVAL = 10.0

#: One delivered message: (stream sequence, server timestamp, payload).
Delivered = tuple[int, float, bytes]


class JetStreamLog:
    def __init__(
        self, node: ClusterNode, stream: StreamConfig, *, memory_bytes: int, buffer_bytes: int
    ) -> None:
        self.node = node
        self.name = stream.name
        self.stream_name = names.stream_name(stream.name)
        self.subject = names.subject(stream.name)
        self.retention_bytes = stream.retention_bytes
        self.retention_seconds = stream.retention_seconds
        self.duplicate_window = names.duplicate_window(stream.upstream.dedup_window_seconds)
        self.replicas = node.config.replicas
        self._tail = SegmentRun()
        self._tail_limit = min(memory_bytes, stream.retention_bytes)
        self._next = 0
        self._first = 0  # the stream's first sequence as last seen
        self._bytes = 0
        self._last_time = 0.0
        self._closed = False
        self._changed = trio.Event()
        self.ready = trio.Event()
        self._cache: OrderedDict[int, Segment] = OrderedDict()
        self._cache_bytes = 0
        self._pending: deque[tuple[bytes, str | None]] = deque()
        self._pending_bytes = 0
        self._buffer_bytes = buffer_bytes
        self._publish_wake = trio.Event()
        self._in_flight: deque[tuple[int, int]] = deque()  # (batch id, records), oldest first
        self._unsent = 0  # how many of the queue's first records are in flight
        self.published = 0
        self.dropped = 0
        self._drops_unlogged = 0
        self._drop_logged_at = -float("inf")
        self.publish_error: str | None = None
        self.state: dict[str, Any] = {}
        self.follower_resets = 0
        # the asyncio side's publishing state (touched only on the bridge's loop)
        self._ack_sub: Any = None
        self._ack_prefix = ""
        self._ack_batch = 0
        self._ack_waiters: dict[int, _AckWaiter] = {}
        self._readers: dict[int, _Reader] = {}  # by the sequence each would read next

    # -- StreamLog's properties ------------------------------------------------------
    @property
    def oldest(self) -> int:
        return min(max(self._first, 1), self._next) if self._next else 0

    @property
    def next_offset(self) -> int:
        return self._next

    @property
    def retained_bytes(self) -> int:
        return self._bytes

    @property
    def trimmed_records(self) -> int:
        return max(0, self._first - 1)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_bytes(self) -> int:
        """Record bytes waiting to be published."""
        return self._pending_bytes

    # -- writing ------------------------------------------------------------------------
    def append(self, records: Sequence[bytes], received_at: float) -> None:
        """Queue records for JetStream (never blocks, never awaits)."""
        if self._closed:
            raise RuntimeError("append to a closed log")
        for record in records:
            if self._pending_bytes + len(record) > self._buffer_bytes:
                self.dropped += 1
                self._drops_unlogged += 1
                continue
            self._pending.append((record, names.msg_id(record)))
            self._pending_bytes += len(record)
        if self._drops_unlogged and received_at - self._drop_logged_at >= DROP_LOG_INTERVAL:
            log.error(
                "stream %s: JetStream is not taking records; %d dropped (buffer of %d bytes full; "
                "%d in all)",
                self.name, self._drops_unlogged, self._buffer_bytes, self.dropped,
            )  # fmt: skip
            self._drops_unlogged, self._drop_logged_at = 0, received_at
        self._publish_wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- reading --------------------------------------------------------------------
    async def read(self, offset: int, max_bytes: int) -> Slice:
        if offset > self._next:
            raise ValueError(f"offset {offset} is beyond the tail {self._next}")
        start = max(offset, self.oldest)
        if start >= self._next:
            return Slice(self._next, self._next)
        tail = self._tail
        if tail and tail.front.first <= start:
            i = tail.find(start)
            assert i is not None
            return tail.slice(i, start, max_bytes)
        block = await self._block(start - (start % FETCH_RECORDS))
        if block is None or block.end <= start:
            # Nothing there (trimmed meanwhile): skip to what follows.
            after = block.end if block is not None else start + 1
            nxt = min(max(after, self.oldest), self._next)
            if tail and tail.front.first < nxt:
                nxt = tail.front.first
            return Slice(nxt, nxt)
        return slice_segments([block], 0, start, max_bytes)

    async def _block(self, first: int) -> Segment | None:
        cached = self._cache.get(first)
        if cached is not None:
            self._cache.move_to_end(first)
            return cached
        want = FETCH_RECORDS
        if self._tail:
            want = max(1, min(want, self._tail.front.first - first))
        got: list[Delivered] = await self.node.bridge.call(self._a_fetch, max(first, 1), want)
        if not got:
            return None
        seg = make_segment(got[0][0], [data for _, _, data in _contiguous(got)], got[0][1])
        if len(seg.ends) == FETCH_RECORDS:  # only full blocks: a short one may grow
            self._cache[first] = seg
            self._cache_bytes += len(seg.data)
            while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
                self._cache_bytes -= len(self._cache.popitem(last=False)[1].data)
        return seg

    async def wait_beyond(self, offset: int) -> None:
        while self._next <= offset and not self._closed:
            await self._changed.wait()

    def offset_at(self, unix_time: float) -> int:
        if self._tail and self._tail.front.received_at <= unix_time:
            found = self._tail.at_time(unix_time)
            return self._next if found is None else found
        return self.oldest

    async def offset_at_deep(self, unix_time: float) -> int:
        """``offset_at``, exact also before the tail: the first record JetStream stored at
        or after ``unix_time`` (a consumer started by time). The oldest retained record
        when JetStream cannot be asked."""
        if self._tail and self._tail.front.received_at <= unix_time:
            return self.offset_at(unix_time)
        try:
            found = await self.node.bridge.call(self._a_seq_at_time, unix_time)
        except NatsUnavailable as exc:
            log.warning("stream %s: since=: JetStream not asked (%s); from the oldest record", self.name, exc)
            return self.oldest
        return min(max(found, self.oldest), self._next) if found is not None else self._next

    def received_at(self, offset: int) -> float | None:
        i = self._tail.find(offset)
        if i is None or self._tail.first_of(i) > offset:
            return None
        return self._tail.time_of(i)

    def status(self) -> dict[str, Any]:
        return {
            "jetstream_stream": self.stream_name,
            "subject": self.subject,
            "ready": self.ready.is_set(),
            "state": self.state,
            "publish_pending": len(self._pending),
            "published": self.published,
            "dropped": self.dropped,
            "publish_error": self.publish_error,
            "follower_resets": self.follower_resets,
        }

    # -- the tasks --------------------------------------------------------------------
    async def run(self) -> None:
        """Set the stream up, then follow it and publish into it, until cancelled."""
        node = self.node
        await node.ready.wait()
        pause = 0.5
        while True:
            try:
                info = await node.bridge.call(self._a_ensure_stream)
                break
            except NatsUnavailable as exc:
                self.publish_error = str(exc)
                log.error(
                    "stream %s: cannot set up JetStream stream %s: %s", self.name, self.stream_name, exc
                )
                await trio.sleep(pause)
                pause = min(5.0, pause * 2)
        self._apply_info(info)
        self._next = info["last_seq"] + 1
        log.info(
            "stream %s: JetStream stream %s, sequences %d..%d",
            self.name, self.stream_name, self.oldest, self._next - 1,
        )  # fmt: skip
        inbox: Inbox[Delivered] = node.bridge.inbox(max_items=50_000)
        sub = await node.bridge.call(self._a_follow, self._next, inbox)
        self.ready.set()
        self._wake()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feed, inbox)
                nursery.start_soon(self._publisher)
                nursery.start_soon(self._poll_info)
        finally:
            with trio.move_on_after(2, shield=True):
                with contextlib.suppress(BridgeClosed):
                    await self._flush()
                if self._pending:  # never a silent loss
                    log.warning(
                        "stream %s: %d records not published to JetStream at shutdown (%s)",
                        self.name, len(self._pending), self.publish_error or "NATS is gone",
                    )  # fmt: skip
                try:
                    await node.bridge.call(self._a_unfollow, sub)
                except Exception as exc:
                    log.debug("stream %s: unfollow: %s", self.name, _describe(exc))

    async def _feed(self, inbox: Inbox[Delivered]) -> None:
        while True:
            batch = await inbox.get_batch()
            self._add(batch)

    def _add(self, batch: list[Delivered]) -> None:
        records: list[bytes] = []
        first, at, size = 0, 0.0, 0
        for seq, ts, data in batch:
            if seq < self._next:
                continue  # delivered again after a consumer reset
            if seq != self._next:
                # A gap (messages removed, or the follower restarted past some): the tail
                # restarts; reads below it go to JetStream.
                self._cut(records, first, at)
                records = []
                self._tail = SegmentRun()
                self._next = seq
            if not records:
                first, at, size = seq, max(ts, self._last_time), 0
                self._last_time = at
            records.append(data)
            size += len(data)
            self._next = seq + 1
            if len(records) >= SEGMENT_RECORDS or size >= SEGMENT_BYTES:
                self._cut(records, first, at)
                records = []
        self._cut(records, first, at)
        self._wake()

    def _cut(self, records: list[bytes], first: int, at: float) -> None:
        if not records:
            return
        self._tail.append(make_segment(first, records, at))
        tail = self._tail
        while len(tail) > 1 and tail.bytes > self._tail_limit:
            tail.popleft()

    async def _publisher(self) -> None:
        while True:
            await self._publish_wake.wait()
            self._publish_wake = trio.Event()
            while self._pending:
                await self._publish_step()

    async def _publish_step(self) -> None:
        """Send queued records in batches while fewer than ``PUBLISH_PIPELINE`` batches
        await their acks, then wait for the oldest batch's acks and take its records
        off the queue. A failure (an error ack, or no acks within ``PUBLISH_TIMEOUT``)
        gives up every batch in flight: they are sent again from the queue's front
        (the ids make that safe; records acked meanwhile come back as duplicates)."""
        bridge, in_flight = self.node.bridge, self._in_flight
        try:
            while len(in_flight) < PUBLISH_PIPELINE and self._unsent < len(self._pending):
                batch = self._next_batch()
                with trio.fail_after(PUBLISH_TIMEOUT):
                    batch_id = await bridge.call(self._a_send, batch)
                in_flight.append((batch_id, len(batch)))
                self._unsent += len(batch)
            if not in_flight:
                return
            batch_id, count = in_flight[0]
            with trio.fail_after(PUBLISH_TIMEOUT):
                await bridge.call(self._a_acks, batch_id)
        except (NatsUnavailable, trio.TooSlowError) as exc:
            why = str(exc) or "timed out"
            if self.publish_error is None:
                log.error("stream %s: publishing to JetStream failed (%s); retrying", self.name, why)
            self.publish_error = why
            given_up = [batch_id for batch_id, _ in in_flight]
            in_flight.clear()
            self._unsent = 0
            with contextlib.suppress(Exception):
                await bridge.call(self._a_forget, given_up)
            await trio.sleep(0.5)
            return
        in_flight.popleft()
        self._unsent -= count
        if self.publish_error is not None:
            log.info("stream %s: publishing to JetStream again", self.name)
            self.publish_error = None
        for _ in range(count):
            record, _id = self._pending.popleft()
            self._pending_bytes -= len(record)
        self.published += count

    def _next_batch(self) -> list[tuple[bytes, str | None]]:
        """The queued records after those in flight: at most ``PUBLISH_BATCH`` of them."""
        batch: list[tuple[bytes, str | None]] = []
        size = 0
        pending = self._pending
        for i in range(self._unsent, len(pending)):
            item = pending[i]
            batch.append(item)
            size += len(item[0])
            if len(batch) >= PUBLISH_BATCH or size >= PUBLISH_BATCH_BYTES:
                break
        return batch

    async def _flush(self) -> None:
        """At shutdown: publish what is queued (bounded by the caller)."""
        while self._pending and self.publish_error is None:
            await self._publish_step()

    async def _poll_info(self) -> None:
        while True:
            await trio.sleep(INFO_INTERVAL)
            try:
                self._apply_info(await self.node.bridge.call(self._a_info))
            except NatsUnavailable as exc:
                self.state = {"error": str(exc)}

    def _apply_info(self, info: dict[str, Any]) -> None:
        self._first, self._bytes = info["first_seq"], info["bytes"]
        self.state = info

    # -- asyncio side ---------------------------------------------------------------------
    def _stream_config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.stream_name,
            subjects=[self.subject],
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            max_age=self.retention_seconds,
            max_bytes=self.retention_bytes,
            duplicate_window=self.duplicate_window,
            discard=api.DiscardPolicy.OLD,
            description=f"lsproxy stream {self.name}: one record per message",
        )

    async def _a_ensure_stream(self) -> dict[str, Any]:
        js = self.node.js
        config = self._stream_config()
        try:
            try:
                info = await js.stream_info(self.stream_name)
            except nats.js.errors.NotFoundError:
                info = await js.add_stream(config)
            else:
                current = info.config
                if (current.max_age, current.max_bytes, current.duplicate_window) != (
                    config.max_age,
                    config.max_bytes,
                    config.duplicate_window,
                ):
                    info = await js.update_stream(config)
                if current.num_replicas != config.num_replicas:
                    log.warning(
                        "stream %s: JetStream stream %s has %s replicas, not %d (not changed)",
                        self.name, self.stream_name, current.num_replicas, config.num_replicas,
                    )  # fmt: skip
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None
        return _info_dict(info)

    async def _a_info(self) -> dict[str, Any]:
        try:
            return _info_dict(await self.node.js.stream_info(self.stream_name))
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None

    async def _a_follow(self, start: int, inbox: Inbox[Delivered]) -> Any:
        log_ = self

        async def deliver(msg: Any) -> None:
            seq, ts = _seq_and_time(msg)
            await inbox.put((seq, ts, msg.data))

        try:
            sub = await self.node.js.subscribe(
                self.subject,
                stream=self.stream_name,
                cb=deliver,
                ordered_consumer=True,
                config=api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start, 1)
                ),
                idle_heartbeat=2.0,
            )
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None
        log_.follower_resets = 0
        return sub

    async def _a_unfollow(self, sub: Any) -> None:
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            await reader.close()
        if self._ack_sub is not None:
            ack_sub, self._ack_sub = self._ack_sub, None
            await ack_sub.unsubscribe()
        await sub.unsubscribe()

    async def _a_seq_at_time(self, unix_time: float) -> int | None:
        reader: _Reader | None = None
        try:
            reader = await _Reader.open(self.node, self.stream_name, 0, start_time=unix_time)
            got = await reader.fetch(1, FETCH_TIMEOUT)
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None
        finally:
            if reader is not None:
                await reader.close()
        return got[0][0] if got else None

    async def _a_fetch(self, start: int, count: int) -> list[Delivered]:
        """Up to ``count`` messages from sequence ``start`` on. A reader that stopped
        right before ``start`` (the previous block of a sequential replay) is reused;
        otherwise a new one starts there."""
        now = asyncio.get_running_loop().time()
        reader = self._readers.pop(start, None)
        if reader is not None and now - reader.used_at > READER_REUSE_SECONDS:
            await reader.close()
            reader = None
        try:
            if reader is None:
                reader = await _Reader.open(self.node, self.stream_name, start)
            got = await reader.fetch(count, FETCH_TIMEOUT)
        except Exception as exc:
            if reader is not None:
                await reader.close()
            raise NatsUnavailable(_describe(exc)) from None
        reader.used_at = now
        if got:
            self._readers[got[-1][0] + 1] = reader
            while len(self._readers) > MAX_READERS:
                await self._readers.pop(next(iter(self._readers))).close()
        else:
            await reader.close()
        return got

    async def _a_send(self, batch: list[tuple[bytes, str | None]]) -> int:
        """Publish ``batch`` in order without waiting; the batch's id for ``_a_acks``.
        The acks come to one wildcard inbox of this log and are only counted (a PubAck
        starts ``{"stream"``; anything else, an error or a no-responders status, fails
        the batch): ``publish_async`` parses each ack's JSON and keeps a future per
        message, which costs more than the publishing itself."""
        nc = self.node.nc
        try:
            if self._ack_sub is None:
                self._ack_prefix = nc.new_inbox()
                self._ack_sub = await nc.subscribe(
                    self._ack_prefix + ".*", cb=self._a_on_ack, pending_msgs_limit=1_000_000
                )
            self._ack_batch += 1
            batch_id = self._ack_batch
            self._ack_waiters[batch_id] = _AckWaiter(len(batch))
            reply = f"{self._ack_prefix}.{batch_id}"
            subject, header = self.subject, names.MSG_ID_HEADER
            for record, msg_id in batch:
                headers = {header: msg_id} if msg_id is not None else None
                await nc.publish(subject, record, reply=reply, headers=headers)
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None
        return batch_id

    async def _a_acks(self, batch_id: int) -> None:
        """Wait for every ack of batch ``batch_id``. A wait cancelled (shutdown) leaves the
        waiter for the flush that follows; a batch given up on has none."""
        waiter = self._ack_waiters.get(batch_id)
        if waiter is None:
            raise NatsUnavailable("the batch's acks were given up on")
        await waiter.done.wait()
        self._ack_waiters.pop(batch_id, None)
        if waiter.error is not None:
            raise NatsUnavailable(f"JetStream refused a record: {waiter.error}")

    async def _a_forget(self, batch_ids: list[int]) -> None:
        for batch_id in batch_ids:
            self._ack_waiters.pop(batch_id, None)

    async def _a_on_ack(self, msg: Any) -> None:
        try:
            waiter = self._ack_waiters.get(int(msg.subject.rsplit(".", 1)[1]))
        except ValueError:
            return
        if waiter is None:
            return  # a batch given up on (timed out, cancelled)
        data = msg.data
        if not data.startswith(b'{"stream"') and waiter.error is None:
            status = (msg.headers or {}).get("Status", "")
            waiter.error = redact(data[:200].decode("utf-8", "replace")) or f"status {status}"
        waiter.left -= 1
        if waiter.left <= 0:
            waiter.done.set()


class _Reader:
    """An ephemeral pull consumer read with explicit pull requests into a callback
    (asyncio side): ``fetch`` of nats-py waits for each message with a timeout of its
    own, which costs more than the message."""

    def __init__(self, node: ClusterNode, stream: str, consumer: str) -> None:
        self.node = node
        self.stream = stream
        self.consumer = consumer
        self.used_at = 0.0
        self.sub: Any = None
        self.inbox = ""
        self._got: list[Delivered] = []
        self._want = 0
        self._done = asyncio.Event()

    @classmethod
    async def open(
        cls, node: ClusterNode, stream: str, start: int, start_time: float | None = None
    ) -> _Reader:
        if start_time is None:
            where: dict[str, Any] = {
                "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": start,
            }
        else:
            where = {
                "deliver_policy": api.DeliverPolicy.BY_START_TIME,
                "opt_start_time": datetime.datetime.fromtimestamp(start_time, datetime.UTC),
            }
        info = await node.js.add_consumer(
            stream,
            config=api.ConsumerConfig(
                **where,
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=READER_INACTIVE_SECONDS,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        reader = cls(node, stream, info.name)
        reader.inbox = node.nc.new_inbox()
        reader.sub = await node.nc.subscribe(reader.inbox, cb=reader._on_msg, pending_msgs_limit=1_000_000)
        return reader

    async def fetch(self, count: int, timeout: float) -> list[Delivered]:
        self._got, self._want = [], count
        self._done.clear()
        request = json.dumps({"batch": count, "no_wait": True}).encode()
        subject = (
            f"{getattr(self.node.js, '_prefix', '$JS.API')}.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"
        )
        await self.node.nc.publish(subject, request, reply=self.inbox)
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            if not self._got:
                raise
        got, self._got, self._want = self._got, [], 0
        return got

    async def _on_msg(self, msg: Any) -> None:
        if not self._want:
            return  # late, for a fetch that gave up
        if msg.headers and msg.headers.get("Status"):
            self._done.set()  # 404 no messages, 408 request done: that is all there is
            return
        self._got.append((*_seq_and_time(msg), msg.data))
        if len(self._got) >= self._want:
            self._done.set()

    async def close(self) -> None:
        try:
            if self.sub is not None:
                await self.sub.unsubscribe()
            await self.node.js.delete_consumer(self.stream, self.consumer)
        except Exception as exc:
            log.debug("closing a reader: %s", _describe(exc))


class _AckWaiter:
    """The acks still awaited for one published batch (asyncio side)."""

    __slots__ = ("done", "error", "left")

    def __init__(self, count: int) -> None:
        self.left = count
        self.error: str | None = None
        self.done = asyncio.Event()


def _contiguous(got: list[Delivered]) -> list[Delivered]:
    """The leading run of consecutive sequences."""
    out = [got[0]]
    for item in got[1:]:
        if item[0] != out[-1][0] + 1:
            break
        out.append(item)
    return out


def _seq_and_time(msg: Any) -> tuple[int, float]:
    """Stream sequence and server timestamp from a JetStream message's reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<nanos>.<pending>``, or
    the longer form with domain and hash); cheaper than ``msg.metadata``."""
    reply = msg.reply or ""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[7]) / 1e9
    meta = msg.metadata
    return int(meta.sequence.stream), meta.timestamp.timestamp()


def _info_dict(info: Any) -> dict[str, Any]:
    state = info.state
    leader = info.cluster.leader if info.cluster is not None else None
    return {
        "messages": state.messages,
        "bytes": state.bytes,
        "first_seq": state.first_seq,
        "last_seq": state.last_seq,
        "replicas": info.config.num_replicas,
        "leader": leader,
    }
