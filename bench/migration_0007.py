"""Migration 0007 at scale: the old single `INSERT … SELECT … GROUP BY` against the chunked populate, on a table of
the schema before 0007 (the scale bench's shape, bench/scale_build.py), plus a kill -9 mid-populate and a restart.

`python -m bench.migration_0007 --rows 1000000 10000000` builds `<prefix><rows>` for each size (migrations up to
0006, then the rows from MariaDB's sequence engine), measures, checks that both ways make the same rows, and
drops the database. Results as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymysql
from yoyo import get_backend, read_migrations

from bench import scale_build
from tickstream.db import connect
from tickstream.migrate import MIGRATIONS_DIR, backend_url, migrate
from tickstream.settings import DatabaseSettings, database_settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
_SINGLE = """
INSERT INTO tick_minutes_single (script_id, minute, first_trade_id, last_trade_id)
SELECT script_id, TIMESTAMPDIFF(MINUTE, '1970-01-01', traded_at) AS m, MIN(trade_id), MAX(trade_id)
FROM ticks FORCE INDEX (ix_ticks_script_traded_at)
GROUP BY script_id, m
ON DUPLICATE KEY UPDATE first_trade_id = LEAST(first_trade_id, VALUES(first_trade_id)),
                        last_trade_id = GREATEST(last_trade_id, VALUES(last_trade_id))"""
_DIFFERENCES = """
SELECT (SELECT COUNT(*) FROM tick_minutes_single) - (SELECT COUNT(*) FROM tick_minutes),
       (SELECT COUNT(*) FROM tick_minutes_single s JOIN tick_minutes t USING (script_id, minute)
        WHERE s.first_trade_id <> t.first_trade_id OR s.last_trade_id <> t.last_trade_id)"""


def timed(action: Callable[[], Any], what: str) -> float:
    started = time.monotonic()
    action()
    took = time.monotonic() - started
    print(f"{what}: {took:.1f} s", file=sys.stderr, flush=True)
    return took


def execute(db: DatabaseSettings, *statements: str, in_database: bool = True) -> None:
    conn = connect(db, database=in_database, autocommit=True)
    try:
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        conn.close()


def scalar_row(db: DatabaseSettings, sql: str) -> tuple:
    conn = connect(db, autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()
    finally:
        conn.close()


def rollback_0007(db: DatabaseSettings) -> None:
    backend = get_backend(backend_url(db))
    with backend.lock():
        backend.rollback_migrations(backend.to_rollback(read_migrations(str(MIGRATIONS_DIR)).filter(
            lambda m: m.id >= "0007")))
    backend.connection.close()


def migrate_process(db: DatabaseSettings) -> subprocess.Popen:
    env = {**os.environ, "DB_HOST": db.host, "DB_PORT": str(db.port), "DB_USER": db.user,
           "DB_PASSWORD": db.password, "DB_NAME": db.name}
    return subprocess.Popen([sys.executable, "-m", "tickstream.migrate"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def killed_and_resumed(db: DatabaseSettings, kill_after: float) -> dict[str, Any]:
    """kill -9 of the host command `kill_after` seconds into its populate, then a second run to the end."""
    process = migrate_process(db)
    started = time.monotonic()
    time.sleep(kill_after)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = time.monotonic() - started
    cursors, buckets = scalar_row(db, "SELECT (SELECT COUNT(*) FROM tick_minutes_fill),"
                                      " (SELECT COUNT(*) FROM tick_minutes)")
    started = time.monotonic()
    rerun = migrate_process(db)
    assert rerun.wait() == 0, "the run after the kill failed"
    return {"killed_after_s": round(killed_at, 2), "scripts_begun_at_kill": cursors,
            "buckets_at_kill": buckets, "resumed_run_s": round(time.monotonic() - started, 2)}


def largest_chunk_s(db: DatabaseSettings) -> float:
    """The SELECT of the biggest chunk (the hottest script's busiest day), on the old index."""
    conn = connect(db, autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT script_id, day FROM tick_coverage ORDER BY stored DESC LIMIT 1")
            script_id, day = cursor.fetchone()
            started = time.monotonic()
            cursor.execute("SELECT TIMESTAMPDIFF(MINUTE, '1970-01-01', traded_at) AS m, MIN(trade_id),"
                           " MAX(trade_id) FROM ticks FORCE INDEX (ix_ticks_script_traded_at) WHERE script_id = %s"
                           " AND traded_at >= %s AND traded_at < %s + INTERVAL 1 DAY GROUP BY m",
                           (script_id, day, day))
            cursor.fetchall()
            return time.monotonic() - started
    finally:
        conn.close()


def measure(total_rows: int, prefix: str) -> dict[str, Any]:
    server = database_settings()
    db = DatabaseSettings(server.host, server.port, server.user, server.password, f"{prefix}{total_rows}")
    execute(db, f"DROP DATABASE IF EXISTS `{db.name}`", in_database=False)
    migrate(db, before="0007")
    build_s = timed(lambda: scale_build.build(db, total_rows, with_time_index=False), "build")
    rows = scalar_row(db, "SELECT COUNT(*) FROM ticks")[0]
    execute(db, "CREATE TABLE tick_minutes_single (script_id INT UNSIGNED NOT NULL, minute INT UNSIGNED NOT NULL,"
                " first_trade_id BIGINT UNSIGNED NOT NULL, last_trade_id BIGINT UNSIGNED NOT NULL,"
                " PRIMARY KEY (script_id, minute)) ENGINE = InnoDB")
    single_s = timed(lambda: execute(db, _SINGLE), "single statement")
    chunked_s = timed(lambda: migrate(db), "chunked populate")
    same = scalar_row(db, _DIFFERENCES) == (0, 0)
    rollback_s = timed(lambda: rollback_0007(db), "rollback")
    biggest_chunk_s = largest_chunk_s(db)
    kill = killed_and_resumed(db, kill_after=max(1.0, chunked_s * 0.4))
    same_after_kill = scalar_row(db, _DIFFERENCES) == (0, 0)
    buckets = scalar_row(db, "SELECT COUNT(*) FROM tick_minutes")[0]
    execute(db, f"DROP DATABASE `{db.name}`", in_database=False)
    return {"rows": rows, "buckets": buckets, "build_s": round(build_s, 1),
            "single_statement_s": round(single_s, 2), "single_rows_per_s": round(rows / single_s),
            "chunked_s": round(chunked_s, 2), "chunked_rows_per_s": round(rows / chunked_s),
            "same_rows": same, "rollback_s": round(rollback_s, 2), "largest_chunk_select_s": round(biggest_chunk_s, 3),
            **kill, "killed_plus_resumed_s": round(kill["killed_after_s"] + kill["resumed_run_s"], 2),
            "same_rows_after_kill": same_after_kill}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--db-prefix", default="tickstream_bench_migration_")
    args = parser.parse_args()
    started = datetime.now(UTC)
    with open("/proc/loadavg") as loadavg:
        load_before = loadavg.read().split()[:3]
    results = [measure(rows, args.db_prefix) for rows in args.rows]
    with open("/proc/loadavg") as loadavg:
        load_after = loadavg.read().split()[:3]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip()
    report = {"bench": "migration_0007", "started": started.isoformat(), "commit": commit,
              "loadavg_before": load_before, "loadavg_after": load_after, "sizes": results}
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"migration_0007_{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    try:
        main()
    except pymysql.err.Error as error:
        sys.exit(f"bench.migration_0007: {error}")
