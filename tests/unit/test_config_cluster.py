"""The [cluster] section: strict, one-line errors naming the key; secrets never echoed."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from lsproxy.config import ClusterConfig, parse_config
from lsproxy.errors import ConfigError

FILE = "c.toml"
BASE = '[credentials.a]\ntoken = "tok-123456789"\n[streams.s]\nurl = "https://x.example/api/1/stream/s"\n'
NATS_PASSWORD = "nats-pass-TOPSECRET"
ENV = {"NATS_TOKEN": "nats-token-TOPSECRET", "NATS_PW": NATS_PASSWORD}


def cluster(body: str, environ: dict[str, str] | None = None) -> ClusterConfig:
    cfg = parse_config(BASE + "[cluster]\n" + body, path=FILE, environ=ENV if environ is None else environ)
    assert cfg.cluster is not None
    return cfg.cluster


def error(body: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        cluster(body, environ)
    message = str(info.value)
    assert "\n" not in message and "TOPSECRET" not in message
    return message


def test_without_cluster_there_is_no_cluster_mode() -> None:
    assert parse_config(BASE, path=FILE, environ={}).cluster is None


def test_defaults_and_values() -> None:
    got = cluster('nats = ["nats://127.0.0.1:4222"]\n')
    assert got == ClusterConfig(nats=("nats://127.0.0.1:4222",), node=platform.node())
    assert (got.replicas, got.lease_ttl, got.clock_skew_margin) == (3, 15.0, 1.0)
    got = cluster(
        'nats = ["nats://a:4222", "tls://b:4223"]\nnode = "node-a"\nreplicas = 1\nlease_ttl = 2.5\n'
        'clock_skew_margin = 0\ntoken_env = "NATS_TOKEN"\n'
    )
    assert got.nats == ("nats://a:4222", "tls://b:4223") and got.node == "node-a"
    assert got.replicas == 1 and got.lease_ttl == 2.5 and got.clock_skew_margin == 0.0
    assert got.token is not None and got.token.reveal() == ENV["NATS_TOKEN"]
    assert "TOPSECRET" not in repr(got)
    got = cluster('nats = "nats://a:4222"\nuser = "lsproxy"\npassword_env = "NATS_PW"\n')
    assert got.user == "lsproxy" and got.password is not None and got.password.reveal() == NATS_PASSWORD


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("node = 'a'\n", "cluster.nats: expected a list of NATS server URLs"),
        ("nats = []\n", "cluster.nats: expected a list"),
        ('nats = ["http://a:4222"]\n', "cluster.nats: expected nats://host:port or tls://host:port"),
        ('nats = ["nats://a"]\n', "cluster.nats: missing port"),
        ('nats = ["nats://u:p@a:4222"]\n', "cluster.nats: must not contain user info"),
        ('nats = ["nats://a:4222"]\nnode = "a b"\n', "cluster.node: expected a node name"),
        ('nats = ["nats://a:4222"]\nreplicas = 6\n', "cluster.replicas: must be 1..5"),
        ('nats = ["nats://a:4222"]\nlease_ttl = 0.5\n', "cluster.lease_ttl: must be at least 1 s"),
        ('nats = ["nats://a:4222"]\nlease_ttl = "15"\n', "cluster.lease_ttl: expected a number"),
        ('nats = ["nats://a:4222"]\nclock_skew_margin = -1\n', "cluster.clock_skew_margin: must be >= 0"),
        (
            'nats = ["nats://a:4222"]\nlease_tll = 3\n',
            "cluster.lease_tll: unknown key (did you mean 'lease_ttl'?)",
        ),
        ('nats = ["nats://a:4222"]\ntoken = "x"\n', "cluster.token: unknown key (use token_env)"),
        (
            'nats = ["nats://a:4222"]\ntoken_env = "MISSING"\n',
            "cluster.token_env: environment variable MISSING is not set",
        ),
        ('nats = ["nats://a:4222"]\nuser = "u"\n', "cluster.user: needs password_env"),
        ('nats = ["nats://a:4222"]\npassword_env = "NATS_PW"\n', "cluster.password_env: needs user"),
        (
            'nats = ["nats://a:4222"]\ntoken_env = "NATS_TOKEN"\nuser = "u"\npassword_env = "NATS_PW"\n',
            "cluster: set only one of credentials_file, token_env, user + password_env",
        ),
        (
            'nats = ["nats://a:4222"]\ntls_ca = "/nonexistent/ca.pem"\n',
            "cluster.tls_ca: /nonexistent/ca.pem is not a readable file",
        ),
    ],
)
def test_errors_name_the_key(body: str, expected: str) -> None:
    assert expected in error(body)


def test_credentials_file_is_resolved_and_must_exist(tmp_path: Path) -> None:
    creds = tmp_path / "nats.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    got = parse_config(
        BASE + '[cluster]\nnats = ["nats://a:4222"]\ncredentials_file = "nats.creds"\n',
        path=str(tmp_path / "c.toml"),
        environ={},
    ).cluster
    assert got is not None and got.credentials_file == str(creds)
    assert "credentials_file" in error('nats = ["nats://a:4222"]\ncredentials_file = "/nonexistent.creds"\n')
