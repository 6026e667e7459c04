"""Who may hold an upstream connection slot, and when its new holder may connect.

Theory of operation
-------------------
Every upstream connection slot (1..``connections`` of an upstream) has a lease:
a key in a KV bucket whose TTL is ``lease_ttl``. A node *acquires* it with a
KV create (succeeds only while the key is absent: never written, deleted, or
expired), *renews* it with an update that compares the revision it holds, and
*releases* it with a delete on a clean stop. NATS 2.9 sends nothing when a key
expires, so nodes without the lease poll create().

The holder's rule (``LeasePolicy``): the server expires the key ``lease_ttl``
after it *received* the last write, which is after we *sent* it. So a lease
renewed by a write sent at ``t`` (our monotonic clock) is ours until at least
``t + lease_ttl``; the holder treats it as valid only until
``t + lease_ttl - margin`` and closes its upstream connection by then (a
cancel-scope deadline, so a stuck renewal cannot delay it). Whatever happens
to the holder (NATS unreachable, partitioned, paused), its connection is closed
before anyone else can acquire the key: never two holders streaming one slot.
A renewal refused on its revision means someone else holds the key: lost at
once.

The takeover rule (``takeover_not_before``): the slot's journal entry (KV,
no TTL) holds the holder's attempt, alive and ended moments (wall clock, as in
the single-node journal). A node that takes the lease waits until
``reconnect_delay`` after the latest of them, plus ``clock_skew_margin`` (the
moments were written by another host's clock). An entry still *open* had its
end unrecorded: the holder died or was cut off. A dead holder stopped within a
liveness interval of its last mark, but a cut-off one may have streamed until
its lease validity ran out, up to ``lease_ttl`` after its last mark (marks and
renewals go out together); so its loss is taken to be ``lease_ttl`` after
that mark. Never early, at the price of up to ``lease_ttl`` more wait after an
abrupt death.

Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from lsproxy.hub.journal_rule import Moments, earliest_attempt

#: A renewal goes out this often per lease_ttl (the last ones may fail and the lease still holds).
RENEWALS_PER_TTL = 4


def default_margin(lease_ttl: float) -> float:
    """Time kept between a holder's own deadline and the key's earliest expiry: to close
    the upstream connection and absorb clock rate differences."""
    return min(2.0, lease_ttl / 4)


@dataclass
class LeasePolicy:
    """One slot's lease as this node sees it. Times: a monotonic clock, in seconds."""

    ttl: float
    margin: float
    revision: int | None = None  # the key's revision while held
    valid_until: float = -math.inf  # our connection must be closed by then
    last_sent: float = -math.inf  # when the write that made ``revision`` was sent

    def __post_init__(self) -> None:
        if not 0 <= self.margin < self.ttl:
            raise ValueError(f"the lease margin ({self.margin} s) must be below lease_ttl ({self.ttl} s)")

    @property
    def renew_interval(self) -> float:
        return self.ttl / RENEWALS_PER_TTL

    @property
    def poll_interval(self) -> float:
        """How often a node without the lease tries to create it."""
        return min(1.0, self.ttl / RENEWALS_PER_TTL)

    def held(self, now: float) -> bool:
        return self.revision is not None and now < self.valid_until

    def written(self, sent_at: float, revision: int) -> None:
        """A create or renewal sent at ``sent_at`` succeeded with ``revision``."""
        self.revision = revision
        self.last_sent = sent_at
        self.valid_until = sent_at + self.ttl - self.margin

    def lost(self) -> None:
        """Someone else holds it (a renewal refused on its revision), or we released it."""
        self.revision = None
        self.valid_until = -math.inf

    def next_renewal(self) -> float:
        return self.last_sent + self.renew_interval

    def renewal_timeout(self, now: float) -> float:
        """How long a renewal sent ``now`` may take: a late answer is of no use."""
        return max(0.0, self.valid_until - now)


def takeover_not_before(
    moments: Moments | None, *, reconnect_delay: float, lease_ttl: float, clock_skew_margin: float
) -> float | None:
    """Wall-clock time before which a new holder of a slot must not attempt, or None."""
    if moments is None:
        return None
    found = earliest_attempt(moments, reconnect_delay=reconnect_delay, alive_slack=lease_ttl)
    return None if found is None else found + clock_skew_margin


# -- the journal entry's value (JSON) ------------------------------------------------
_FIELDS = ("attempt_at", "alive_at", "ended_at")


def encode_moments(moments: Moments, node: str) -> bytes:
    body: dict[str, object] = {k: getattr(moments, k) for k in _FIELDS if getattr(moments, k) is not None}
    body["open"] = moments.open
    body["node"] = node
    return json.dumps(body, separators=(",", ":")).encode()


def decode_moments(raw: bytes) -> Moments | None:
    """The moments in a journal value; None when it is not one (then nothing is known)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    moments = Moments()
    for name in _FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        setattr(moments, name, float(value))
    count = body.get("open", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return None
    moments.open = count
    return moments


def journal_node(raw: bytes | None) -> str:
    """The node that wrote a journal value, for the log ("?" when unknown)."""
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        return "?"
    return str(body.get("node", "?"))[:100] if isinstance(body, dict) else "?"
