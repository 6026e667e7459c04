"""Properties of config loading: any TOML-ish text gives a Config or a ConfigError, never
another exception (a SIGHUP reload catches ConfigError only)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from lsproxy.config import Config, StorageConfig, UpstreamSettings, load_config, parse_config
from lsproxy.errors import ConfigError

CREDENTIAL_KEYS = ["kind", "token", "token_env", "token_file", "api_key", "api_key_env", "client_id"]
CREDENTIAL_KEYS += ["client_id_env", "client_secret", "client_secret_env", "client_secret_file", "scopes"]
CREDENTIAL_KEYS += ["token_url"]
SERVER_KEYS = ["listen", "heartbeat_interval", "request_timeout", "write_timeout", "shutdown_grace"]
SERVER_KEYS += ["replay_window_bytes"]
STORAGE_KEYS = [f.name for f in dataclasses.fields(StorageConfig)]
UPSTREAM_KEYS = [f.name for f in dataclasses.fields(UpstreamSettings)]
STREAM_KEYS = ["url", "report_suite", "credentials", "initial_reset", "retention_bytes", "retention_seconds"]
STREAM_KEYS += UPSTREAM_KEYS
ALL_KEYS = sorted({*CREDENTIAL_KEYS, *SERVER_KEYS, *STORAGE_KEYS, *UPSTREAM_KEYS, *STREAM_KEYS})

VALID = """
[credentials.adobe]
token = "tok-123456"
[streams.prod]
url = "https://livestream.adobe.net/api/1/stream/acme-prod"
"""
ENV = {"TOKEN": "tok-from-env", "EMPTY": "", "SPACE": " a b ", "ODD": "\x00\n\u2028"}

scalars = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "1", "-1", "8", "9", "65536", "1_000", "0x10", "0o7", "0b1"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "-0.0", "0.5", "1e-400"]),
    st.sampled_from(["true", "false", "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00"]),
    st.sampled_from(['"10s"', '"5 min"', '"64 MiB"', '"1 GiB"', '"auto"', '"127.0.0.1:8080"', '"[::1]:0"']),
    st.sampled_from(['"adobe"', '"none"', '"smallest"', '"largest"', '"TOKEN"', '"EMPTY"', '"ODD"']),
    st.sampled_from(['"http://127.0.0.1:1/api/1/stream/x"', '"https://h/api/2/stream/"', '"ftp://x"']),
    st.text(max_size=30).map(lambda t: json.dumps(t, ensure_ascii=False)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(st.sampled_from(ALL_KEYS), inner), max_size=3).map(
            lambda kv: "{" + ", ".join(f"{k} = {v}" for k, v in kv) + "}"
        ),
    ),
    max_leaves=6,
)
names = st.sampled_from(["adobe", "prod", "x", "a.b", '"quoted name"', '"a/b"', '""', "π"])
headers = st.one_of(
    st.sampled_from(["[server]", "[storage]", "[upstream]", "[streams]", "[credentials]", "[[streams]]"]),
    names.map(lambda n: f"[credentials.{n}]"),
    names.map(lambda n: f"[streams.{n}]"),
    names.map(lambda n: f"[streams.{n}.upstream]"),
    st.text(max_size=20).map(lambda t: f"[{t}]"),
)
lines = st.one_of(
    st.tuples(st.sampled_from(ALL_KEYS), values).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    headers,
    st.text(max_size=40),  # anything at all
)


# Valid TOML, so the validation behind the parser is reached: values of every TOML type
# (and the strings lsproxy takes) under the keys it knows, in the tables it knows.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # TOML has no lone surrogates
py_scalars = st.one_of(
    st.integers(-(2**64), 2**64),
    st.integers(-10, 100_000),
    st.integers(1 << 20, 1 << 40),
    st.floats(),
    st.floats(0, 1e4),
    st.booleans(),
    text,
    st.sampled_from(["10s", "5 min", "1.5h", "64 MiB", "2 GB", "auto", "127.0.0.1:0", "[::1]:8080", "adobe"]),
    st.sampled_from(
        ["smallest", "largest", "oauth", "static", "TOKEN", "EMPTY", "ODD", "SPACE", "https://x"]
    ),
    st.sampled_from(["http://127.0.0.1:1/api/1/stream/x", "https://h/api/2/stream/", "/etc/passwd", "."]),
    st.datetimes(),
    st.dates(),
)
py_values = st.recursive(
    py_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(ALL_KEYS), inner, max_size=3)
    ),
    max_leaves=5,
)


def toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # ASCII escapes would split astral characters
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"
    return value.isoformat()  # type: ignore[attr-defined]


def table(keys: list[str]) -> st.SearchStrategy[dict[str, object]]:
    """Mostly the table's own keys (else the first unknown key ends the validation)."""
    key = st.one_of(
        st.sampled_from(keys), st.sampled_from(keys), st.sampled_from(keys), st.sampled_from(ALL_KEYS)
    )
    return st.dictionaries(key, st.one_of(py_scalars, py_values), max_size=5)


@st.composite
def documents(draw: st.DrawFn) -> str:
    out = []
    for name, keys in (("server", SERVER_KEYS), ("storage", STORAGE_KEYS), ("upstream", UPSTREAM_KEYS)):
        if draw(st.booleans()):
            out.append(f"[{name}]")
            out += [f"{json.dumps(k)} = {toml(v)}" for k, v in draw(table(keys)).items()]
    for section, keys in (("credentials", CREDENTIAL_KEYS), ("streams", STREAM_KEYS)):
        for name in draw(
            st.lists(st.sampled_from(["adobe", "prod", "x", "a/b", "", " ", "π"]), max_size=3, unique=True)
        ):
            out.append(f"[{section}.{json.dumps(name)}]")
            good = (
                {"kind": "static", "token": "tok"}
                if section == "credentials"
                else {"url": "https://h/api/1/stream/e"}
            )
            body = {**(good if draw(st.booleans()) else {}), **draw(table(keys))}
            out += [f"{json.dumps(k)} = {toml(v)}" for k, v in body.items()]
    return "\n".join(out)


@given(documents())
def test_any_config_document_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        config = parse_config(text, path="p.toml", environ=ENV, base_dir="/nonexistent-lsproxy-test")
    except ConfigError as exc:
        assert str(exc).startswith("p.toml") and "\n" not in str(exc)
    else:
        assert isinstance(config, Config) and config.streams


@given(st.booleans(), st.lists(lines, max_size=15))
def test_any_tomlish_text_gives_a_config_or_a_config_error(start_valid: bool, body: list[str]) -> None:
    text = (VALID if start_valid else "") + "\n".join(body)
    try:
        config = parse_config(text, path="p.toml", environ=ENV, base_dir="/nonexistent-lsproxy-test")
    except ConfigError as exc:
        assert str(exc).startswith("p.toml") and "\n" not in str(exc)
    else:
        assert isinstance(config, Config) and config.streams


@given(st.binary(max_size=300))
def test_any_file_gives_a_config_or_a_config_error(tmp_path_factory: object, data: bytes) -> None:
    path = Path(str(tmp_path_factory.mktemp("cfg"))) / "lsproxy.toml"  # type: ignore[attr-defined]
    path.write_bytes(data)
    try:
        load_config(path, environ=ENV)
    except ConfigError as exc:
        assert str(path) in str(exc)
