"""How long stored ticks took from the producer to the database, per script (table `tick_lags`), and the counts
per minute of the database clock that it shares with tick_totals.

The lag of a tick is the ingest's clock just before its transaction commits − received_at_producer. The ingest
keeps it for a sample of the rows it stores (`coverage.summarize_batch`: every `SAMPLE_STRIDE`-th row of a batch,
and a script's first row when none of its rows fell on the stride, so a quiet script is sampled too) and counts
the lags in buckets of two significant digits of µs, per script, in the same transaction as the ticks
(`coverage.CoverageDelta.write`, after tick_totals). A bucket's row counts the current minute of the database clock
and the one before (`per_minute_counts`), so the table holds at most scripts × buckets rows, and /stats reads the
percentiles of the ticks stored in the last one to two minutes from a few rows per script, never from a tick.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence

import pymysql

SAMPLE_STRIDE = 31  # prime: interleaved scripts do not alias onto one script's rows
DATABASE_MINUTE = "TIMESTAMPDIFF(MINUTE, '1970-01-01', UTC_TIMESTAMP())"  # the database clock's minute
FIRST_COUNTED_MINUTE = f"{DATABASE_MINUTE} - 1"  # the percentiles count this minute and the one before
WINDOW_SECONDS = 120  # so they look back at most two minutes
PERCENTILES = (0.5, 0.99)


def per_minute_counts(minute: str, count: str, previous: str) -> str:
    """The ON DUPLICATE KEY UPDATE assignments of a row counting per minute of the database clock: a write in the
    counted minute adds to it, one in the next minute moves it to the previous one, a later one starts afresh; a
    write that waited on the row lock across a minute boundary (its clock read before the boundary) adds to the
    previous minute. Assigned in this order, each reads the columns as they were (`minute` last)."""
    return (f"{previous} = CASE VALUES({minute}) - {minute}"
            f"   WHEN 0 THEN {previous} WHEN 1 THEN {count}"
            f"   WHEN -1 THEN {previous} + VALUES({count})"
            f"   ELSE IF(VALUES({minute}) > {minute}, 0, {previous}) END,"
            f" {count} = CASE WHEN VALUES({minute}) = {minute} THEN {count} + VALUES({count})"
            f"   WHEN VALUES({minute}) > {minute} THEN VALUES({count}) ELSE {count} END,"
            f" {minute} = GREATEST({minute}, VALUES({minute}))")


_ADD_SQL = ("INSERT INTO tick_lags (script_id, bucket_us, minute, in_minute) VALUES {values}"
            " ON DUPLICATE KEY UPDATE " + per_minute_counts("minute", "in_minute", "in_previous_minute"))
_ROW = f"(%s, %s, {DATABASE_MINUTE}, %s)"


def now_us() -> int:
    """The ingest's clock, µs since the epoch."""
    return time.time_ns() // 1000


def bucket_of(lag_us: int) -> int:
    """The lag rounded down to two significant digits (a negative one, from clocks apart, counts as 0)."""
    if lag_us < 100:
        return max(lag_us, 0)
    scale = 10 ** (len(str(lag_us)) - 2)
    return lag_us // scale * scale


def add(cursor: pymysql.cursors.Cursor, received: dict[int, Sequence[bytes]], now_us: int) -> None:
    """Count the lags of the sampled `received` times (script id → received_at_producer in µs, as the rows hold
    them) at `now_us`, in the caller's transaction; rows in key order, after tick_totals' (every writer locks
    tick_totals, then tick_lags, each in key order)."""
    counts: Counter[tuple[int, int]] = Counter()
    for script_id, times in received.items():
        counts.update((script_id, bucket_of(now_us - int(at))) for at in times)
    if not counts:
        return
    values: list[int] = []
    for key in sorted(counts):
        values += [*key, counts[key]]
    cursor.execute(_ADD_SQL.format(values=", ".join([_ROW] * len(counts))), values)


def percentiles_ms(conn: pymysql.Connection, script_ids: Sequence[int]) -> dict[int, tuple[float, float]]:
    """script id → (p50, p99) in ms of the sampled lags of its ticks stored in this and the previous minute of the
    database clock, for the scripts of `script_ids` that stored some: one statement, a primary-key range per script
    (its buckets), a JSON document per script."""
    if not script_ids:
        return {}
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT script_id, JSON_ARRAYAGG(JSON_ARRAY(bucket_us,"
            f" IF(minute = {DATABASE_MINUTE}, in_minute + in_previous_minute, in_minute)))"
            f" FROM tick_lags WHERE script_id IN ({', '.join(['%s'] * len(script_ids))})"
            f" AND minute >= {FIRST_COUNTED_MINUTE} GROUP BY script_id", list(script_ids))
        rows = cursor.fetchall()
    return {int(script_id): _percentiles_ms(json.loads(buckets)) for script_id, buckets in rows}


def _percentiles_ms(buckets: Iterable[Sequence[int]]) -> tuple[float, float]:
    """Nearest rank (the ceil(p × n)-th smallest of n) of p50 and p99 over the bucket counts (each row read counts
    at least one lag: a write in its minute stores one or more)."""
    ordered = sorted((bucket, count) for bucket, count in buckets)
    total = sum(count for _, count in ordered)
    ranks = [max(1, math.ceil(p * total)) for p in PERCENTILES]
    found: list[float] = []
    seen = 0
    for bucket, count in ordered:
        seen += count
        while len(found) < len(ranks) and seen >= ranks[len(found)]:
            found.append(bucket / 1000)
    return found[0], found[1]
