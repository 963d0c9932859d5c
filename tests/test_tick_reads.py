"""Reads that stay O(log n + page) as the table grows, proven by the server's own row-read counters
(Handler_read_*), not by timings: a page of a time range reads about `limit` rows however many lie outside the
range or inside it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pymysql
import pytest

from tests.conftest import make_broker, make_script
from tickstream import catalog
from tickstream.tick_store import insert_ticks_ignore
from tickstream.ticks import Tick

T0_US = 1_750_000_000_000_000
ROWS = 30_000  # one tick per millisecond: 30 s of trading
LIMIT = 10


def at(offset_ms: int) -> datetime:
    return datetime.fromtimestamp(T0_US / 1e6, UTC) + timedelta(milliseconds=offset_ms)


def handler_reads(conn: pymysql.Connection) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
        return sum(int(value) for _, value in cursor.fetchall())


@pytest.fixture
def busy_script(db: pymysql.Connection) -> int:
    broker = make_broker(db)
    script, other = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    for script_id in (script, other):
        insert_ticks_ignore(db, [Tick(script_id, 1_000_000 + i, "1.5", "2", False, T0_US + i * 1000, T0_US, T0_US)
                                 for i in range(ROWS)])
    with db.cursor() as cursor:
        cursor.execute("ANALYZE TABLE ticks")
    return script


@pytest.mark.parametrize("descending", [False, True])
def test_a_time_range_page_reads_about_a_page_of_rows(db: pymysql.Connection, busy_script: int,
                                                      descending: bool) -> None:
    start, end = at(5_000), at(25_000)  # 20,000 ticks inside, 10,000 outside (and another script's 30,000)
    before = handler_reads(db)
    page = catalog.read_ticks(db, busy_script, start=start, end=end, limit=LIMIT, descending=descending)
    first_reads = handler_reads(db) - before
    ids = [tick.trade_id for tick in page.ticks]
    expected = list(range(1_005_000, 1_005_000 + LIMIT)) if not descending else \
        list(range(1_024_999, 1_024_999 - LIMIT, -1))
    assert ids == expected
    assert first_reads <= 3 * (LIMIT + 1) + 20, first_reads

    before = handler_reads(db)  # the next page, from the cursor: as cheap
    second = catalog.read_ticks(db, busy_script, start=start, end=end, after=page.next_cursor, limit=LIMIT,
                                descending=descending)
    assert handler_reads(db) - before <= 3 * (LIMIT + 1) + 20
    assert second.ticks[0].trade_id == expected[-1] + (-1 if descending else 1)


def test_the_last_page_of_a_range_ends_exactly_at_its_edge(db: pymysql.Connection, busy_script: int) -> None:
    page = catalog.read_ticks(db, busy_script, start=at(100), end=at(103), limit=LIMIT)
    assert [tick.trade_id for tick in page.ticks] == [1_000_100, 1_000_101, 1_000_102]
    assert page.next_cursor is None
    empty = catalog.read_ticks(db, busy_script, start=at(ROWS + 5), limit=LIMIT)
    assert (empty.ticks, empty.next_cursor) == ([], None)
