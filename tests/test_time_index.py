"""The sparse time index (tick_minutes, tickstream.time_index) against the real MariaDB: kept by every write path
in any arrival order, read by tick pages, candles, retention and /stats exactly as a brute-force scan of the ticks
answers; retention's pacing leaves the server headroom (migration 0007, which fills it for an existing table:
tests/test_migration_0007.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

import pymysql
import pytest

from tests.conftest import make_broker, make_script
from tickstream import catalog, coverage, jobs, market_data, time_index
from tickstream.codec import TickBatch
from tickstream.db import connect
from tickstream.settings import DatabaseSettings
from tickstream.tick_store import TickStore, insert_ticks_ignore
from tickstream.ticks import Tick

T0_US = 1_764_460_800_000_000  # 2025-11-30 00:00 UTC
MINUTE_US = time_index.MINUTE_US


def at(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, UTC)


def tick(script_id: int, trade_id: int, traded_us: int) -> Tick:
    return Tick(script_id, trade_id, f"{100 + trade_id % 7}.5", "2", trade_id % 2 == 0, traded_us, traded_us,
                traded_us)


def trading(script_id: int, count: int, seed: int) -> list[Tick]:
    """`count` trades over ~3 hours, ids in time order with irregular spacing (bursts, quiet minutes, holes)."""
    rng = random.Random(seed)
    traded, trade_id, result = T0_US, 1_000, []
    for _ in range(count):
        traded += rng.choice((1_000, 50_000, 2_000_000, 45_000_000, 400_000_000))
        trade_id += rng.choice((1, 1, 1, 1, 3))
        result.append(tick(script_id, trade_id, traded))
    return result


def stored_spans(conn: pymysql.Connection) -> dict[tuple[int, int], tuple[int, int]]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT script_id, minute, first_trade_id, last_trade_id FROM tick_minutes")
        return {(row[0], row[1]): (row[2], row[3]) for row in cursor.fetchall()}


def spans_from_ticks(conn: pymysql.Connection) -> dict[tuple[int, int], tuple[int, int]]:
    """What tick_minutes must hold, computed the slow way."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT script_id, TIMESTAMPDIFF(MINUTE, '1970-01-01', traded_at) m, MIN(trade_id),"
                       " MAX(trade_id) FROM ticks GROUP BY script_id, m")
        return {(row[0], row[1]): (row[2], row[3]) for row in cursor.fetchall()}


def brute_force_ids(conn: pymysql.Connection, script_id: int, start: datetime, end: datetime) -> list[int]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT trade_id FROM ticks WHERE script_id = %s AND traded_at >= %s AND traded_at < %s"
                       " ORDER BY trade_id", (script_id, start.replace(tzinfo=None), end.replace(tzinfo=None)))
        return [row[0] for row in cursor.fetchall()]


@pytest.fixture
def store(db_settings: DatabaseSettings) -> Iterator[TickStore]:
    tick_store = TickStore(connect(db_settings, local_infile=True))
    yield tick_store
    tick_store.close()


def test_summarize_matches_row_by_row_spans() -> None:
    rng = random.Random(7)
    rows = [tick(rng.choice((1, 2)), rng.randrange(1, 10**12), T0_US + rng.randrange(0, 5 * MINUTE_US))
            for _ in range(3000)]
    rows.sort(key=lambda t: t.script_id)  # blocks per script, times and ids in no order within them
    rows += [tick(3, 10 + i, T0_US + 7 * MINUTE_US + i) for i in range(50)]  # one in-order block in one minute
    rows += [tick(4, 10 + i, T0_US - 30_000_000 + i * 1_000_000) for i in range(60)]  # across midnight
    assert coverage.summarize_batch(TickBatch.from_ticks(rows).rows).minutes == time_index.spans_of(
        (t.script_id, t.trade_id, t.traded_at_us) for t in rows)


