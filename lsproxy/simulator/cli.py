"""Flags and entry point of ``lsproxy simulate``."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from lsproxy.simulator.server import Simulator
from lsproxy.simulator.settings import SimSettings, SimStream

log = logging.getLogger("lsproxy.simulator")

DEFAULT_LISTEN = ("127.0.0.1", 8090)
LOG_STREAMS = 5


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8090`` for IPv6; a bare ``:PORT`` means 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or DEFAULT_LISTEN[0]
    return host, int(port)


def parse_stream(text: str) -> SimStream:
    """``ENDPOINT[:RATE[:SUITE]]``."""
    parts = text.split(":")
    if not parts[0] or len(parts) > 3:
        raise argparse.ArgumentTypeError(f"expected ENDPOINT[:RATE[:SUITE]], got {text!r}")
    if "/" in parts[0] or "?" in parts[0]:
        raise argparse.ArgumentTypeError(f"bad endpoint name in {text!r}")
    rate = SimStream(parts[0]).rate
    if len(parts) > 1 and parts[1]:
        try:
            rate = float(parts[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad rate in {text!r}") from None
        if not rate >= 0:  # also rejects nan
            raise argparse.ArgumentTypeError(f"rate must be >= 0 in {text!r}")
    suite = parts[2] if len(parts) > 2 and parts[2] else SimStream(parts[0]).report_suite
    return SimStream(parts[0], suite, rate)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``lsproxy simulate``."""
    d = SimSettings()
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:8090)",
    )
    parser.add_argument(
        "--stream",
        type=parse_stream,
        action="append",
        dest="streams",
        metavar="ENDPOINT[:RATE[:SUITE]]",
        help="a simulated stream, repeatable (default demo-stream:50)",
    )
    parser.add_argument(
        "--token", default=d.token, help=f"the bearer token stream requests must carry (default {d.token})"
    )
    parser.add_argument("--api-key", default=d.api_key, help="required x-api-key (default: not checked)")
    parser.add_argument(
        "--linger",
        type=float,
        default=d.linger,
        help="seconds a closed connection keeps its slot (default 60)",
    )
    parser.add_argument(
        "--resume-window",
        type=float,
        default=d.resume_window,
        help="reconnects within this many seconds resume (default 300)",
    )
    parser.add_argument("--backfill", type=int, default=d.backfill, help="hits re-sent on resume (default 0)")
    parser.add_argument(
        "--redirect", action="store_true", help="answer /api/N/stream/E with a cross-origin 302 to a node URL"
    )
    parser.add_argument(
        "--echo-token",
        action="store_true",
        help="hostile: repeat the bearer token received in 401 bodies and redirect Locations",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="hit content seed (default 1)")
    parser.add_argument(
        "--run-id",
        type=int,
        default=d.run_id,
        metavar="N",
        help="mixed into every hitIdHigh (default: random per start, so a restarted simulator "
        "never repeats the hit ids of an earlier run, as Live Stream never does)",
    )
    parser.add_argument(
        "--oauth-client-id",
        default=d.oauth_client_id,
        metavar="ID",
        help="enable the IMS look-alike at POST /ims/token/v3 for this client id "
        "(needs --oauth-client-secret); stream requests must then send it as x-api-key "
        "unless --api-key says otherwise",
    )
    parser.add_argument(
        "--oauth-client-secret",
        default=d.oauth_client_secret,
        metavar="SECRET",
        help="the client secret the IMS look-alike accepts",
    )
    parser.add_argument(
        "--token-ttl",
        type=_positive_seconds,
        default=d.token_ttl,
        metavar="SECONDS",
        help="lifetime of issued tokens (default 86400; fractions allowed)",
    )


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    host, port = args.listen
    streams = tuple(args.streams) if args.streams else SimSettings().streams
    return SimSettings(
        host=host,
        port=port,
        streams=streams,
        token=args.token,
        api_key=args.api_key,
        linger=args.linger,
        resume_window=args.resume_window,
        backfill=args.backfill,
        redirect=args.redirect,
        echo_token=args.echo_token,
        seed=args.seed,
        run_id=args.run_id,
        oauth_client_id=args.oauth_client_id,
        oauth_client_secret=args.oauth_client_secret,
        token_ttl=args.token_ttl,
    )


async def run(settings: SimSettings) -> None:
    """Serve forever (until cancelled)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    sim = Simulator(settings)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(sim.serve)
        shown = f"[{host}]" if ":" in host else host
        log.info("simulator listening on http://%s:%d", shown, port)
        for s in settings.streams[:LOG_STREAMS]:
            log.info(
                "  stream %s (%s, %g hits/s) at /api/1/stream/%s",
                s.endpoint,
                s.report_suite,
                s.rate,
                s.endpoint,
            )
        if len(settings.streams) > LOG_STREAMS:
            log.info("  ... and %d more streams", len(settings.streams) - LOG_STREAMS)
        if settings.oauth:
            log.info(
                "  IMS token endpoint at http://%s:%d/ims/token/v3 (tokens live %g s)",
                shown,
                port,
                settings.token_ttl,
            )
