"""What lsproxy calls things in NATS: streams, subjects, KV buckets and keys, message ids.

These names are an interface: any NATS client in any language can read the
records straight from JetStream with them (README, "Cluster mode").

* JetStream stream ``LSPROXY_<name>`` with the one subject
  ``lsproxy.records.<name>``, per lsproxy stream ``<name>`` (its table name in
  ``[streams.<name>]``). Each message is one record, its bytes unchanged (no
  CRLF); the JetStream sequence is the record's offset.
* ``Nats-Msg-Id: <hitIdHigh>-<hitIdLow>`` on records carrying both ids.
* KV buckets ``lsproxy_leases`` (TTL = ``lease_ttl``), ``lsproxy_journal`` and
  ``lsproxy_cursors``; keys ``<upstream>.<slot>`` for leases and the journal
  (``<upstream>``: ``u`` + 16 hex digits of the SHA-256 of the upstream key, see
  ``hub/journal_rule.upstream_key``), ``<name>.<consumer>`` for cursors.

A name part outside ``[A-Za-z0-9_-]`` is written ``=XX`` per UTF-8 byte
(``acme.prod`` -> ``acme=2Eprod``): unambiguous, and valid in stream names,
subject tokens and KV keys alike.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re

from lsproxy.hub.dedup import hit_id

STREAM_PREFIX = "LSPROXY_"
SUBJECT_PREFIX = "lsproxy.records."
LEASE_BUCKET = "lsproxy_leases"
JOURNAL_BUCKET = "lsproxy_journal"
CURSOR_BUCKET = "lsproxy_cursors"
MEMBER_BUCKET = "lsproxy_members"  # consumer group shares held, <stream>.<share cursor>: TTL lease_ttl
MSG_ID_HEADER = "Nats-Msg-Id"
#: The most the server keeps ids for (about 190 B of server memory each): reconnect
#: backfills and overlapping leaders are seconds to a minute or two apart.
MAX_DUPLICATE_WINDOW = 120.0

_PLAIN = re.compile(r"[A-Za-z0-9_-]")


def escape(part: str) -> str:
    """``part`` with every character outside ``[A-Za-z0-9_-]`` written ``=XX`` per byte."""
    out = []
    for ch in part:
        if _PLAIN.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode())
    return "".join(out)


def unescape(escaped: str) -> str | None:
    """The inverse of ``escape``; None for text ``escape`` cannot have written."""
    out = bytearray()
    i = 0
    while i < len(escaped):
        ch = escaped[i]
        if ch == "=":
            try:
                out.append(int(escaped[i + 1 : i + 3], 16))
            except ValueError:
                return None
            i += 3
        elif _PLAIN.fullmatch(ch):
            out += ch.encode()
            i += 1
        else:
            return None
    try:
        return out.decode()
    except UnicodeDecodeError:
        return None


def stream_name(stream: str) -> str:
    return STREAM_PREFIX + escape(stream)


def subject(stream: str) -> str:
    return SUBJECT_PREFIX + escape(stream)


def slot_key(upstream: str, slot: int) -> str:
    """The lease and journal key of upstream connection ``slot`` (0-based) of an upstream."""
    digest = hashlib.sha256(upstream.encode()).hexdigest()[:16]
    return f"u{digest}.{slot}"


def cursor_key(stream: str, consumer: str) -> str:
    return f"{escape(stream)}.{escape(consumer)}"


def msg_id(record: bytes) -> str | None:
    """``<hitIdHigh>-<hitIdLow>`` for a record carrying both ids, else None."""
    found = hit_id(record)
    return None if found is None else found.replace(b":", b"-").decode()


def duplicate_window(dedup_window_seconds: float) -> float:
    """The stream's duplicate window: the configured one, capped; 1 s at least (0 is
    the server's 2 minutes)."""
    return max(1.0, min(dedup_window_seconds, MAX_DUPLICATE_WINDOW))


def member_value(node: str) -> bytes:
    """The member bucket's value: the node whose member holds the share."""
    return json.dumps({"node": node}).encode()


def member_node(value: bytes) -> str:
    try:
        body = json.loads(value)
    except (ValueError, RecursionError):
        return "?"
    node = body.get("node") if isinstance(body, dict) else None
    return node if isinstance(node, str) else "?"
