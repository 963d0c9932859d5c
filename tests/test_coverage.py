"""tick_coverage kept by the ingest (exact under redelivery and racing writers), the audit's read side and the
rebuild, against the real MariaDB."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date

import pymysql
import pytest

from tests.conftest import make_broker, make_script
from tickstream import coverage
from tickstream.codec import TickBatch
from tickstream.db import connect
from tickstream.ingest import TickIngestor
from tickstream.settings import DatabaseSettings
from tickstream.tick_store import TickStore, insert_ticks_ignore
from tickstream.ticks import Tick

DAY_US = coverage.DAY_US
MIDNIGHT_US = 20_000 * DAY_US  # 2024-10-04 00:00 UTC


def ticks(script_id: int, ids: range, first_us: int = MIDNIGHT_US - 50_000_000, step_us: int = 1_000_000) -> list[Tick]:
    """One tick per second from `first_us` (by default 50 s before midnight: the ids cross into the next day)."""
    return [Tick(script_id, i, "1.5", "2", False, first_us + (i - ids[0]) * step_us, first_us, first_us)
            for i in ids]


def batch(*parts: list[Tick]) -> TickBatch:
    return TickBatch.from_ticks([tick for part in parts for tick in part])


def coverage_rows(conn: pymysql.Connection) -> dict[tuple[int, date], tuple]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT script_id, day, stored, first_trade_id, last_trade_id, first_traded_at, last_traded_at"
                       " FROM tick_coverage")
        return {(row[0], row[1]): tuple(row[2:]) for row in cursor.fetchall()}


def counted_from_ticks(conn: pymysql.Connection) -> dict[tuple[int, date], tuple]:
    """What tick_coverage must say, counted the slow way."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT script_id, DATE(traded_at), COUNT(*), MIN(trade_id), MAX(trade_id), MIN(traded_at),"
                       " MAX(traded_at) FROM ticks GROUP BY script_id, DATE(traded_at)")
        return {(row[0], row[1]): tuple(row[2:]) for row in cursor.fetchall()}


@pytest.fixture(params=["load_data", "insert_ignore"])
def ingestor(request: pytest.FixtureRequest, db_settings: DatabaseSettings) -> Iterator[TickIngestor]:
    load_data = request.param == "load_data"
    ingestor = TickIngestor(db_settings, open_store=lambda: TickStore(connect(db_settings, local_infile=load_data),
                                                                      use_load_data=load_data))
    yield ingestor
    ingestor.close()


def test_coverage_counts_each_stored_row_once_per_script_and_utc_day(ingestor: TickIngestor,
                                                                   db: pymysql.Connection) -> None:
    broker = make_broker(db)
    btc, eth = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    first = batch(ticks(btc, range(1, 101)), ticks(eth, range(500, 530)))
    ingestor.store([first])
    assert coverage_rows(db) == counted_from_ticks(db)
    assert coverage_rows(db)[(btc, date(2024, 10, 3))][:3] == (50, 1, 50)  # 23:59:10 .. 23:59:59
    assert coverage_rows(db)[(btc, date(2024, 10, 4))][:3] == (50, 51, 100)

    # A whole redelivery adds nothing; one chunk mixing redelivered and new rows (of several groups) adds the new.
    ingestor.store([first])
    assert coverage_rows(db) == counted_from_ticks(db)
    ingestor.store([batch(ticks(btc, range(1, 151)), ticks(eth, range(520, 560)))])
    assert coverage_rows(db) == counted_from_ticks(db)
    assert coverage_rows(db)[(btc, date(2024, 10, 4))][0] == 100
    assert coverage_rows(db)[(eth, date(2024, 10, 3))][0] == 60  # 500..559: the redelivered 520..529 once

    # The same message twice in one invocation (SQS may deliver a duplicate within a batch): counted once.
    twice = batch(ticks(btc, range(1000, 1010), first_us=MIDNIGHT_US), ticks(eth, range(1000, 1005)))
    ingestor.store([twice, twice])
    assert coverage_rows(db) == counted_from_ticks(db)


def statements(conn: pymysql.Connection, *names: str) -> dict[str, int]:
    """How many statements of each kind (Com_load, Com_savepoint …) this session ran."""
    with conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN (" + ",".join(["%s"] * len(names)) + ")", names)
        return {name: int(value) for name, value in cursor.fetchall()}


def test_a_new_or_redelivered_chunk_of_several_groups_is_one_load_and_nothing_else(
        db_settings: DatabaseSettings, db: pymysql.Connection) -> None:
    """The live stream's chunks (all new) and a redelivered message (all duplicates) need no SAVEPOINT: a round
    trip per chunk, which a loaded machine makes expensive."""
    broker = make_broker(db)
    btc, eth = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    store = TickStore(connect(db_settings, local_infile=True), use_load_data=True)
    try:
        message = batch(ticks(btc, range(1, 101)), ticks(eth, range(1, 31)))  # four (script, day) groups
        results = [store.write(message), store.write(message)]
        store.commit()
        ran = statements(store.conn, "Com_load", "Com_savepoint", "Com_rollback_to_savepoint")
    finally:
        store.close()
    assert [(r.inserted, r.duplicates) for r in results] == [(130, 0), (0, 130)]
    assert ran == {"Com_load": 2, "Com_savepoint": 0, "Com_rollback_to_savepoint": 0}
    assert coverage_rows(db) == counted_from_ticks(db)


