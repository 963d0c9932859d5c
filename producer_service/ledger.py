"""The gap ledger (table `gaps`): every id range the producer knows it has not delivered, written before it is filled.

pending -> filling -> filled | unrecoverable. `next_trade_id` is the resume point and only ever moves past ids the
sink has taken (sent to SQS or journaled), so a crash fetches at most one page again. Every query here is bounded by
a script's gaps (the `(script_id, ...)` keys), never by the ticks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pymysql

from tickstream.db import CONNECTION_ERRORS

log = logging.getLogger(__name__)
PENDING, FILLING, FILLED, UNRECOVERABLE = "pending", "filling", "filled", "unrecoverable"
OPEN_STATES = (PENDING, FILLING)
ERROR_CHARS = 500  # the column's width


@dataclass(frozen=True, slots=True)
class LedgerGap:
    gap_id: int
    script_id: int
    first_id: int
    last_id: int
    next_id: int
    trades_filled: int
    cause: str

    @property
    def size(self) -> int:
        return self.last_id - self.first_id + 1


def subtract(first: int, last: int, known: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [first, last] that none of the `known` (first, last) ranges covers, in order."""
    pieces, start = [], first
    for known_first, known_last in sorted(known):
        if known_last < start:
            continue
        if known_first > last:
            break
        if known_first > start:
            pieces.append((start, known_first - 1))
        start = max(start, known_last + 1)
        if start > last:
            return pieces
    if start <= last:
        pieces.append((start, last))
    return pieces


class GapLedger:
    """Thread-safe: one connection, used under a lock (the backfill threads and the audit share it; each call is
    one short statement). A lost connection is reopened on the next call; the error reaches the caller."""

    def __init__(self, connect_db: Callable[[], pymysql.Connection]) -> None:
        self.connect_db = connect_db
        self._conn: pymysql.Connection | None = None
        self._lock = threading.Lock()

    def record(self, script_id: int, first_id: int, last_id: int, cause: str) -> list[LedgerGap]:
        """Write the parts of [first_id, last_id] no gap of the script covers yet (an overlapping or repeated
        report adds nothing, so nothing is fetched twice); returns the new rows."""
        known = self._query("SELECT first_trade_id, last_trade_id FROM gaps WHERE script_id = %s"
                            " AND first_trade_id <= %s AND last_trade_id >= %s", (script_id, last_id, first_id))
        added = []
        for first, last in subtract(first_id, last_id, [(int(a), int(b)) for a, b in known]):
            gap_id = self._execute("INSERT INTO gaps (script_id, first_trade_id, last_trade_id, next_trade_id, cause)"
                                   " VALUES (%s, %s, %s, %s, %s)", (script_id, first, last, first, cause))
            added.append(LedgerGap(gap_id, script_id, first, last, first, 0, cause))
        return added

    def open_gaps(self, script_ids: Sequence[int]) -> list[LedgerGap]:
        """The script's unfinished gaps, oldest first; `filling` ones belonged to a producer that is gone (this
        one has not started them yet), so they go back to `pending`."""
        if not script_ids:
            return []
        self._execute("UPDATE gaps SET state = %s WHERE state = %s AND script_id IN %s",
                      (PENDING, FILLING, tuple(script_ids)))
        rows = self._query("SELECT id, script_id, first_trade_id, last_trade_id, next_trade_id, trades_filled, cause"
                           " FROM gaps WHERE script_id IN %s AND state = %s ORDER BY id",
                           (tuple(script_ids), PENDING))
        return [LedgerGap(*(int(value) for value in row[:6]), row[6]) for row in rows]

    def known_ranges(self, script_id: int, first_id: int, last_id: int) -> list[tuple[int, int]]:
        """Ranges of the ledger (any state) overlapping [first_id, last_id]: an audit must not report them again."""
        rows = self._query("SELECT first_trade_id, last_trade_id FROM gaps WHERE script_id = %s"
                           " AND first_trade_id <= %s AND last_trade_id >= %s", (script_id, last_id, first_id))
        return [(int(a), int(b)) for a, b in rows]

    def start_filling(self, gap_id: int) -> None:
        self._execute("UPDATE gaps SET state = %s, attempts = attempts + 1 WHERE id = %s", (FILLING, gap_id))

    def progress(self, gap_id: int, next_id: int, trades_filled: int) -> None:
        self._execute("UPDATE gaps SET next_trade_id = %s, trades_filled = %s WHERE id = %s",
                      (next_id, trades_filled, gap_id))

    def failed_attempt(self, gap_id: int, error: str) -> None:
        """A transient failure (transport, timeout, 5xx, 429): the gap stays open and is retried."""
        self._execute("UPDATE gaps SET last_error = %s WHERE id = %s",
                      (error[:ERROR_CHARS], gap_id))

    def release(self, gap_id: int) -> None:
        """Stopping mid-gap: back to pending, for the next start."""
        self._execute("UPDATE gaps SET state = %s WHERE id = %s AND state = %s", (PENDING, gap_id, FILLING))

    def finish(self, gap_id: int, state: str, error: str | None = None) -> None:
        self._execute("UPDATE gaps SET state = %s, last_error = COALESCE(%s, last_error), filled_at = UTC_TIMESTAMP(6)"
                      " WHERE id = %s", (state, None if error is None else error[:ERROR_CHARS], gap_id))

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        with self._lock, self._reconnecting() as conn, conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def _execute(self, sql: str, args: tuple) -> int:
        """Runs one autocommitted statement; returns the row id it inserted (0 if none)."""
        with self._lock, self._reconnecting() as conn, conn.cursor() as cursor:
            cursor.execute(sql, args)
            return int(cursor.lastrowid or 0)

    @contextlib.contextmanager
    def _reconnecting(self) -> Iterator[pymysql.Connection]:
        if self._conn is None:
            self._conn = self.connect_db()
        try:
            yield self._conn
        except CONNECTION_ERRORS:
            self._drop()
            raise

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(pymysql.err.Error):
                self._conn.close()
            self._conn = None
