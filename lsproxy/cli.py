"""Command line: run / check / reload / simulate / --version, and the operator
commands of ``cli_admin.py`` (token, status, cursor). ``main(argv) -> exit status``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

import trio

from lsproxy import __version__, cli_admin, simulator
from lsproxy.app import Proxy
from lsproxy.config import Config, load_config
from lsproxy.errors import BindError, ConfigError
from lsproxy.hub.store import StoreError
from lsproxy.hub.store_files import PID_NAME, read_pid_file
from lsproxy.log_format import extra_fields, make_formatter
from lsproxy.secret import redact
from lsproxy.simulator import SimSettings
from lsproxy.tls_files import TlsFileError

log = logging.getLogger("lsproxy")
sim_log = logging.getLogger("lsproxy.simulator")
# Marks the simulator's lines where they interleave with the proxy's (scripts/demo).
SIMULATOR_LOG_PREFIX = "[simulator] "


class _RedactSecrets(logging.Filter):
    """Second line of defence: no secret the process holds (``lsproxy.secret.redact``)
    reaches a log line, whatever logged it and whatever it quoted. Text from outside is
    redacted where it enters already; this catches what a bug or a traceback lets by."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in extra_fields(record).items():  # structured fields (JSON lines)
            if isinstance(value, str) and (clean := redact(value)) != value:
                setattr(record, key, clean)
        return True


def configure_logging(level: str, *, prefix: str = "", log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format, prefix))
    handler.addFilter(_RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request line at INFO; ours say more, and say it once.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


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
    cli_admin.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in cli_admin.COMMANDS:
        return cli_admin.run(args)
    if args.command == "simulate":
        configure_logging(args.log_level, prefix=SIMULATOR_LOG_PREFIX, log_format=args.log_format)
        try:
            return trio.run(_run_simulator, simulator.settings_from_args(args))
        except* simulator.SimulatorBindError as group:
            sim_log.error("%s", _first_leaf(group))
        return 1
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"lsproxy: configuration error: {exc}", file=sys.stderr)
        return 1
    if args.command == "check":
        return _check(config)
    if args.command == "reload":
        return _signal_running_proxy(config)
    configure_logging(args.log_level, log_format=args.log_format or config.server.log_format)
    for warning in config.warnings:
        log.warning("%s", warning)
    try:
        proxy = Proxy(config)
    except TlsFileError as exc:  # the files changed since the config was checked
        log.error("%s: server.%s: %s", config.path, exc.which, exc.problem)
        return 1
    try:
        return trio.run(_serve_proxy, proxy, args.config)
    except* (BindError, StoreError) as group:
        log.error("%s", _first_leaf(group))
    return 1


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
    scheme = "https" if config.server.tls_cert else "http"
    print(f"consumers connect to {scheme}://{host}:{config.server.port}")
    if config.server.tls_cert:
        print(f"TLS: {config.server.tls_cert} (key {config.server.tls_key})")
    for consumer in config.consumers:
        streams = ", ".join(sorted(consumer.streams)) if consumer.streams is not None else "every stream"
        admin = ", admin" if consumer.admin else ""
        print(f"consumer {consumer.name}: {streams}{admin} (token: {consumer.source})")
    if not config.consumers:
        print("consumers are not authenticated (no [consumers] tables)")
    for stream in config.streams:
        print(f"stream {stream.name}: upstream {stream.url} (credentials: {stream.credentials.source})")
        for key in stream.route_keys:
            print(f"  /api/1/stream/{key}  /api/2/stream/{key}")
    for warning in config.warnings:
        print(f"warning: {warning}")
    return 0


async def _serve_proxy(proxy: Proxy, config_path: str) -> int:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signal, proxy.request_shutdown, log)
        nursery.start_soon(_reload_on_sighup, proxy, config_path)
        await proxy.run()
        nursery.cancel_scope.cancel()
    log.info("stopped")
    return 0


async def _reload_on_sighup(proxy: Proxy, config_path: str) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("received SIGHUP: reloading %s", config_path)
            try:
                # Reading and validating the file (up to 1 MiB): off the event loop.
                config = await trio.to_thread.run_sync(load_config, config_path, abandon_on_cancel=True)
            except ConfigError as exc:
                log.error("config reload rejected, the running config stays: %s", exc)
                continue
            for warning in config.warnings:
                log.warning("%s", warning)
            changes = await proxy.reload(config)
            for change in changes or ["nothing changed"]:
                log.info("reload: %s", change)


async def _run_simulator(settings: SimSettings) -> int:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signal, nursery.cancel_scope.cancel, sim_log)
        await simulator.run(settings)
    return 0


async def _on_signal(stop: Callable[[], object], logger: logging.Logger) -> None:
    """SIGINT/SIGTERM ask for a graceful stop; a later one is handled the same way and
    logged at DEBUG only (scripts/demo forwards the Ctrl-C a terminal already delivered)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        level = logging.INFO
        async for signum in signals:
            logger.log(level, "received %s", signal.Signals(signum).name)
            level = logging.DEBUG
            stop()
