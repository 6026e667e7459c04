"""Server-Sent Events framing for browsers (``EventSource``).

Each record is one event: ``id: <log offset>`` and ``data: <record>``. The id
is what the browser sends back as ``Last-Event-ID`` when it reconnects, so the
proxy resumes right after that offset: no duplicates, no gaps. Heartbeats are
comments (ignored by ``EventSource``). Records skipped by retention are
announced by an ``event: gap`` with ``data: {"skipped": <records>}`` and no id
(so the browser's last id stays that of the last record).

A record never holds a line feed (the framer splits on it) but may hold a bare
carriage return, which SSE also reads as a line end: such a record is sent as
several ``data:`` lines, which the browser joins with ``\\n``.

Pure: no I/O.
"""

from __future__ import annotations

import re

CONTENT_TYPE = b"text/event-stream"
HEARTBEAT = b":\n\n"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def event(offset: int, record: bytes) -> bytes:
    if b"\r" in record or b"\n" in record:
        data = b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(record))
    else:
        data = b"data: " + record + b"\n"
    return b"id: %d\n%s\n" % (offset, data)


def gap_event(skipped: int) -> bytes:
    return b'event: gap\ndata: {"skipped": %d}\n\n' % skipped


def wants_event_stream(accept: str) -> bool:
    """True when an Accept header asks for ``text/event-stream`` (with q > 0)."""
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        if media.strip().lower() != "text/event-stream":
            continue
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False
