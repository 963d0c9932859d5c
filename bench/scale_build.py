"""The scale bench's table: N ticks over 200 scripts and 30 UTC days, built server-side as fast as MariaDB allows.

A few hot symbols carry most rows and a long tail the rest (weights ∝ 1/rank); each script's trade ids are
contiguous from day to day, except a hole of HOLE_IDS ids on the middle day of every HOLE_EVERY-th script. Rows are
made by `INSERT … SELECT` from MariaDB's sequence engine (no bytes cross the wire), one statement per script per
day, in primary-key order: every page fills once and is never split. Each day's buckets of the time index
(tick_minutes) are then made from the rows just written (one grouped primary-key range, pages still cached).
tick_coverage gets the matching row for every script and day (computed from the same parameters, no scan).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pymysql

from bench.common import BENCH_DB_PREFIX
from tickstream import coverage, time_index
from tickstream.db import connect
from tickstream.migrate import migrate
from tickstream.settings import DatabaseSettings, database_settings

SCRIPTS = 200
DAYS = 30
HOT = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")
HOT_SHARE = 0.6  # of all rows, split over the hot symbols ∝ 1/rank
HOLE_EVERY = 40  # every 40th script (from the first, the hottest) has a hole …
HOLE_IDS = 100  # … of this many ids on its middle day, if it has ≥ 3 × HOLE_IDS trades a day
DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class ScriptPlan:
    script_id: int
    symbol: str
    rows_per_day: int
    first_trade_id: int
    has_hole: bool

    @property
    def interval_us(self) -> int:
        return DAY_US // self.rows_per_day


@dataclass(frozen=True, slots=True)
class DayBuild:
    """One script's one day: its ids [first_id, first_id + rows) minus an optional hole at [hole_at, +HOLE_IDS)."""

    plan: ScriptPlan
    day: date
    first_id: int
    hole_at: int | None  # offset of the hole within the day, or None

    @property
    def stored(self) -> int:
        return self.plan.rows_per_day - (HOLE_IDS if self.hole_at is not None else 0)

    @property
    def last_id(self) -> int:
        return self.first_id + self.plan.rows_per_day - 1

    def traded_at(self, offset: int) -> datetime:
        return datetime.combine(self.day, datetime.min.time(), UTC) + timedelta(
            microseconds=offset * self.plan.interval_us)


def days_ending_yesterday(today: date | None = None) -> list[date]:
    """The 30 whole UTC days before today: the table looks like one a collector filled up to now."""
    today = today or datetime.now(UTC).date()
    return [today - timedelta(days=DAYS - i) for i in range(DAYS)]


def weights(count: int) -> list[float]:
    """Share of all rows per script: the hot symbols HOT_SHARE ∝ 1/rank, the tail the rest ∝ 1/rank."""
    hot = [1 / (rank + 1) for rank in range(len(HOT))]
    tail = [1 / (rank + 1) for rank in range(count - len(HOT))]
    return ([HOT_SHARE * w / sum(hot) for w in hot] + [(1 - HOT_SHARE) * w / sum(tail) for w in tail])


