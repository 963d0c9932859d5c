"""The producer's CPU per trade on its receive path: socket → frame → parse → sequence → sink.put.

`python -m bench.producer_cost [--rate 30000] [--seconds 10] [--pack]` runs the exchange simulator in its own
process (bench/sim_process.py: its CPU is not ours) and, in this process, the producer's `Feed` and
`Sequencer` on 4 `trade` streams, as `python -m producer_service` would, with a sink that only counts ticks (no SQS,
no packing). `--pack` adds the sink's packing (`MessagePacker`: rows, compression; bodies discarded) to see its
share. Prints trades/s received and CPU µs per trade: the whole process (`time.process_time`) and the socket thread
alone.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from bench.common import SYMBOLS
from bench.sim_process import SimulatorProcess
from producer_service.config import ProducerSettings
from producer_service.exchanges.base import script_target
from producer_service.exchanges.binance import ADAPTER as BINANCE
from producer_service.feed import Feed, attempts_limiter
from producer_service.journal import Journal
from producer_service.ledger import GapLedger
from producer_service.rest import RestClient
from producer_service.sequencer import Sequencer
from producer_service.sink import SqsSender, TickSink
from tickstream.db import connect
from tickstream.settings import database_settings
from tickstream.ticks import Tick

KIND = "trade"  # one tick per simulated trade, as the end-to-end bench
WARMUP_SECONDS = 2.0


class CountingSink:
    """What the feed needs of a sink (`put`), keeping only a count: the hot path ends at the hand-off."""

    def __init__(self) -> None:
        self.count = 0

    def put(self, tick: Tick) -> None:
        self.count += 1


class DiscardingSender(SqsSender):
    """An SqsSender that takes every body and sends nothing (for `--pack`)."""

    def __init__(self) -> None:
        super().__init__(client=None, queue_url="")

    def send(self, bodies: list[str]) -> None:
        self.messages += len(bodies)


class PackingSink(CountingSink):
    """The real TickSink (its packer thread included) in front of a discarding sender."""

    def __init__(self, journal_dir: Path) -> None:
        super().__init__()
        defaults = ProducerSettings()
        self.inner = TickSink(DiscardingSender(), Journal(journal_dir, 10**9), defaults.max_message_bytes,
                              defaults.linger_seconds, defaults.buffer_ticks)
        self.inner.start()

    def put(self, tick: Tick) -> None:
        self.count += 1
        self.inner.put(tick)

    def close(self) -> None:
        self.inner.close(replay_seconds=0.0)


def thread_cpu_seconds(thread: threading.Thread) -> float:
    """CPU seconds of one thread of this process (Linux: the pthread's CPU clock)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def socket_threads(feed: Feed) -> list[threading.Thread]:
    return [conn._thread for conn in feed.connections]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        time.sleep(0.05)


def start_feed(sim: SimulatorProcess, sink: CountingSink, stop: threading.Event) -> Feed:
    settings = ProducerSettings()
    simulator = frozenset({"127.0.0.1"})  # EXCHANGE_HOST_ALLOWLIST for the simulator (README: Security)
    rest = RestClient(sim.rest_url, BINANCE.rest_limits, settings.rest_weight_share, stop, allowed_hosts=simulator)
    sequencer = Sequencer(settings.max_backfill_trades)
    feed = Feed("bench", sim.ws_url, BINANCE, rest, settings, cast(TickSink, sink), sequencer,
                attempts_limiter(BINANCE.limits), stop,
                GapLedger(lambda: connect(database_settings(), autocommit=True)), simulator)
    feed.apply([script_target(BINANCE, script_id, symbol, KIND) for script_id, symbol in enumerate(SYMBOLS, start=1)])
    wait_until(lambda: sim.subscribed_streams() == len(SYMBOLS), 30, "the producer did not subscribe")
    return feed


def measure(feed: Feed, sink: CountingSink, seconds: float) -> dict[str, float]:
    """Counts and CPU over `seconds` of steady state (the feed's maintenance runs as in the service)."""
    threads = socket_threads(feed)
    ticks0, wall0, cpu0 = sink.count, time.monotonic(), time.process_time()
    thread0 = sum(thread_cpu_seconds(thread) for thread in threads)
    deadline = wall0 + seconds
    while time.monotonic() < deadline:
        feed.maintain()
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    thread_cpu = sum(thread_cpu_seconds(thread) for thread in threads) - thread0
    ticks = sink.count - ticks0
    per = 1e6 / max(ticks, 1)
    return {"seconds": wall, "trades": ticks, "trades_per_s": ticks / wall, "process_cpu_pct": 100 * cpu / wall,
            "process_us_per_trade": cpu * per, "socket_thread_us_per_trade": thread_cpu * per}


def run(rate: float, seconds: float, pack: bool) -> dict[str, Any]:
    sim = SimulatorProcess(SYMBOLS)
    stop = threading.Event()
    feed: Feed | None = None
    with tempfile.TemporaryDirectory(prefix="producer-cost-") as journal_dir:
        sink = PackingSink(Path(journal_dir)) if pack else CountingSink()
        try:
            feed = start_feed(sim, sink, stop)
            sim.set_rate(rate / len(SYMBOLS))
            time.sleep(WARMUP_SECONDS)
            result: dict[str, Any] = measure(feed, sink, seconds)
            sim.set_rate(0)
            result |= delivery(sim, feed, sink)
            return result
        finally:
            stop.set()
            if feed is not None:
                feed.close()
            if isinstance(sink, PackingSink):
                sink.close()
            sim.stop()


def delivery(sim: SimulatorProcess, feed: Feed, sink: CountingSink) -> dict[str, Any]:
    """Once the exchange is silent: did every emitted trade arrive (nothing dropped, no reconnect)?"""
    emitted = sum(len(sim.emitted(symbol, KIND)) for symbol in SYMBOLS)
    with contextlib.suppress(TimeoutError):  # then the report shows how many are missing
        wait_until(lambda: sink.count >= emitted, 30, "not every emitted trade arrived")
    return {"emitted": emitted, "received": sink.count, "live": sink.count - feed.backfiller.filled,
            "malformed": feed.malformed, "sessions": sum(conn.sessions for conn in feed.connections)}


def report(result: dict[str, Any], rate: float, pack: bool) -> None:
    what = "receive → parse → sequence → put" + (" + packing" if pack else "")
    print(f"producer receive path ({what}), simulator in its own process, {len(SYMBOLS)} symbols, "
          f"target {rate:,.0f} trades/s")
    print(f"  trades/s received     {result['trades_per_s']:>10,.0f}   ({result['trades']:,} in "
          f"{result['seconds']:.1f} s)")
    print(f"  process CPU           {result['process_cpu_pct']:>10.1f} % of one core")
    print(f"  process CPU / trade   {result['process_us_per_trade']:>10.2f} µs")
    print(f"  socket thread / trade {result['socket_thread_us_per_trade']:>10.2f} µs")
    print(f"  delivered             {result['received']:,} of {result['emitted']:,} emitted "
          f"(live {result['live']:,}, malformed {result['malformed']}, sessions {result['sessions']})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.producer_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=30_000.0, help="trades/s over all symbols")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds (after a 2 s warm-up)")
    parser.add_argument("--pack", action="store_true", help="include the sink's packing (MessagePacker)")
    args = parser.parse_args()
    report(run(args.rate, args.seconds, args.pack), args.rate, args.pack)


if __name__ == "__main__":
    main()
