"""Migration 0007 against the real MariaDB: an old-schema table (with its (script_id, traded_at) index) is carried
over into tick_minutes chunk by chunk, with exactly the rows the old single `INSERT … SELECT … GROUP BY` made; a
run stopped at its deadline, or killed with -9, goes on where it stopped; the rollback restores the old index; and
MigrateFunction answers a deadline with a FAILED deploy that leaves the old schema whole."""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pymysql
import pytest
from yoyo import get_backend, read_migrations

from tests.producer_harness import wait_for
from tests.sqs_events import FakeLambdaContext
from tests.test_pipeline_e2e import cloudformation_response_url
from tests.test_time_index import stored_spans
from tickstream.db import connect
from tickstream.migrate import MIGRATIONS_DIR, MigrationPaused, backend_url, migrate
from tickstream.settings import DatabaseSettings, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
# The statement 0007 ran before it was chunked, as it was (its SELECT part): what the chunks must reproduce.
SINGLE_STATEMENT = ("SELECT script_id, TIMESTAMPDIFF(MINUTE, '1970-01-01', traded_at) AS m, MIN(trade_id),"
                    " MAX(trade_id) FROM ticks FORCE INDEX (ix_ticks_script_traded_at) GROUP BY script_id, m")
Spans = dict[tuple[int, int], tuple[int, int]]


@dataclass
class OldTable:
    settings: DatabaseSettings
    conn: pymysql.Connection
    expected: Spans  # what the single statement makes of the table
    days_before_today: int  # chunks of whole days: distinct (script, UTC day before today)
    scripts: int  # one tail chunk each (today's rows)


def old_ticks() -> list[tuple[int, int, datetime]]:
    """(script_id, trade_id, traded_at): three scripts over several past days — one with a day missing and a hole
    of ids, bursts of many trades in one minute, trades a microsecond either side of midnight — and trades today,
    where an older ingest would still be writing."""
    rng = random.Random(11)
    now = datetime.now(UTC).replace(tzinfo=None)
    today = datetime.combine(now.date(), datetime.min.time())
    rows: list[tuple[int, int, datetime]] = []
    plans = {1: [-9, -8, -6], 2: [-3, -2, -1, 0], 3: [-5]}  # days relative to today; script 1 has no day -7
    for script_id, days in plans.items():
        trade_id = 1_000 * script_id
        for day in days:
            start = today + timedelta(days=day)
            moment = start - timedelta(microseconds=1) if day - 1 in days else start  # the day before's last µs
            end = min(start + timedelta(days=1), now - timedelta(seconds=1))
            while moment < end:
                trade_id += 1 if rng.random() > 0.02 else 500  # a hole of ids now and then
                rows.append((script_id, trade_id, moment))
                moment += timedelta(microseconds=rng.choice((1, 900, 40_000_000, 40_000_000, 100_000_000,
                                                             3_000_000_000)))
    return rows


def insert_old_ticks(conn: pymysql.Connection, rows: list[tuple[int, int, datetime]]) -> None:
    with conn.cursor() as cursor:  # as the old ingest stored them: no time index, late rows out of order
        cursor.executemany("INSERT INTO ticks (script_id, trade_id, price, quantity, is_buyer_maker, traded_at,"
                           " event_at, received_at_producer) VALUES (%s, %s, '1.5', '2', FALSE, %s, %s, %s)",
                           [(script, trade, at, at, at) for script, trade, at in reversed(rows)])


@pytest.fixture
def old_table(db_settings: DatabaseSettings) -> Iterator[OldTable]:
    """A database migrated up to 0006 (ticks still with its (script_id, traded_at) index), filled."""
    settings = DatabaseSettings(db_settings.host, db_settings.port, db_settings.user, db_settings.password,
                                f"tickstream_test_{uuid.uuid4().hex[:10]}")
    migrate(settings, before="0007")
    conn = connect(settings, autocommit=True)
    rows = old_ticks()
    insert_old_ticks(conn, rows)
    with conn.cursor() as cursor:
        cursor.execute(SINGLE_STATEMENT)
        expected = {(row[0], row[1]): (row[2], row[3]) for row in cursor.fetchall()}
        cursor.execute("SELECT UTC_DATE()")
        today = cursor.fetchone()[0]
    days = {(script, at.date()) for script, _, at in rows if at.date() < today}
    yield OldTable(settings, conn, expected, len(days), len({script for script, _, _ in rows}))
    conn.close()
    server = connect(settings, database=False, autocommit=True)
    with server.cursor() as cursor:
        cursor.execute(f"DROP DATABASE `{settings.name}`")
    server.close()


def tables(conn: pymysql.Connection) -> set[str]:
    with conn.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        return {row[0] for row in cursor.fetchall()}


def indexes(conn: pymysql.Connection) -> set[str]:
    with conn.cursor() as cursor:
        cursor.execute("SHOW INDEX FROM ticks")
        return {row[2] for row in cursor.fetchall()}


def applied(conn: pymysql.Connection) -> set[str]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT migration_id FROM _yoyo_migration")
        return {row[0] for row in cursor.fetchall()}


class ChunkCounter:
    """A `should_stop` that answers "go on" `allowed` times (each chunk asks once before it runs), then "stop"."""

    def __init__(self, allowed: int = 10**9) -> None:
        self.allowed, self.asked = allowed, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked > self.allowed


