"""The two hot paths in isolation, for profiling: `python -m bench.hotpaths producer|ingest [--profile]`.

- producer: combined-stream frames (as the simulator renders them) → `Feed._on_frames` (one call per frame)
  → Tick → `TickSink` (pack into 64 KiB bodies, SendMessageBatch to a counting stand-in for SQS). No sockets.
- ingest: packed bodies → SQS-shaped batches → the ingest handler in-process → MariaDB (LOAD DATA).

`--profile` runs pyinstrument around it (pip install pyinstrument; not a project dependency).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import SYMBOLS, Stopwatch, rate
from producer_service.config import ProducerSettings
from producer_service.exchanges.base import script_target
from producer_service.exchanges.binance import ADAPTER as BINANCE
from producer_service.feed import Feed
from producer_service.journal import Journal
from producer_service.ledger import GapLedger
from producer_service.pacing import RateLimiter
from producer_service.rest import RestClient
from producer_service.sequencer import Sequencer
from producer_service.sink import SqsSender, TickSink
from simulator.market import Trade
from simulator.protocol import dumps, trade_event
from tickstream.db import connect
from tickstream.settings import database_settings


class CountingSqs:
    """Accepts every SendMessageBatch entry, like a healthy queue; counts requests and bytes."""

    def __init__(self) -> None:
        self.requests = 0
        self.messages = 0
        self.bytes = 0

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:  # noqa: N803
        self.requests += 1
        self.messages += len(Entries)
        self.bytes += sum(len(entry["MessageBody"]) for entry in Entries)
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries]}


def trade_frames(count: int, symbols: tuple[str, ...] = SYMBOLS, first_id: int = 5_000_000) -> list[bytes]:
    """`count` combined-stream `trade` frames, round-robin over the symbols, as the simulator sends them."""
    ms = int(time.time() * 1000)
    frames = []
    for i in range(count):
        symbol = symbols[i % len(symbols)]
        trade = Trade(first_id + i // len(symbols), 9_523_456_000_000 + (i % 977) * 1_000_000, 123_000 + i % 50_000,
                      ms, i % 2)
        frames.append(dumps({"stream": f"{symbol.lower()}@trade", "data": trade_event(symbol, trade, ms)}).encode())
    return frames


@contextlib.contextmanager
def hot_feed(journal_dir: Path) -> Iterator[tuple[Feed, TickSink, CountingSqs]]:
    settings = ProducerSettings(journal_dir=journal_dir)
    sqs = CountingSqs()
    sink = TickSink(SqsSender(sqs, "bench://queue"), Journal(journal_dir, settings.journal_max_bytes),
                    settings.max_message_bytes, settings.linger_seconds, settings.buffer_ticks)
    stop = threading.Event()
    rest = RestClient("http://127.0.0.1:9", stop=stop)  # never called: no gaps in a contiguous tape
    ledger = GapLedger(lambda: connect(database_settings(), autocommit=True))  # as REST: never used here
    feed = Feed("bench", "ws://127.0.0.1:9", BINANCE, rest, settings, sink, Sequencer(), RateLimiter(10, 1.0), stop,
                ledger)
    for script_id, symbol in enumerate(SYMBOLS, start=1):
        target = script_target(BINANCE, script_id, symbol, "trade")
        feed.by_stream[target.stream] = target
    sink.start()
    try:
        yield feed, sink, sqs
    finally:
        stop.set()


def producer_hot_path(frames: list[bytes]) -> dict[str, float]:
    """Ticks/s from frame to SendMessageBatch, the socket reader and the sender thread sharing the GIL."""
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as journal_dir, \
            hot_feed(Path(journal_dir)) as (feed, sink, sqs):
        on_frames = feed._on_frames
        watch, cpu = Stopwatch(), time.process_time()
        for raw in frames:
            on_frames(None, [raw], time.time_ns() // 1000)  # type: ignore[arg-type]
        sink.close(replay_seconds=0)
        seconds, cpu = watch.seconds, time.process_time() - cpu
    return {"frames": len(frames), "ticks": sum(feed.counts.values()), "seconds": seconds,
            "cpu_us_per_tick": cpu * 1e6 / max(1, sum(feed.counts.values())),
            "ticks_per_s": rate(sum(feed.counts.values()), seconds), "send_requests": sqs.requests,
            "messages": sqs.messages, "ticks_per_message": rate(sum(feed.counts.values()), sqs.messages)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpaths", description=__doc__.split("\n")[0])
    parser.add_argument("path", choices=["producer", "ingest"])
    parser.add_argument("--ticks", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true", help="pyinstrument the run and print the call tree")
    args = parser.parse_args()
    if args.path == "producer":
        frames = trade_frames(args.ticks)
        run = lambda: producer_hot_path(frames)  # noqa: E731
    else:
        from bench.ingest import ingest_hot_path

        run = lambda: ingest_hot_path(args.ticks)  # noqa: E731
    if not args.profile:
        print(run())
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    with profiler:
        result = run()
    print(result)
    print(profiler.output_text(unicode=True, color=False, show_all=False, timeline=False))


if __name__ == "__main__":
    main()
