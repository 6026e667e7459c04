"""``fields=a,b,c``: only some top-level fields of each record, with values kept exact.

Theory of operation
-------------------
A record is a JSON object. Its top-level members are walked with the
standard library's scanner (``scanstring`` for keys, ``raw_decode`` to find
where each value ends) and the *text* of the wanted members is copied, never
a decoded value: ids above 2^53, float spellings and string escapes stay
exactly as Live Stream wrote them. Members come out in the record's order,
joined without whitespace. A key given twice keeps its last value (as JSON
parsers do). A record that is not a JSON object becomes ``{}``: a record
without the wanted fields, which clients already handle.

Work is bounded by the record's size (records are capped by the framer).

Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

MAX_FIELDS = 64
MAX_FIELD_NAME = 128

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


class FieldsError(ValueError):
    pass


def parse_fields(value: str) -> tuple[str, ...]:
    """``a,b,c`` -> ("a", "b", "c"); FieldsError naming the problem."""
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",")))
    if not names or any(not name for name in names):
        raise FieldsError("fields must be a comma-separated list of top-level field names")
    if len(names) > MAX_FIELDS:
        raise FieldsError(f"fields names at most {MAX_FIELDS} fields, got {len(names)}")
    if any(len(name) > MAX_FIELD_NAME for name in names):
        raise FieldsError(f"a field name in fields is longer than {MAX_FIELD_NAME} characters")
    return names


def project(record: bytes, fields: Iterable[str]) -> bytes:
    """The record with only ``fields`` (top level), as compact JSON; see the module doc."""
    wanted = fields if isinstance(fields, (set, frozenset)) else frozenset(fields)
    text = record.decode("utf-8", "surrogateescape")
    try:
        members = _members(text, wanted)
    except (ValueError, IndexError):
        return b"{}"
    return ("{" + ",".join(f"{k}:{v}" for k, v in members.values()) + "}").encode("utf-8", "surrogateescape")


def _members(text: str, wanted: frozenset[str] | set[str]) -> dict[str, tuple[str, str]]:
    """name -> (key text, value text) of the wanted top-level members."""
    found: dict[str, tuple[str, str]] = {}
    i = _SPACE.match(text, 0).end()  # type: ignore[union-attr]
    if text[i] != "{":
        raise ValueError("not an object")
    i = _SPACE.match(text, i + 1).end()  # type: ignore[union-attr]
    if text[i] == "}":
        return found
    while True:
        if text[i] != '"':
            raise ValueError("expected a key")
        name, key_end = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        key_text = text[i:key_end]
        i = _SPACE.match(text, key_end).end()  # type: ignore[union-attr]
        if text[i] != ":":
            raise ValueError("expected ':'")
        i = _SPACE.match(text, i + 1).end()  # type: ignore[union-attr]
        _value, value_end = _DECODER.raw_decode(text, i)
        if name in wanted:
            found.pop(name, None)  # the last one wins, in its own place
            found[name] = (key_text, text[i:value_end])
        i = _SPACE.match(text, value_end).end()  # type: ignore[union-attr]
        if text[i] == "}":
            return found
        if text[i] != ",":
            raise ValueError("expected ',' or '}'")
        i = _SPACE.match(text, i + 1).end()  # type: ignore[union-attr]