def test_a_partly_stored_chunk_after_others_writes_the_transaction_again_exactly(
        ingestor: TickIngestor, db: pymysql.Connection) -> None:
    """Chunks of one invocation, the third partly stored by the first (within the same transaction) and partly
    new: the transaction is rolled back and written again chunk by chunk, every row counted once."""
    broker = make_broker(db)
    btc, eth = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    first_us = MIDNIGHT_US - 500_000_000  # 1,200 ids a script at 1 s each: both scripts cross midnight
    first = batch(ticks(btc, range(1, 601), first_us), ticks(eth, range(1, 601), first_us))
    second = batch(ticks(btc, range(601, 1201), first_us + 600_000_000),
                   ticks(eth, range(601, 1201), first_us + 600_000_000))
    third = batch(ticks(btc, range(301, 1801), first_us + 300_000_000))  # 301..1200 stored by now, 1201.. new
    outcome = ingestor.store([first, second, third])
    assert coverage_rows(db) == counted_from_ticks(db)
    assert (outcome.stored, outcome.duplicates) == (3000, 900)
    assert sum(row[0] for row in coverage_rows(db).values()) == 3000
    assert coverage_rows(db)[(btc, date(2024, 10, 4))][:3] == (1300, 501, 1800)


def test_ticks_of_unknown_scripts_are_not_counted(ingestor: TickIngestor, db: pymysql.Connection) -> None:
    btc = make_script(db, make_broker(db), "BTCUSDT")
    ingestor.store([batch(ticks(btc, range(1, 11)), ticks(btc + 1000, range(1, 11)))])
    assert coverage_rows(db) == counted_from_ticks(db)
    assert {key[0] for key in coverage_rows(db)} == {btc}


def test_a_rolled_back_transaction_counts_nothing(db_settings: DatabaseSettings, db: pymysql.Connection) -> None:
    btc = make_script(db, make_broker(db), "BTCUSDT")
    store = TickStore(connect(db_settings))
    try:
        store.write(batch(ticks(btc, range(1, 11))))
        store.rollback()
        store.insert(batch(ticks(btc, range(5, 8))))
    finally:
        store.close()
    assert coverage_rows(db) == counted_from_ticks(db)
    assert sum(row[0] for row in coverage_rows(db).values()) == 3


