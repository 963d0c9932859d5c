"""The sparse time index (tickstream/time_index.py) replaces the secondary index (script_id, traded_at) of ticks:
~26 B per stored tick there, one row per script and UTC minute here. The ingest widens a minute's bounds in the
same transaction as its ticks; readers take trade-id bounds here, then scan the primary key.

The populate reads the old index (covering: script_id, traded_at and the primary key's trade_id) one script and
UTC day at a time: each chunk groups at most 1,440 minutes (an in-memory temporary table) and costs that day's
rows, whatever the table's size, and writes the script's cursor in `tick_minutes_fill` in the same transaction
(committed every COMMIT_EVERY_SECONDS). A run cut off anywhere (a deadline, kill -9) loses at most its open
transaction; the next run goes on from the cursors. Days before today (UTC) come first; today's rows, where an
older ingest may still be writing, are grouped last, just before the index goes. The upserts only widen bounds,
so a chunk done twice changes nothing. Rows an older ingest commits after that are not indexed: `python -m
tickstream.coverage rebuild` widens the buckets from the ticks (see the README's upgrade note).
"""

from __future__ import annotations

import logging
import time
from datetime import date, datetime, timedelta

import pymysql
from yoyo import step

from tickstream.migrate import MigrationPaused, stop_requested

__depends__ = {"0006_candles_1m"}
__transactional__ = False  # the populate commits chunk by chunk (MySQL's DDL commits anyway)

log = logging.getLogger("tickstream.migrate")
OLD_INDEX = "ix_ticks_script_traded_at"
PROGRESS_EVERY_SECONDS = 10.0
COMMIT_EVERY_SECONDS = 0.2  # a kill loses at most this much work
_EPOCH_DAY = date(1970, 1, 1)  # minutes are unsigned: no tick is older
_END_OF_TIME = datetime(9999, 12, 31)
DROP_LOCK_WAIT_SECONDS = 30  # an older ingest's open transaction holds ticks' metadata lock: queue briefly

_CREATE_TIME_INDEX = """
CREATE TABLE IF NOT EXISTS tick_minutes (
    script_id       INT UNSIGNED    NOT NULL,
    minute          INT UNSIGNED    NOT NULL,  -- minutes since the epoch, UTC, of traded_at
    first_trade_id  BIGINT UNSIGNED NOT NULL,  -- lowest and highest trade id traded in the minute
    last_trade_id   BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (script_id, minute)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"""
# Per script: every day before next_day is in tick_minutes. Dropped when the populate is done.
_CREATE_CURSORS = """
CREATE TABLE IF NOT EXISTS tick_minutes_fill (
    script_id INT UNSIGNED NOT NULL PRIMARY KEY,
    next_day  DATE         NOT NULL
) ENGINE = InnoDB"""
_GROUP_RANGE = f"""
INSERT INTO tick_minutes (script_id, minute, first_trade_id, last_trade_id)
SELECT script_id, TIMESTAMPDIFF(MINUTE, '1970-01-01', traded_at) AS m, MIN(trade_id), MAX(trade_id)
FROM ticks FORCE INDEX ({OLD_INDEX})
WHERE script_id = %s AND traded_at >= %s AND traded_at < %s
GROUP BY script_id, m
ON DUPLICATE KEY UPDATE first_trade_id = LEAST(first_trade_id, VALUES(first_trade_id)),
                        last_trade_id = GREATEST(last_trade_id, VALUES(last_trade_id))"""
_FIRST_TRADE_FROM = (f"SELECT traded_at FROM ticks FORCE INDEX ({OLD_INDEX}) WHERE script_id = %s"
                     " AND traded_at >= %s ORDER BY traded_at LIMIT 1")
_NEXT_SCRIPT = "SELECT script_id FROM ticks WHERE script_id > %s ORDER BY script_id LIMIT 1"


def has_old_index(cursor: pymysql.cursors.Cursor) -> bool:
    cursor.execute("SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE()"
                   " AND table_name = 'ticks' AND index_name = %s LIMIT 1", (OLD_INDEX,))
    return cursor.fetchone() is not None


def scripts_with_ticks(cursor: pymysql.cursors.Cursor) -> list[int]:
    """One primary-key dive per script."""
    found, last = [], -1
    while True:
        cursor.execute(_NEXT_SCRIPT, (last,))
        row = cursor.fetchone()
        if row is None:
            return found
        last = row[0]
        found.append(last)


