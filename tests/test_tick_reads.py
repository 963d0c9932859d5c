"""Reads that stay O(log n + page) as the table grows, proven by the server's own row-read counters
(Handler_read_*), not by timings: a page of a time range reads about `limit` rows, plus at most one minute of the
script's trades (the time index's granularity, tickstream.time_index), however many lie outside the range or inside
it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pymysql
import pytest

from tests.conftest import make_broker, make_script
from tickstream import catalog
from tickstream.tick_store import insert_ticks_ignore
from tickstream.ticks import Tick

T0_US = 1_750_000_000_000_000
ROWS = 30_000  # one tick every 10 ms: 5 minutes of trading (T0 is 40 s past a minute)
STEP_MS = 10
PER_MINUTE = 60_000 // STEP_MS
LIMIT = 10
# A page's reads: the rows of the page (and the index dives), plus the ticks of the edge minute before the range.
PAGE_READS = 3 * (LIMIT + 1) + 20 + PER_MINUTE


def at(row: int) -> datetime:
    """The trade time of the row-th tick."""
    return datetime.fromtimestamp(T0_US / 1e6, UTC) + timedelta(milliseconds=row * STEP_MS)


def handler_reads(conn: pymysql.Connection) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
        return sum(int(value) for _, value in cursor.fetchall())


@pytest.fixture
def busy_script(db: pymysql.Connection) -> int:
    broker = make_broker(db)
    script, other = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    for script_id in (script, other):
        insert_ticks_ignore(db, [Tick(script_id, 1_000_000 + i, "1.5", "2", False, T0_US + i * STEP_MS * 1000,
                                      T0_US, T0_US) for i in range(ROWS)])
    with db.cursor() as cursor:
        cursor.execute("ANALYZE TABLE ticks")
    return script


@pytest.mark.parametrize("descending", [False, True])
def test_a_time_range_page_reads_about_a_page_of_rows(db: pymysql.Connection, busy_script: int,
                                                      descending: bool) -> None:
    start, end = at(8_000), at(23_000)  # 15,000 ticks inside, 15,000 outside (and another script's 30,000)
    before = handler_reads(db)
    page = catalog.read_ticks(db, busy_script, start=start, end=end, limit=LIMIT, descending=descending)
    first_reads = handler_reads(db) - before
    ids = [tick.trade_id for tick in page.ticks]
    expected = list(range(1_008_000, 1_008_000 + LIMIT)) if not descending else \
        list(range(1_022_999, 1_022_999 - LIMIT, -1))
    assert ids == expected
    assert first_reads <= PAGE_READS, first_reads

    before = handler_reads(db)  # the next page, from the cursor: as cheap
    second = catalog.read_ticks(db, busy_script, start=start, end=end, after=page.next_cursor, limit=LIMIT,
                                descending=descending)
    assert handler_reads(db) - before <= 3 * (LIMIT + 1) + 20  # from the cursor: no edge minute to skip
    assert second.ticks[0].trade_id == expected[-1] + (-1 if descending else 1)


def test_the_last_page_of_a_range_ends_exactly_at_its_edge(db: pymysql.Connection, busy_script: int) -> None:
    page = catalog.read_ticks(db, busy_script, start=at(100), end=at(103), limit=LIMIT)  # inside one minute
    assert [tick.trade_id for tick in page.ticks] == [1_000_100, 1_000_101, 1_000_102]
    assert page.next_cursor is None
    empty = catalog.read_ticks(db, busy_script, start=at(ROWS + 5), limit=LIMIT)
    assert (empty.ticks, empty.next_cursor) == ([], None)
