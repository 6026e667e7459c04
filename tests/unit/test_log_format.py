"""Log formats: text and JSON lines, structured fields, and the secret filter on both."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from lsproxy.cli import configure_logging
from lsproxy.config import ServerConfig, parse_config
from lsproxy.errors import ConfigError
from lsproxy.secret import Secret

SECRET = "s3cret-token-value-42"
# A live Secret is what the log filter masks (lsproxy.secret keeps the registry).
HELD = Secret(SECRET)


@pytest.fixture
def stderr() -> Iterator[io.StringIO]:
    """What configure_logging's handler writes, with the root logger restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    yield buffer
    root.handlers[:], level = saved
    root.setLevel(level)


def configure(buffer: io.StringIO, *args: object, **kwargs: object) -> None:
    configure_logging(*args, **kwargs)  # type: ignore[arg-type]
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
    handler.setStream(buffer)  # pytest's capture swaps sys.stderr between setup and call


def emit_samples() -> None:
    log = logging.getLogger("lsproxy.upstream")
    log.warning(
        "stream %s: refused (409); token %s. Next attempt in %.1f s at %s.",
        "s1", SECRET, 60.0, "09:31:02Z",
        extra={"stream": "s1", "connection": 1, "status": "409", "wait": 60.0},
    )  # fmt: skip
    logging.getLogger("lsproxy.serve").info(
        "stream s1: consumer dash connected", extra={"stream": "s1", "consumer": "dash", "note": f"x{SECRET}"}
    )
    try:
        raise RuntimeError(f"boom with {SECRET}")
    except RuntimeError:
        log.exception("attempt failed")


def test_json_lines_parse_and_carry_the_structured_fields(stderr: io.StringIO) -> None:
    configure(stderr, "info", log_format="json")
    emit_samples()
    lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert len(lines) == 3
    refusal, consumer, failure = lines
    assert refusal["level"] == "WARNING" and refusal["logger"] == "lsproxy.upstream"
    assert refusal["time"].endswith("Z") and "T" in refusal["time"]
    assert {k: refusal[k] for k in ("stream", "connection", "status", "wait")} == {
        "stream": "s1", "connection": 1, "status": "409", "wait": 60.0,
    }  # fmt: skip
    assert refusal["message"].startswith("stream s1: refused (409)")
    assert "Next attempt in 60.0 s" in refusal["message"]
    assert consumer["consumer"] == "dash" and consumer["stream"] == "s1"
    assert "RuntimeError" in failure["exc"] and "Traceback" in failure["exc"]
    # The secret filter runs before the formatter: message, fields and traceback are clean.
    assert SECRET not in stderr.getvalue()
    assert "***" in refusal["message"] and consumer["note"] == "x***" and "***" in failure["exc"]


def test_text_lines_are_filtered_too(stderr: io.StringIO) -> None:
    configure(stderr, "info")
    emit_samples()
    text = stderr.getvalue()
    assert SECRET not in text
    assert "WARNING lsproxy.upstream: stream s1: refused (409); token ***." in text
    assert "RuntimeError: boom with ***" in text


STREAM = '[credentials.c]\ntoken = "t0ken-value"\n[streams.s]\nurl = "http://127.0.0.1:1/api/1/stream/s"\n'


def server(text: str) -> ServerConfig:
    return parse_config(f"[server]\n{text}\n{STREAM}", path="t.toml", environ={}).server


def test_log_format_and_metrics_cap_in_the_config_file() -> None:
    assert server('log_format = "json"').log_format == "json"
    assert server("").log_format == "text"
    with pytest.raises(ConfigError, match=r'server\.log_format: expected "text" or "json", got string "yaml"'):
        server('log_format = "yaml"')
    assert server("").metrics_max_consumers == 100
    assert server("metrics_max_consumers = 5").metrics_max_consumers == 5
    with pytest.raises(ConfigError, match=r"server\.metrics_max_consumers: must be >= 0, got -1"):
        server("metrics_max_consumers = -1")