def test_chunked_populate_makes_the_single_statements_rows_and_rolls_back(old_table: OldTable) -> None:
    conn = old_table.conn
    assert len(old_table.expected) > 200 and old_table.days_before_today == 7
    counter = ChunkCounter()
    assert migrate(old_table.settings, should_stop=counter) == ["0007_tick_minutes", "0008_jobs_broker",
                                                                "0009_tick_totals", "0010_tick_lags"]
    assert stored_spans(conn) == old_table.expected
    assert counter.asked == old_table.days_before_today + old_table.scripts + 1  # + once before the index's drop
    assert indexes(conn) == {"PRIMARY"} and "tick_minutes_fill" not in tables(conn)

    backend = get_backend(backend_url(old_table.settings))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        backend.rollback_migrations(backend.to_rollback(migrations.filter(lambda m: m.id >= "0007")))
    backend.connection.close()
    assert "ix_ticks_script_traded_at" in indexes(conn) and "tick_minutes" not in tables(conn)
    with conn.cursor() as cursor:
        cursor.execute(SINGLE_STATEMENT)
        assert {(row[0], row[1]): (row[2], row[3]) for row in cursor.fetchall()} == old_table.expected
    migrate(old_table.settings)  # and forward again, from the rebuilt index
    assert stored_spans(conn) == old_table.expected


def test_a_populate_stopped_at_its_deadline_goes_on_without_redoing_its_chunks(old_table: OldTable) -> None:
    conn = old_table.conn
    with pytest.raises(MigrationPaused, match="after 3 chunk"):
        migrate(old_table.settings, should_stop=ChunkCounter(allowed=3))
    assert "0007_tick_minutes" not in applied(conn) and "0006_candles_1m" in applied(conn)
    assert "ix_ticks_script_traded_at" in indexes(conn)  # the old schema is whole: the old code reads on
    done = stored_spans(conn)
    assert done and done.items() < old_table.expected.items()
    finished = min(done)  # a bucket of the first finished chunk, taken away: only a redone chunk puts it back
    with conn.cursor() as cursor:
        cursor.execute("DELETE FROM tick_minutes WHERE script_id = %s AND minute = %s", finished)

    counter = ChunkCounter()
    migrate(old_table.settings, should_stop=counter)
    assert counter.asked == old_table.days_before_today - 3 + old_table.scripts + 1
    assert finished not in stored_spans(conn)
    assert stored_spans(conn) == {key: span for key, span in old_table.expected.items() if key != finished}
    assert indexes(conn) == {"PRIMARY"} and "tick_minutes_fill" not in tables(conn)


def test_a_migrate_killed_mid_populate_goes_on_at_the_next_run(old_table: OldTable, db_env: dict[str, str]) -> None:
    """kill -9 of `python -m tickstream.migrate` while a chunk of script 2 is open (held up by a row lock this test
    takes on its cursor row): yoyo's lock row is left behind, the open chunk is lost, the next run finishes."""
    conn = old_table.conn
    with pytest.raises(MigrationPaused):
        migrate(old_table.settings, should_stop=ChunkCounter(allowed=3))  # script 1's three days
    blocker = connect(old_table.settings)
    with blocker.cursor() as cursor:
        cursor.execute("INSERT INTO tick_minutes_fill (script_id, next_day) VALUES (2, %s)", (date(1970, 1, 1),))
    process = subprocess.Popen([sys.executable, "-m", "tickstream.migrate"], cwd=REPO_ROOT,
                               env={**os.environ, **db_env, "DB_NAME": old_table.settings.name},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: waiting_on_the_cursor_row(conn), 30)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    blocker.rollback()
    blocker.close()
    with conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM yoyo_lock")
        assert cursor.fetchone()[0] == 1  # what the kill left: without the server lock, every run would time out
    counter = ChunkCounter()
    migrate(old_table.settings, should_stop=counter)
    assert counter.asked == old_table.days_before_today - 3 + old_table.scripts + 1
    assert stored_spans(conn) == old_table.expected
    assert indexes(conn) == {"PRIMARY"}


def waiting_on_the_cursor_row(conn: pymysql.Connection) -> bool:
    with conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE()"
                       " AND info LIKE 'INSERT INTO tick_minutes_fill%%'")
        return cursor.fetchone()[0] == 1


# --- MigrateFunction ------------------------------------------------------------------------------------------

@dataclass
class ClockedContext(FakeLambdaContext):
    remaining_ms: Callable[[], int] = lambda: 900_000
    log_stream_name: str = "test-stream"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms()


def load_migrate_handler(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> ModuleType:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    load_settings.cache_clear()
    spec = importlib.util.spec_from_file_location("migrate_handler_under_test",
                                                  REPO_ROOT / "functions" / "migrate" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migrate_function_fails_the_deploy_at_its_deadline_and_finishes_on_the_next(
        old_table: OldTable, db_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    handler = load_migrate_handler(monkeypatch, {**db_env, "DB_NAME": old_table.settings.name})
    calls = iter(range(10**6))  # the clock runs out after a few chunks: ~100 s of the 900 s per question
    context = ClockedContext(remaining_ms=lambda: 900_000 - 100_000 * next(calls))
    with cloudformation_response_url() as (url, responses):
        event = {"RequestType": "Update", "ResponseURL": url, "StackId": "arn:aws:cloudformation:test",
                 "RequestId": str(uuid.uuid4()), "LogicalResourceId": "SchemaMigration"}
        handler.handler(event, context)
        assert responses[-1]["Status"] == "FAILED"
        assert "tick_minutes_fill" in responses[-1]["Reason"] and "python -m tickstream.migrate" in (
            responses[-1]["Reason"])
        assert "ix_ticks_script_traded_at" in indexes(old_table.conn)
        handler.handler(event, ClockedContext())
        assert responses[-1]["Status"] == "SUCCESS"
        assert responses[-1]["Data"]["Applied"] == "0007_tick_minutes,0008_jobs_broker,0009_tick_totals,0010_tick_lags"
    load_settings.cache_clear()
    assert stored_spans(old_table.conn) == old_table.expected
