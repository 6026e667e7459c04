"""What an upstream answer or a connection's end means: retry class and operator message.

Theory of operation
-------------------
Every way an attempt can end becomes one ``Outcome``: the ``Failure`` class
that drives the back-off (``LOST`` after a 2xx, ``REFUSED`` for transient
refusals, ``CONFIG`` for what only a human can fix), a short machine label
for metrics and ``/status``, and one operator sentence naming the stream.

Adobe's bodies are untrusted text: the ``error_description`` is parsed
tolerantly, stripped of control characters, truncated, and every secret the
proxy holds (``lsproxy.secret.redact``) and anything that looks like a bearer
token is masked before it reaches a message or a log. The same cleaning
applies to the free text of a network-level ending (exception messages,
redirect targets). No function here raises on odd upstream data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lsproxy.secret import redact
from lsproxy.upstream.backoff import Failure

__all__ = [
    "END_ERRORS",
    "Outcome",
    "attempt_kind",
    "classify_end",
    "classify_status",
    "parse_error_description",
]

MAX_DESCRIPTION = 300
_MAX_BODY = 64 * 1024  # bytes of an error body worth looking at
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_TAGS = re.compile(r"<[^>]{0,500}>")
# Bearer credentials and long token-like runs (JWTs, IMS tokens): never echo them.
_BEARER = re.compile(r"(?i)\bbearer\s+\S+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]*")
_TOKENISH = re.compile(r"[A-Za-z0-9_\-+=]{40,}")


@dataclass(frozen=True)
class Outcome:
    failure: Failure
    status: int | None
    error: str  # short label: "unauthorized", "too_many_connections", "no_hits", "eof", ...
    message: str  # one actionable operator sentence; names the stream; never a secret
    description: str | None  # upstream's error_description, cleaned; None if none


# status -> (failure, label, what it means / what to do)
_STATUS: dict[int, tuple[Failure, str, str]] = {
    400: (
        Failure.CONFIG,
        "bad_request",
        "Live Stream rejected a request parameter (400): a configuration error; "
        "check the url and parameters such as maxConnections (1..8)",
    ),
    401: (
        Failure.REFUSED,
        "unauthorized",
        "the access token is missing, wrong or expired (401): check the stream's "
        "credential set (client id, client secret, org); a fresh token is needed to reconnect",
    ),
    404: (
        Failure.CONFIG,
        "not_found",
        "wrong endpoint, or the stream was disabled after 90 days unused (404): "
        "check the url, or ask Adobe to re-enable the stream",
    ),
    405: (
        Failure.CONFIG,
        "method_not_allowed",
        "Live Stream refused the request method (405): this is an lsproxy bug, please report it",
    ),
    406: (
        Failure.CONFIG,
        "not_acceptable",
        "Live Stream wants Accept-Encoding: gzip (406): this is an lsproxy bug, please report it",
    ),
    409: (
        Failure.REFUSED,
        "too_many_connections",
        "too many connections, or connections with different maxConnections values (409): "
        "another client may be reading this stream or a previous connection is still counted; "
        "waiting before retrying",
    ),
    429: (
        Failure.REFUSED,
        "too_many_requests",
        "Live Stream is rate limiting (429); waiting before retrying",
    ),
    500: (
        Failure.REFUSED,
        "upstream_error",
        "Live Stream failure (500); waiting before retrying",
    ),
    502: (
        Failure.REFUSED,
        "bad_gateway",
        "Live Stream gateway error (502); waiting before retrying",
    ),
    503: (
        Failure.REFUSED,
        "no_hits",
        "the report suite sends no hits (or the load balancer still counts a recent "
        "connection) (503); waiting before retrying",
    ),
    504: (
        Failure.REFUSED,
        "gateway_timeout",
        "Live Stream gateway timeout (504); waiting before retrying",
    ),
    505: (
        Failure.CONFIG,
        "http_version_not_supported",
        "Live Stream requires HTTP/1.1 (505): this is an lsproxy bug, please report it",
    ),
}

# network-level ending -> what happened
_ENDS: dict[str, str] = {
    "eof": "Live Stream closed the connection",
    "network": "network error",
    "timeout": "the request timed out",
    "connect_timeout": "could not connect to Live Stream in time",
    "idle_timeout": "no data from Live Stream for too long (idle timeout)",
    "framing": "the response body was not valid gzip-compressed records",
    "redirect": "cannot follow the upstream redirect",
    "credentials": "no usable access token (the token source failed)",
    "operator": "closed on an operator's request (admin API reconnect)",
}
END_ERRORS = frozenset(_ENDS)


def classify_status(status: int, body: bytes, *, stream: str) -> Outcome:
    """Classify a non-2xx status (redirects are followed by ``request.follow_redirect``)."""
    if 200 <= status < 300:
        raise ValueError(f"status {status} is a success, not something to classify")
    description = parse_error_description(body)
    failure, error, meaning = _STATUS.get(
        status,
        (
            Failure.REFUSED,
            "unexpected_status",
            f"unexpected status {status} from Live Stream; waiting before retrying",
        ),
    )
    detail = f" (Adobe says: {description})" if description else ""
    message = f"stream {stream!r}: {meaning}{detail}."
    return Outcome(failure, status, error, message, description)


def classify_end(error: str, detail: str, *, stream: str, streamed: bool) -> Outcome:
    """Classify a network-level ending: after a 2xx (``streamed``) it is ``LOST``.

    ``error`` is one of ``END_ERRORS``; ``detail`` is a short free text (an
    exception message, say), cleaned like upstream text. An impossible
    redirect is ``CONFIG``; anything else before a 2xx is ``REFUSED``.
    """
    if error not in _ENDS:
        raise ValueError(f"unknown end error {error!r}; expected one of {sorted(_ENDS)}")
    if error == "redirect":
        failure = Failure.CONFIG
        advice = "check the stream's url"
    else:
        failure = Failure.LOST if streamed else Failure.REFUSED
        advice = "reconnecting after the wait" if streamed else "retrying after the wait"
    cleaned = _clean(detail)
    what = f"{_ENDS[error]} ({cleaned})" if cleaned else _ENDS[error]
    return Outcome(failure, None, error, f"stream {stream!r}: {what}; {advice}.", None)


def attempt_kind(outcome: Outcome) -> str:
    """How an attempt ended, as a bounded label for metrics: ``2xx`` (it streamed, then
    ended), the status for the codes Live Stream documents (``401``, ``409``, ``503``...),
    ``4xx``/``5xx`` for other codes, else the network-level end (``network``, ``timeout``...)."""
    if outcome.failure is Failure.LOST:
        return "2xx"
    if outcome.status is not None:
        return str(outcome.status) if outcome.status in _STATUS else f"{outcome.status // 100}xx"
    return outcome.error


def parse_error_description(body: bytes) -> str | None:
    """Adobe's ``error_description`` (or ``error``/``message``), else the first line of text.

    Tolerant of anything: JSON or not, any encoding, HTML from a load balancer.
    The result is cleaned and at most ``MAX_DESCRIPTION`` characters; ``None``
    if there is nothing useful.
    """
    text = body[:_MAX_BODY].decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for key in ("error_description", "error", "message"):
            value = doc.get(key)
            if isinstance(value, str) and value.strip():
                return _clean(value) or None
        return _clean(text) or None  # some other JSON object: show it, cleaned
    if isinstance(doc, str):
        return _clean(doc) or None
    text = _TAGS.sub("\n", text)
    for line in text.splitlines():
        cleaned = _clean(line)
        if cleaned:
            return cleaned
    return None


def _clean(text: str) -> str:
    """One line, no control characters, no secret or token-like strings, bounded length."""
    text = redact(text)  # before anything changes it: a secret may contain any character
    text = _CONTROL.sub(" ", text)
    text = _BEARER.sub("Bearer ***", text)
    text = _JWT.sub("***", text)
    text = _TOKENISH.sub("***", text)
    text = redact(" ".join(text.split()))  # whitespace joined: and before a cut leaves half of one
    if len(text) > MAX_DESCRIPTION:
        text = text[: MAX_DESCRIPTION - 1].rstrip() + "…"
    return text
