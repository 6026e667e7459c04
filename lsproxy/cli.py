"""Command line: run / check / simulate / --version. ``main(argv) -> exit status``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

import trio

from lsproxy import __version__, simulator
from lsproxy.app import Proxy
from lsproxy.config import Config, load_config
from lsproxy.errors import BindError, ConfigError
from lsproxy.hub.store import StoreError
from lsproxy.hub.store_files import PID_NAME, read_pid_file
from lsproxy.log_format import extra_fields, make_formatter
from lsproxy.simulator import SimSettings

log = logging.getLogger("lsproxy")


class _RedactSecrets(logging.Filter):
    """Belt and braces: no configured secret value reaches a log line, whatever logged it."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Sequence[str]) -> None:
        # Too short to mask without mangling every line (and too short to be a real token).
        self.secrets += [s for s in secrets if len(s) >= 6 and s not in self.secrets]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        hit = False
        for secret in self.secrets:
            if secret in message or (record.exc_text and secret in record.exc_text):
                hit = True
                message = message.replace(secret, "***")
                if record.exc_text:
                    record.exc_text = record.exc_text.replace(secret, "***")
        if hit:
            record.msg, record.args = message, None
        for key, value in extra_fields(record).items():  # structured fields (JSON lines)
            if isinstance(value, str) and any(secret in value for secret in self.secrets):
                for secret in self.secrets:
                    value = value.replace(secret, "***")
                setattr(record, key, value)
        return True


def configure_logging(level: str, secrets: Sequence[str] = (), log_format: str = "text") -> _RedactSecrets:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    redact = _RedactSecrets(secrets)
    handler.addFilter(redact)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request line at INFO; ours say more, and say it once.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return redact


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsproxy",
        description="Local fan-out proxy for Adobe Analytics Live Stream.",
    )
    parser.add_argument("--version", action="version", version=f"lsproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("run", "run the proxy"),
        ("check", "validate a config file and print its routes"),
        ("reload", "validate a config file, then make the proxy running with it re-read it (SIGHUP)"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", required=True, metavar="PATH", help="TOML config file")
        sub.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        sub.add_argument(
            "--log-format", choices=["text", "json"], help="log lines as text or JSON (default: [server] log_format)"
        )
    simulate = commands.add_parser("simulate", help="run the built-in Live Stream simulator")
    simulate.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    simulate.add_argument("--log-format", default="text", choices=["text", "json"], help="log lines as text or JSON")
    simulator.add_arguments(simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        configure_logging(args.log_level, log_format=args.log_format)
        return trio.run(_run_simulator, simulator.settings_from_args(args))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"lsproxy: configuration error: {exc}", file=sys.stderr)
        return 1
    if args.command == "check":
        return _check(config)
    if args.command == "reload":
        return _signal_running_proxy(config)
    redact = configure_logging(args.log_level, _secret_values(config), args.log_format or config.server.log_format)
    for warning in config.warnings:
        log.warning("%s", warning)
    proxy = Proxy(config)
    try:
        return trio.run(_serve_proxy, proxy, args.config, redact)
    except* (BindError, StoreError) as group:
        log.error("%s", _first_leaf(group))
    return 1


def _secret_values(config: Config) -> list[str]:
    values = []
    for stream in config.streams:
        creds = stream.credentials
        oauth_secret = creds.oauth.client_secret if creds.oauth else None
        values += [s.reveal() for s in (creds.token, creds.api_key, oauth_secret) if s is not None]
    return values


def _signal_running_proxy(config: Config) -> int:
    where = os.path.join(config.storage.dir, PID_NAME)
    pid = read_pid_file(config.storage.dir)
    if pid is None:
        print(f"lsproxy: no running proxy found through {where}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"lsproxy: cannot signal pid {pid} (from {where}): {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{config.path}: ok; asked lsproxy (pid {pid}) to reload it")
    return 0


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _check(config: Config) -> int:
    print(f"{config.path}: ok")
    host = f"[{config.server.host}]" if ":" in config.server.host else config.server.host
    print(f"consumers connect to http://{host}:{config.server.port}")
    for stream in config.streams:
        print(f"stream {stream.name}: upstream {stream.url} (credentials: {stream.credentials.source})")
        for key in stream.route_keys:
            print(f"  /api/1/stream/{key}  /api/2/stream/{key}")
    for warning in config.warnings:
        print(f"warning: {warning}")
    return 0


async def _serve_proxy(proxy: Proxy, config_path: str, redact: _RedactSecrets) -> int:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signal, proxy.request_shutdown)
        nursery.start_soon(_reload_on_sighup, proxy, config_path, redact)
        await proxy.run()
        nursery.cancel_scope.cancel()
    log.info("stopped")
    return 0


async def _reload_on_sighup(proxy: Proxy, config_path: str, redact: _RedactSecrets) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("received SIGHUP: reloading %s", config_path)
            try:
                config = load_config(config_path)
            except ConfigError as exc:
                log.error("config reload rejected, the running config stays: %s", exc)
                continue
            redact.add(_secret_values(config))
            for warning in config.warnings:
                log.warning("%s", warning)
            changes = await proxy.reload(config)
            for change in changes or ["nothing changed"]:
                log.info("reload: %s", change)


async def _run_simulator(settings: SimSettings) -> int:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signal, nursery.cancel_scope.cancel)
        await simulator.run(settings)
    return 0


async def _on_signal(stop: Callable[[], object]) -> None:
    """SIGINT/SIGTERM ask for a graceful stop; a second one is handled the same way."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            stop()
