"""Writing ticks to MySQL: idempotent bulk inserts keyed by (script_id, trade_id).

Two paths, both idempotent (a duplicate key is skipped, never an error and never a second row):
- `LOAD DATA LOCAL INFILE` — the fastest path measured here (~2.4× multi-row INSERT); LOCAL turns duplicate-key
  errors into skipped rows. Used when the server allows `local_infile` (MariaDB's default; MySQL 8 and RDS
  default to OFF).
- multi-row `INSERT IGNORE`, parameterised, otherwise.
Callers pass validated ticks (a decoded `TickBatch`, or ticks checked by `tickstream.ticks.validate_tick`): both
paths would otherwise coerce bad values.

Both keep the sparse time index (tick_minutes, tickstream.time_index) in the same transaction as the rows, which
needs no counts: a minute's bounds are widened by every row offered, stored or duplicate.

`TickStore` also keeps tick_coverage (tickstream.coverage) in the same transaction, exactly: it needs, per
(script, UTC day), how many rows were really inserted, and a statement only reports its total. A chunk of one
(script, day) group — or one whose rows are all new, or all duplicates — is loaded in one statement and its total
is the answer. Only a chunk with several groups that is partly stored already (a redelivery mixed with new rows)
needs more: which groups' rows were new is unknown. Such a chunk is rare (a full message is a chunk of its own, so a
redelivered one is all duplicates), so the common chunk is one LOAD and nothing else — no SAVEPOINT before it, a
round trip per chunk that a loaded machine makes expensive — and the rare one rolls the whole transaction back and
writes its chunks again carefully: each chunk of several groups after a SAVEPOINT, and when partly stored, rolled
back to it and loaded again group by group.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pymysql

from tickstream import lags, time_index
from tickstream.codec import TickBatch
from tickstream.coverage import DAY_US, CoverageDelta, Key, RowGroup, Summary, rows_by_group, summarize_batch
from tickstream.db import Connection
from tickstream.ticks import Tick

COLUMNS = "script_id, trade_id, price, quantity, is_buyer_maker, traded_at, event_at, received_at_producer"
# Epoch + INTERVAL µs is exact and reaches 2100; FROM_UNIXTIME would stop at 2038 on MariaDB 10.11 (NULL, which
# an IGNORE load turns into a zero date) and depend on the session time zone.
_TIME = "TIMESTAMP'1970-01-01 00:00:00' + INTERVAL {} MICROSECOND"
_ROW_PLACEHOLDERS = "(%s, %s, %s, %s, %s, " + ", ".join(_TIME.format("%s") for _ in range(3)) + ")"
INSERT_CHUNK_ROWS = 2000
LOAD_DATA_SQL = (
    "LOAD DATA LOCAL INFILE %s IGNORE INTO TABLE ticks"
    " FIELDS TERMINATED BY '\\t' LINES TERMINATED BY '\\n'"
    " (script_id, trade_id, price, quantity, is_buyer_maker, @traded, @event, @received)"
    # The rows are validated (integers of at most 16 digits): the server reads them exactly as integers, and a
    # CAST AS UNSIGNED would only add ~2 % to the load's server time.
    " SET traded_at = " + _TIME.format("@traded")
    + ", event_at = " + _TIME.format("@event")
    + ", received_at_producer = " + _TIME.format("@received")
)


@dataclass(frozen=True, slots=True)
class InsertResult:
    inserted: int
    duplicates: int


def server_allows_load_data(conn: pymysql.Connection) -> bool:
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.local_infile")
        (value,) = cursor.fetchone()
    return bool(int(value))


def insert_ticks_ignore(conn: pymysql.Connection, ticks: Sequence[Tick]) -> InsertResult:
    """Multi-row INSERT IGNORE in chunks, and the ticks' minutes in the time index; does not commit."""
    result = _insert_ignore(conn, ticks)
    time_index.write(conn, time_index.spans_of((t.script_id, t.trade_id, t.traded_at_us) for t in ticks))
    return result


def _insert_ignore(conn: pymysql.Connection, ticks: Sequence[Tick]) -> InsertResult:
    inserted = 0
    with conn.cursor() as cursor:
        for start in range(0, len(ticks), INSERT_CHUNK_ROWS):
            chunk = ticks[start:start + INSERT_CHUNK_ROWS]
            sql = f"INSERT IGNORE INTO ticks ({COLUMNS}) VALUES " + ",".join([_ROW_PLACEHOLDERS] * len(chunk))
            inserted += cursor.execute(sql, [value for tick in chunk for value in tick])
    return InsertResult(inserted, len(ticks) - inserted)


