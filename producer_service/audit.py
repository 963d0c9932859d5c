"""The completeness audit: after subscribing, in the background, find what is missing below the resume point.

The ingest keeps `tick_coverage` (per script per UTC day: stored rows, first/last id). With contiguous ids a day is
incomplete when last − first + 1 > stored, and two consecutive days must meet (a day's first id follows the previous
day's last). Only incomplete days are scanned, by primary-key range, so the cost follows what is missing, not the
table. Missing ranges the ledger does not know yet go into it (cause `audit`) and are backfilled like any gap.

`incomplete_ranges` and `missing_ranges` are the two queries the audit needs; `audit_script` takes them as
callables, so a shared read-side module can replace the simple versions here.
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

log = logging.getLogger(__name__)
SCAN_CHUNK_IDS = 50_000  # ids per primary-key range read while looking for the holes of one day
IdRange = tuple[int, int]


def incomplete_ranges(conn: pymysql.Connection, script_id: int, up_to_id: int) -> list[IdRange]:
    """Id ranges (first, last) at or below `up_to_id` that coverage says are not all stored: the span of each
    incomplete day, and the ids between two days that do not meet. O(days of the script)."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT first_trade_id, last_trade_id, stored FROM tick_coverage WHERE script_id = %s"
                       " AND first_trade_id <= %s ORDER BY day", (script_id, up_to_id))
        days = [(int(first), int(last), int(stored)) for first, last, stored in cursor.fetchall()]
    conn.commit()
    ranges: list[IdRange] = []
    previous_last: int | None = None
    for first, last, stored in days:
        if previous_last is not None and first > previous_last + 1:
            ranges.append((previous_last + 1, first - 1))
        if last - first + 1 > stored:
            ranges.append((first, min(last, up_to_id)))
        previous_last = last if previous_last is None else max(previous_last, last)
    return [(first, last) for first, last in ranges if first <= min(last, up_to_id)]


def missing_ranges(conn: pymysql.Connection, script_id: int, first_id: int, last_id: int) -> list[IdRange]:
    """The ids of [first_id, last_id] not in `ticks`, as ranges: a keyset walk of the primary key in chunks of
    SCAN_CHUNK_IDS ids, each a bounded range read; a chunk that is all there costs one COUNT."""
    holes: list[IdRange] = []
    with conn.cursor() as cursor:
        for chunk_first in range(first_id, last_id + 1, SCAN_CHUNK_IDS):
            chunk_last = min(last_id, chunk_first + SCAN_CHUNK_IDS - 1)
            cursor.execute("SELECT COUNT(*) FROM ticks WHERE script_id = %s AND trade_id BETWEEN %s AND %s",
                           (script_id, chunk_first, chunk_last))
            count = int(cursor.fetchone()[0])
            if count == chunk_last - chunk_first + 1:
                continue
            cursor.execute("SELECT trade_id FROM ticks WHERE script_id = %s AND trade_id BETWEEN %s AND %s"
                           " ORDER BY trade_id", (script_id, chunk_first, chunk_last))
            present = [(int(row[0]), int(row[0])) for row in cursor.fetchall()]
            holes.extend(subtract(chunk_first, chunk_last, present))
    conn.commit()
    return _joined(holes)


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
