"""Completeness through the API (in-process, real middleware, real MariaDB): per-day coverage with the ledger's gaps,
the ledger itself, and /stats and GET /scripts/{id} served from tick_coverage and producer_status, at a cost that
does not grow with the ticks table (proven with the server's Handler_read counters)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pymysql
import pytest

from tests.api_fixtures import InProcessApi
from tests.conftest import make_broker, make_script
from tickstream import completeness, coverage
from tickstream.codec import TickBatch
from tickstream.db import connect
from tickstream.settings import DatabaseSettings
from tickstream.tick_store import TickStore, insert_ticks_ignore
from tickstream.ticks import Tick

pytest_plugins = ["tests.api_fixtures"]

DAY1 = datetime(2026, 11, 29, tzinfo=UTC)
DAY_US = 86_400_000_000


def us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def ingest(db_settings: DatabaseSettings, script_id: int, ids: range, day: datetime) -> None:
    """Through the ingest's store (so coverage is kept): one tick per second of `day` from 01:00."""
    start = us(day) + 3600_000_000
    ticks = [Tick(script_id, i, "1.5", "2", False, start + (i - ids[0]) * 1_000_000, start, start) for i in ids]
    store = TickStore(connect(db_settings))
    try:
        store.insert(TickBatch.from_ticks(ticks))
    finally:
        store.close()


def add_gap(conn: pymysql.Connection, script_id: int, first: int, last: int, state: str = "pending",
            cause: str = "stream_jump") -> int:
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO gaps (script_id, first_trade_id, last_trade_id, next_trade_id, cause, state)"
                       " VALUES (%s, %s, %s, %s, %s, %s)", (script_id, first, last, first, cause, state))
        return cursor.lastrowid


def report_status(conn: pymysql.Connection, script_id: int, broker_id: int, state: str, **fields: Any) -> None:
    columns = ["script_id", "broker_id", "state", "reported_at", *fields]
    values = [script_id, broker_id, state, datetime.now(UTC).replace(tzinfo=None), *fields.values()]
    with conn.cursor() as cursor:
        cursor.execute(f"REPLACE INTO producer_status ({', '.join(columns)}) VALUES"
                       f" ({', '.join(['%s'] * len(values))})", values)


@pytest.fixture
def btc(db: pymysql.Connection, db_settings: DatabaseSettings) -> dict[str, int]:
    """BTCUSDT: day 1 complete (ids 1..100), day 2 with a hole (201..250, 300..400), day 3 complete."""
    broker = make_broker(db)
    script = make_script(db, broker, "BTCUSDT")
    ingest(db_settings, script, range(1, 101), DAY1)
    ingest(db_settings, script, range(201, 251), DAY1 + timedelta(days=1))
    ingest(db_settings, script, range(300, 401), DAY1 + timedelta(days=1))
    ingest(db_settings, script, range(401, 451), DAY1 + timedelta(days=2))
    return {"broker": broker, "script": script}


def test_coverage_per_day_with_the_gaps_of_the_ledger(api: InProcessApi, db: pymysql.Connection,
                                                      btc: dict[str, int]) -> None:
    script = btc["script"]
    between = add_gap(db, script, 101, 200, state="filled", cause="reconnect")  # between day 1 and day 2
    inside = add_gap(db, script, 251, 299)  # day 2's hole
    add_gap(db, script, 5000, 5100)  # beyond the days asked
    reply = api.get(f"/scripts/{script}/coverage?from=2026-11-29&to=2026-11-30")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert (body["first_day"], body["last_day"], body["gaps_truncated"]) == ("2026-11-29", "2026-11-30", False)
    first, second = body["days"]
    assert (first["day"], first["stored"], first["expected"], first["missing"], first["complete"]) == \
        ("2026-11-29", 100, 100, 0, True)
    assert (first["first_trade_id"], first["last_trade_id"]) == (1, 100)
    assert first["first_traded_at"] == "2026-11-29T01:00:00Z"
    assert [(gap["id"], gap["state"], gap["cause"]) for gap in first["gaps"]] == [(between, "filled", "reconnect")]
    assert (second["stored"], second["expected"], second["missing"], second["complete"]) == (151, 200, 49, False)
    assert [gap["id"] for gap in second["gaps"]] == [inside]

    assert len(api.get(f"/scripts/{script}/coverage?from=2026-11-29&to=2026-12-31").json()["days"]) == 3
    assert api.get(f"/scripts/{script}/coverage?from=2026-12-05").json()["days"] == []
    assert len(api.get(f"/scripts/{script}/coverage?to=2026-12-01").json()["days"]) == 3  # 31 days back