def test_racing_writers_of_the_same_rows_count_them_once(db_settings: DatabaseSettings,
                                                         db: pymysql.Connection) -> None:
    """Two ingestors store the same, overlapping batches at once (a redelivery while the first delivery is still
    being written): the storage engine decides which one stored each row, and coverage follows it exactly."""
    broker = make_broker(db)
    scripts = [make_script(db, broker, f"S{n}USDT") for n in range(4)]
    batches = [batch(*[ticks(s, range(start, start + 400)) for s in scripts]) for start in range(1, 4001, 200)]
    errors: list[BaseException] = []

    def write(order: list[TickBatch]) -> None:
        ingestor = TickIngestor(db_settings)
        try:
            for item in order:
                for _ in range(5):  # a deadlock between the two is retried, as SQS would redeliver
                    try:
                        ingestor.store([item])
                        break
                    except pymysql.err.OperationalError as error:
                        if error.args[0] != 1213:
                            raise
        except BaseException as error:
            errors.append(error)
        finally:
            ingestor.close()

    threads = [threading.Thread(target=write, args=(order,)) for order in (batches, batches[::-1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert coverage_rows(db) == counted_from_ticks(db)
    assert sum(row[0] for row in coverage_rows(db).values()) == 4 * 4200


def test_summarize_groups_by_script_and_day() -> None:
    rows = batch(ticks(7, range(10, 13)), ticks(8, range(1, 3), first_us=MIDNIGHT_US), ticks(7, range(5, 6))).rows
    groups = coverage.summarize(rows)
    day = MIDNIGHT_US // DAY_US
    assert set(groups) == {(7, day - 1), (8, day)}
    assert groups[(7, day - 1)] == coverage.RowGroup(7, day - 1, 4, 5, 12, MIDNIGHT_US - 50_000_000,
                                                     MIDNIGHT_US - 48_000_000)
    assert groups[(8, day)].count == 2


# --- the audit's read side -----------------------------------------------------------------------------------

def handler_reads(conn: pymysql.Connection) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
        return sum(int(value) for _, value in cursor.fetchall())


def test_audit_finds_a_hole_deeper_than_a_million_ids_below_the_newest(db_settings: DatabaseSettings,
                                                                       db: pymysql.Connection) -> None:
    broker = make_broker(db)
    btc, other = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    day_us = MIDNIGHT_US + 3600_000_000
    newest = 1_500_000
    stored = [range(1, 1001), range(1101, 2001), range(2002, 2501), range(newest - 300, newest + 1)]
    store = TickStore(connect(db_settings))
    try:
        for ids in stored:
            store.insert(batch(ticks(btc, ids, first_us=day_us + ids[0], step_us=1)))
        store.insert(batch(ticks(other, range(1, 5001), first_us=day_us)))
    finally:
        store.close()
    (day,) = coverage.incomplete_days(db, btc)
    assert (day.day, day.first_trade_id, day.last_trade_id) == (date(2024, 10, 4), 1, newest)
    assert (day.stored, day.missing, day.complete) == (2700, newest - 2700, False)
    assert coverage.incomplete_days(db, other) == []

    conn = connect(db_settings, autocommit=True)
    try:
        before = handler_reads(conn)
        holes = coverage.day_missing_ranges(conn, btc, day.day, chunk_rows=256)
        reads = handler_reads(conn) - before
    finally:
        conn.close()
    assert holes == [(1001, 1100), (2001, 2001), (2501, newest - 301)]
    assert newest - holes[0][1] > 1_000_000
    # The walk read the day's 2,700 rows of this script (plus one probe per chunk), never ETHUSDT's 5,000.
    assert reads <= 2700 + 2 * (2700 // 256 + 2) + 10


def test_missing_ranges_at_the_edges_and_between_days(db: pymysql.Connection) -> None:
    btc = make_script(db, make_broker(db), "BTCUSDT")
    insert_ticks_ignore(db, ticks(btc, range(10, 20)) + ticks(btc, range(30, 40), first_us=MIDNIGHT_US + 5))
    assert list(coverage.missing_ranges(db, btc, 1, 45, chunk_rows=3)) == [(1, 9), (20, 29), (40, 45)]
    assert list(coverage.missing_ranges(db, btc, 10, 19, chunk_rows=10)) == []
    coverage.rebuild(db, [btc])
    assert coverage.boundary_gaps(db, btc) == [(20, 29)]


def test_rebuild_recounts_rows_stored_without_coverage(db_settings: DatabaseSettings, db_env: dict[str, str],
                                                       db: pymysql.Connection) -> None:
    broker = make_broker(db)
    btc, eth = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    insert_ticks_ignore(db, ticks(btc, range(1, 200)) + ticks(eth, range(1, 30), first_us=MIDNIGHT_US + 7 * DAY_US))
    with db.cursor() as cursor:  # a stale row, as if an old deploy had counted wrong
        cursor.execute("INSERT INTO tick_coverage (script_id, day, stored, first_trade_id, last_trade_id,"
                       " first_traded_at, last_traded_at) VALUES (%s, '2024-10-04', 999, 1, 1, NOW(), NOW())", (btc,))
    result = coverage.rebuild(connect(db_settings))
    assert (result.scripts, result.days, result.ticks) == (2, 3, 199 + 29)
    assert coverage_rows(db) == counted_from_ticks(db)
    done = subprocess.run([sys.executable, "-m", "tickstream.coverage", "rebuild", "--script-id", str(btc)],
                          env={**os.environ, **db_env}, capture_output=True, text=True, timeout=60, check=True)
    assert "1 scripts, 2 days, 199 ticks" in done.stdout  # the command: the same, and idempotent
    assert coverage_rows(db) == counted_from_ticks(db)


def test_rebuild_while_the_ingest_writes_loses_and_doubles_nothing(db_settings: DatabaseSettings,
                                                                   db: pymysql.Connection) -> None:
    """The rebuild recounts a day while an ingest keeps adding to it: afterwards coverage is exactly the ticks."""
    btc = make_script(db, make_broker(db), "BTCUSDT")
    day = date(2024, 10, 4)
    insert_ticks_ignore(db, ticks(btc, range(1, 500), first_us=MIDNIGHT_US, step_us=1000))  # older, uncounted
    done = threading.Event()
    errors: list[BaseException] = []

    def keep_ingesting() -> None:
        ingestor = TickIngestor(db_settings)
        try:
            for start in range(500, 20_500, 500):
                ingestor.store([batch(ticks(btc, range(start, start + 500), first_us=MIDNIGHT_US + start * 1000,
                                            step_us=1000))])
        except BaseException as error:
            errors.append(error)
        finally:
            ingestor.close()
            done.set()

    writer = threading.Thread(target=keep_ingesting)
    writer.start()
    conn = connect(db_settings)
    rebuilds = 0
    try:
        while not done.is_set() or rebuilds == 0:
            coverage.rebuild_day(conn, btc, day)
            rebuilds += 1
    finally:
        writer.join()
        conn.close()
    assert not errors and rebuilds > 1
    assert coverage_rows(db) == counted_from_ticks(db)
    assert coverage_rows(db)[(btc, day)][0] == 20_499
