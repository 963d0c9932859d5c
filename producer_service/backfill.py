"""Fills gaps from the venue's REST by trade id (the adapter's `backfill_page`), working from the gap ledger, within
the venue's REST budget.

A reported gap is written to the ledger first, then filled page by page. After each page the backfill waits until
the sink has taken it (sent to SQS or journaled) and only then moves the ledger's `next_trade_id` past it: a crash
or kill -9 fetches at most that one page again, and the next start resumes the rest. Transport errors, timeouts,
5xx and 429 are retried with capped exponential backoff for as long as it takes; a gap becomes `unrecoverable`
only when the exchange answers that it has no such trades.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import requests

from producer_service.exchanges.base import ExchangeAdapter
from producer_service.ledger import FILLED, UNRECOVERABLE, GapLedger, LedgerGap
from producer_service.pacing import Backoff
from producer_service.rest import RestBanned, RestClient, RestError
from producer_service.sequencer import Gap
from producer_service.sink import TickSink
from tickstream.db import CONNECTION_ERRORS
from tickstream.ticks import Tick

log = logging.getLogger(__name__)
EMPTY_PAGE_RETRIES = 5
PROGRESS_LOG_SECONDS = 5.0
RETRY_BACKOFF_CAP_SECONDS = 10.0
# Pages one gap may take before the next gap gets its turn (and newly reported gaps are written to the ledger):
# a 500k-id gap must not hold up a few seconds' restart gap of another script for a minute.
PAGES_PER_TURN = 20
# What a retry is for: the network, the exchange being overloaded, or the ledger's database being away.
TRANSIENT_ERRORS = (OSError, requests.RequestException, *CONNECTION_ERRORS)


@dataclass(frozen=True, slots=True)
class BackfillJob:
    gap: Gap
    symbol: str
    stream_type: str
    cause: str = "stream_jump"


@dataclass(frozen=True, slots=True)
class _Claimed:
    row: LedgerGap
    symbol: str
    stream_type: str


class NoSuchTrades(RuntimeError):
    """The exchange's definitive answer: it has no trades from this id (any more)."""


def is_transient(error: RestError) -> bool:
    """Only a 400 is the exchange's final word (e.g. -1121: the symbol is gone); 5xx, 403 (a WAF), 408, 429, a
    refused redirect or an oversized answer may all pass."""
    return error.status != 400


