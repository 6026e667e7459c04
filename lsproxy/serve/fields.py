"""``fields=a,b,c``: only some top-level fields of each record, with numbers kept exact.

Theory of operation
-------------------
A record is parsed with the standard library's C JSON parser, numbers kept as
the text Live Stream wrote (``parse_int``/``parse_float``), so ids above 2^53
and float spellings come out exactly as they came in: no number is ever
converted. The wanted members are re-encoded compactly, in the record's order;
strings are re-escaped (same value, UTF-8 kept as is). A key given twice keeps
its last value (as JSON parsers do). A record that is not a JSON object becomes
``{}``: a record without the wanted fields, which clients already handle.

Work is bounded by the record's size (records are capped by the framer); the
projection of a whole segment is made once per stream and field set
(view.py), not once per consumer.

Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

MAX_FIELDS = 64
MAX_FIELD_NAME = 128


class FieldsError(ValueError):
    pass


class _Number(str):
    """A JSON number as written in the record."""


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
    try:
        parsed = json.loads(record, parse_int=_Number, parse_float=_Number, parse_constant=_Number)
        if not isinstance(parsed, dict):
            return b"{}"
        members = [f"{_string(k)}:{_encode(v)}" for k, v in parsed.items() if k in fields]
    except (ValueError, RecursionError):
        return b"{}"
    return ("{" + ",".join(members) + "}").encode()


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _encode(value: Any) -> str:
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(k)}:{_encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(_encode, value)) + "]"
    return json.dumps(value)  # true, false, null
