"""The gap ledger, the audit and the producer status: real MariaDB, the simulator over real sockets, LocalStack SQS."""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from producer_service.audit import Auditor, AuditRequest, audit_script, incomplete_ranges, missing_ranges
from producer_service.backfill import BackfillJob
from producer_service.ledger import FILLING, PENDING, GapLedger, subtract
from simulator.harness import ExchangeSimulator
from tests.producer_harness import (
    QueueReader,
    expected_ids,
    register_simulator,
    running_producer,
    sqs,
    start_trading,
    stop_trading,
    store_with_coverage,
    wait_for,
)
from tickstream.db import connect
from tickstream.settings import DatabaseSettings
from tickstream.ticks import Tick

DAY_US = 86_400_000_000
BASE_US = 1_764_547_200_000_000  # 2025-12-01 00:00 UTC


@pytest.fixture
def sim() -> Iterator[ExchangeSimulator]:
    with ExchangeSimulator(symbols=("BTCUSDT", "ETHUSDT"), rate=0, seed=5, ping_interval=2.0,
                           rest_hang_seconds=2.5) as simulator:
        yield simulator


def gap_rows(conn: pymysql.Connection, script_id: int) -> list[dict[str, Any]]:
    with conn.cursor(pymysql.cursors.DictCursor) as cursor:
        cursor.execute("SELECT * FROM gaps WHERE script_id = %s ORDER BY first_trade_id", (script_id,))
        rows = list(cursor.fetchall())
    conn.commit()
    return rows


def status_rows(conn: pymysql.Connection) -> dict[int, dict[str, Any]]:
    with conn.cursor(pymysql.cursors.DictCursor) as cursor:
        cursor.execute("SELECT * FROM producer_status")
        rows = {row["script_id"]: row for row in cursor.fetchall()}
    conn.commit()
    return rows


# A backfill under way moves thousands of ids a second, and a test stops it midway: poll often.
wait_until = functools.partial(wait_for, timeout=20.0, interval=0.05)


def tick(script_id: int, trade_id: int, at_us: int) -> Tick:
    return Tick(script_id, trade_id, "1", "1", False, at_us, at_us, at_us)


def refetched(pages: list[tuple[int, int]]) -> int:
    """Ids REST served more than once over these pages."""
    served = Counter(trade_id for first, last in pages for trade_id in range(first, last + 1))
    return sum(count - 1 for count in served.values())


# --- the ledger itself ---------------------------------------------------------------------------------------

def test_subtract_keeps_what_no_known_range_covers() -> None:
    assert subtract(10, 20, []) == [(10, 20)]
    assert subtract(10, 20, [(12, 13), (15, 15), (19, 30)]) == [(10, 11), (14, 14), (16, 18)]
    assert subtract(10, 20, [(0, 10), (11, 20)]) == []
    assert subtract(10, 20, [(21, 25), (1, 9)]) == [(10, 20)]


def test_overlapping_reports_are_written_once_and_a_dead_producers_filling_goes_back_to_pending(
        db: pymysql.Connection, db_settings: DatabaseSettings) -> None:
    ledger = GapLedger(lambda: connect(db_settings, autocommit=True))
    try:
        (first,) = ledger.record(7, 100, 199, "stream_jump")
        assert ledger.record(7, 150, 180, "audit") == [], "inside a known gap: nothing new"
        assert [(g.first_id, g.last_id, g.cause) for g in ledger.record(7, 190, 260, "audit")] == [(200, 260, "audit")]
        ledger.start_filling(first.gap_id)
        ledger.progress(first.gap_id, 140, 40)
        assert [row["state"] for row in gap_rows(db, 7)] == [FILLING, PENDING]
        resumed = ledger.open_gaps([7])  # the next start: the filling one was a dead producer's
        assert [(g.first_id, g.next_id, g.trades_filled) for g in resumed] == [(100, 140, 40), (200, 200, 0)]
        assert [row["state"] for row in gap_rows(db, 7)] == [PENDING, PENDING]
        assert ledger.known_ranges(7, 0, 10**9) == [(100, 199), (200, 260)]
    finally:
        ledger.close()


# --- the audit -----------------------------------------------------------------------------------------------

