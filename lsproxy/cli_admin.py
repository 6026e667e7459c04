"""Operator commands: ``token new``, ``status`` and ``cursor ...``, clients of the admin API.

``status`` and ``cursor`` find the proxy through its config file (the
``[server]`` table only: listen address and TLS files; the credentials'
environment is not needed) or a URL. With ``--config`` and TLS, the configured
certificate itself is the only one trusted (it is pinned, so the certificate
may name the public host while the command connects to the listen address).
The admin token comes from an environment variable, never from the command
line (where ``ps`` would show it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from lsproxy.config import load_server_config
from lsproxy.config_consumers import CONSUMER_NAME
from lsproxy.errors import ConfigError

COMMANDS = ("token", "status", "cursor")
DEFAULT_TOKEN_ENV = "LSPROXY_TOKEN"
TIMEOUT = 10.0


class CommandError(Exception):
    """One line for stderr; exit status 1."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="make a consumer token")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    new = token_commands.add_parser(
        "new", help="print a fresh random token and the [consumers.NAME] table to paste into the config"
    )
    new.add_argument("name", metavar="NAME", help="the consumer table's name (it prefixes its cursor names)")

    status = commands.add_parser("status", help="streams and consumers as a table (admin API)")
    _connection_arguments(status)

    cursor = commands.add_parser("cursor", help="list, move or delete consumer cursors (admin API)")
    cursor_commands = cursor.add_subparsers(dest="cursor_command", required=True, metavar="COMMAND")
    listing = cursor_commands.add_parser("list", help="every consumer's cursor and lag")
    listing.add_argument("stream", nargs="?", metavar="STREAM", help="only this stream")
    _connection_arguments(listing)
    move = cursor_commands.add_parser("set", help="move a cursor (a connected consumer resumes there)")
    move.add_argument("stream", metavar="STREAM", help="the stream's route")
    move.add_argument("consumer", metavar="CONSUMER", help="the cursor's full name (team/id with auth on)")
    where = move.add_mutually_exclusive_group(required=True)
    where.add_argument("--offset", type=int, metavar="N", help="a record offset")
    where.add_argument("--since", metavar="TIME", help="unix seconds or ISO-8601 with a zone")
    where.add_argument("--reset", choices=["smallest", "largest"], help="the oldest record or the live tail")
    _connection_arguments(move)
    delete = cursor_commands.add_parser("delete", help="forget a cursor")
    delete.add_argument("stream", metavar="STREAM", help="the stream's route")
    delete.add_argument("consumer", metavar="CONSUMER", help="the cursor's full name")
    _connection_arguments(delete)


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="PATH", help="the proxy's config file (its [server] table)")
    where.add_argument("--url", metavar="URL", help="the proxy's base URL, e.g. https://proxy.example:8443")
    parser.add_argument(
        "--token-env",
        metavar="VAR",
        help=f"environment variable holding an admin token (default: {DEFAULT_TOKEN_ENV}, if set)",
    )
    parser.add_argument("--cacert", metavar="PATH", help="with --url: CA certificates to trust (PEM)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "token":
            return _token_new(args.name)
        client = _client(args)
        with client:
            if args.command == "status":
                return _status(client)
            if args.cursor_command == "list":
                return _cursor_list(client, args.stream)
            if args.cursor_command == "set":
                return _cursor_set(client, args)
            return _cursor_delete(client, args)
    except CommandError as exc:
        print(f"lsproxy: {exc}", file=sys.stderr)
        return 1


# -- token new ----------------------------------------------------------------


def _token_new(name: str) -> int:
    if not CONSUMER_NAME.fullmatch(name):
        raise CommandError(f"{name!r}: a consumer name is 1-64 letters, digits, '.', '_' or '-'")
    token = secrets.token_urlsafe(32)  # 256 random bits
    digest = hashlib.sha256(token.encode()).hexdigest()
    print(f"# the token for consumer {name!r}: shown once, lsproxy keeps only its SHA-256")
    print(token)
    print()
    print("# add this table to the config, then reload it (lsproxy reload --config PATH)")
    print(f"[consumers.{name}]")
    print(f'token_sha256 = "{digest}"')
    print('# streams = ["<route>"]       # default: every stream')
    print("# admin = true                # the admin API, and every stream in /status")
    return 0


# -- talking to the admin API -----------------------------------------------------


def _client(args: argparse.Namespace) -> httpx.Client:
    verify: ssl.SSLContext | str | bool = True
    if args.url is not None:
        if not re.match(r"https?://", args.url):
            raise CommandError(f"--url {args.url!r}: expected http://HOST:PORT or https://HOST:PORT")
        base = args.url.rstrip("/")
        if args.cacert is not None:
            verify = ssl.create_default_context(cafile=args.cacert)
    else:
        try:
            server = load_server_config(args.config)
        except ConfigError as exc:
            raise CommandError(f"configuration error: {exc}") from None
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(server.host, server.host)
        host = f"[{host}]" if ":" in host else host
        base = f"{'https' if server.tls_cert else 'http'}://{host}:{server.port}"
        if server.tls_cert is not None:
            verify = _pinned(server.tls_cert)
    headers = {"accept": "application/json"}
    variable = args.token_env or DEFAULT_TOKEN_ENV
    token = os.environ.get(variable)
    if token is None and args.token_env is not None:
        raise CommandError(f"--token-env {variable}: the environment variable is not set")
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=base, headers=headers, verify=verify, timeout=TIMEOUT, trust_env=False)