def create_scripts(conn: pymysql.Connection, total_rows: int) -> list[ScriptPlan]:
    """The broker and its SCRIPTS scripts, or the ones an interrupted build made (then it resumes)."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT s.id FROM scripts s JOIN brokers b ON b.id = s.broker_id WHERE b.name = 'Scale bench'"
                       " ORDER BY s.id")
        existing = [row[0] for row in cursor.fetchall()]
        if not existing:
            cursor.execute("INSERT INTO brokers (type, name, api_config) VALUES ('binance', 'Scale bench', '{}')")
            broker_id = cursor.lastrowid
        plans = []
        for index, share in enumerate(weights(SCRIPTS)):
            symbol = HOT[index] if index < len(HOT) else f"TAIL{index:04d}USDT"
            if existing:
                script_id = existing[index]
            else:
                cursor.execute("INSERT INTO scripts (broker_id, name, trading_symbol, additional_data, is_active)"
                               " VALUES (%s, %s, %s, '{\"stream\": \"trade\"}', FALSE)",
                               (broker_id, symbol, symbol))
                script_id = cursor.lastrowid
            rows_per_day = max(1, math.floor(total_rows * share / DAYS))
            plans.append(ScriptPlan(script_id, symbol, rows_per_day, 1_000_000_000 * (index + 1),
                                    index % HOLE_EVERY == 0 and rows_per_day >= 3 * HOLE_IDS))
    conn.commit()
    return plans


def day_builds(plan: ScriptPlan, days: Sequence[date]) -> list[DayBuild]:
    builds = []
    for index, day in enumerate(days):
        hole = plan.rows_per_day // 2 if plan.has_hole and index == len(days) // 2 else None
        builds.append(DayBuild(plan, day, plan.first_trade_id + index * plan.rows_per_day, hole))
    return builds


_INSERT = """
INSERT INTO ticks (script_id, trade_id, price, quantity, is_buyer_maker, traded_at, event_at,
                   received_at_producer, stored_at)
SELECT %(script)s, %(first_id)s + seq,
       95000 + (seq * 7919) MOD 5000 + ((seq * 104729) MOD 100) / 100,
       ((seq * 31) MOD 99999 + 1) / 100000,
       seq MOD 3 = 0,
       t.traded, t.traded + INTERVAL 2000 MICROSECOND, t.traded + INTERVAL 9000 MICROSECOND,
       t.traded + INTERVAL 25000 MICROSECOND
