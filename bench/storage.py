"""Stage 1: the storage ceiling on the real `ticks` definition (migrations applied to a fresh database).

- server-only `INSERT … SELECT` from a copy of the same rows already in the server, committed per chunk of the
  same size as one ingest invocation: what MariaDB itself can absorb, with no client in the way;
- server-only `LOAD DATA LOCAL`: the rows of the same messages the ingest function gets, already decoded and
  written to its scratch file, loaded and committed per chunk: what MariaDB's bulk-load path costs by itself, the
  ceiling of any writer that uses it (the ingest handler's other reference);
- the naive path of the Django/Celery seed: one parameterised INSERT per row, autocommit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pymysql

from bench.common import StageResult, Stopwatch, bench_database, bodies_of, rate, scalar, synthetic_ticks
from tickstream.codec import decode_message
from tickstream.db import connect
from tickstream.settings import DatabaseSettings
from tickstream.tick_store import _TIME, COLUMNS, TickStore
from tickstream.ticks import Tick

NAME = "1 storage ceiling"
SCRIPT_IDS = (1, 2, 3, 4)
NAIVE_SECONDS = 5.0
_NAIVE_SQL = (f"INSERT INTO ticks ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, "
              + ", ".join(_TIME.format("%s") for _ in range(3)) + ")")


def run(rows: int, chunk_rows: int) -> StageResult:
    result = StageResult(NAME)
    with bench_database("storage") as db:
        ticks = synthetic_ticks(SCRIPT_IDS, rows)
        conn = connect(db)
        try:
            stage_source(conn, ticks)
            ceiling = server_only_insert_select(conn, rows, chunk_rows)
            load = server_only_load_data(conn, ticks, chunk_rows)
            naive = naive_row_inserts(db, synthetic_ticks(SCRIPT_IDS, 200_000, first_trade_id=10_000_000))
        finally:
            conn.close()
    result.data = {"rows": rows, "chunk_rows": chunk_rows, "insert_select": ceiling, "load_data": load,
                   "naive": naive}
    result.add("server-only INSERT…SELECT", ceiling["rows_per_s"], "rows/s")
    result.add("server-only LOAD DATA (rows already decoded)", load["rows_per_s"], "rows/s")
    result.add("  its ratio to INSERT…SELECT", load["rows_per_s"] / ceiling["rows_per_s"], "×")
    result.add("naive one INSERT per row, autocommit", naive["rows_per_s"], "rows/s")
    return result


def server_only_load_data(conn: pymysql.Connection, ticks: Sequence[Tick], chunk_rows: int) -> dict[str, float]:
    """LOAD DATA of the decoded rows of every message (as the producer packs them) into the emptied table, one
    statement per message, committed every `chunk_rows` rows: the handler's work minus decoding."""
    batches = [decode_message(body) for body in bodies_of(ticks)]
    with conn.cursor() as cursor:
        cursor.execute("TRUNCATE TABLE ticks")
    store, pending = TickStore(conn, use_load_data=True), 0
    watch = Stopwatch()
    for batch in batches:
        store.write(batch)
        pending += batch.count
        if pending >= chunk_rows:
            store.commit()
            pending = 0
    store.commit()
    seconds = watch.seconds
    stored = scalar(conn, "SELECT COUNT(*) FROM ticks")
    conn.commit()
    if stored != len(ticks):
        raise RuntimeError(f"LOAD DATA stored {stored} rows, expected {len(ticks)}")
    return {"rows": stored, "seconds": seconds, "rows_per_s": rate(stored, seconds)}


def stage_source(conn: pymysql.Connection, ticks: Sequence[Tick]) -> None:
    """`ticks_src` (same definition as `ticks`) holding the rows, loaded untimed."""
    with conn.cursor() as cursor:
        cursor.execute("CREATE TABLE ticks_src LIKE ticks")
        cursor.execute("RENAME TABLE ticks TO ticks_real, ticks_src TO ticks")
    store = TickStore(conn, use_load_data=True)
    for start in range(0, len(ticks), 50_000):
        store.insert_ticks(ticks[start:start + 50_000])
    with conn.cursor() as cursor:
        cursor.execute("RENAME TABLE ticks TO ticks_src, ticks_real TO ticks")
    conn.commit()


def server_only_insert_select(conn: pymysql.Connection, rows: int, chunk_rows: int) -> dict[str, float]:
    """Copy ticks_src into the empty ticks table, `chunk_rows` per statement and commit."""
    per_script = max(1, chunk_rows // len(SCRIPT_IDS))
    last_id = scalar(conn, "SELECT MAX(trade_id) FROM ticks_src")
    watch = Stopwatch()
    with conn.cursor() as cursor:
        for first in range(1, last_id + 1, per_script):
            cursor.execute(f"INSERT INTO ticks ({COLUMNS}) SELECT {COLUMNS} FROM ticks_src"
                           " WHERE script_id IN (1, 2, 3, 4) AND trade_id BETWEEN %s AND %s",
                           (first, first + per_script - 1))
            conn.commit()
    seconds = watch.seconds
    stored = scalar(conn, "SELECT COUNT(*) FROM ticks")
    conn.commit()
    if stored != rows:
        raise RuntimeError(f"INSERT…SELECT stored {stored} rows, expected {rows}")
    return {"rows": stored, "seconds": seconds, "rows_per_s": rate(stored, seconds)}


def naive_row_inserts(db: DatabaseSettings, ticks: Sequence[Tick]) -> dict[str, float]:
    """One INSERT per row with autocommit, for NAIVE_SECONDS (stops by itself)."""
    conn = connect(db, autocommit=True)
    done = 0
    deadline = time.perf_counter() + NAIVE_SECONDS
    watch = Stopwatch()
    try:
        with conn.cursor() as cursor:
            for tick in ticks:
                cursor.execute(_NAIVE_SQL, tuple(tick))
                done += 1
                if done % 100 == 0 and time.perf_counter() > deadline:
                    break
        seconds = watch.seconds
    finally:
        conn.close()
    return {"rows": done, "seconds": seconds, "rows_per_s": rate(done, seconds)}
