"""Lag histograms (tickstream.lags) against real MariaDB: kept by the ingest for the rows it really stores, counted in
the database clock's minutes, read by /stats from a few rows per script."""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest

from tests.conftest import make_broker, make_script
from tickstream import completeness, coverage, lags
from tickstream.codec import TickBatch
from tickstream.db import connect
from tickstream.settings import DatabaseSettings
from tickstream.tick_store import TickStore
from tickstream.ticks import Tick

MINUTE = 29_000_000  # minutes since the epoch (2025-02-20): the database clock is set to it
CLOCK_US = MINUTE * 60_000_000  # the ingest's clock


def tick(script_id: int, trade_id: int, lag_ms: float) -> Tick:
    """A tick received `lag_ms` before the ingest's clock."""
    received = CLOCK_US - int(lag_ms * 1000)
    return Tick(script_id, trade_id, "1.5", "2", False, received - 5000, received - 2000, received)


@pytest.fixture
def writer(db_settings: DatabaseSettings) -> Iterator[TickStore]:
    store = TickStore(connect(db_settings, local_infile=True), clock=lambda: CLOCK_US)
    yield store
    store.close()


def set_clock(conn: pymysql.Connection, at_second: float) -> None:
    with conn.cursor() as cursor:  # the session's clock (UTC_TIMESTAMP follows it)
        cursor.execute("SET timestamp = %s", (MINUTE * 60 + at_second,))


def lags_at(conn: pymysql.Connection, at_second: float) -> dict[int, tuple[float, float] | None]:
    set_clock(conn, at_second)
    return {stats.script.id: None if stats.lag_p50_ms is None else (stats.lag_p50_ms, stats.lag_p99_ms)
            for stats in completeness.script_stats(conn)}


def test_buckets_keep_two_significant_digits() -> None:
    assert [lags.bucket_of(us) for us in (-40, 0, 7, 99, 100, 1_234, 56_789, 999_999, 12_345_678)] == [
        0, 0, 7, 99, 100, 1_200, 56_000, 990_000, 12_000_000]


def test_percentiles_are_the_nearest_rank_over_the_bucket_counts(db: pymysql.Connection) -> None:
    broker = make_broker(db)
    script = make_script(db, broker, "BTCUSDT")
    with db.cursor() as cursor:
        lags.add(cursor, {script: [str(CLOCK_US - lag_us).encode() for lag_us in [1_000] * 98 + [50_000, 99_000]]},
                 CLOCK_US)
    assert lags.percentiles_ms(db, [script]) == {script: (1.0, 50.0)}  # the 99th of 100 is 50 ms
    assert lags.percentiles_ms(db, []) == {}


def test_lags_of_stored_ticks_follow_the_database_clocks_minutes(db: pymysql.Connection, writer: TickStore) -> None:
    """Each tick in its own batch is sampled; the percentiles cover what was stored in this minute and the previous
    one; a redelivered batch stores nothing and counts no lag."""
    broker = make_broker(db)
    btc, eth = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    next_id = iter(range(1, 10**6))

    def store(script_id: int, lags_ms: list[float], at_second: float) -> None:
        set_clock(writer.conn, at_second)
        for lag in lags_ms:
            writer.insert(TickBatch.from_ticks([tick(script_id, next(next_id), lag)]))

    store(btc, list(range(1, 101)), 10)
    store(eth, [40], 20)
    assert lags_at(db, 30) == {btc: (50.0, 99.0), eth: (40.0, 40.0)}
    store(btc, [500] * 100, 70)  # the next minute: both minutes count
    assert lags_at(db, 80) == {btc: (100.0, 500.0), eth: (40.0, 40.0)}
    assert lags_at(db, 125) == {btc: (500.0, 500.0), eth: None}  # only the previous minute's
    set_clock(writer.conn, 126)
    writer.insert(TickBatch.from_ticks([tick(btc, 1, 9000)]))  # a duplicate: nothing stored, no lag
    assert lags_at(db, 127) == {btc: (500.0, 500.0), eth: None}
    assert lags_at(db, 60 * 5) == {btc: None, eth: None}
    with db.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM tick_lags")
        assert cursor.fetchone()[0] == 100 + 1 + 1  # a row per script and bucket, reused minute after minute


def test_a_chunk_partly_stored_counts_lags_of_its_new_groups_only(db: pymysql.Connection, writer: TickStore) -> None:
    broker = make_broker(db)
    btc, eth = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    set_clock(writer.conn, 10)
    writer.insert(TickBatch.from_ticks([tick(eth, n, 7000) for n in range(1, 101)]))
    with db.cursor() as cursor:
        cursor.execute("DELETE FROM tick_lags")
    writer.insert(TickBatch.from_ticks([tick(btc, n, 30) for n in range(1, 101)]
                                       + [tick(eth, n, 9000) for n in range(1, 101)]))  # eth's: redelivered
    assert lags_at(db, 20) == {btc: (30.0, 30.0), eth: None}


def test_every_script_of_an_interleaved_batch_is_sampled_and_the_sample_stays_small() -> None:
    rows = [tick(1 + n % 4, 1000 + n, 10) for n in range(3100)] + [tick(9, 1, 10)]
    groups = coverage.summarize_batch(TickBatch.from_ticks(rows).rows).groups
    sampled = {key[0]: len(group.received_sample) for key, group in groups.items()}
    assert set(sampled) == {1, 2, 3, 4, 9} and sampled[9] == 1
    assert all(20 <= sampled[script] <= 30 for script in (1, 2, 3, 4)), sampled  # ~3100 / 31 / 4 each
    assert sum(sampled.values()) <= len(rows) // lags.SAMPLE_STRIDE + len(groups)


def test_a_script_with_no_row_on_the_stride_is_sampled_by_its_first_row() -> None:
    rows = [tick(1, n, 10) for n in range(1, 30)] + [tick(2, 1, 20), tick(2, 2, 30)]  # script 2: rows 29 and 30
    groups = coverage.summarize_batch(TickBatch.from_ticks(rows).rows).groups
    assert {key[0]: len(group.received_sample) for key, group in groups.items()} == {1: 1, 2: 1}
    assert groups[next(key for key in groups if key[0] == 2)].received_sample == (str(CLOCK_US - 20_000).encode(),)
