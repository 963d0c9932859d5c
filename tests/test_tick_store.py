"""Both idempotent bulk paths of the tick store, against the real MariaDB."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta

import pymysql
import pytest

from tests.conftest import make_broker, make_script, stored_ticks
from tickstream.db import connect
from tickstream.settings import DatabaseSettings
from tickstream.tick_store import TickStore, server_allows_load_data
from tickstream.ticks import MAX_TIME_US, MIN_TIME_US, Tick

T0 = 1_750_000_000_000_001


@pytest.fixture(params=["load_data", "insert_ignore"])
def store(request: pytest.FixtureRequest, db_settings: DatabaseSettings) -> Iterator[TickStore]:
    tick_store = TickStore(connect(db_settings, local_infile=True), use_load_data=request.param == "load_data")
    assert tick_store.method == request.param
    yield tick_store
    tick_store.close()


def ticks(script_id: int, ids: range) -> list[Tick]:
    return [Tick(script_id, i, f"{i}.12345678", "0.00000001", True, T0 + i, T0 + i, T0 + i) for i in ids]


def test_inserts_and_skips_duplicates(store: TickStore, db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    first = store.insert_ticks(ticks(script, range(0, 3000)))
    again = store.insert_ticks(ticks(script, range(2500, 4000)))
    assert (first.inserted, first.duplicates) == (3000, 0)
    assert (again.inserted, again.duplicates) == (1000, 500)
    rows = stored_ticks(db, script)
    assert [row[0] for row in rows] == list(range(0, 4000))
    assert rows[42][1:4] == ("42.123456780000000000", "0.000000010000000000", 1)


def test_largest_values_round_trip(store: TickStore, db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    big = Tick(script, 2**63 - 1, "999999999999999999.999999999999999999", "0.000000000000000001", False,
               4_102_444_799_999_999, T0, T0)
    store.insert_ticks([big])
    (row,) = stored_ticks(db, script)
    assert row[:3] == (2**63 - 1, big.price, big.quantity)
    assert row[4].isoformat() == "2099-12-31T23:59:59.999999"


def test_every_time_is_stored_to_the_microsecond(store: TickStore, db: pymysql.Connection) -> None:
    """Random times over the whole accepted range (2000-2100), each column its own value."""
    rng = random.Random(5)
    script = make_script(db, make_broker(db), "BTCUSDT")
    times = [[rng.randint(MIN_TIME_US, MAX_TIME_US) for _ in range(3)] for _ in range(2000)]
    store.insert_ticks([Tick(script, i, "1", "1", False, *row) for i, row in enumerate(times)])
    epoch = datetime(1970, 1, 1)
    stored = [[(value - epoch) // timedelta(microseconds=1) for value in row[4:7]] for row in stored_ticks(db, script)]
    assert stored == times


def test_a_failed_write_commits_nothing(store: TickStore, db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    store.conn.close()
    with pytest.raises(pymysql.err.Error):
        store.insert_ticks(ticks(script, range(0, 10)))
    assert stored_ticks(db, script) == []


def test_detects_whether_the_server_allows_load_data(own_db_settings: DatabaseSettings,
                                                     own_db: pymysql.Connection) -> None:
    """SET GLOBAL on the process's own MariaDB: on the shared one it would turn LOAD DATA off under the tests that
    `make test` runs beside it."""
    with own_db.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.local_infile")
        (original,) = cursor.fetchone()
        try:
            cursor.execute("SET GLOBAL local_infile = 0")  # how MySQL 8 and RDS ship
            conn = connect(own_db_settings, local_infile=True)
            assert not server_allows_load_data(conn)
            assert TickStore(conn).method == "insert_ignore"
            conn.close()
            cursor.execute("SET GLOBAL local_infile = 1")
            conn = connect(own_db_settings, local_infile=True)
            assert TickStore(conn).method == "load_data"
            conn.close()
        finally:
            cursor.execute("SET GLOBAL local_infile = %s", (int(original),))
