"""Fills gaps from Binance REST by `fromId`, one gap at a time, within the REST weight budget."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from producer_service.rest import BinanceRest, RestBanned, RestError
from producer_service.sequencer import Gap
from tickstream.binance import MalformedPayload, rest_aggtrade_to_tick, rest_trade_to_tick
from tickstream.ticks import Tick

log = logging.getLogger(__name__)
EMPTY_PAGE_RETRIES = 5


@dataclass(frozen=True, slots=True)
class BackfillJob:
    gap: Gap
    symbol: str
    stream_type: str


class Backfiller:
    """A worker thread per REST endpoint; `request(job)` queues a gap, ticks go to `emit`. The thread ends once
    `stop` is set (its feed closed, or the producer stops); `close()` sets it and waits for the thread."""

    def __init__(self, rest: BinanceRest, emit: Callable[[Tick], None], max_trades: int,
                 stop: threading.Event) -> None:
        self.rest = rest
        self.emit = emit
        self.max_trades = max_trades
        self.stop = stop
        self.filled = 0
        self.unfilled: list[Gap] = []  # reported loudly; kept for /stats and tests
        self._jobs: queue.Queue[BackfillJob] = queue.Queue()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backfill", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self, job: BackfillJob) -> None:
        if job.gap.size > self.max_trades:
            log.error("%s: gap of %d trades (ids %d..%d) exceeds PRODUCER_MAX_BACKFILL_TRADES=%d; not fetched",
                      job.symbol, job.gap.size, job.gap.first_id, job.gap.last_id, self.max_trades)
            self.unfilled.append(job.gap)
            return
        self._jobs.put(job)

    def idle(self) -> bool:
        return self._jobs.empty() and not self._busy.is_set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread: a REST wait or a full sink returns at once, a request in flight within its timeout.
        What it had not fetched yet is found again by whoever resumes the script (stored ids and holes)."""
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            self._busy.set()
            try:
                self._fill(job)
            except InterruptedError:
                log.info("%s: backfill of ids %d..%d stopped (feed closed or producer stopping)", job.symbol,
                         job.gap.first_id, job.gap.last_id)
            except (RestBanned, RestError, OSError) as error:
                log.error("%s: backfill of ids %d..%d failed: %s", job.symbol, job.gap.first_id, job.gap.last_id,
                          error)
                self.unfilled.append(job.gap)
            finally:
                self._busy.clear()

    def _fill(self, job: BackfillJob) -> None:
        started, gap, next_id, fetched, empty_pages = time.monotonic(), job.gap, job.gap.first_id, 0, 0
        while next_id <= gap.last_id and not self.stop.is_set():
            ticks = self._page(job, next_id)
            if not ticks:
                empty_pages += 1
                if empty_pages > EMPTY_PAGE_RETRIES:
                    raise RestError(200, None, f"REST has no trades from id {next_id}")
                self.stop.wait(0.5 * empty_pages)
                continue
            for tick in ticks:
                if tick.trade_id > gap.last_id:
                    break
                if tick.trade_id >= next_id:
                    self.emit(tick)
                    fetched += 1
            next_id = ticks[-1].trade_id + 1
        self.filled += fetched
        log.info("%s: backfilled %s trades (ids %d..%d) in %.1f s", job.symbol, f"{fetched:,}", gap.first_id,
                 gap.last_id, time.monotonic() - started)

    def _page(self, job: BackfillJob, from_id: int) -> list[Tick]:
        received_us = time.time_ns() // 1000
        if job.stream_type == "trade":
            items, convert = self.rest.historical_trades(job.symbol, from_id), rest_trade_to_tick
        else:
            items, convert = self.rest.agg_trades(job.symbol, from_id), rest_aggtrade_to_tick
        ticks = []
        for item in items:
            try:
                ticks.append(convert(item, job.gap.script_id, received_us))
            except MalformedPayload as error:
                log.warning("%s: skipping malformed REST item %r: %s", job.symbol, str(item)[:200], error)
        return ticks