def first_day_from(cursor: pymysql.cursors.Cursor, script_id: int, day: date) -> date | None:
    """The first UTC day at or after `day` with a trade of the script (one dive into the old index)."""
    cursor.execute(_FIRST_TRADE_FROM, (script_id, datetime.combine(day, datetime.min.time())))
    row = cursor.fetchone()
    return None if row is None else row[0].date()


class Populate:
    """The chunked, resumable fill of tick_minutes from the old index."""

    def __init__(self, conn: pymysql.Connection) -> None:
        self.conn = conn
        self.cursor = conn.cursor()
        self.chunks = 0
        self.started = self.reported = self.committed = time.monotonic()

    def run(self) -> None:
        self.cursor.execute("SELECT UTC_DATE()")
        today = self.cursor.fetchone()[0]
        self.cursor.execute("SELECT script_id, next_day FROM tick_minutes_fill")
        cursors = dict(self.cursor.fetchall())
        scripts = scripts_with_ticks(self.cursor)
        for script_id in scripts:
            cursors[script_id] = self.days_before(script_id, cursors.get(script_id, _EPOCH_DAY), today)
        for script_id in scripts:  # the tail, not recorded: redone by a run that stops here, cheaply
            self.chunk(script_id, cursors[script_id], None)
        self.conn.commit()
        log.info("0007: tick_minutes filled from %d chunk(s) in this run, %.1f s", self.chunks,
                 time.monotonic() - self.started)

    def days_before(self, script_id: int, day: date, today: date) -> date:
        """Fill the script's days from `day` up to (not including) `today`, one chunk per day with trades;
        returns the day its tail starts."""
        while (found := first_day_from(self.cursor, script_id, day)) is not None and found < today:
            self.chunk(script_id, found, found + timedelta(days=1))
            day = found + timedelta(days=1)
        return found if found is not None else day

    def chunk(self, script_id: int, start: date, end: date | None) -> None:
        if stop_requested():
            self.conn.commit()  # the chunks done so far are whole: keep them
            raise MigrationPaused(f"0007: populate of tick_minutes stopped after {self.chunks} chunk(s) in this run"
                                  "; run migrate again to continue (its progress is kept in tick_minutes_fill)")
        self.cursor.execute(_GROUP_RANGE, (script_id, datetime.combine(start, datetime.min.time()),
                                           _END_OF_TIME if end is None else datetime.combine(end, datetime.min.time())))
        if end is not None:
            self.cursor.execute("INSERT INTO tick_minutes_fill (script_id, next_day) VALUES (%s, %s)"
                                " ON DUPLICATE KEY UPDATE next_day = VALUES(next_day)", (script_id, end))
        self.chunks += 1
        now = time.monotonic()
        if now - self.committed >= COMMIT_EVERY_SECONDS:  # a sparse script's day is a few rows: one commit for many
            self.conn.commit()
            self.committed = now
        if now - self.reported >= PROGRESS_EVERY_SECONDS:
            self.reported = now
            log.info("0007: %d chunk(s) in %.0f s, at script %d day %s", self.chunks, now - self.started, script_id,
                     start)


def apply(conn: pymysql.Connection) -> None:
    with conn.cursor() as cursor:
        # READ COMMITTED: the grouped reads are consistent reads that lock no ticks, so an older ingest still
        # writing is never blocked by them (under REPEATABLE READ, INSERT … SELECT share-locks what it reads).
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cursor.execute(_CREATE_TIME_INDEX)
        if has_old_index(cursor):  # else a run that dropped it was cut off just after: the populate is done
            cursor.execute(_CREATE_CURSORS)
            Populate(conn).run()
            if stop_requested():
                raise MigrationPaused("0007: tick_minutes is filled; run migrate again to drop the old index")
            cursor.execute("SET SESSION lock_wait_timeout = %s", (DROP_LOCK_WAIT_SECONDS,))
            cursor.execute(f"ALTER TABLE ticks DROP INDEX {OLD_INDEX}")
        cursor.execute("DROP TABLE IF EXISTS tick_minutes_fill")
    conn.commit()


def rollback(conn: pymysql.Connection) -> None:
    """Puts the secondary index back (built from the ticks) before the time index goes: nothing is lost."""
    with conn.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS tick_minutes_fill")
        if not has_old_index(cursor):
            cursor.execute(f"ALTER TABLE ticks ADD INDEX {OLD_INDEX} (script_id, traded_at)")
        cursor.execute("DROP TABLE IF EXISTS tick_minutes")
    conn.commit()


steps = [step(apply, rollback)]