def _pinned(cert_file: str) -> ssl.SSLContext:
    """Trust exactly the configured (leaf) certificate, whatever host name it carries."""
    with open(cert_file) as f:
        match = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", f.read(), re.S)
    if match is None:
        raise CommandError(f"{cert_file}: no PEM certificate")
    context = ssl.create_default_context(cadata=match.group(0))
    context.check_hostname = False  # the pin is the check: we connect to the listen address
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the trust anchor
    return context


def _call(client: httpx.Client, method: str, path: str, body: Any = None) -> dict[str, Any]:
    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach the proxy at {client.base_url}: {exc}") from None
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise CommandError(f"{method} {path}: unexpected answer {response.status_code} from {client.base_url}")
    if response.status_code >= 400:
        description = payload.get("error_description") or payload.get("error") or "error"
        hint = ""
        if response.status_code in (401, 403) and "authorization" not in client.headers:
            hint = f" (set {DEFAULT_TOKEN_ENV} to an admin token, or name its variable with --token-env)"
        raise CommandError(f"{response.status_code}: {description}{hint}")
    return payload


def _consumer_path(stream: str, consumer: str) -> str:
    return f"/admin/streams/{quote(stream, safe='')}/consumers/{quote(consumer, safe='')}"


# -- status, cursor -----------------------------------------------------------------


def _status(client: httpx.Client) -> int:
    streams = _call(client, "GET", "/admin/streams")["streams"]
    rows = [("STREAM", "STATE", "RATE/S", "RECORDS", "NEXT ATTEMPT", "CONSUMERS", "LAST ERROR")]
    for name, s in streams.items():
        error = s.get("last_error") or {}
        rows.append((
            name,
            s["state"] if len(s["connections"]) < 2 else f"{s['state']} ({', '.join(s['connections'])})",
            f"{s['rate']:.1f}",
            str(s["records_received"]),
            "-" if s["next_attempt_in"] is None else f"in {s['next_attempt_in']:.1f} s",
            f"{s['consumers_connected']}/{s['consumers']} connected",
            (error.get("error") or "-") if s["state"] != "streaming" else "-",
        ))  # fmt: skip
    print(_table(rows))
    print()
    return _cursor_list(client, None)


def _cursor_list(client: httpx.Client, only: str | None) -> int:
    streams = _call(client, "GET", "/admin/consumers")["streams"]
    if only is not None and only not in streams:
        raise CommandError(f"no stream named {only!r} (known: {', '.join(streams) or 'none'})")
    now = time.time()
    rows = [("STREAM", "CONSUMER", "CONNECTED", "CURSOR", "LAG", "LAG S", "SKIPPED", "LAST SEEN")]
    for name, s in streams.items():
        if only is not None and name != only:
            continue
        for c in s["consumers"]:
            seen = c["last_seen"]
            rows.append((
                name,
                c["id"] or "(anonymous)",
                "yes" if c["connected"] else "no",
                str(c["cursor"]),
                str(c["lag"]),
                "-" if c["lag_seconds"] is None else f"{c['lag_seconds']:.1f}",
                str(c["skipped"]),
                "now" if c["connected"] else "-" if seen is None else f"{max(0.0, now - seen):.0f} s ago",
            ))  # fmt: skip
    print(_table(rows))
    return 0


def _cursor_set(client: httpx.Client, args: argparse.Namespace) -> int:
    if args.offset is not None:
        body: dict[str, Any] = {"offset": args.offset}
    elif args.since is not None:
        body = {"since": args.since}
    else:
        body = {"reset": args.reset}
    answer = _call(client, "POST", _consumer_path(args.stream, args.consumer) + "/cursor", body)
    was = "new cursor" if answer["previous"] is None else f"was {answer['previous']}"
    ended = "; its connection was ended, the consumer resumes there" if answer["connection_ended"] else ""
    print(f"stream {answer['stream']}: cursor {answer['consumer']} at {answer['position']} ({was}){ended}")
    return 0


def _cursor_delete(client: httpx.Client, args: argparse.Namespace) -> int:
    answer = _call(client, "DELETE", _consumer_path(args.stream, args.consumer))
    ended = "; its connection was ended" if answer["connection_ended"] else ""
    print(f"stream {answer['stream']}: cursor {answer['consumer']} deleted{ended}")
    return 0


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