class Backfiller:
    """A worker thread per REST endpoint; `request(job)` reports a gap (from any thread, no I/O), `resume(row)`
    hands over one already in the ledger. Ticks go to the sink; after each page, its taken-marker says when the
    page is delivered. The thread ends once `stop` is set (its feed closed, or the producer stops)."""

    def __init__(self, adapter: ExchangeAdapter, rest: RestClient, sink: TickSink, ledger: GapLedger,
                 stop: threading.Event) -> None:
        self.adapter = adapter
        self.rest = rest
        self.sink = sink
        self.ledger = ledger
        self.stop = stop
        self.filled = 0
        self.unfilled: list[Gap] = []  # unrecoverable: the exchange has no such trades
        self._reported: deque[BackfillJob] = deque()  # not yet in the ledger
        self._claimed: deque[_Claimed] = deque()
        self._busy = threading.Event()
        self._began: dict[int, tuple[float, int]] = {}  # gap id → when this process began it, and its next id then
        self._logged_at = time.monotonic()  # the last progress line
        self._thread = threading.Thread(target=self._run, name="backfill", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self, job: BackfillJob) -> None:
        self._reported.append(job)

    def resume(self, row: LedgerGap, symbol: str, stream_type: str) -> None:
        """Queue a ledger row, unless it is queued already (a script removed and added again)."""
        if all(claimed.row.gap_id != row.gap_id for claimed in list(self._claimed)):
            self._claimed.append(_Claimed(row, symbol, stream_type))

    def progress(self) -> dict[int, tuple[int, int]]:
        """Per script with open gaps: (ids done, ids in all), for the producer status."""
        result: dict[int, tuple[int, int]] = {}
        for claimed in list(self._claimed):  # list() copies atomically (the GIL); rows are replaced as they advance
            row = claimed.row
            done, total = result.get(row.script_id, (0, 0))
            result[row.script_id] = (done + row.next_id - row.first_id, total + row.size)
        return result

    def idle(self) -> bool:
        return not self._reported and not self._claimed and not self._busy.is_set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread: a REST wait or a full sink returns at once, a request in flight within its timeout.
        What it had not fetched stays in the ledger for the next start."""
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = Backoff(base=0.5, cap=RETRY_BACKOFF_CAP_SECONDS)
        while not self.stop.is_set():
            try:
                self._record_reported()
            except TRANSIENT_ERRORS as error:
                log.warning("gap ledger unavailable (%s); gaps wait in memory", error)
                self.stop.wait(backoff.next_delay())
                continue
            if not self._claimed:
                self.stop.wait(0.1)
                continue
            self._busy.set()
            try:
                self._work(self._claimed[0], backoff)
            finally:
                self._busy.clear()

    def _record_reported(self) -> None:
        while self._reported:
            job = self._reported[0]
            for row in self.ledger.record(job.gap.script_id, job.gap.first_id, job.gap.last_id, job.cause):
                self.resume(row, job.symbol, job.stream_type)
            self._reported.popleft()

    def _work(self, claimed: _Claimed, backoff: Backoff) -> None:
        """One attempt at the first claimed gap; it leaves the queue once filled or unrecoverable."""
        row = claimed.row
        try:
            self.ledger.start_filling(row.gap_id)
            if self._fill(claimed):
                self._claimed.popleft()
            else:
                self._claimed.rotate(-1)  # its turn is over: the next gap's, then this one's again
            backoff.reset()
        except InterruptedError:
            log.info("%s: backfill of ids %d..%d stopped (feed closed or producer stopping); the ledger keeps the "
                     "rest", claimed.symbol, row.first_id, row.last_id)
            self._release(row)
        except (NoSuchTrades, RestError) as error:
            if isinstance(error, RestError) and is_transient(error):  # a 5xx after the client's own 429 handling
                self._retry(claimed, error, backoff)
                return
            log.error("%s: ids %d..%d are unrecoverable: %s", claimed.symbol, row.first_id, row.last_id, error)
            self._claimed.popleft()
            self.unfilled.append(Gap(row.script_id, row.first_id, row.last_id))
            self._finish(row, UNRECOVERABLE, str(error))
        except RestBanned as error:  # 418: no REST until restart; the gap waits in the ledger
            log.error("%s: backfill of ids %d..%d paused, REST is banned: %s", claimed.symbol, row.first_id,
                      row.last_id, error)
            self._release(row)
            self.stop.wait(RETRY_BACKOFF_CAP_SECONDS)
        except TRANSIENT_ERRORS as error:
            self._retry(claimed, error, backoff)

    def _retry(self, claimed: _Claimed, error: Exception, backoff: Backoff) -> None:
        delay = backoff.next_delay()
        log.warning("%s: backfill of ids %d..%d failed (%s: %s); retrying in %.1f s", claimed.symbol,
                    claimed.row.first_id, claimed.row.last_id, type(error).__name__, error, delay)
        try:
            self.ledger.failed_attempt(claimed.row.gap_id, f"{type(error).__name__}: {error}")
        except TRANSIENT_ERRORS as ledger_error:
            log.warning("gap ledger unavailable (%s)", ledger_error)
        self.stop.wait(delay)

    def _release(self, row: LedgerGap) -> None:
        try:
            self.ledger.release(row.gap_id)
        except TRANSIENT_ERRORS as error:  # the next start puts a dead producer's `filling` back to pending
            log.warning("gap ledger unavailable (%s)", error)

    def _finish(self, row: LedgerGap, state: str, error: str | None = None) -> None:
        try:
            self.ledger.finish(row.gap_id, state, error)
        except TRANSIENT_ERRORS as ledger_error:
            log.warning("gap ledger unavailable (%s); gap %d stays open and is fetched again on restart",
                        ledger_error, row.gap_id)

    def _fill(self, claimed: _Claimed) -> bool:
        """From the row's `next_id` on, PAGES_PER_TURN pages at most; True once it reached the end. The row in
        `_claimed` is replaced as it advances, so a retry or the next turn continues after the last page taken."""
        row = claimed.row
        started, at_start = self._began.setdefault(row.gap_id, (time.monotonic(), row.next_id))
        next_id, filled, empty_pages, pages = row.next_id, row.trades_filled, 0, 0
        while next_id <= row.last_id:
            if self.stop.is_set():
                raise InterruptedError("stopping")
            if pages == PAGES_PER_TURN:
                if self._claimed_others():
                    return False
                pages = 0
            pages += 1
            ticks = self._page(claimed, next_id)
            if not ticks:
                empty_pages += 1
                if empty_pages > EMPTY_PAGE_RETRIES:
                    raise NoSuchTrades(f"REST has no trades from id {next_id}")
                self.stop.wait(0.5 * empty_pages)
                continue
            page = [tick for tick in ticks if next_id <= tick.trade_id <= row.last_id]
            for tick in page:
                self.sink.put(tick, self.stop)
            self._wait_taken()
            page_start, next_id = next_id, min(ticks[-1].trade_id, row.last_id) + 1
            filled += len(page)
            if ticks[0].trade_id > page_start:
                log.error("%s: REST has no trades %d..%d any more (its history starts later); skipped",
                          claimed.symbol, page_start, ticks[0].trade_id - 1)
            self._advance(claimed, next_id, filled, len(page))  # first: a ledger error's retry goes on from here
            claimed = self._claimed[0]
            self.ledger.progress(row.gap_id, next_id, filled)
            if time.monotonic() - self._logged_at >= PROGRESS_LOG_SECONDS:
                self._logged_at = time.monotonic()
                _log_progress(claimed.symbol, row, next_id, (next_id - at_start) / (self._logged_at - started))
        self.ledger.finish(row.gap_id, FILLED)
        del self._began[row.gap_id]
        log.info("%s: backfilled %s trades (ids %d..%d) in %.1f s", claimed.symbol, f"{next_id - at_start:,}",
                 at_start, row.last_id, time.monotonic() - started)
        return True

    def _claimed_others(self) -> bool:
        """Another gap waits, or a new one was reported (it is written to the ledger before this one goes on)."""
        return len(self._claimed) > 1 or bool(self._reported)

    def _wait_taken(self) -> None:
        taken = self.sink.put_taken_marker(self.stop)
        while not taken.wait(0.2):
            if self.stop.is_set():
                raise InterruptedError("stopping")

    def _advance(self, claimed: _Claimed, next_id: int, filled: int, page_size: int) -> None:
        row = claimed.row
        self._claimed[0] = _Claimed(LedgerGap(row.gap_id, row.script_id, row.first_id, row.last_id, next_id, filled,
                                              row.cause), claimed.symbol, claimed.stream_type)
        self.filled += page_size

    def _page(self, claimed: _Claimed, from_id: int) -> list[Tick]:
        page = self.adapter.backfill_page(self.rest, claimed.row.script_id, claimed.symbol, claimed.stream_type,
                                          from_id, self.adapter.rest_limits.page_size, time.time_ns() // 1000)
        for sample, why in page.rejected:
            log.warning("%s: skipping malformed REST item %r: %s", claimed.symbol, sample, why)
        return page.ticks


def _log_progress(symbol: str, row: LedgerGap, next_id: int, rate: float) -> None:
    done = next_id - row.first_id
    eta = (row.last_id + 1 - next_id) / rate if rate > 0 else float("inf")
    log.info("%s: backfilling ids %s..%s: %s / %s (%.0f %%), %s trades/s, ETA %.0f s", symbol, f"{row.first_id:,}",
             f"{row.last_id:,}", f"{done:,}", f"{row.size:,}", 100 * done / row.size, _short(rate), eta)


def _short(rate: float) -> str:
    return f"{rate / 1000:.0f}k" if rate >= 10_000 else f"{rate:,.0f}"
