"""Background work on the ticks table: purging a deleted script's ticks (or a deleted broker's: each of its
scripts in turn), and retention (TICK_RETENTION_DAYS).

Both delete in chunks of whole primary-key ranges (`script_id = s AND trade_id BETWEEN lo AND hi`), each chunk its
own short transaction, so the ingest writing other scripts (or newer ids of the same one) never waits behind a
long lock, and the undo log stays small. A chunk's upper bound is found by walking CHUNK_ROWS entries of the
primary key from the cursor: the cost of a chunk is the rows it deletes, never the size of the table.

Restartable: every chunk commits its delete and the job's cursor (`jobs.cursor_trade_id`: the next trade id to
delete; everything of the job's script below it is gone) in one transaction, under a row lock on the job. A worker
killed mid-way loses at most its open chunk (rolled back by the server); the next worker, or two at once after a
duplicate delivery, continue from the committed cursor without deleting anything twice or skipping anything.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pymysql

from tickstream import coverage, time_index
from tickstream.catalog import transaction as _transaction
from tickstream.db import as_utc

log = logging.getLogger(__name__)

CHUNK_ROWS = 10_000  # per transaction: ~0.1 s of work here, and a few MB of undo log
# After each chunk a job pauses this many times the chunk's own duration, so it holds at most 1 / (1 + 3) = 25 % of
# one server connection's time, however fast or slow the server is at the moment (a loaded server makes chunks
# slower, and the pauses with them). Back to back, chunked deletes took a core of this 2-core server's time and the
# ingest beside them ran at 0.3–0.7× of its rate (goal ≥ 0.8×; measured with pacing: README, Retention and purge).
# The price is a job four times as long: minutes a day for retention, which runs in the background anyway.
PAUSE_PER_WORK = 3.0
MAX_PAUSE_SECONDS = 5.0  # a chunk slowed by a lock wait does not make the job sleep past its deadline margin
SCRIPTS_PER_STEP = 200  # retention passes at most this many scripts per transaction (two index dives each)
PURGE_SCRIPT = "purge_script"
PURGE_BROKER = "purge_broker"
RETENTION = "retention"
UNFINISHED = ("queued", "running")
TERMINAL_GAP_STATES = ("filled", "unrecoverable")


class NotInactive(Exception):
    """A purge was asked for a script (or broker) that is still collecting: deactivate it first."""


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    broker_id: int | None  # a broker's purge: the broker
    script_id: int | None  # a script's purge: the script; a broker's: the script it is on
    state: str
    cursor_trade_id: int | None
    rows_deleted: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


_JOB_COLUMNS = ("id, kind, broker_id, script_id, state, cursor_trade_id, rows_deleted, error, created_at, updated_at,"
                " finished_at")


def _job(row: tuple[Any, ...]) -> Job:
    return Job(*row[:8], as_utc(row[8]), as_utc(row[9]), as_utc(row[10]))


def get_job(conn: pymysql.Connection, job_id: int) -> Job | None:
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
        row = cursor.fetchone()
    conn.commit()  # end the read view: a poller must see the worker's progress
    return _job(row) if row else None


def create_purge_job(conn: pymysql.Connection, script_id: int) -> Job | None:
    """Queue the purge of an inactive script (None if there is no such script; NotInactive if it is active).
    A purge already queued or running for the script is returned instead of a second one."""
    return _create_purge(conn, PURGE_SCRIPT, "scripts", "script_id", script_id)


def create_broker_purge_job(conn: pymysql.Connection, broker_id: int) -> Job | None:
    """Queue the purge of an inactive broker: each of its scripts as a script's purge does it, then the broker
    (None if there is no such broker; NotInactive if it is active). An unfinished one is returned instead."""
    return _create_purge(conn, PURGE_BROKER, "brokers", "broker_id", broker_id)


def _create_purge(conn: pymysql.Connection, kind: str, table: str, column: str, owner_id: int) -> Job | None:
    """`table` and `column` are literals of the two callers above."""
    with _transaction(conn) as cursor:
        cursor.execute(f"SELECT is_active FROM {table} WHERE id = %s FOR UPDATE", (owner_id,))
        row = cursor.fetchone()
        if row is None:
            return None
        if row[0]:
            raise NotInactive(f"{table[:-1]} {owner_id} is active")
        cursor.execute(f"SELECT id FROM jobs WHERE kind = %s AND {column} = %s AND state IN ('queued', 'running')"
                       " ORDER BY id LIMIT 1", (kind, owner_id))
        existing = cursor.fetchone()
        if existing:
            job_id = existing[0]
        else:
            cursor.execute(f"INSERT INTO jobs (kind, {column}, cursor_trade_id) VALUES (%s, %s, 0)",
                           (kind, owner_id))
            job_id = cursor.lastrowid
    return get_job(conn, job_id)


def unfinished_jobs(conn: pymysql.Connection) -> list[int]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY id")
        ids = [row[0] for row in cursor.fetchall()]
    conn.commit()
    return ids


# --- running a job -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    job_id: int
    done: bool  # False: stopped at the deadline (or another worker holds it); run it again to continue
    rows_deleted: int  # by this run


def pause_after(work_seconds: float) -> float:
    """The pause after a chunk that took `work_seconds` (see PAUSE_PER_WORK)."""
    return min(MAX_PAUSE_SECONDS, max(0.0, work_seconds) * PAUSE_PER_WORK)


def run_job(conn: pymysql.Connection, job_id: int, *, retention_days: int | None = None,
            should_stop: Callable[[], bool] = lambda: False, chunk_rows: int = CHUNK_ROWS,
            clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> RunResult:
    """Work on a job until it is done or `should_stop()` says so (checked between chunks), pausing after each
    chunk (`pause_after`). A retention job needs `retention_days`; without it (retention switched off meanwhile)
    it is left as it is."""
    job = get_job(conn, job_id)
    if job is None or job.state not in UNFINISHED:
        return RunResult(job_id, True, 0)
    if job.kind == RETENTION:
        if retention_days is None:
            return RunResult(job_id, False, 0)
        def step(c: pymysql.Connection, j: int, n: int) -> int | None:
            return _retention_step(c, j, n, retention_days)
    else:
        step = _purge_step
    deleted = 0
    try:
        while not should_stop():
            started = clock()
            progress = step(conn, job_id, chunk_rows)
            if progress is None:
                return RunResult(job_id, True, deleted)
            deleted += progress
            sleep(pause_after(clock() - started))
    except Exception as error:
        log.exception("job %s failed", job_id)
        _fail(conn, job_id, f"{type(error).__name__}: {error}")
        raise
    return RunResult(job_id, False, deleted)


def _fail(conn: pymysql.Connection, job_id: int, message: str) -> None:
    try:
        conn.rollback()
        with _transaction(conn) as cursor:
            # A failure is kept as the job's error but not final: the next run retries from the cursor.
            cursor.execute("UPDATE jobs SET error = %s WHERE id = %s", (message[:500], job_id))
    except pymysql.err.Error:
        log.exception("could not record the failure of job %s", job_id)


def _locked_job(cursor: pymysql.cursors.Cursor, job_id: int) -> Job | None:
    cursor.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
    row = cursor.fetchone()
    job = _job(row) if row else None
    return job if job is not None and job.state in UNFINISHED else None


def _chunk_end(cursor: pymysql.cursors.Cursor, script_id: int, start: int, chunk_rows: int,
               last: int | None = None) -> int | None:
    """The trade id of the `chunk_rows`-th stored tick from `start` (a walk of the primary key), capped at
    `last`; None when fewer remain (the chunk then runs to `last`, or to the end)."""
    cursor.execute("SELECT trade_id FROM ticks WHERE script_id = %s AND trade_id >= %s ORDER BY trade_id"
                   " LIMIT 1 OFFSET %s", (script_id, start, chunk_rows - 1))
    row = cursor.fetchone()
    if row is None:
        return last
    return row[0] if last is None else min(row[0], last)


_MAX_TRADE_ID = 2**64 - 1


def _delete_range(cursor: pymysql.cursors.Cursor, script_id: int, start: int, end: int,
                  before: datetime | None = None) -> int:
    sql = "DELETE FROM ticks WHERE script_id = %s AND trade_id BETWEEN %s AND %s"
    params: list[Any] = [script_id, start, end]
    if before is not None:
        sql += " AND traded_at < %s"
        params.append(before.replace(tzinfo=None))
    return cursor.execute(sql, params)


def _advance(cursor: pymysql.cursors.Cursor, job_id: int, script_id: int | None, next_trade_id: int,
             deleted: int) -> None:
    cursor.execute("UPDATE jobs SET state = 'running', script_id = %s, cursor_trade_id = %s,"
                   " rows_deleted = rows_deleted + %s, error = NULL WHERE id = %s",
                   (script_id, next_trade_id, deleted, job_id))


def _finish(cursor: pymysql.cursors.Cursor, job_id: int) -> None:
    cursor.execute("UPDATE jobs SET state = 'done', error = NULL, finished_at = UTC_TIMESTAMP(6) WHERE id = %s",
                   (job_id,))


def _purge_step(conn: pymysql.Connection, job_id: int, chunk_rows: int) -> int | None:
    """One chunk of a purge, in one transaction; None once the job is done. A script's purge deletes the script's
    ticks chunk by chunk, then the script; a broker's does the same for each of the broker's scripts in turn
    (lowest id first: the job's script_id and cursor say where it is), then deletes the broker."""
    with _transaction(conn) as cursor:
        job = _locked_job(cursor, job_id)
        if job is None:
            return None
        script_id = job.script_id if job.kind == PURGE_SCRIPT else _next_script_of(cursor, job.broker_id)
        if script_id is None:  # a broker's purge with no script left
            cursor.execute("DELETE FROM brokers WHERE id = %s", (job.broker_id,))
            _finish(cursor, job_id)
            log.info("job %s: broker %s purged", job_id, job.broker_id)
            return None
        start = (job.cursor_trade_id or 0) if script_id == job.script_id else 0
        deleted, next_start = _purge_script_chunk(cursor, script_id, start, chunk_rows)
        if next_start is not None or job.kind == PURGE_BROKER:
            _advance(cursor, job_id, script_id, next_start or 0, deleted)
            return deleted
        cursor.execute("UPDATE jobs SET rows_deleted = rows_deleted + %s WHERE id = %s", (deleted, job_id))
        _finish(cursor, job_id)
    log.info("job %s: script %s purged", job_id, script_id)
    return None


def _next_script_of(cursor: pymysql.cursors.Cursor, broker_id: int) -> int | None:
    """The broker's lowest script id, with the broker locked: a script being added meanwhile waits for this
    transaction (and is refused by the foreign key once the broker is gone), so none is left behind."""
    cursor.execute("SELECT id FROM brokers WHERE id = %s FOR UPDATE", (broker_id,))
    cursor.execute("SELECT MIN(id) FROM scripts WHERE broker_id = %s", (broker_id,))
    return cursor.fetchone()[0]


def _purge_script_chunk(cursor: pymysql.cursors.Cursor, script_id: int, start: int,
                        chunk_rows: int) -> tuple[int, int | None]:
    """Delete one chunk of the script's ticks from `start`; once none are left, what describes them (coverage,
    gaps, status, candles) and the script itself. Returns (ticks deleted, where the next chunk starts, or None
    when the script is gone)."""
    end = _chunk_end(cursor, script_id, start, chunk_rows)
    deleted = _delete_range(cursor, script_id, start, _MAX_TRADE_ID if end is None else end)
    if end is not None:
        return deleted, end + 1
    # Nothing is left at or above the cursor. Ticks the ingest stored below it after their chunk went (in
    # flight when the script was deactivated) are swept by going round again from the lowest one.
    cursor.execute("SELECT MIN(trade_id) FROM ticks WHERE script_id = %s", (script_id,))
    straggler = cursor.fetchone()[0]
    if straggler is not None:
        return deleted, straggler
    for table in ("tick_coverage", "tick_totals", "tick_lags", "gaps", "producer_status", "candles_1m",
                  "tick_minutes"):
        cursor.execute(f"DELETE FROM {table} WHERE script_id = %s", (script_id,))  # fixed table names
    cursor.execute("DELETE FROM scripts WHERE id = %s", (script_id,))
    return deleted, None


# --- retention -----------------------------------------------------------------------------------------------

def retention_cutoff(days: int, now: datetime | None = None) -> datetime:
    """The start of the oldest UTC day kept: with `days` = 30, today and the 29 days before it stay."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), UTC)


def create_retention_job(conn: pymysql.Connection, now: datetime | None = None) -> int:
    """The unfinished retention job (resumed as it is), or a new one. Its window is counted back from its own
    created_at (given as `now`, or the server's clock), so a job resumed after midnight never widens it."""
    with _transaction(conn) as cursor:
        cursor.execute("SELECT id FROM jobs WHERE kind = %s AND state IN ('queued', 'running') ORDER BY id LIMIT 1"
                       " FOR UPDATE", (RETENTION,))
        row = cursor.fetchone()
        if row:
            return row[0]
        cursor.execute("INSERT INTO jobs (kind, script_id, cursor_trade_id, created_at)"
                       " VALUES (%s, 0, 0, COALESCE(%s, UTC_TIMESTAMP(6)))",
                       (RETENTION, None if now is None else now.astimezone(UTC).replace(tzinfo=None)))
        return cursor.lastrowid


def _retention_step(conn: pymysql.Connection, job_id: int, chunk_rows: int, days: int) -> int | None:
    """Up to `chunk_rows` ticks traded before the cutoff, from the cursor's script on (a script with nothing old
    costs two index dives; its old coverage, candle and time-index rows go as it is passed), in one transaction;
    after the last script, finished gaps older than the window, and the job is done (returns None then)."""
    with _transaction(conn) as cursor:
        job = _locked_job(cursor, job_id)
        if job is None:
            return None
        cutoff = retention_cutoff(days, job.created_at)
        script_id, start = job.script_id or 0, job.cursor_trade_id or 0
        deleted, passed = 0, 0
        while deleted < chunk_rows and passed < SCRIPTS_PER_STEP:
            cursor.execute("SELECT id FROM scripts WHERE id >= %s ORDER BY id LIMIT 1", (script_id,))
            row = cursor.fetchone()
            if row is None:
                cursor.execute(f"DELETE FROM gaps WHERE state IN {_in(TERMINAL_GAP_STATES)}"
                               " AND COALESCE(filled_at, updated_at) < %s",
                               (*TERMINAL_GAP_STATES, cutoff.replace(tzinfo=None)))
                cursor.execute("UPDATE jobs SET rows_deleted = rows_deleted + %s WHERE id = %s", (deleted, job_id))
                _finish(cursor, job_id)
                return None
            if row[0] != script_id:
                script_id, start = row[0], 0
            last = time_index.last_trade_id_before(cursor, script_id, cutoff)
            end = None if last is None or last < start else _chunk_end(cursor, script_id, start,
                                                                      chunk_rows - deleted, last)
            if end is None:  # nothing (more) of this script before the cutoff
                coverage.remove_days_before(cursor, script_id, cutoff.date())
                for table in ("candles_1m", "tick_minutes"):  # the candle cache, the time index
                    cursor.execute(f"DELETE FROM {table} WHERE script_id = %s AND minute < %s",  # fixed names
                                   (script_id, time_index.minute_of(cutoff)))
                script_id, start, passed = script_id + 1, 0, passed + 1
                continue
            deleted += _delete_range(cursor, script_id, start, end, before=cutoff)
            start = end + 1
        _advance(cursor, job_id, script_id, start, deleted)
        return deleted


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(["%s"] * len(values)) + ")"


def run_retention(conn: pymysql.Connection, days: int, *, should_stop: Callable[[], bool] = lambda: False,
                  now: datetime | None = None, chunk_rows: int = CHUNK_ROWS,
                  sleep: Callable[[float], None] = time.sleep) -> RunResult:
    """Delete what is older than `days` UTC days (resuming an unfinished retention job first)."""
    job_id = create_retention_job(conn, now)
    return run_job(conn, job_id, retention_days=days, should_stop=should_stop, chunk_rows=chunk_rows, sleep=sleep)


def deadline_after(seconds: float) -> Callable[[], bool]:
    stop_at = time.monotonic() + seconds
    return lambda: time.monotonic() >= stop_at

