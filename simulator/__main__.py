"""Command line: `python -m simulator --port 9443 --rest-port 9444 --symbols BTCUSDT,ETHUSDT --rate 50`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from simulator.config import SimulatorConfig
from simulator.core import Endpoints, SimulatorCore

log = logging.getLogger("simulator")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulator", description="Run the exchange simulator.")
    add = p.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=9443, help="WebSocket port (REST too unless --rest-port); 0 picks one")
    add("--rest-port", type=int, default=None, help="separate REST port; 0 picks one")
    add("--symbols", default="BTCUSDT,ETHUSDT,PEPEUSDT", help="comma-separated symbols")
    add("--rate", type=float, default=50.0, help="trades per second per symbol")
    add("--seed", type=int, default=1)
    add("--agg-start-id", type=int, default=1_000_000)
    add("--trade-start-id", type=int, default=5_000_000)
    add("--history-limit", type=int, default=1_000_000, help="trades remembered per symbol and kind")
    add("--ping-interval", type=float, default=20.0, help="seconds between server pings")
    add("--pong-timeout", type=float, default=60.0, help="seconds a ping may stay unanswered")
    add("--lifetime", type=float, default=24 * 3600.0, help="maximum connection lifetime in seconds")
    add("--max-incoming", type=int, default=5, help="incoming messages/s per connection; 0 = no limit")
    add("--max-streams", type=int, default=1024)
    add("--weight-limit", type=int, default=6000, help="REST request weight per window")
    add("--weight-window", type=float, default=60.0, help="REST weight window in seconds")
    add("--ban-after", type=int, default=5, help="requests ignoring a 429 before a 418 ban; 0 = never")
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


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    return SimulatorConfig(
        symbols=tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()),
        rate=args.rate, seed=args.seed, host=args.host, port=args.port, rest_port=args.rest_port,
        agg_start_id=args.agg_start_id, trade_start_id=args.trade_start_id, history_limit=args.history_limit,
        ping_interval=args.ping_interval, pong_timeout=args.pong_timeout, max_lifetime=args.lifetime,
        max_incoming_per_sec=args.max_incoming or None, max_streams=args.max_streams,
        weight_limit=args.weight_limit, weight_window=args.weight_window,
        ban_after_429=args.ban_after or None, ban_seconds=args.ban_seconds,
        skip_fraction=args.skip, duplicate_fraction=args.duplicate, malformed_fraction=args.malformed,
        drop_every=args.drop_every, pause_every=args.pause_every, pause_for=args.pause_for,
        shutdown_every=args.shutdown_every, shutdown_delay=args.shutdown_delay,
    )  # fmt: skip


async def run(config: SimulatorConfig) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    def ready(endpoints: Endpoints) -> None:
        log.info(
            "exchange simulator listening: websocket %s  rest %s  symbols %s  rate %g trades/s per symbol",
            endpoints.ws_url, endpoints.rest_url, ",".join(config.symbols), config.rate,
        )  # fmt: skip

    await SimulatorCore(config).serve(ready, stop)
    log.info("exchange simulator stopped")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    asyncio.run(run(config_from_args(args)))


if __name__ == "__main__":
    main()