def test_the_audit_finds_holes_in_incomplete_days_and_between_days_far_below_the_newest_id(
        db: pymysql.Connection, db_settings: DatabaseSettings) -> None:
    """Day 1 misses id 12 (3 stored of 4 expected); days 1 and 2 do not meet (ids 14 .. 1,999,999 are missing,
    far more than 1M below the newest stored id); day 3 is complete. The start-up scan of the newest 1M ids
    could see none of it."""
    script_id = 9
    store_with_coverage(db, [tick(script_id, trade_id, BASE_US + trade_id) for trade_id in (10, 11, 13)]
                        + [tick(script_id, 2_000_000 + i, BASE_US + DAY_US + i) for i in range(3)]
                        + [tick(script_id, 5_000_000 + i, BASE_US + 2 * DAY_US + i) for i in range(3)])
    conn = connect(db_settings, autocommit=True)
    try:
        assert incomplete_ranges(conn, script_id, 5_000_002) == [(10, 13), (14, 1_999_999), (2_000_003, 4_999_999)]
        found = audit_script(script_id, 5_000_002, lambda s, up: incomplete_ranges(conn, s, up),
                             lambda s, a, b: missing_ranges(conn, s, a, b))
        assert found == [(12, 12), (14, 1_999_999), (2_000_003, 4_999_999)]
        assert audit_script(script_id, 11, lambda s, up: incomplete_ranges(conn, s, up),
                            lambda s, a, b: missing_ranges(conn, s, a, b)) == [], "only below the resume point"

        ledger = GapLedger(lambda: connect(db_settings, autocommit=True))
        ledger.record(script_id, 1_000_000, 4_999_999, "stream_jump")  # known already: not reported again
        reported: list[BackfillJob] = []
        backfiller = type("Recorder", (), {"request": lambda self, job: reported.append(job)})()
        stop = threading.Event()
        auditor = Auditor(lambda: connect(db_settings, autocommit=True), ledger, stop)
        auditor.start()
        auditor.request(AuditRequest(script_id, "BTCUSDT", "aggTrade", 5_000_002, backfiller))  # type: ignore[arg-type]
        assert wait_until(auditor.idle)
        stop.set()
        ledger.close()
        assert [(job.gap.first_id, job.gap.last_id, job.cause) for job in reported] == [
            (12, 12, "audit"), (14, 999_999, "audit")]
    finally:
        conn.close()


# --- the backfill works from the ledger ----------------------------------------------------------------------

def test_a_rest_outage_while_connections_drop_loses_nothing(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                            localstack: Any, queue: str, sim: ExchangeSimulator,
                                                            tmp_path: Path) -> None:
    """REST resets connections, hangs past the client's timeout, answers 503 and 429 while the WebSocket drops:
    every gap waits in the ledger and is filled once REST answers again (before the ledger, the first OSError
    or 5xx sent the gap to `unfilled` for good)."""
    scripts = register_simulator(db, sim, ["BTCUSDT", "ETHUSDT"])
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path, rest_timeout_seconds=1.0) as producer:
        start_trading(sim, producer)
        time.sleep(1.0)
        sim.rest_faults("reset", "hang", "503", "429", "502")
        for _ in range(3):
            assert sim.drop_connections() >= 1
            time.sleep(2.0)
        sim.rest_faults()
        time.sleep(1.0)
        stop_trading(sim)
        reader = QueueReader(sqs(localstack.endpoint_url), queue)
        complete = reader.wait_for(lambda: all(reader.ids(sid) >= expected_ids(sim, sym)
                                               for sym, sid in scripts.items()), timeout=60)
        for symbol, script_id in scripts.items():
            missing = expected_ids(sim, symbol) - reader.ids(script_id)
            assert not missing, f"{symbol}: {len(missing)} trades lost, e.g. {sorted(missing)[:5]}"
        assert complete and reader.duplicates() == []
    rows = [row for script_id in scripts.values() for row in gap_rows(db, script_id)]
    assert rows and all(row["state"] == "filled" for row in rows), rows
    assert any(row["attempts"] > 1 and row["last_error"] for row in rows), "the outage was retried, not skipped"
    assert {row["cause"] for row in rows} <= {"reconnect", "stream_jump", "restart"}


