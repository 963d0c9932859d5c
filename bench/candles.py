"""Stage 7: candles. One UTC day of 1m candles for a symbol with 1M trades that day (and 500k on each day around
it, so the table holds more than the answer), fetched over HTTP from `chalice local`: the first call (computed
from the ticks, sealing the minutes into candles_1m) and then p50/p99 of repeated calls (from the sealed minutes);
against the server's own floor measured in the same run: one bare pass over the same day's rows (COUNT and SUM,
no grouping), which any computation from the raw ticks costs at least.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pymysql
import requests

from bench.common import StageResult, bench_database, make_scripts, scalar
from infra.localstack_config import REPO_ROOT
from tickstream import market_data
from tickstream.db import connect

NAME = "7 candles"
DAY = datetime(2025, 10, 9, tzinfo=UTC)
DAY_TRADES = 1_000_000
NEIGHBOUR_TRADES = 500_000
REQUESTS = 30
GOAL_P99_MS = 300.0
TOKEN = "bench-candles-token"

# n = 0 … 10^k − 1 from a cross join of digits: portable (MySQL 8 and MariaDB), no client round trips.
_DIGITS = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL" \
          " SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)"
_INSERT_DAY = f"""
INSERT INTO ticks (script_id, trade_id, price, quantity, is_buyer_maker, traded_at, event_at, received_at_producer)
SELECT %s, %s + n, 95000 + MOD(n * 7919, 500000) / 100, (MOD(n * 104729, 99999) + 1) / 100000000, MOD(n, 2),
       %s + INTERVAL (n * %s) MICROSECOND, %s, %s
FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d + 100000 * g.d AS n
      FROM {_DIGITS} a, {_DIGITS} b, {_DIGITS} c, {_DIGITS} e, {_DIGITS} f, {_DIGITS} g) seq
WHERE n < %s
"""


def _fill_day(conn: pymysql.Connection, script_id: int, first_id: int, day: datetime, trades: int) -> None:
    spacing_us = 86_400_000_000 // trades
    start = day.replace(tzinfo=None)
    with conn.cursor() as cursor:
        cursor.execute(_INSERT_DAY, (script_id, first_id, start, spacing_us, start, start, trades))
    conn.commit()


def _start_api(env: dict[str, str], port: int) -> subprocess.Popen:
    chalice = os.path.join(os.path.dirname(sys.executable), "chalice")
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([chalice, "--project-dir", str(REPO_ROOT / "functions" / "api"), "local", "--host",
                                "127.0.0.1", "--port", str(port), "--no-autoreload"], env=full_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("chalice local did not start")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def run() -> StageResult:
    result = StageResult(NAME)
    with bench_database("candles") as db:
        conn = connect(db)
        try:
            script_id = make_scripts(conn, ["BTCUSDT"])["BTCUSDT"]
            _fill_day(conn, script_id, 1, DAY - timedelta(days=1), NEIGHBOUR_TRADES)
            _fill_day(conn, script_id, 1 + NEIGHBOUR_TRADES, DAY, DAY_TRADES)
            _fill_day(conn, script_id, 1 + NEIGHBOUR_TRADES + DAY_TRADES, DAY + timedelta(days=1), NEIGHBOUR_TRADES)
            conn.autocommit(True)
            floor_ms = _bare_pass_ms(conn, script_id)
            sql_ms = [_timed_ms(lambda: market_data.candles_from_ticks(conn, script_id, DAY, DAY + timedelta(days=1),
                                                                     60)) for _ in range(3)]
        finally:
            conn.close()
        port = _free_port()
        env = {"DB_HOST": db.host, "DB_PORT": str(db.port), "DB_USER": db.user, "DB_PASSWORD": db.password,
               "DB_NAME": db.name, "API_TOKEN": TOKEN}
        api = _start_api(env, port)
        try:
            first_ms, latencies, bars = _fetch_repeatedly(port, script_id)
        finally:
            api.terminate()
            api.wait(timeout=10)
    p50, p99 = statistics.median(latencies), _percentile(latencies, 0.99)
    result.data = {"first_call_ms": first_ms, "latencies_ms": latencies, "bare_pass_ms": floor_ms,
                   "from_ticks_ms": sql_ms, "bars": bars, "load_average": os.getloadavg()}
    result.add(f"1m candles of a 1M-trade day over HTTP ({bars} bars), p50 / p99 of {REQUESTS} calls",
               f"{p50:.0f} / {p99:.0f}", "ms", f"p99 ≤ {GOAL_P99_MS:.0f}", p99 <= GOAL_P99_MS)
    result.add("the first call (computes from the ticks, seals the minutes)", round(first_ms), "ms")
    result.add("the same bars from the ticks alone, in-process (median of 3)", round(statistics.median(sql_ms)), "ms")
    result.add("floor of any computation from the ticks: one bare pass (COUNT, SUM)", round(floor_ms), "ms")
    return result


def _timed_ms(call: object) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def _bare_pass_ms(conn: pymysql.Connection, script_id: int) -> float:
    lo, hi = 1 + NEIGHBOUR_TRADES, NEIGHBOUR_TRADES + DAY_TRADES
    sql = "SELECT COUNT(*), SUM(quantity) FROM ticks WHERE script_id = %s AND trade_id BETWEEN %s AND %s"
    return statistics.median(_timed_ms(lambda: scalar(conn, sql, (script_id, lo, hi))) for _ in range(5))


def _fetch_repeatedly(port: int, script_id: int) -> tuple[float, list[float], int]:
    url = f"http://127.0.0.1:{port}/scripts/{script_id}/candles"
    params = {"interval": "1m", "from": DAY.isoformat(), "to": (DAY + timedelta(days=1)).isoformat()}
    headers = {"Authorization": f"Bearer {TOKEN}", "Connection": "close"}
    latencies, bars = [], 0
    for attempt in range(REQUESTS + 2):  # the first computes and seals; the second warms the cache's pages
        started = time.perf_counter()
        reply = requests.get(url, params=params, headers=headers, timeout=30)
        elapsed = (time.perf_counter() - started) * 1000
        reply.raise_for_status()
        body = reply.json()
        bars = len(body["candles"])
        if sum(bar["trades"] for bar in body["candles"]) != DAY_TRADES:
            raise AssertionError("the day's candles do not add up to its trades")
        if attempt >= 2:
            latencies.append(elapsed)
        elif attempt == 0:
            first_ms = elapsed
    return first_ms, latencies, bars
