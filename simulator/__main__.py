"""Command line: `python -m simulator --port 9443 --rest-port 9444 --symbols BTCUSDT,ETHUSDT --rate 50`.

Several venues from one process: `python -m simulator --venue binance=9443 --venue okx=9450 --venue
binance_usdm=9451` (each serves WebSocket and REST on its port, with its own market and its own limits).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from simulator.config import SimulatorConfig
from simulator.core import Endpoints, SimulatorCore
from simulator.venues import VENUES, config_for

log = logging.getLogger("simulator")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulator", description="Run the exchange simulator.")
    add = p.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--venue", action="append", default=[], metavar="VENUE=PORT",
        help=f"serve VENUE ({', '.join(VENUES)}) on PORT (WebSocket and REST); repeatable. Without it: "
        "binance on --port/--rest-port")  # fmt: skip
    add("--port", type=int, default=9443, help="WebSocket port (REST too unless --rest-port); 0 picks one")
    add("--rest-port", type=int, default=None, help="separate REST port; 0 picks one")
    add("--symbols", default="BTCUSDT,ETHUSDT,PEPEUSDT", help="comma-separated symbols")
    add("--rate", type=float, default=50.0, help="trades per second per symbol")
    add("--seed", type=int, default=1)
    add("--agg-start-id", type=int, default=1_000_000)
    add("--trade-start-id", type=int, default=5_000_000)
    add("--history-limit", type=int, default=1_000_000, help="trades remembered per symbol and kind")
    add("--ping-interval", type=float, default=None, help="seconds between server pings (default: the venue's)")
    add("--pong-timeout", type=float, default=None, help="seconds a ping may stay unanswered (default: the venue's)")
    add("--lifetime", type=float, default=24 * 3600.0, help="maximum connection lifetime in seconds")
    add("--max-incoming", type=int, default=None, help="incoming messages/s per connection; 0 = no limit")
    add("--max-streams", type=int, default=1024)
    add("--weight-limit", type=int, default=None, help="REST request weight per window (default: the venue's)")
    add("--weight-window", type=float, default=None, help="REST weight window in seconds (default: the venue's)")
    add("--ban-after", type=int, default=None, help="requests ignoring a 429 before a 418 ban; 0 = never")
    add("--ban-seconds", type=float, default=120.0)
    add("--skip", type=float, default=0.0, help="fraction of events withheld from streams (kept in REST)")
    add("--duplicate", type=float, default=0.0, help="fraction of events sent twice")
    add("--malformed", type=float, default=0.0, help="fraction of events preceded by a bad frame")
    add("--drop-every", type=float, default=None, help="abruptly drop all connections every N s")
    add("--pause-every", type=float, default=None, help="pause data every N s ...")
    add("--pause-for", type=float, default=5.0, help="... for this many seconds")
    add("--shutdown-every", type=float, default=None, help="announce serverShutdown every N s")
    add("--shutdown-delay", type=float, default=2.0, help="seconds from serverShutdown to the close")
    add("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace, venue: str = "binance", port: int | None = None) -> SimulatorConfig:
    """The config of one venue: its own defaults, then every option given on the command line."""
    options = dict(
        symbols=tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()),
        rate=args.rate, seed=args.seed, host=args.host, port=args.port if port is None else port,
        rest_port=args.rest_port if port is None else None,
        agg_start_id=args.agg_start_id, trade_start_id=args.trade_start_id, history_limit=args.history_limit,
        ping_interval=args.ping_interval, pong_timeout=args.pong_timeout, max_lifetime=args.lifetime,
        max_streams=args.max_streams, weight_limit=args.weight_limit, weight_window=args.weight_window,
        ban_seconds=args.ban_seconds,
        skip_fraction=args.skip, duplicate_fraction=args.duplicate, malformed_fraction=args.malformed,
        drop_every=args.drop_every, pause_every=args.pause_every, pause_for=args.pause_for,
        shutdown_every=args.shutdown_every, shutdown_delay=args.shutdown_delay,
    )  # fmt: skip
    given = {name: value for name, value in options.items() if value is not None}
    if args.max_incoming is not None:
        given["max_incoming_per_sec"] = args.max_incoming or None
    if args.ban_after is not None:
        given["ban_after_429"] = args.ban_after or None
    return config_for(venue, **given)


def configs_from_args(args: argparse.Namespace) -> list[SimulatorConfig]:
    if not args.venue:
        return [config_from_args(args)]
    configs = []
    for spec in args.venue:
        name, _, port = spec.partition("=")
        if name not in VENUES or not port.isdigit():
            raise SystemExit(f"--venue {spec!r}: expected VENUE=PORT with VENUE one of {', '.join(VENUES)}")
        configs.append(config_from_args(args, name, int(port)))
    return configs


async def run(configs: list[SimulatorConfig]) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    def ready(config: SimulatorConfig, endpoints: Endpoints) -> None:
        log.info(
            "exchange simulator listening: %s  websocket %s  rest %s  symbols %s  rate %g trades/s per symbol",
            config.venue, endpoints.ws_url, endpoints.rest_url, ",".join(config.symbols), config.rate,
        )  # fmt: skip

    await asyncio.gather(*(SimulatorCore(c).serve(lambda e, c=c: ready(c, e), stop) for c in configs))
    log.info("exchange simulator stopped")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    asyncio.run(run(configs_from_args(args)))


if __name__ == "__main__":
    main()