def test_a_backfill_stopped_midway_resumes_from_the_ledger_fetching_at_most_a_page_again(
        db: pymysql.Connection, db_settings: DatabaseSettings, localstack: Any, queue: str, sim: ExchangeSimulator,
        tmp_path: Path) -> None:
    """A restart gap of ~30k ids; the producer stops (as on SIGTERM) in the middle of it. The ledger keeps the
    rest (pending, next_trade_id past what the sink took); the next start finishes it. Every id reaches SQS, and
    REST served no id twice beyond one page."""
    script_id = register_simulator(db, sim, ["BTCUSDT"])["BTCUSDT"]
    sim.config.rate = 1.0
    assert wait_until(lambda: len(expected_ids(sim, "BTCUSDT")) > 0)
    first = min(expected_ids(sim, "BTCUSDT"))
    store_with_coverage(db, [tick(script_id, first, time.time_ns() // 1000)])  # an earlier run stored the first
    sim.config.rate = 20_000.0
    assert wait_until(lambda: len(expected_ids(sim, "BTCUSDT")) > 30_000, timeout=30)
    sim.config.rate = 0
    time.sleep(0.2)
    last = max(expected_ids(sim, "BTCUSDT"))
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path / "a") as producer:
        start_trading(sim, producer, rate=50.0)  # the first live id reveals the gap since `first`
        assert wait_until(lambda: any(row["next_trade_id"] > row["first_trade_id"] + 5_000
                                      for row in gap_rows(db, script_id)), timeout=30)
    (stopped,) = [row for row in gap_rows(db, script_id) if row["first_trade_id"] == first + 1]
    assert stopped["state"] == PENDING and stopped["cause"] == "restart"
    assert stopped["first_trade_id"] < stopped["next_trade_id"] <= stopped["last_trade_id"], "stopped midway"
    assert stopped["trades_filled"] == stopped["next_trade_id"] - stopped["first_trade_id"]
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path / "b"):
        assert wait_until(lambda: all(row["state"] == "filled" for row in gap_rows(db, script_id)), timeout=60)
        time.sleep(0.5)
        stop_trading(sim)
        reader = QueueReader(sqs(localstack.endpoint_url), queue)
        wanted = expected_ids(sim, "BTCUSDT") - {first}
        assert reader.wait_for(lambda: reader.ids(script_id) >= wanted, timeout=30)
    assert reader.ids(script_id) == wanted
    assert refetched([page for page in sim.rest_served("BTCUSDT") if page[0] <= last]) <= 1000
    assert len(reader.duplicates()) <= 1000


def test_the_audit_fills_a_hole_after_subscribing_and_the_status_shows_every_script(
        db: pymysql.Connection, db_settings: DatabaseSettings, localstack: Any, queue: str, sim: ExchangeSimulator,
        tmp_path: Path) -> None:
    """A hole below what is stored (coverage shows the day incomplete) is found by the audit and filled; the
    producer_status table shows a subscribed script with its last id and lag, and an unknown symbol."""
    scripts = register_simulator(db, sim, ["BTCUSDT", "NOSUCHUSDT"])
    sim.config.rate = 500.0
    assert wait_until(lambda: len(expected_ids(sim, "BTCUSDT")) > 600)
    sim.config.rate = 0
    ids = list(expected_ids(sim, "BTCUSDT"))
    hole = set(ids[100:400])
    now_us = time.time_ns() // 1000
    store_with_coverage(db, [tick(scripts["BTCUSDT"], trade_id, now_us) for trade_id in ids if trade_id not in hole])
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path, status_seconds=0.5) as producer:
        start_trading(sim, producer, rate=50.0)
        reader = QueueReader(sqs(localstack.endpoint_url), queue)
        assert reader.wait_for(lambda: reader.ids(scripts["BTCUSDT"]) >= hole, timeout=30)
        assert wait_until(lambda: gap_rows(db, scripts["BTCUSDT"])[0]["state"] == "filled")
        assert [(row["first_trade_id"], row["last_trade_id"], row["cause"], row["state"])
                for row in gap_rows(db, scripts["BTCUSDT"])] == [(min(hole), max(hole), "audit", "filled")]
        assert wait_until(lambda: status_rows(db).get(scripts["BTCUSDT"], {}).get("state") == "subscribed")
        status = status_rows(db)
    btc, unknown = status[scripts["BTCUSDT"]], status[scripts["NOSUCHUSDT"]]
    assert btc["last_trade_id"] > max(ids) and btc["connection"] and btc["lag_ms_p50"] is not None
    assert btc["lag_ms_p99"] >= btc["lag_ms_p50"]
    assert unknown["state"] == "unknown_symbol" and "NOSUCHUSDT" in unknown["detail"]
    stop_trading(sim)