FROM (SELECT seq, %(day)s + INTERVAL (seq * %(interval)s) MICROSECOND AS traded FROM seq_{lo}_to_{hi}) t
"""


def insert_day(cursor: pymysql.cursors.Cursor, build: DayBuild, with_time_index: bool = True) -> None:
    """The day's rows in id order: one statement, or two around the hole. A day whose last id is stored is done
    (an interrupted build resumes here); a day begun but not finished is deleted and made again. Without the time
    index: a table of the schema before migration 0007 (bench/migration_0007.py)."""
    cursor.execute("SELECT 1 FROM ticks WHERE script_id = %s AND trade_id = %s", (build.plan.script_id,
                                                                                  build.last_id))
    if cursor.fetchone():
        return
    cursor.execute("DELETE FROM ticks WHERE script_id = %s AND trade_id BETWEEN %s AND %s",
                   (build.plan.script_id, build.first_id, build.last_id))
    ranges = [(0, build.plan.rows_per_day - 1)]
    if build.hole_at is not None:
        ranges = [(0, build.hole_at - 1), (build.hole_at + HOLE_IDS, build.plan.rows_per_day - 1)]
    params = {"script": build.plan.script_id, "first_id": build.first_id, "interval": build.plan.interval_us,
              "day": build.traded_at(0).replace(tzinfo=None)}
    for lo, hi in ranges:
        cursor.execute(_INSERT.format(lo=lo, hi=hi), params)  # lo/hi: ints computed here, never input
    if with_time_index:
        time_index.index_id_range(cursor, build.plan.script_id, build.first_id, build.last_id)


def coverage_row(build: DayBuild) -> tuple:
    last_offset = build.plan.rows_per_day - 1
    return (build.plan.script_id, build.day, build.stored, build.first_id, build.last_id,
            build.traded_at(0).replace(tzinfo=None), build.traded_at(last_offset).replace(tzinfo=None))


def scale_database(total_rows: int) -> DatabaseSettings:
    """`tickstream_bench_scale_<rows>` on the DB_* server: kept between runs (a 100M build takes most of an hour)."""
    server = database_settings()
    return DatabaseSettings(server.host, server.port, server.user, server.password,
                            f"{BENCH_DB_PREFIX}scale_{total_rows}")


def is_built(db: DatabaseSettings) -> bool:
    """Coverage is written last: a full set of coverage rows means the build finished."""
    try:
        conn = connect(db, autocommit=True)
    except pymysql.err.OperationalError:
        return False
    try:
        with conn.cursor() as cursor:
            days = days_ending_yesterday()
            cursor.execute("SELECT COUNT(DISTINCT script_id), COUNT(DISTINCT day) FROM tick_coverage"
                           " WHERE day BETWEEN %s AND %s", (days[0], days[-1]))
            return cursor.fetchone() == (SCRIPTS, DAYS)
    except pymysql.err.ProgrammingError:
        return False
    finally:
        conn.close()


def build_or_reuse(total_rows: int, workers: int = 2) -> tuple[DatabaseSettings, bool]:
    """The scale database for `total_rows`, built unless a finished build is there; (settings, reused)."""
    db = scale_database(total_rows)
    migrate(db)  # a kept table gets the newest schema (what a deploy would do to it) before it is measured
    reused = is_built(db)
    if not reused:
        build(db, total_rows, workers)  # a build interrupted (the server restarted, ^C) resumes where it stopped
    conn = connect(db, autocommit=True)
    try:
        remove_appended(conn)
        coverage.recount_totals(conn)  # the build and remove_appended write coverage around the ingest
    finally:
        conn.close()
    return db, reused


def remove_appended(conn: pymysql.Connection) -> int:
    """Delete what measuring appended (ticks traded from today on, after the 30 days, and their coverage, minutes
    and candles), so every run measures the table as built; returns the ticks deleted."""
    today_minute = time_index.minute_of(datetime.combine(days_ending_yesterday()[-1] + timedelta(days=1),
                                                         datetime.min.time(), UTC))
    deleted = 0
    with conn.cursor() as cursor:
        cursor.execute("SELECT script_id, MIN(first_trade_id) FROM tick_minutes WHERE minute >= %s"
                       " GROUP BY script_id", (today_minute,))
        for script_id, first_id in cursor.fetchall():
            while cursor.execute("DELETE FROM ticks WHERE script_id = %s AND trade_id >= %s ORDER BY trade_id"
                                 " LIMIT 50000", (script_id, first_id)):
                deleted += cursor.rowcount
        for table in ("tick_minutes", "candles_1m"):  # fixed names
            cursor.execute(f"DELETE FROM {table} WHERE minute >= %s", (today_minute,))
        cursor.execute("DELETE FROM tick_coverage WHERE day > %s", (days_ending_yesterday()[-1],))
    return deleted


def build(db: DatabaseSettings, total_rows: int, workers: int = 2, with_time_index: bool = True) -> list[ScriptPlan]:
    """Fill the (migrated, empty) database `db`; returns the scripts' plans. Scripts are split over `workers`
    connections, each writing its scripts in key order (two cores: the server, not Python, is the limit)."""
    conn = connect(db, autocommit=True)
    plans = create_scripts(conn, total_rows)
    days = days_ending_yesterday()
    errors: list[BaseException] = []

    def fill(mine: Sequence[ScriptPlan]) -> None:
        worker = connect(db, autocommit=True)
        try:
            with worker.cursor() as cursor:
                for plan in mine:
                    for day_build in day_builds(plan, days):
                        insert_day(cursor, day_build, with_time_index)
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)
        finally:
            worker.close()

    threads = [threading.Thread(target=fill, args=(plans[i::workers],)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    with conn.cursor() as cursor:
        rows = [coverage_row(b) for plan in plans for b in day_builds(plan, days)]
        cursor.execute("DELETE FROM tick_coverage WHERE day BETWEEN %s AND %s", (days[0], days[-1]))
        cursor.executemany("INSERT INTO tick_coverage (script_id, day, stored, first_trade_id, last_trade_id,"
                           " first_traded_at, last_traded_at) VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
    conn.close()
    return plans


def expected_rows(plans: Sequence[ScriptPlan]) -> int:
    return sum(plan.rows_per_day * DAYS - (HOLE_IDS if plan.has_hole else 0) for plan in plans)