@pytest.mark.parametrize("query", ["from=2026-12-01&to=2026-11-01", "from=2020-01-01&to=2026-01-01",
                                   "from=1700000000000", "from=2026-11-31", "to=yesterday", "from=2026-1-1",
                                   "from=٢٠٢٦-١١-٢٩", "to=9999-12-31&from=0001-01-01", "day=2026-11-29"])
def test_bad_coverage_queries_are_422(api: InProcessApi, btc: dict[str, int], query: str) -> None:
    reply = api.get(f"/scripts/{btc['script']}/coverage?{query}")
    assert reply.status == 422, (query, reply.body)


def test_coverage_of_an_unknown_script_is_404(api: InProcessApi, db: pymysql.Connection) -> None:
    assert api.get("/scripts/4000000/coverage").status == 404
    assert api.get("/scripts/x/coverage").status == 404


def test_the_ledger_is_filtered_and_keyset_paginated(api: InProcessApi, db: pymysql.Connection,
                                                    btc: dict[str, int]) -> None:
    script, other = btc["script"], make_script(db, btc["broker"], "ETHUSDT")
    ids = [add_gap(db, script if n % 3 else other, 1000 * n, 1000 * n + 9, "pending" if n % 2 else "filled")
           for n in range(1, 13)]
    seen, cursor = [], None
    while True:
        reply = api.get(f"/gaps?script_id={script}&limit=3" + (f"&cursor={cursor}" if cursor else ""))
        assert reply.status == 200, reply.body
        seen += [gap["id"] for gap in reply.json()["gaps"]]
        cursor = reply.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted((gap for n, gap in enumerate(ids, 1) if n % 3), reverse=True)
    pending = api.get(f"/gaps?script_id={script}&state=pending&order=asc").json()["gaps"]
    assert [gap["id"] for gap in pending] == [gap for n, gap in enumerate(ids, 1) if n % 3 and n % 2]
    assert {gap["state"] for gap in api.get("/gaps?state=filled").json()["gaps"]} == {"filled"}
    assert len(api.get("/gaps").json()["gaps"]) == 12
    gap = pending[0]
    assert (gap["first_trade_id"], gap["last_trade_id"], gap["attempts"], gap["filled_at"]) == (1000, 1009, 0, None)


@pytest.mark.parametrize("query", ["state=done", "script_id=0", "script_id=x", "limit=0", "limit=1001",
                                   "cursor=-1", "order=up", "cursor=99999999999999999999", "page=2"])
def test_bad_gap_queries_are_422(api: InProcessApi, query: str) -> None:
    assert api.get(f"/gaps?{query}").status == 422, query


def test_stats_and_script_come_from_coverage_and_producer_status(api: InProcessApi, db: pymysql.Connection,
                                                                 btc: dict[str, int]) -> None:
    script, broker = btc["script"], btc["broker"]
    unknown = make_script(db, broker, "NOSUCHUSDT")
    report_status(db, unknown, broker, "unknown_symbol", detail="Invalid symbol.")
    report_status(db, script, broker, "backfilling", backfill_done=25, backfill_total=100, lag_ms_p50=12,
                  connection="wss://127.0.0.1:1/stream")
    rows = {row["script_id"]: row for row in api.get("/stats").json()["scripts"]}
    row = rows[script]
    assert (row["tick_count"], row["incomplete_days"], row["missing_trades"]) == (301, 1, 49)
    assert row["first_trade_at"] == "2026-11-29T01:00:00Z"
    assert (row["status"]["state"], row["status"]["backfill_done"], row["status"]["lag_ms_p50"]) == \
        ("backfilling", 25, 12)
    assert rows[unknown]["status"]["state"] == "unknown_symbol"
    assert rows[unknown]["status"]["detail"] == "Invalid symbol."
    assert (rows[unknown]["tick_count"], rows[unknown]["first_trade_at"]) == (0, None)

    detail = api.get(f"/scripts/{script}").json()
    assert detail["trading_symbol"] == "BTCUSDT"
    stored_per_minute = detail["ticks"].pop("stored_last_minute"), detail["ticks"].pop("stored_this_minute")
    assert sum(stored_per_minute) == 301  # the fixture stored them a moment ago: this minute or the one before
    assert detail["ticks"] == {"tick_count": 301, "first_trade_id": 1, "last_trade_id": 450,
                               "first_trade_at": "2026-11-29T01:00:00Z", "last_trade_at": "2026-12-01T01:00:49Z",
                               "days": 3, "incomplete_days": 1, "missing_trades": 49}
    assert detail["status"]["state"] == "backfilling"
    assert api.get(f"/scripts/{unknown}").json()["status"]["state"] == "unknown_symbol"