def test_backfilled_and_redelivered_ticks_are_read_as_a_scan_would(db: pymysql.Connection,
                                                                   store: TickStore) -> None:
    """The live stream's newest trades arrive first, the backfill of the older ones hours later, in shuffled
    batches with redeliveries and a late correction of a trade's time: every time-range read agrees with a scan."""
    broker = make_broker(db)
    btc, eth = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    all_ticks = trading(btc, 3000, 1) + trading(eth, 800, 2)
    newest_first = sorted(all_ticks, key=lambda t: -t.traded_at_us)
    rng = random.Random(3)
    batches = [newest_first[i:i + rng.randrange(1, 400)] for i in range(0, len(newest_first), 250)]
    rng.shuffle(batches)
    for part in batches + batches[:5]:  # and five redelivered
        store.insert(TickBatch.from_ticks(sorted(part, key=lambda t: (t.script_id, rng.random()))))
    moved = all_ticks[1500]
    insert_ticks_ignore(db, [moved._replace(traded_at_us=moved.traded_at_us + 3 * 3600 * 1_000_000)])  # a dup
    assert stored_spans(db).items() >= spans_from_ticks(db).items()  # every stored tick inside its minute

    last_us = max(t.traded_at_us for t in all_ticks)
    for _ in range(60):
        script_id = rng.choice((btc, eth))
        start_us = rng.randrange(T0_US - MINUTE_US, last_us)
        start, end = at(start_us), at(start_us + rng.choice((1, 30_000_000, MINUTE_US, 3600 * 1_000_000)))
        expected = brute_force_ids(db, script_id, start, end)
        for descending in (False, True):
            got, cursor = [], None
            while True:
                page = catalog.read_ticks(db, script_id, start=start, end=end, after=cursor, limit=97,
                                          descending=descending)
                got += [t.trade_id for t in page.ticks]
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert got == (expected[::-1] if descending else expected), (start, end, descending)
        rows, _ = market_data.export_rows(db, script_id, start=start, end=end, after=None, limit=10**6)
        assert [row.trade_id for row in rows] == expected
    for interval in (60, 300, 7):
        start, end = at(T0_US), at(T0_US + 4 * 3600 * 1_000_000)
        bars = market_data.candles_from_ticks(db, btc, start, end, interval)
        assert sum(bar.trades for bar in bars) == len(brute_force_ids(db, btc, start, end))


def test_retention_deletes_old_ticks_that_arrived_after_newer_ones(db: pymysql.Connection,
                                                                   store: TickStore) -> None:
    broker = make_broker(db)
    btc = make_script(db, broker, "BTCUSDT")
    now = datetime(2025, 12, 3, 12, tzinfo=UTC)
    cutoff = jobs.retention_cutoff(2, now)  # 2025-12-02 00:00
    cutoff_us = int(cutoff.timestamp() * 1_000_000)
    recent = [tick(btc, 5_000 + i, cutoff_us + i * 1_000_000) for i in range(300)]
    old = [tick(btc, 1_000 + i, cutoff_us - 4 * 3600 * 1_000_000 + i * 7_000_000) for i in range(2000)]
    store.insert(TickBatch.from_ticks(recent))
    store.insert(TickBatch.from_ticks(old[1000:]))  # the backfill, newest half first
    store.insert(TickBatch.from_ticks(old[:1000]))
    assert jobs.run_retention(db, 2, now=now, chunk_rows=300, sleep=lambda _: None).done
    assert brute_force_ids(db, btc, at(0), at(2**52)) == [t.trade_id for t in recent]
    assert min(minute for _, minute in stored_spans(db)) >= time_index.minute_of(cutoff)  # old buckets gone


# --- pacing --------------------------------------------------------------------------------------------------

def test_a_job_pauses_three_times_each_chunks_work_so_it_holds_a_quarter_of_the_server(
        db: pymysql.Connection) -> None:
    broker = make_broker(db)
    script_id = make_script(db, broker, "OLDUSDT")
    insert_ticks_ignore(db, [tick(script_id, i, T0_US + i) for i in range(1, 2001)])
    with db.cursor() as cursor:
        cursor.execute("UPDATE scripts SET is_active = FALSE WHERE id = %s", (script_id,))
    job = jobs.create_purge_job(db, script_id)
    clock = iter(float(i) for i in range(0, 10**6))  # every step takes 1 s by this clock
    pauses: list[float] = []
    assert jobs.run_job(db, job.id, chunk_rows=500, clock=clock.__next__, sleep=pauses.append).done
    assert pauses == [3.0] * 4  # four chunks of 500, then the step that finds nothing left and finishes
    work = 1.0 * len(pauses)
    assert work / (work + sum(pauses)) == 0.25
    assert jobs.pause_after(0.1) == pytest.approx(0.3)
    assert jobs.pause_after(60.0) == jobs.MAX_PAUSE_SECONDS  # a lock wait does not sleep past the deadline margin
