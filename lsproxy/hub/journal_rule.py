"""The upstream journal's content and the rule it serves (pure: no I/O, no clock).

Theory of operation
-------------------
Live Stream counts connections per upstream, not per local name: a proxy
that closes a connection and opens one to the same upstream sooner than
``reconnect_delay`` later is early, whatever the stream is called now and
whether or not its log is kept on disk. So the journal is keyed by the
upstream (``upstream_key``: the url's scheme, host and path; the query and
the credentials are left out, so rotating a token or renaming a credential
set is no way around the wait either), and kept in a file of its own.

Per upstream it holds three wall-clock moments and a count: the last
attempt (durable *before* connecting), the last end of an attempt or
connection, the last "still open" mark (every heartbeat while any connection
to it is open or being opened), and how many were open when written. With
none open, the ends were recorded: ``earliest_attempt`` is ``reconnect_delay``
after the latest attempt or end. With some open, the process died without
recording their end, but at most ``alive_slack`` (its heartbeat plus a write)
after its last durable mark; ``settle`` turns that bound into a recorded end
when the next process loads the journal. Several connections to one upstream
share one entry: the latest loss of any of them holds back all.

``first_attempt_not_before`` adds what the journal file itself says: a
journal that is missing while the storage dir shows an earlier run, or that
cannot be read, is ``UNKNOWN``: the last loss may have been just before
start-up, so the wait runs from start-up. An empty storage dir is a
``FIRST_RUN``: nothing here ever connected.

The journal also remembers each stream store it has seen, with the log's
last known end offset, so a store that vanished or was emptied while the
proxy was stopped is reported (``lost_stores``) instead of silently
replaced by an empty one.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

JOURNAL_NAME = "upstream-journal.json"
FORMAT_VERSION = 1
MAX_JOURNAL_BYTES = 4 * 1024 * 1024  # far above any real journal; bounds what start-up reads
FORGET_AFTER = 7 * 86400.0  # entries untouched this long are dropped (any sane delay is far shorter)
_MOMENTS = ("attempt_at", "alive_at", "ended_at")
_FIELDS = (*_MOMENTS, "open")


class Knowledge(enum.Enum):
    KNOWN = "known"  # the journal was read
    FIRST_RUN = "first run"  # no journal and no trace of an earlier run
    UNKNOWN = "unknown"  # missing (while an earlier run left traces) or unreadable


class JournalUnreadable(ValueError):
    """The journal file's content is not a journal; the message says why."""


def upstream_key(url: str) -> str:
    """The upstream a stream connects to, as Live Stream counts it: ``url`` without its
    query, scheme and host lower-cased, trailing slashes dropped."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


@dataclass
class Moments:
    """One upstream's recorded moments (wall clock, seconds)."""

    attempt_at: float | None = None
    alive_at: float | None = None
    ended_at: float | None = None
    open: int = 0  # connections open or being opened when written

    def latest(self) -> float | None:
        known = [m for m in (self.attempt_at, self.alive_at, self.ended_at) if m is not None]
        return max(known) if known else None


@dataclass
class JournalData:
    #: how long after its last mark the writing process can have lived (its heartbeat + a write)
    alive_slack: float = 0.0
    upstreams: dict[str, Moments] = field(default_factory=dict)
    #: store file name -> the log's end offset when last seen
    stores: dict[str, int] = field(default_factory=dict)


def earliest_attempt(moments: Moments, *, reconnect_delay: float, alive_slack: float) -> float | None:
    """Wall-clock time before which no attempt may start, or None (nothing recorded)."""
    candidates = [moments.attempt_at, moments.ended_at]
    if moments.open:  # their end went unrecorded: the process died, at most alive_slack after its mark
        mark = moments.alive_at if moments.alive_at is not None else moments.latest()
        candidates.append(None if mark is None else mark + alive_slack)
    known = [m for m in candidates if m is not None]
    return max(known) + reconnect_delay if known else None


def settle(data: JournalData) -> None:
    """A loaded journal's open connections died with their process: record the latest
    moment they can have ended as their end (the counts start afresh in the new life)."""
    for moments in data.upstreams.values():
        if moments.open:
            end = earliest_attempt(moments, reconnect_delay=0.0, alive_slack=data.alive_slack)
            moments.ended_at, moments.open = end, 0


