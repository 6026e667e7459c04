"""Log line formats: the classic text line, or one JSON object per line.

A JSON line carries ``time`` (UTC, ISO 8601, milliseconds), ``level``,
``logger``, ``message``, then the structured fields the code passed with
``extra=`` (``stream``, ``consumer``, ``connection``, ``status``, ``wait``,
``reason``, ``credentials``...), and ``exc`` for a traceback. The secret
filter (cli.py) runs before either format and also cleans those fields.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Every attribute a bare LogRecord has: anything else came in through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a log call passed with ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def make_formatter(kind: str, prefix: str = "") -> logging.Formatter:
    """``text`` or ``json`` (``[server] log_format``, ``--log-format``); ``prefix`` starts
    each text line (JSON lines say who they are in ``logger``)."""
    if kind == "json":
        return JsonFormatter()
    if kind == "text":
        return logging.Formatter(prefix + TEXT_FORMAT)
    raise ValueError(f"unknown log format {kind!r}; expected text or json")
