"""`python -m producer_service [--broker-id N ...]`: run the producer until SIGTERM / Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from producer_service.config import ProducerSettings, broker_ids_from_env
from producer_service.service import build_service
from tickstream.settings import load_settings

log = logging.getLogger("producer_service")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m producer_service", description=__doc__)
    parser.add_argument("--broker-id", type=int, action="append", dest="broker_ids",
                        help="collect only this broker (repeatable); default: BROKER_ID, else all active brokers")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker_ids = args.broker_ids or broker_ids_from_env()
    service = build_service(load_settings(), ProducerSettings.from_env(), broker_ids)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping (flushing buffers and journal)", signal.Signals(signum).name)
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("producer starting for %s", f"brokers {broker_ids}" if broker_ids else "all active brokers")
    try:
        service.run()
    finally:
        service.close()
        log.info("producer stopped")


if __name__ == "__main__":
    main()