def first_attempt_not_before(
    moments: Moments | None,
    knowledge: Knowledge,
    *,
    started_at: float,
    reconnect_delay: float,
    alive_slack: float,
) -> float | None:
    """When a new connection loop for an upstream may first attempt (wall clock), or None
    for at once. ``started_at`` is when the journal was loaded (this process's start)."""
    found = None
    if moments is not None:
        found = earliest_attempt(moments, reconnect_delay=reconnect_delay, alive_slack=alive_slack)
    if knowledge is Knowledge.UNKNOWN:
        found = max(found or -math.inf, started_at + reconnect_delay)
    return found


def lost_stores(recorded: Mapping[str, int], found: Mapping[str, int | None]) -> dict[str, str]:
    """Stores about to be opened that the journal knew and that are now gone: name ->
    "deleted" or "emptied". ``found`` maps a store file name to its size (None: missing).
    A 0-byte store is always lost (SQLite never leaves one), known or not."""
    lost = {}
    for name, size in found.items():
        if size == 0:
            lost[name] = "emptied"
        elif size is None and name in recorded:
            lost[name] = "deleted"
    return lost


def forget_old(data: JournalData, now: float) -> None:
    """Drop upstream entries untouched for ``FORGET_AFTER`` (open ones stay)."""
    for key, moments in list(data.upstreams.items()):
        latest = moments.latest()
        if not moments.open and (latest is None or latest < now - FORGET_AFTER):
            del data.upstreams[key]


# -- the file format ----------------------------------------------------------------
def render_journal(data: JournalData) -> bytes:
    body = {
        "version": FORMAT_VERSION,
        "alive_slack": data.alive_slack,
        "upstreams": {
            key: {name: getattr(m, name) for name in _FIELDS if getattr(m, name) is not None}
            for key, m in sorted(data.upstreams.items())
        },
        "stores": dict(sorted(data.stores.items())),
    }
    return json.dumps(body, indent=1).encode() + b"\n"


def parse_journal(raw: bytes) -> JournalData:
    """The journal in ``raw``; raises ``JournalUnreadable`` naming the first problem."""
    if len(raw) > MAX_JOURNAL_BYTES:
        raise JournalUnreadable(f"{len(raw)} bytes, more than a journal can be ({MAX_JOURNAL_BYTES})")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise JournalUnreadable(f"not JSON ({str(exc)[:80]})") from None
    if not isinstance(body, dict):
        raise JournalUnreadable("not a JSON object")
    if body.get("version") != FORMAT_VERSION:
        raise JournalUnreadable(f"unknown version {_short(body.get('version'))}")
    upstreams, stores, slack = body.get("upstreams"), body.get("stores"), body.get("alive_slack")
    if not isinstance(upstreams, dict) or not isinstance(stores, dict):
        raise JournalUnreadable('"upstreams" and "stores" must be JSON objects')
    if not (isinstance(slack, int | float) and _time(slack) and slack >= 0):
        raise JournalUnreadable(f"alive_slack is not a duration: {_short(slack)}")
    data = JournalData(alive_slack=float(slack))
    for key, entry in upstreams.items():
        if not isinstance(entry, dict) or set(entry) - set(_FIELDS):
            raise JournalUnreadable(f"upstream {_short(key)}: expected an object with {', '.join(_FIELDS)}")
        moments = Moments()
        for name, value in entry.items():
            if name == "open":
                if not _whole(value):
                    raise JournalUnreadable(f"upstream {_short(key)}: open is not a count: {_short(value)}")
                moments.open = value
            elif not _time(value):
                raise JournalUnreadable(f"upstream {_short(key)}: {name} is not a time: {_short(value)}")
            else:
                setattr(moments, name, float(value))
        data.upstreams[key] = moments
    for name, offset in stores.items():
        if not _whole(offset):
            raise JournalUnreadable(f"store {_short(name)}: offset is not a whole number: {_short(offset)}")
        data.stores[name] = offset
    return data


def _time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
