"""Per-script totals (tick_totals) against real MariaDB: always the script's coverage rows summed up, whoever writes
them (the ingest, the retention, the purge, writers racing, the repair), so /stats reads O(scripts) rows."""

from __future__ import annotations

import importlib.util
import random
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pymysql
import pytest

from tests.conftest import make_broker, make_script
from tickstream import completeness, coverage, jobs
from tickstream.codec import TickBatch
from tickstream.db import connect
from tickstream.settings import DatabaseSettings, load_settings
from tickstream.tick_store import TickStore
from tickstream.ticks import Tick

NOW = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
DAY_US = 86_400_000_000
FIRST_DAY_US = int(datetime.combine(NOW.date() - timedelta(days=4), datetime.min.time(), UTC).timestamp()) * 10**6
DEADLOCK = 1213
MAINTENANCE_HANDLER = Path(__file__).resolve().parent.parent / "functions" / "maintenance" / "handler.py"


def ticks(script_id: int, ids: range | list[int], per_day: int = 500) -> list[Tick]:
    """Ticks with trade times spread evenly over the days from FIRST_DAY_US, `per_day` a day."""
    spacing = DAY_US // per_day
    return [Tick(script_id, i, "1.5", "2", i % 2 == 0, FIRST_DAY_US + (i - 1) * spacing,
                 FIRST_DAY_US + (i - 1) * spacing, FIRST_DAY_US + (i - 1) * spacing) for i in ids]


def totals_row(conn: pymysql.Connection, script_id: int) -> tuple | None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT stored, first_trade_id, last_trade_id, first_traded_at, last_traded_at"
                       " FROM tick_totals WHERE script_id = %s", (script_id,))
        row = cursor.fetchone()
    return None if row is None else tuple(row)


def totals_of(conn: pymysql.Connection, script_id: int) -> completeness.TickTotals:
    (stats,) = completeness.script_stats(conn, script_id)
    return stats.totals


def summed_coverage(conn: pymysql.Connection, script_id: int) -> tuple | None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT SUM(stored), MIN(first_trade_id), MAX(last_trade_id), MIN(first_traded_at),"
                       " MAX(last_traded_at) FROM tick_coverage WHERE script_id = %s", (script_id,))
        row = cursor.fetchone()
    return None if row[0] is None else (int(row[0]), *row[1:])


def from_ticks(conn: pymysql.Connection, script_id: int) -> tuple | None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*), MIN(trade_id), MAX(trade_id), MIN(traded_at), MAX(traded_at) FROM ticks"
                       " WHERE script_id = %s", (script_id,))
        row = cursor.fetchone()
    return None if not row[0] else tuple(row)


def no_pause(_seconds: float) -> None:
    pass


def store_batches(settings: DatabaseSettings, batches: list[list[Tick]]) -> None:
    """Each batch in its own transaction; one that loses a deadlock is written again (SQS would redeliver it)."""
    store = TickStore(connect(settings, local_infile=True))
    try:
        for batch in batches:
            for attempt in range(5):
                try:
                    store.insert(TickBatch.from_ticks(batch))
                    break
                except pymysql.err.OperationalError as error:
                    if error.args[0] != DEADLOCK or attempt == 4:
                        raise
    finally:
        store.close()


