"""A string that refuses to show itself in logs, reprs and tracebacks, and the
redaction of every such string from text that comes from outside.

Theory of operation
-------------------
Every credential the proxy holds is a ``Secret``: configured tokens, api keys
and client secrets, a client secret read from its file, a token read from its
``token_file``, each OAuth access token as it is fetched. A ``Secret`` enters
a process-wide registry when it is made and leaves it when it is garbage, so
the registry knows every secret value in use, rotated tokens included, with
nothing to remember to update.

``redact(text)`` masks every registered value in ``text``. It is applied once,
where outside text enters the proxy's state (upstream error bodies and
``Location`` headers, IMS errors, exception messages, consumer request lines),
so what is stored is already safe for logs, ``/status``, metrics and errors;
the log handler applies it again as a second line of defence.

Matching, and its trade-off: there is no length floor, but a value shorter
than ``WHOLE_WORD_BELOW`` characters is masked only where it stands alone (no
ASCII letter or digit right before or after it). A 3-character token echoed
as ``invalid token abc`` or ``?token=abc`` is masked; the same three letters
inside a longer word are left alone, so text stays readable (masking ``a``
everywhere would mangle every line), and a value that short is guessable
anyway. Longer values are masked wherever they occur. Characters other than
RFC 3986 unreserved ones also match in percent-encoded form (either hex case;
``+`` for a space), as a secret echoed in a URL query would be written.
"""

from __future__ import annotations

import functools
import re
import string
import threading
import weakref

MASK = "***"
WHOLE_WORD_BELOW = 8  # characters; see the module docstring
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


class Secret:
    """Holds a credential. ``str()`` and ``repr()`` are masked; ``reveal()`` is explicit.
    While it exists, ``redact`` masks its value (see the module docstring)."""

    __slots__ = ("__weakref__", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        _registry.add(self)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def redact(text: str) -> str:
    """``text`` with every live secret value masked (as ``***``)."""
    for pattern in _registry.patterns():
        text = pattern.sub(MASK, text)
    return text


def _pattern(value: str) -> re.Pattern[str]:
    parts = []
    for char in value:
        if char in _UNRESERVED:
            parts.append(re.escape(char))
            continue
        encoded = "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        alternatives = [re.escape(char), f"(?i:{re.escape(encoded)})"]
        if char == " ":
            alternatives.append(r"\+")
        parts.append(f"(?:{'|'.join(alternatives)})")
    body = "".join(parts)
    if len(value) < WHOLE_WORD_BELOW:
        body = f"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])"
    return re.compile(body)


class _Registry:
    """The values of the live ``Secret`` objects, as compiled patterns, longest first.

    ``redact`` reads an immutable snapshot and never waits: it may run anywhere
    (a log call from a thread, or from a finaliser while ``add`` holds the
    lock). A weak reference's callback only appends to ``_dead`` (atomic); the
    next call that gets the lock purges and publishes a new snapshot.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, tuple[weakref.ref[Secret], str]] = {}
        self._dead: list[int] = []
        self._compiled: dict[str, re.Pattern[str]] = {}
        self._snapshot: tuple[re.Pattern[str], ...] = ()

    def add(self, secret: Secret) -> None:
        value = secret.reveal()
        if not value.strip():
            return
        key = id(secret)
        ref = weakref.ref(secret, functools.partial(_note_death, self._dead, key))
        with self._lock:
            self._purge()  # before the insert: a dead object's id may be this one's
            self._live[key] = (ref, value)
            self._publish()

    def patterns(self) -> tuple[re.Pattern[str], ...]:
        if self._dead and self._lock.acquire(blocking=False):
            try:
                if self._purge():
                    self._publish()
            finally:
                self._lock.release()
        return self._snapshot  # if the lock was busy: maybe a dead value too, which is harmless

    def _purge(self) -> bool:
        purged = False
        while self._dead:
            self._live.pop(self._dead.pop(), None)
            purged = True
        return purged

    def _publish(self) -> None:
        values = sorted({value for _, value in self._live.values()}, key=len, reverse=True)
        self._compiled = {v: self._compiled.get(v) or _pattern(v) for v in values}
        self._snapshot = tuple(self._compiled.values())


def _note_death(dead: list[int], key: int, _ref: object) -> None:
    dead.append(key)


_registry = _Registry()
