"""Stage 9 (`make bench-scale`, `--stages 9`): does tickstream stay fast as the ticks table grows?

For each size (default 1M, 10M, 100M rows; bench.scale_build, kept between runs) it measures, through the same
ingest handler as stage 2 and the same API over HTTP (`chalice local`) as the tests:
- ingest rows/s appending to the hot symbols, against the same (the same trade ids) into an empty table, in
  ABBA-ordered pairs (goal ≥ 0.9×, the median of the pairs' ratios);
- p50/p99 of /stats (after the same 60,000 ticks traded in the last minute at every size, every script with a
  producer status), a full page of 100 ticks with from/to (one hour) in the middle of the 30 days, 30 days of
  coverage and /gaps (each only if the API has the route; goal ≤ 50 ms p99 and ≤ 1.5× its figure at the smallest
  size);
- bytes per stored tick, (data + index) / rows of ticks and of its time index tick_minutes (goal ≤ 125 B);
- retention removing the oldest day (tickstream.jobs, as the maintenance function runs it): its duration and the
  ingest's rows/s while it runs (goal ≥ 0.8× of without);
- at every size, the alternative design: the same table partitioned by day (primary key
  (script_id, trade_id, traded_at)), its bytes per tick and the time of DROP PARTITION for the same day.
Growth between the sizes is reported, and extrapolated to 1B rows (per decade of rows, from the two largest).
Measuring changes the table: each run deletes the oldest day (the next run makes it again first: the build resumes
whenever coverage lacks a day) and appends the ingested rows (today's, outside the 30 days).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
import requests

from bench import scale_build
from bench.common import (
    StageResult,
    Stopwatch,
    bench_database,
    bodies_of,
    make_scripts,
    percentile,
    rate,
    wait_for_database,
)
from bench.ingest import ingest, loaded_handler, use_store
from tests.api_fixtures import start_chalice_local, stop_chalice_local
from tests.sqs_events import FakeLambdaContext, sqs_event, sqs_record
from tickstream import jobs
from tickstream.db import connect
from tickstream.settings import DatabaseSettings
from tickstream.ticks import Tick

NAME = "9 scale"
SIZES = (1_000_000, 10_000_000, 100_000_000)
HOT_SCRIPTS = 4
BATCH_MESSAGES = 20
TOKEN = "bench-scale-token"
SLOW_READ_SECONDS = 2.0  # a read slower than this is sampled 3 times only (it would take minutes otherwise)
DATABASE_WAIT_SECONDS = 600  # other sessions' drills stop MariaDB for minutes at a time
INGEST_PAIRS = 10  # even: as many pairs with the empty table first as with the full one first
RECENT_TICKS = 60_000  # traded in the minute before the reads (1,000 a second): what /stats counts and samples
ENDPOINTS = ("stats", "tick page", "coverage 30 days", "gaps")
QUIESCE_SECONDS = 120  # the longest wait for the server to flush and purge before a timed ingest
QUIESCED_PAGES = 100  # dirty pages and undo logs left that count as a quiet server
FLUSH_IO_CAPACITY = 20_000  # pages/s while quiescing (the default 200 would take minutes after a run)


def run(sizes: Sequence[int], ingest_rows: int, samples: int, workers: int = 2) -> StageResult:
    result = StageResult(NAME)
    for size in sizes:
        watch = Stopwatch()
        wait_for_database(timeout=DATABASE_WAIT_SECONDS)
        db, reused = scale_build.build_or_reuse(size, workers)
        # A kept table is migrated first (e.g. 0007 building tick_minutes from the old index): prepare_seconds
        figures = {"build_seconds": None if reused else watch.seconds, "reused": reused,
                   "prepare_seconds": watch.seconds}
        figures.update(measure(db, ingest_rows, samples))
        result.data[str(size)] = figures
        report_size(result, size, figures, result.data.get(str(min(sizes))))
    report_growth(result, sizes)
    return result


# --- ingest ----------------------------------------------------------------------------------------------------

def fresh_ticks(next_ids: dict[int, int], count: int) -> list[Tick]:
    """`count` ticks interleaved over the scripts from their next trade ids, 1 ms apart, the last one traded now:
    what a live feed adds (never traded in the future: a later read of the last minute would count them)."""
    start_us = now_us() - count * 1000
    scripts = sorted(next_ids)
    ticks = []
    for i in range(count):
        script_id = scripts[i % len(scripts)]
        trade_id = next_ids[script_id] + i // len(scripts)
        traded = start_us + i * 1000
        ticks.append(Tick(script_id, trade_id, f"{95_000 + (i * 7919) % 5000}.{i % 100:02d}",
                          f"0.{(i * 31) % 99999 + 1:05d}", i % 3 == 0, traded, traded + 2_000, traded + 9_000))
    for n, script_id in enumerate(scripts):
        next_ids[script_id] += count // len(scripts) + (1 if n < count % len(scripts) else 0)
    return ticks


def now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def paired_ingest(db: DatabaseSettings, conn: pymysql.Connection, rows: int) -> dict[str, Any]:
    """INGEST_PAIRS pairs: `rows` into a fresh empty table and as many appended to this table's hot scripts (the
    same trade ids on both sides), in ABBA order (empty first in even pairs, full first in odd ones), the empty
    database made before and dropped after both runs of its pair, and the server quiesced before each run
    (`quiesce`): what comes before a run (the DDL, the other run's writes still being flushed) falls on both sides
    alike. The ratio is the median of the pairs' ratios, so load that drifts over minutes shifts both."""
    pairs = []
    for number in range(INGEST_PAIRS):
        with bench_database("scale_empty") as empty_db:
            empty_conn = connect(empty_db, autocommit=True)
            empty_scripts = sorted(make_scripts(empty_conn, scale_build.HOT).values())
            empty_conn.close()
            full_ids = hot_next_ids(conn)
            # The empty table gets the same trade ids as the full one's next: ids of 10 digits against 1.. make
            # longer rows to send, parse and compare (0.935× on one empty table), which is not what is measured.
            empty_ids = dict(zip(empty_scripts, (full_ids[script] for script in sorted(full_ids)), strict=True))
            targets = {"empty": (empty_db, empty_ids), "full": (db, full_ids)}
            order = ("empty", "full") if number % 2 == 0 else ("full", "empty")
            speed = {}
            for side in order:
                quiesce(conn)
                speed[side] = timed_ingest(targets[side][0], fresh_ticks(targets[side][1], rows))["rows_per_s"]
        pairs.append({"empty_rows_per_s": speed["empty"], "rows_per_s": speed["full"], "first": order[0],
                      "ratio": speed["full"] / speed["empty"]})
    return {"rows_per_s": statistics.median(p["rows_per_s"] for p in pairs),
            "empty_rows_per_s": statistics.median(p["empty_rows_per_s"] for p in pairs),
            "ratio": statistics.median(p["ratio"] for p in pairs), "pairs": pairs}


def quiesce(conn: pymysql.Connection) -> None:
    """Flush every dirty page and let the purge finish before a timed run, so each starts from the same server
    state: otherwise a run that falls on the server's checkpoint flushing (of earlier runs' pages, which competes
    for the two cores) is slower by chance, whichever table it writes. Needs the privilege to set globals; without
    it the run starts at once. The globals are put back however the wait ends, SIGTERM included (bench's main);
    only a kill -9 in the middle leaves them changed."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.innodb_max_dirty_pages_pct, @@GLOBAL.innodb_io_capacity,"
                       " @@GLOBAL.innodb_io_capacity_max")
        previous = cursor.fetchone()
        try:
            cursor.execute("SET GLOBAL innodb_io_capacity_max = %s", (2 * FLUSH_IO_CAPACITY,))
            cursor.execute("SET GLOBAL innodb_io_capacity = %s", (FLUSH_IO_CAPACITY,))
            cursor.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
        except pymysql.err.OperationalError:  # no SUPER / SYSTEM_VARIABLES_ADMIN
            return
        try:
            deadline = time.monotonic() + QUIESCE_SECONDS
            while time.monotonic() < deadline:
                cursor.execute("SHOW GLOBAL STATUS WHERE Variable_name IN"
                               " ('Innodb_buffer_pool_pages_dirty', 'Innodb_history_list_length')")
                if all(int(value) < QUIESCED_PAGES for _, value in cursor.fetchall()):
                    return
                time.sleep(0.2)
        finally:
            cursor.execute("SET GLOBAL innodb_max_dirty_pages_pct = %s", (previous[0],))
            cursor.execute("SET GLOBAL innodb_io_capacity = %s", (previous[1],))
            cursor.execute("SET GLOBAL innodb_io_capacity_max = %s", (previous[2],))


def timed_ingest(db: DatabaseSettings, ticks: Sequence[Tick]) -> dict[str, float]:
    bodies = bodies_of(ticks)
    with loaded_handler(db) as handler:
        use_store(handler, db, "load_data")
        outcome = ingest(handler, bodies, BATCH_MESSAGES, len(ticks) / len(bodies))
    outcome["rows_per_s"] = rate(len(ticks), outcome["seconds"])
    return outcome


def hot_next_ids(conn: pymysql.Connection) -> dict[int, int]:
    """The hot scripts (the first ones) and the id after each one's last stored trade: one index dive each."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT id FROM scripts ORDER BY id LIMIT %s", (HOT_SCRIPTS,))
        ids = [row[0] for row in cursor.fetchall()]
        next_ids = {}
        for script_id in ids:
            cursor.execute("SELECT MAX(trade_id) FROM ticks WHERE script_id = %s", (script_id,))
            next_ids[script_id] = (cursor.fetchone()[0] or 0) + 1
    return next_ids


# --- the measurements of one size --------------------------------------------------------------------------------

def measure(db: DatabaseSettings, ingest_rows: int, samples: int) -> dict[str, Any]:
    """Each measurement on its own: one that fails (this machine's MariaDB is restarted by other sessions' fault
    drills) is tried once more, then recorded as an error, and the others still count."""
    figures: dict[str, Any] = {}

    def attempt(name: str, measurement: Callable[[pymysql.Connection], Any]) -> None:
        for tries_left in (1, 0):
            wait_for_database(timeout=DATABASE_WAIT_SECONDS)
            conn = connect(db, autocommit=True)
            try:
                figures[name] = measurement(conn)
                return
            except pymysql.err.OperationalError as error:
                figures[name] = {"error": f"{type(error).__name__}: {error}"}
                if not tries_left:
                    return
            finally:
                conn.close()

    attempt("rows", stored_rows)
    attempt("bytes", lambda conn: storage_bytes(conn, figures["rows"]))
    attempt("reads", lambda conn: read_latencies(db, conn, samples))
    attempt("ingest", lambda conn: paired_ingest(db, conn, ingest_rows))
    attempt("retention", lambda conn: retention_under_ingest(db, conn, hot_next_ids(conn), ingest_rows))
    if isinstance(figures["rows"], int):
        attempt("partitioned", lambda conn: partitioned_variant(conn, figures["rows"]))
    return figures


def stored_rows(conn: pymysql.Connection) -> int:
    """From tick_coverage, O(scripts × days): the build writes the 30 days' rows to match, and the ingest keeps
    the rows of the days it appended to (today's) exact."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT COALESCE(SUM(stored), 0) FROM tick_coverage")
        return int(cursor.fetchone()[0])


def storage_bytes(conn: pymysql.Connection, rows: int) -> dict[str, Any]:
    """What storing the ticks takes: the table, and its time index tick_minutes (which replaced the secondary
    index (script_id, traded_at)); bytes_per_tick counts both."""
    ticks, minutes = table_bytes(conn, "ticks", rows), table_bytes(conn, "tick_minutes", rows)
    total = sum(part["data_bytes"] + part["index_bytes"] for part in (ticks, minutes))
    return {**ticks, "time_index": minutes, "bytes_per_tick": total / rows if rows else None}


def table_bytes(conn: pymysql.Connection, table: str, rows: int) -> dict[str, float]:
    with conn.cursor() as cursor:
        cursor.execute(f"ANALYZE TABLE {table}")  # fixed names: ticks, tick_minutes, ticks_partitioned
        cursor.fetchall()
        cursor.execute("SELECT data_length, index_length FROM information_schema.tables"
                       " WHERE table_schema = DATABASE() AND table_name = %s", (table,))
        data, index = cursor.fetchone()
    return {"data_bytes": data, "index_bytes": index, "bytes_per_tick": (data + index) / rows if rows else None}


def coverage_days(conn: pymysql.Connection) -> list[date]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT DISTINCT day FROM tick_coverage WHERE day < UTC_DATE() ORDER BY day")  # the 30 days
        return [row[0] for row in cursor.fetchall()]


def read_latencies(db: DatabaseSettings, conn: pymysql.Connection, samples: int) -> dict[str, Any]:
    days = coverage_days(conn)
    hot = min(hot_next_ids(conn))
    middle = datetime.combine(days[len(days) // 2], datetime.min.time(), UTC) + timedelta(hours=12)
    timed_ingest(db, fresh_ticks(hot_next_ids(conn), RECENT_TICKS))  # the same last minute at every size
    report_statuses(conn)
    paths = {
        "stats": "/stats",
        "tick page": f"/scripts/{hot}/ticks?order=asc&limit=100&from={middle:%Y-%m-%dT%H:%M:%SZ}"
                     f"&to={middle + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
        "coverage 30 days": f"/scripts/{hot}/coverage?from={days[0].isoformat()}&to={days[-1].isoformat()}",
        "gaps": f"/gaps?script_id={hot}",
    }
    with running_api(db) as base_url:
        documented = set(get(base_url, "/openapi.json").json()["paths"])
        return {name: sample(base_url, path, samples) if route_of(path) in documented
                else {"skipped": f"{route_of(path)} is not a route of this API"} for name, path in paths.items()}


def report_statuses(conn: pymysql.Connection) -> None:
    """A status row for every script, as a running producer keeps them (so /stats reads what it would read)."""
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO producer_status (script_id, broker_id, state, connection, last_trade_id,"
                       " last_traded_at, lag_ms_p50, lag_ms_p99, reported_at) SELECT id, broker_id, 'subscribed',"
                       " 'wss://127.0.0.1:9443/stream', 0, UTC_TIMESTAMP(6), 12, 80, UTC_TIMESTAMP(6) FROM scripts"
                       " ON DUPLICATE KEY UPDATE last_traded_at = VALUES(last_traded_at),"
                       " reported_at = VALUES(reported_at)")


def route_of(path: str) -> str:
    """/scripts/5/ticks?... → /scripts/{script_id}/ticks, as the OpenAPI document names it."""
    return re.sub(r"^/scripts/[0-9]+", "/scripts/{script_id}", path.split("?")[0])


@contextlib.contextmanager
def running_api(db: DatabaseSettings) -> Iterator[str]:
    env = {"DB_HOST": db.host, "DB_PORT": str(db.port), "DB_USER": db.user, "DB_PASSWORD": db.password,
           "DB_NAME": db.name, "API_TOKEN": TOKEN}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        server = start_chalice_local(env, Path(tmp) / "chalice.log", timeout=60)
        try:
            yield server.url
        finally:
            stop_chalice_local(server)


def get(base_url: str, path: str) -> requests.Response:
    return requests.get(base_url + path, headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"},
                        timeout=120)


def sample(base_url: str, path: str, samples: int) -> dict[str, Any]:
    """Latencies of `samples` requests (after one warm-up), one at a time, each on a fresh connection."""
    first = time_request(base_url, path)
    count = 3 if first[0] > SLOW_READ_SECONDS else samples
    timings = [time_request(base_url, path) for _ in range(count)]
    seconds = [t for t, _ in timings]
    statuses = sorted({status for _, status in timings})
    return {"p50_ms": percentile(seconds, 0.5) * 1000, "p99_ms": percentile(seconds, 0.99) * 1000,
            "samples": count, "statuses": statuses, "path": path}


def time_request(base_url: str, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = get(base_url, path)
    return time.perf_counter() - started, response.status_code


# --- retention while the ingest runs -------------------------------------------------------------------------

def retention_under_ingest(db: DatabaseSettings, conn: pymysql.Connection, next_ids: dict[int, int],
                           ingest_rows: int) -> dict[str, Any]:
    """Delete the oldest day (retention with the window that keeps the rest) on its own connection, as the
    maintenance function would, while the ingest handler appends until it has finished; the ingest rate is the
    rows stored over the handler's own time."""
    oldest = coverage_days(conn)[0]
    days = (datetime.now(UTC).date() - oldest).days  # the cutoff is then oldest + 1 day
    with conn.cursor() as cursor:
        cursor.execute("SELECT COALESCE(SUM(stored), 0) FROM tick_coverage WHERE day = %s", (oldest,))
        day_rows = int(cursor.fetchone()[0])
    start_ids = dict(next_ids)
    outcome: dict[str, Any] = {}

    def retention() -> None:
        worker = connect(db, autocommit=True)
        with worker.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        watch = Stopwatch()
        result = jobs.run_retention(worker, days)
        outcome.update(seconds=watch.seconds, rows_deleted=result.rows_deleted, done=result.done)
        worker.close()

    with loaded_handler(db) as handler:
        use_store(handler, db, "load_data")
        thread = threading.Thread(target=retention)
        thread.start()
        ingest_seconds = 0.0  # handler time only: blocks of ticks are made between the timed calls
        with contextlib.redirect_stdout(io.StringIO()):
            while thread.is_alive():
                for event in ingest_events(next_ids, ingest_rows):
                    if not thread.is_alive():
                        break
                    watch = Stopwatch()
                    handler.handler(event, FakeLambdaContext())
                    ingest_seconds += watch.seconds
        thread.join()
    ingested = rows_from(conn, start_ids)
    outcome.update(day=oldest.isoformat(), day_rows=day_rows, ingest_seconds=ingest_seconds,
                   ingest_rows=ingested, ingest_rows_per_s=rate(ingested, ingest_seconds),
                   overlap=min(1.0, ingest_seconds / outcome["seconds"]) if outcome.get("seconds") else None)
    return outcome


def ingest_events(next_ids: dict[int, int], rows: int) -> list[dict[str, Any]]:
    """`rows` fresh ticks as SQS events of BATCH_MESSAGES messages each."""
    return [sqs_event(*[sqs_record(body) for body in batch])
            for batch in _batches(bodies_of(fresh_ticks(next_ids, rows)), BATCH_MESSAGES)]


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def rows_from(conn: pymysql.Connection, start_ids: dict[int, int]) -> int:
    """Rows stored from each script's given trade id on (a primary-key range each)."""
    total = 0
    with conn.cursor() as cursor:
        for script_id, start in start_ids.items():
            cursor.execute("SELECT COUNT(*) FROM ticks WHERE script_id = %s AND trade_id >= %s", (script_id, start))
            total += cursor.fetchone()[0]
    return total


# --- the partitioned alternative -----------------------------------------------------------------------------

def partitioned_variant(conn: pymysql.Connection, rows: int) -> dict[str, Any]:
    """The same rows in a table partitioned by UTC day of traded_at: the partition column must join the primary
    key, so exactly-once then rests on (script_id, trade_id, traded_at). Measured: size, and DROP PARTITION."""
    days = coverage_days(conn)
    bounds = [days[0] + timedelta(days=i + 1) for i in range(len(days) + 1)]
    partitions = ", ".join(f"PARTITION p{b:%Y%m%d} VALUES LESS THAN ('{b.isoformat()}')" for b in bounds)
    with conn.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS ticks_partitioned")
        cursor.execute("CREATE TABLE ticks_partitioned LIKE ticks")
        cursor.execute("ALTER TABLE ticks_partitioned DROP PRIMARY KEY, ADD PRIMARY KEY (script_id, trade_id,"
                       f" traded_at) PARTITION BY RANGE COLUMNS (traded_at) ({partitions},"
                       " PARTITION pmax VALUES LESS THAN (MAXVALUE))")
        watch = Stopwatch()
        copied = copy_by_script(cursor)
        copy_seconds = watch.seconds
        size = table_bytes(conn, "ticks_partitioned", copied)
        first = f"p{bounds[0]:%Y%m%d}"  # the oldest day's partition (a name made here, never input)
        cursor.execute(f"SELECT COUNT(*) FROM ticks_partitioned PARTITION ({first})")
        first_day_rows = cursor.fetchone()[0]
        watch = Stopwatch()
        cursor.execute(f"ALTER TABLE ticks_partitioned DROP PARTITION {first}")
        drop_seconds = watch.seconds
        cursor.execute("DROP TABLE ticks_partitioned")
    return {"copy_seconds": copy_seconds, **size, "drop_partition_seconds": drop_seconds,
            "dropped_rows": first_day_rows, "rows": rows}


def copy_by_script(cursor: pymysql.cursors.Cursor) -> int:
    """ticks into ticks_partitioned, one statement (and transaction) per script: in key order, with bounded undo."""
    cursor.execute("SELECT DISTINCT script_id FROM tick_coverage ORDER BY script_id")
    copied = 0
    for (script_id,) in cursor.fetchall():
        cursor.execute("INSERT INTO ticks_partitioned SELECT * FROM ticks WHERE script_id = %s", (script_id,))
        copied += cursor.rowcount
    return copied


# --- the printed rows ------------------------------------------------------------------------------------------

def report_size(result: StageResult, size: int, figures: dict[str, Any], smallest: dict[str, Any] | None) -> None:
    label = f"{size / 1e6:g}M"
    for name, value in figures.items():
        if isinstance(value, dict) and "error" in value:
            result.add(f"{label}: {name}", f"FAILED: {value['error']}", "")
    try:
        _report_size(result, label, figures, smallest)
    except (KeyError, TypeError) as missing:  # a failed measurement: the rows before it are printed
        result.add(f"{label}: rest of the figures", f"missing ({missing!r})", "")


def _report_size(result: StageResult, label: str, figures: dict[str, Any], smallest: dict[str, Any] | None) -> None:
    bytes_per_tick = figures["bytes"]["bytes_per_tick"]
    result.add(f"{label}: rows in the table", figures["rows"], "rows")
    result.add(f"{label}: bytes per stored tick (ticks + tick_minutes)", bytes_per_tick, "B", "≤ 125",
               bytes_per_tick <= 125)
    result.add(f"{label}: of which tick_minutes", figures["bytes"]["time_index"]["bytes_per_tick"], "B")
    ingest = figures["ingest"]
    spread = ", ".join(f"{pair['ratio']:.2f}" for pair in ingest["pairs"])
    result.add(f"{label}: ingest rows/s, this table / an empty one (medians)",
               f"{ingest['rows_per_s']:,.0f} / {ingest['empty_rows_per_s']:,.0f}", "rows/s")
    result.add(f"{label}: ingest vs empty table (median of pairs: {spread})", ingest["ratio"], "×", "≥ 0.9",
               ingest["ratio"] >= 0.9)
    for name in ENDPOINTS:
        read = figures["reads"][name]
        if "skipped" in read:
            result.add(f"{label}: {name}", "skipped", "", "", None)
            continue
        flat = None
        if smallest is not None and "p99_ms" in smallest["reads"].get(name, {}):
            flat = read["p99_ms"] / smallest["reads"][name]["p99_ms"]
        ok = read["p99_ms"] <= 50 and read["statuses"] == [200] and (flat is None or flat <= 1.5)
        result.add(f"{label}: {name} p50", read["p50_ms"], "ms")
        result.add(f"{label}: {name} p99", read["p99_ms"], "ms", "≤ 50, ≤ 1.5× smallest, 200", ok)
    retention = figures["retention"]
    result.add(f"{label}: retention of one day ({retention['rows_deleted']:,} rows)", retention["seconds"], "s")
    during = retention["ingest_rows_per_s"] / figures["ingest"]["rows_per_s"]
    result.add(f"{label}: ingest during retention vs without", during, "×", "≥ 0.8", during >= 0.8)
    if "partitioned" in figures:
        part = figures["partitioned"]
        result.add(f"{label}: partitioned by day: bytes per tick", part["bytes_per_tick"], "B")
        result.add(f"{label}: partitioned by day: DROP PARTITION of one day", part["drop_partition_seconds"], "s")


def report_growth(result: StageResult, sizes: Sequence[int]) -> None:
    """Per-decade growth from the two largest sizes, carried on to 1B rows (latencies, bytes per tick); the
    retention of one day grows with the rows of a day, so linearly."""
    measured = sorted(s for s in sizes if str(s) in result.data)
    if len(measured) < 2:
        return
    low, high = measured[-2], measured[-1]
    decades = math.log10(1e9 / high) / math.log10(high / low)
    growth: dict[str, Any] = {}
    for name in ENDPOINTS:
        a = result.data[str(low)].get("reads", {}).get(name, {})
        b = result.data[str(high)].get("reads", {}).get(name, {})
        if "p99_ms" in a and "p99_ms" in b:
            growth[f"{name} p99_ms"] = b["p99_ms"] * (b["p99_ms"] / a["p99_ms"]) ** decades
    for key, path in (("bytes_per_tick", ("bytes", "bytes_per_tick")),
                      ("ingest_rows_per_s", ("ingest", "rows_per_s"))):
        a = result.data[str(low)].get(path[0], {}).get(path[1])
        b = result.data[str(high)].get(path[0], {}).get(path[1])
        if a and b:
            growth[key] = b * (b / a) ** decades
    retention = result.data[str(high)].get("retention", {})
    if retention.get("seconds"):
        growth["retention_one_day_seconds"] = retention["seconds"] * 1e9 / high
    result.data["extrapolated_1B"] = growth
    for key, value in growth.items():
        result.add(f"1B (extrapolated): {key}", value, "")