def handler_reads(conn: pymysql.Connection) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
        return sum(int(value) for _, value in cursor.fetchall())


def test_stats_reads_do_not_grow_with_the_ticks_table(db: pymysql.Connection,
                                                     db_settings: DatabaseSettings) -> None:
    """30,000 old ticks and 2,000 stored by the ingest just now: /stats reads the per-script rows and the lag
    histograms, never a tick; with 60,000 more old ticks, the same reads."""
    broker = make_broker(db)
    scripts = [make_script(db, broker, f"S{n}USDT") for n in range(2)]
    now_us = int(datetime.now(UTC).timestamp() * 1e6)

    def old_ticks(first_id: int) -> None:
        for script in scripts:
            insert_ticks_ignore(db, [Tick(script, i, "1.5", "2", False, now_us - DAY_US + i, now_us, now_us)
                                     for i in range(first_id, first_id + 15_000 * (1 + (first_id > 1)))])

    def reads() -> int:
        coverage.rebuild(db)  # the old rows were written around the ingest: their coverage as it keeps them
        before = handler_reads(db)
        stats = completeness.script_stats(db)
        assert all(s.lag_p50_ms is not None for s in stats)
        return handler_reads(db) - before

    old_ticks(1)
    store = TickStore(connect(db_settings, local_infile=True))
    try:
        for script in scripts:
            store.insert_ticks([Tick(script, 10_000_000 + i, "1.5", "2", False, now_us - 20_000_000 + i * 1000,
                                     now_us, now_us - (i % 300) * 1000) for i in range(2000)])
    finally:
        store.close()
    small = reads()
    old_ticks(100_000)
    large = reads()
    # the scripts, their totals, statuses and incomplete days, and the lag buckets: not the 2,000 stored trades
    assert small <= 150, small
    assert large <= small + 20, (small, large)


def test_a_page_of_one_scripts_gaps_is_an_index_range_not_a_sort(db: pymysql.Connection) -> None:
    with db.cursor() as cursor:
        cursor.executemany("INSERT INTO gaps (script_id, first_trade_id, last_trade_id, next_trade_id, cause, state)"
                           " VALUES (%s, %s, %s, %s, 'stream_jump', %s)",
                           [(n % 20 + 1, n * 10, n * 10 + 5, n * 10, ("pending", "filled")[n % 2])
                            for n in range(5000)])
        cursor.execute("ANALYZE TABLE gaps")
        for where in ("script_id = 3", "script_id = 3 AND state = 'filled'", "state = 'pending'"):
            cursor.execute(f"EXPLAIN SELECT * FROM gaps WHERE {where} ORDER BY id DESC LIMIT 101")
            plan = cursor.fetchall()
            assert all("filesort" not in (row[-1] or "") for row in plan), (where, plan)


def statements_run(conn: pymysql.Connection) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
        return int(cursor.fetchone()[1])


def test_stats_of_scripts_idle_in_the_window_is_one_statement(db: pymysql.Connection) -> None:
    """Scripts that stored nothing in the last two minutes of the database clock have no lags to read: /stats is
    then the one figures statement, each of its rows one server-built JSON document."""
    broker = make_broker(db)
    scripts = [make_script(db, broker, f"I{n}USDT") for n in range(3)]
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    insert_ticks_ignore(db, [Tick(script, 1, "1.5", "2", False, now_us - DAY_US, now_us, now_us)
                             for script in scripts])
    coverage.rebuild(db)
    before = statements_run(db)
    stats = completeness.script_stats(db)
    assert statements_run(db) - before == 1 + 1  # the figures, and the SHOW itself
    assert [(s.script.id, s.totals.tick_count, s.lag_p50_ms) for s in stats] == [(n, 1, None) for n in scripts]
    assert all(s.totals.last_trade_at.tzinfo is UTC and s.script.created_at.tzinfo is UTC for s in stats)
