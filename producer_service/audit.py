"""The completeness audit: after subscribing, in the background, find what is missing below the resume point.

The ingest keeps `tick_coverage` (per script per UTC day: stored rows, first/last id). With contiguous ids a day is
incomplete when last − first + 1 > stored, and two consecutive days must meet (a day's first id follows the previous
day's last). Only incomplete days are scanned, by primary-key range, so the cost follows what is missing, not the
table. Missing ranges the ledger does not know yet go into it (cause `audit`) and are backfilled like any gap.

The read side (which days are incomplete, which ids a range misses) is tickstream.coverage's, shared with the API;
`audit_script` takes the two queries as callables.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pymysql

from producer_service.backfill import TRANSIENT_ERRORS, Backfiller, BackfillJob
from producer_service.ledger import GapLedger, subtract
from producer_service.sequencer import Gap
from tickstream import coverage

log = logging.getLogger(__name__)
IdRange = tuple[int, int]


def incomplete_ranges(conn: pymysql.Connection, script_id: int, up_to_id: int) -> list[IdRange]:
    """Id ranges (first, last) at or below `up_to_id` that coverage says are not all stored: the span of each
    incomplete day, and the ids between two days that do not meet. O(days of the script), tick_coverage only."""
    spans = [(day.first_trade_id, day.last_trade_id) for day in coverage.incomplete_days(conn, script_id)]
    spans += coverage.boundary_gaps(conn, script_id)
    return sorted((first, min(last, up_to_id)) for first, last in spans if first <= up_to_id)


def missing_ranges(conn: pymysql.Connection, script_id: int, first_id: int, last_id: int) -> list[IdRange]:
    """The ids of [first_id, last_id] not in `ticks`, as ranges: tickstream.coverage's keyset walk of the primary
    key in bounded chunks."""
    return list(coverage.missing_ranges(conn, script_id, first_id, last_id))


def _joined(ranges: list[IdRange]) -> list[IdRange]:
    joined: list[IdRange] = []
    for first, last in ranges:
        if joined and first == joined[-1][1] + 1:
            joined[-1] = (joined[-1][0], last)
        else:
            joined.append((first, last))
    return joined


def audit_script(script_id: int, up_to_id: int, incomplete: Callable[[int, int], list[IdRange]],
                 missing: Callable[[int, int, int], list[IdRange]]) -> list[IdRange]:
    """Every missing id range of a script at or below `up_to_id`."""
    found: list[IdRange] = []
    for first, last in incomplete(script_id, up_to_id):
        found.extend(missing(script_id, first, last))
    return _joined(sorted(set(found)))


@dataclass(frozen=True, slots=True)
class AuditRequest:
    script_id: int
    symbol: str
    stream_type: str
    up_to_id: int  # the resume point: what the live stream and the restart gap cover starts above it
    backfiller: Backfiller


class Auditor:
    """One background thread: audits each requested script once (a restart, a script added), never delaying the
    subscriptions. A database error is retried on the next request cycle."""

    def __init__(self, connect_db: Callable[[], pymysql.Connection], ledger: GapLedger, stop: threading.Event) -> None:
        self.connect_db = connect_db
        self.ledger = ledger
        self.stop = stop
        self.found = 0  # ranges put in the ledger
        self._requests: queue.Queue[AuditRequest] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._conn: pymysql.Connection | None = None

    def start(self) -> None:
        self._thread.start()

    def request(self, request: AuditRequest) -> None:
        self._requests.put(request)

    def idle(self) -> bool:
        return self._requests.unfinished_tasks == 0

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                request = self._requests.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._audit(request)
            except TRANSIENT_ERRORS as error:
                log.warning("script %d: audit failed (%s); retried in 5 s", request.script_id, error)
                self._drop()
                self.stop.wait(5.0)
                self._requests.put(request)
            finally:
                self._requests.task_done()
        self._drop()

    def _audit(self, request: AuditRequest) -> None:
        if self._conn is None:
            self._conn = self.connect_db()
        conn = self._conn
        ranges = audit_script(request.script_id, request.up_to_id,
                              lambda script, up_to: incomplete_ranges(conn, script, up_to),
                              lambda script, first, last: missing_ranges(conn, script, first, last))
        new = []
        for first, last in ranges:
            new += subtract(first, last, self.ledger.known_ranges(request.script_id, first, last))
        for first, last in new:
            request.backfiller.request(BackfillJob(Gap(request.script_id, first, last), request.symbol,
                                                   request.stream_type, "audit"))
        self.found += len(new)
        if new:
            log.warning("%s: audit found %d missing range(s), %s ids, below id %d; backfilling", request.symbol,
                        len(new), f"{sum(last - first + 1 for first, last in new):,}", request.up_to_id)
        else:
            log.info("%s: audit found nothing missing below id %d", request.symbol, request.up_to_id)

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(pymysql.err.Error):
                self._conn.close()
            self._conn = None