def add_coverage_by_hand(conn: pymysql.Connection, script_id: int, day: date, stored: int, first_id: int,
                         last_id: int) -> None:
    """A coverage row written around the ingest (as an ingest of the previous version would: no totals)."""
    start = datetime.combine(day, datetime.min.time())
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO tick_coverage (script_id, day, stored, first_trade_id, last_trade_id,"
                       " first_traded_at, last_traded_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                       (script_id, day, stored, first_id, last_id, start, start + timedelta(hours=23)))


def handler_reads(conn: pymysql.Connection) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
        return sum(int(value) for _, value in cursor.fetchall())


def test_totals_follow_the_ingest_redeliveries_retention_and_purge(db: pymysql.Connection,
                                                                    db_settings: DatabaseSettings) -> None:
    broker = make_broker(db)
    btc, eth = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    ids = [i for i in range(1, 2501) if not 1200 <= i < 1210]  # five days, one hole
    live = [ticks(btc, ids[n:n + 300]) + ticks(eth, ids[n:n + 100]) for n in range(0, len(ids), 300)]
    store_batches(db_settings, live)
    redelivered = [live[2], ticks(btc, range(1195, 1215))]  # all duplicates; then a chunk partly stored already
    store_batches(db_settings, redelivered)
    for script_id in (btc, eth):
        assert totals_row(db, script_id) == summed_coverage(db, script_id) == from_ticks(db, script_id)
    assert totals_row(db, btc)[0] == 2500 and totals_row(db, eth)[0] < 2500

    assert jobs.run_retention(db, 3, now=NOW, chunk_rows=400, sleep=no_pause).done  # removes the two oldest days
    cutoff = jobs.retention_cutoff(3, NOW)
    for script_id in (btc, eth):
        assert totals_row(db, script_id) == summed_coverage(db, script_id) == from_ticks(db, script_id)
    figures = totals_of(db, btc)
    assert (figures.tick_count, figures.first_trade_at) == (1500, cutoff)
    assert (figures.incomplete_days, figures.missing_trades) == (0, 0)

    with db.cursor() as cursor:
        cursor.execute("UPDATE scripts SET is_active = FALSE WHERE id = %s", (eth,))
    job = jobs.create_purge_job(db, eth)
    assert jobs.run_job(db, job.id, chunk_rows=500, sleep=no_pause).done
    assert totals_row(db, eth) is None and totals_row(db, btc)[0] == 1500


def test_incomplete_days_are_counted_from_the_missing_index(db: pymysql.Connection,
                                                             db_settings: DatabaseSettings) -> None:
    broker = make_broker(db)
    btc = make_script(db, broker, "BTCUSDT")
    store_batches(db_settings, [ticks(btc, [i for i in range(1, 1501) if i % 100 != 7 or i > 1000])])
    figures = totals_of(db, btc)
    assert (figures.tick_count, figures.incomplete_days, figures.missing_trades) == (1490, 2, 10)
    for n in range(1, 301):  # complete days long before: the audit's look at incomplete days never reads them
        add_coverage_by_hand(db, btc, NOW.date() - timedelta(days=30 + n), 10, 10 * n, 10 * n + 9)
    before = handler_reads(db)
    assert [day.missing for day in coverage.incomplete_days(db, btc)] == [5, 5]
    assert handler_reads(db) - before <= 5


def test_stats_totals_do_not_grow_with_the_days_kept(db: pymysql.Connection) -> None:
    """3 days of coverage per script, then 400: /stats' reads stay the same (they summed every day before)."""
    broker = make_broker(db)
    scripts = [make_script(db, broker, f"S{n}USDT") for n in range(3)]
    last_day = NOW.date()

    def add_days(first: int, count: int) -> None:
        for script_id in scripts:
            for n in range(first, first + count):
                add_coverage_by_hand(db, script_id, last_day - timedelta(days=n), 1000, n * 1000, n * 1000 + 999)
        coverage.recount_totals(db, scripts)

    def reads() -> int:
        before = handler_reads(db)
        figures = completeness.script_stats(db)
        assert [stats.totals.tick_count for stats in figures] == [1000 * days] * len(scripts)
        return handler_reads(db) - before

    days = 3
    add_days(0, 3)
    few = reads()
    days = 400
    add_days(3, 397)
    many = reads()
    assert many <= few + 3, (few, many)


def test_recount_repairs_totals_written_around_the_ingest_and_the_schedule_runs_it(
        db: pymysql.Connection, db_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker(db)
    btc, eth = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    for n in range(3):
        add_coverage_by_hand(db, btc, NOW.date() - timedelta(days=n), 100, 1000 - 100 * n, 1099 - 100 * n)
    assert totals_row(db, btc) is None
    assert coverage.recount_totals(db) == 1
    assert totals_row(db, btc) == summed_coverage(db, btc) and totals_row(db, btc)[:3] == (300, 800, 1099)
    assert coverage.recount_totals(db) == 0

    add_coverage_by_hand(db, eth, NOW.date(), 7, 1, 7)
    with db.cursor() as cursor:
        cursor.execute("UPDATE tick_totals SET stored = stored + 5 WHERE script_id = %s", (btc,))
    for key, value in db_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TICK_RETENTION_DAYS", raising=False)
    load_settings.cache_clear()
    spec = importlib.util.spec_from_file_location("maintenance_handler_under_test", MAINTENANCE_HANDLER)
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    try:
        assert handler.handler({}, None) == {"jobs": [], "totals_corrected": 2}  # the schedule's event
    finally:
        handler.forget_connection()
        load_settings.cache_clear()
    for script_id in (btc, eth):
        assert totals_row(db, script_id) == summed_coverage(db, script_id)


def test_writers_racing_on_one_script_and_the_recount_keep_totals_exact(db: pymysql.Connection,
                                                                        db_settings: DatabaseSettings) -> None:
    """Three writers store overlapping ranges of one script over two days (duplicates, chunks partly stored) while
    the recount runs in a loop: no count is lost or counted twice."""
    broker = make_broker(db)
    btc = make_script(db, broker, "BTCUSDT")
    rng = random.Random(7)
    plans = []
    for _ in range(3):
        starts = [rng.randrange(1, 9000) for _ in range(25)]
        plans.append([ticks(btc, range(start, start + rng.randrange(200, 1200)), per_day=5000) for start in starts])
    errors: list[BaseException] = []
    writing = threading.Event()

    def write(batches: list[list[Tick]]) -> None:
        try:
            store_batches(db_settings, batches)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    def recount() -> None:
        conn = connect(db_settings, autocommit=True)
        try:
            while writing.is_set():
                coverage.recount_totals(conn, [btc])
        except BaseException as error:
            errors.append(error)
        finally:
            conn.close()

    writing.set()
    threads = [threading.Thread(target=write, args=(plan,)) for plan in plans]
    counter = threading.Thread(target=recount)
    for thread in [*threads, counter]:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    writing.clear()
    counter.join(timeout=60)
    assert not errors, errors
    expected = {tick.trade_id for plan in plans for batch in plan for tick in batch}
    assert from_ticks(db, btc)[0] == len(expected)
    assert totals_row(db, btc) == summed_coverage(db, btc) == from_ticks(db, btc)
    assert coverage.recount_totals(db, [btc]) == 0


def test_ticks_stored_per_minute_follow_the_database_clock(db: pymysql.Connection,
                                                           db_settings: DatabaseSettings) -> None:
    """What the ingest stores is counted in the database clock's minute: the last complete one and this one, also
    for a write that waited across the minute's end; no tick is counted when /stats reads them."""
    broker = make_broker(db)
    btc, eth = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    minute = 29_000_000  # minutes since the epoch (2025-02-20)
    writer = TickStore(connect(db_settings, local_infile=True))
    next_id = iter(range(1, 10**6))

    def store(script_id: int, count: int, at_second: float) -> None:
        with writer.conn.cursor() as cursor:  # the session's clock (UTC_TIMESTAMP follows it)
            cursor.execute("SET timestamp = %s", (minute * 60 + at_second,))
        writer.insert(TickBatch.from_ticks(ticks(script_id, [next(next_id) for _ in range(count)])))

    def per_minute(at_second: float) -> dict[int, tuple[int, int]]:
        with db.cursor() as cursor:
            cursor.execute("SET timestamp = %s", (minute * 60 + at_second,))
        return {stats.script.id: (stats.totals.stored_last_minute, stats.totals.stored_this_minute)
                for stats in completeness.script_stats(db)}

    try:
        store(btc, 10, 5)
        store(btc, 20, 30)
        store(eth, 7, 59)
        assert per_minute(59.5) == {btc: (0, 30), eth: (0, 7)}
        store(btc, 5, 61)  # the next minute: the 30 become the last complete minute's
        assert per_minute(62) == {btc: (30, 5), eth: (7, 0)}
        store(btc, 4, 59.9)  # a write whose clock was read before the minute's end, committed after
        store(btc, 0 + 3, 62)
        assert per_minute(63) == {btc: (34, 8), eth: (7, 0)}
        assert per_minute(130) == {btc: (8, 0), eth: (0, 0)}
        store(btc, 2, 60 * 5)  # minutes later: the counts start afresh
        assert per_minute(60 * 5 + 1) == {btc: (0, 2), eth: (0, 0)}
        store_batches(db_settings, [ticks(btc, range(1, 11))])  # duplicates only: nothing stored, nothing counted
        assert per_minute(60 * 5 + 2) == {btc: (0, 2), eth: (0, 0)}
    finally:
        writer.close()
    assert totals_row(db, btc)[0] == 10 + 20 + 5 + 4 + 3 + 2