class LoadDataFile:
    """A scratch file for LOAD DATA LOCAL, reused across batches (in memory where /dev/shm exists)."""

    def __init__(self) -> None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        handle, self.path = tempfile.mkstemp(prefix="tickstream-", suffix=".tsv", dir=directory)
        os.close(handle)

    def insert(self, conn: Connection, batch: TickBatch) -> InsertResult:
        """LOAD DATA LOCAL … IGNORE of the batch's rows as they are (validated, nothing to escape); no commit."""
        inserted = self.load(conn, batch.rows)
        return InsertResult(inserted, batch.count - inserted)

    def load(self, conn: Connection, rows: bytes) -> int:
        """The rows inserted (duplicates skipped); no commit."""
        with open(self.path, "wb") as scratch:
            scratch.write(rows)
        with conn.sending(self.path), conn.cursor() as cursor:  # the one file this connection may send
            return cursor.execute(LOAD_DATA_SQL, (self.path,))

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class TickStore:
    """One connection's tick writer: picks the fastest idempotent path the server and the connection allow (LOAD
    DATA LOCAL needs a connection opened with `local_infile=True`), and keeps tick_coverage and the time index.

    `keep_coverage=False` (neither coverage nor the time index) exists only to measure what they cost
    (bench/ingest.py); the ingest always keeps both. `clock` (µs since the epoch) times the stored ticks' lags
    (tickstream.lags).
    """

    def __init__(self, conn: pymysql.Connection, use_load_data: bool | None = None, *,
                 keep_coverage: bool = True, clock: Callable[[], int] = lags.now_us) -> None:
        self.conn = conn
        if use_load_data is None:
            use_load_data = isinstance(conn, Connection) and conn.local_infile and server_allows_load_data(conn)
        self._load_file = LoadDataFile() if use_load_data else None
        self._coverage = CoverageDelta(clock) if keep_coverage else None
        self._time_index = time_index.TimeIndexDelta() if keep_coverage else None
        self._transaction = _LoadedChunks()

    @property
    def method(self) -> str:
        return "load_data" if self._load_file else "insert_ignore"

    def insert_ticks(self, ticks: Sequence[Tick]) -> InsertResult:
        return self.insert(TickBatch.from_ticks(ticks))

    def insert(self, batch: TickBatch) -> InsertResult:
        """Store the batch (duplicates skipped) and commit; on any error roll back and raise."""
        try:
            result = self.write(batch)
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return result

    def write(self, batch: TickBatch, summary: Summary | None = None) -> InsertResult:
        """Store the batch (duplicates skipped) in the open transaction; the caller commits or rolls back.

        `summary` is `coverage.summarize_batch(batch.rows)` when the caller already has it (the
        ingest computes it on the handler's thread, in parallel with the previous chunk's load)."""
        if not batch.count:
            return InsertResult(0, 0)
        if self._coverage is None:
            if self._load_file:
                return self._load_file.insert(self.conn, batch)
            return _insert_ignore(self.conn, batch.ticks())
        groups, minutes = summary if summary is not None else summarize_batch(batch.rows)
        self._time_index.add(minutes)
        inserted = self._load_counted(batch, groups) if self._load_file else self._insert_counted(batch, groups)
        return InsertResult(inserted, batch.count - inserted)

    def _load_counted(self, batch: TickBatch, groups: dict[Key, RowGroup]) -> int:
        """Load the chunk and count its new rows per group into coverage; returns what this call adds to the
        transaction's inserted rows."""
        several = len(groups) > 1
        careful = several and self._transaction.careful
        if careful:
            with self.conn.cursor() as cursor:
                cursor.execute("SAVEPOINT tick_chunk")
        inserted = self._load_file.load(self.conn, batch.rows)
        if several and 0 < inserted < batch.count:  # partly there already: which groups' rows were new is unknown
            if not careful:
                return self._write_again_carefully(batch, groups)
            with self.conn.cursor() as cursor:
                cursor.execute("ROLLBACK TO SAVEPOINT tick_chunk")
            inserted = self._load_by_group(batch, groups)
        elif several:
            if inserted:  # all new (the live stream); all duplicates (a redelivery) count nothing
                for group in groups.values():
                    self._coverage.add(group, group.count)
        else:
            self._coverage.add(next(iter(groups.values())), inserted)
        self._transaction.add(batch, groups, inserted)
        return inserted

    def _write_again_carefully(self, batch: TickBatch, groups: dict[Key, RowGroup]) -> int:
        """Roll the transaction back (nothing of it is committed; its coverage waits in memory for COMMIT) and load
        its chunks again, this one last, each of several groups after a SAVEPOINT; so until COMMIT."""
        chunks, reported = self._transaction.chunks, self._transaction.inserted
        self.conn.rollback()
        self._coverage.clear()
        self._transaction = _LoadedChunks(careful=True)
        for chunk, chunk_groups in [*chunks, (batch, groups)]:
            self._load_counted(chunk, chunk_groups)
        return self._transaction.inserted - reported

    def _load_by_group(self, batch: TickBatch, groups: dict[Key, RowGroup]) -> int:
        inserted = 0
        for key, rows in rows_by_group(batch.rows).items():
            stored = self._load_file.load(self.conn, rows)
            self._coverage.add(groups[key], stored)
            inserted += stored
        return inserted

    def _insert_counted(self, batch: TickBatch, groups: dict[Key, RowGroup]) -> int:
        by_group: dict[Key, list[Tick]] = {}
        for tick in batch.ticks():
            by_group.setdefault((tick.script_id, tick.traded_at_us // DAY_US), []).append(tick)
        inserted = 0
        for key, ticks in by_group.items():
            stored = _insert_ignore(self.conn, ticks).inserted
            self._coverage.add(groups[key], stored)
            inserted += stored
        return inserted

    def commit(self) -> None:
        """The time index and coverage of the transaction's ticks, then COMMIT: all or nothing. Every writer
        upserts tick_minutes before tick_coverage, each in key order, so two writers never wait for each other in a
        cycle."""
        if self._coverage is not None:
            self._time_index.write(self.conn)
            self._coverage.write(self.conn)
        self.conn.commit()
        self._transaction = _LoadedChunks()
        if self._coverage is not None:
            self._coverage.clear()
            self._time_index.clear()

    def rollback(self) -> None:
        self._transaction = _LoadedChunks()
        if self._coverage is not None:
            self._coverage.clear()
            self._time_index.clear()
        _rollback_quietly(self.conn)

    def existing_script_ids(self) -> set[int]:
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT id FROM scripts")
            ids = {row[0] for row in cursor.fetchall()}
        self.commit()  # end the read view so the next look sees new scripts (with the coverage of what it commits)
        return ids

    def close(self) -> None:
        if self._load_file:
            self._load_file.close()
        with contextlib.suppress(pymysql.err.Error):
            self.conn.close()


class _LoadedChunks:
    """The chunks the open transaction loaded with coverage, to load them again should one come back partly stored
    (`TickStore._write_again_carefully`). They hold no copy of a message of ≥ `tickstream.ingest.CHUNK_ROWS` rows:
    such a chunk is the decoded message itself."""

    def __init__(self, careful: bool = False) -> None:
        self.careful = careful
        self.chunks: list[tuple[TickBatch, dict[Key, RowGroup]]] = []
        self.inserted = 0

    def add(self, batch: TickBatch, groups: dict[Key, RowGroup], inserted: int) -> None:
        self.chunks.append((batch, groups))
        self.inserted += inserted


def _rollback_quietly(conn: pymysql.Connection) -> None:
    with contextlib.suppress(pymysql.err.Error):  # the connection is gone; the server rolls back on its own
        conn.rollback()


def last_trade_ids(conn: pymysql.Connection, script_ids: Sequence[int]) -> dict[int, int]:
    """The highest stored trade id per script (scripts without ticks are absent)."""
    if not script_ids:
        return {}
    placeholders = ",".join(["%s"] * len(script_ids))
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT script_id, MAX(trade_id) FROM ticks WHERE script_id IN ({placeholders})"
                       " GROUP BY script_id", list(script_ids))
        result = {script_id: last for script_id, last in cursor.fetchall()}
    conn.commit()
    return result
