"""What the API tells about completeness: per-day coverage with the gaps of the ledger, the ledger itself, and the
per-script figures of /stats and GET /scripts/{id}.

Every read here costs O(scripts), O(days asked) or O(gaps asked), never O(stored ticks): totals come from
tick_totals and tick_coverage (kept by the ingest, tickstream.coverage), what the producer is doing from
producer_status, and the lag percentiles from the lag histograms the ingest keeps (tickstream.lags: a few rows per
script that stored ticks in the last minute or two). Plain functions over an (autocommit) pymysql connection.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pymysql

from tickstream import catalog, lags
from tickstream.catalog import Script
from tickstream.coverage import DATABASE_MINUTE, INCOMPLETE_INDEX, CoverageDay, coverage_days
from tickstream.db import as_utc

STATS_WINDOW_SECONDS = lags.WINDOW_SECONDS
COVERAGE_GAPS_LIMIT = 1000  # gaps returned with one coverage answer; `gaps_truncated` says when there were more
_STRADDLING_GAPS = 10  # gaps starting before the asked ids that may still reach into them


@dataclass(frozen=True, slots=True)
class Gap:
    id: int
    script_id: int
    first_trade_id: int
    last_trade_id: int
    next_trade_id: int
    cause: str
    state: str
    attempts: int
    last_error: str | None
    trades_filled: int
    detected_at: datetime
    filled_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class GapPage:
    gaps: list[Gap]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class DayCoverage:
    day: CoverageDay
    gaps: list[Gap]


@dataclass(frozen=True, slots=True)
class CoverageReport:
    days: list[DayCoverage]
    gaps_truncated: bool


@dataclass(frozen=True, slots=True)
class ProducerStatus:
    script_id: int
    broker_id: int
    state: str
    detail: str | None
    connection: str | None
    last_trade_id: int | None
    last_traded_at: datetime | None
    backfill_done: int | None
    backfill_total: int | None
    lag_ms_p50: int | None
    lag_ms_p99: int | None
    reported_at: datetime


@dataclass(frozen=True, slots=True)
class TickTotals:
    """A script's stored ticks, from tick_totals and tick_coverage."""

    tick_count: int
    first_trade_id: int | None
    last_trade_id: int | None
    first_trade_at: datetime | None
    last_trade_at: datetime | None
    incomplete_days: int
    missing_trades: int
    stored_last_minute: int  # in the last complete UTC minute of the database clock
    stored_this_minute: int  # so far in the current one


NO_TICKS = TickTotals(0, None, None, None, None, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class ScriptStats:
    script: Script
    totals: TickTotals
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    status: ProducerStatus | None


# --- the gap ledger ----------------------------------------------------------------------------------------------

_GAP_COLUMNS = ("id, script_id, first_trade_id, last_trade_id, next_trade_id, cause, state, attempts, last_error,"
                " trades_filled, detected_at, filled_at, updated_at")


def _gap(row: Sequence[object]) -> Gap:
    return Gap(int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), row[5], row[6], int(row[7]), row[8],
               int(row[9]), as_utc(row[10]), as_utc(row[11]), as_utc(row[12]))


def list_gaps(conn: pymysql.Connection, *, script_id: int | None = None, state: str | None = None,
              after: int | None = None, limit: int = 100, descending: bool = True) -> GapPage:
    """One page of the ledger, ordered by gap id (desc: newest first), keyset-paginated like the tick listing:
    `after` is the previous page's `next_cursor`. Each filter combination has an index ending in `id`."""
    where: list[str] = []
    params: list[object] = []
    if script_id is not None:
        where.append("script_id = %s")
        params.append(script_id)
    if state is not None:
        where.append("state = %s")
        params.append(state)
    if after is not None:
        where.append("id < %s" if descending else "id > %s")
        params.append(after)
    sql = f"SELECT {_GAP_COLUMNS} FROM gaps"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id {'DESC' if descending else 'ASC'} LIMIT %s"
    with conn.cursor() as cursor:
        cursor.execute(sql, (*params, limit + 1))
        rows = cursor.fetchall()
    gaps = [_gap(row) for row in rows[:limit]]
    return GapPage(gaps, gaps[-1].id if len(rows) > limit and gaps else None)


def gaps_between(conn: pymysql.Connection, script_id: int, first_trade_id: int, last_trade_id: int,
                 limit: int = COVERAGE_GAPS_LIMIT) -> tuple[list[Gap], bool]:
    """Gaps of the script overlapping the ids [first, last], by first id; and whether there were more than `limit`.

    Two index ranges of (script_id, first_trade_id): the gaps starting inside, and the few starting just before
    that may reach in (never a scan of the script's whole ledger).
    """
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {_GAP_COLUMNS} FROM gaps WHERE script_id = %s AND first_trade_id < %s"
                       " ORDER BY first_trade_id DESC LIMIT %s", (script_id, first_trade_id, _STRADDLING_GAPS))
        before = [gap for gap in map(_gap, cursor.fetchall()) if gap.last_trade_id >= first_trade_id]
        cursor.execute(f"SELECT {_GAP_COLUMNS} FROM gaps WHERE script_id = %s AND first_trade_id BETWEEN %s AND %s"
                       " ORDER BY first_trade_id LIMIT %s", (script_id, first_trade_id, last_trade_id, limit + 1))
        inside = [_gap(row) for row in cursor.fetchall()]
    gaps = before[::-1] + inside
    return gaps[:limit], len(gaps) > limit


def coverage_report(conn: pymysql.Connection, script_id: int, first_day: date, last_day: date) -> CoverageReport:
    """The script's covered days in [first_day, last_day] (days without ticks are absent), each with the ledger's
    gaps that fall in its ids: from its first id up to the next covered day's first id (a gap between two days
    belongs to the earlier one), so every gap of the range shows up."""
    days = coverage_days(conn, script_id, first_day, last_day)
    if not days:
        return CoverageReport([], False)
    with conn.cursor() as cursor:
        cursor.execute("SELECT first_trade_id FROM tick_coverage WHERE script_id = %s AND day > %s ORDER BY day"
                       " LIMIT 1", (script_id, last_day))
        following = cursor.fetchone()
    next_firsts = [day.first_trade_id for day in days[1:]] + [following[0] if following else None]
    ends = [day.last_trade_id if nxt is None else max(day.last_trade_id, nxt - 1)
            for day, nxt in zip(days, next_firsts, strict=True)]
    gaps, truncated = gaps_between(conn, script_id, days[0].first_trade_id, max(ends))
    return CoverageReport([DayCoverage(day, [gap for gap in gaps
                                             if gap.first_trade_id <= end and gap.last_trade_id >= day.first_trade_id])
                           for day, end in zip(days, ends, strict=True)], truncated)


# --- per-script figures: /stats and GET /scripts/{id} -------------------------------------------------------------

# One row per script (ordered by id; `{where}` narrows it to one): the script, its totals (tick_totals: what it
# stored in the last complete minute and in this one by the database clock), its incomplete days (an index range
# over the incomplete days only), the producer's status, and whether it stored ticks in the lag percentiles'
# minutes (tickstream.lags): one statement,
# O(scripts + incomplete days). Each row is one JSON array built by the server: pymysql decodes values in Python, a
# few µs each, and /stats has ~30 per script; one string per row decoded by the json module costs a fraction.
_STATUS_COLUMNS = ("broker_id, state, detail, connection, last_trade_id, last_traded_at, backfill_done,"
                   " backfill_total, lag_ms_p50, lag_ms_p99, reported_at")
_SCRIPT_FIELDS = tuple(catalog.SCRIPT_COLUMNS.format(table="s").split(", "))
_TOTALS_FIELDS = ("t.stored", "t.first_trade_id", "t.last_trade_id", "t.first_traded_at", "t.last_traded_at",
                  "COALESCE(i.days, 0)", "COALESCE(i.missing, 0)",
                  f"CASE {DATABASE_MINUTE} - t.stored_minute WHEN 0 THEN t.stored_in_previous_minute"
                  " WHEN 1 THEN t.stored_in_minute ELSE 0 END",
                  f"IF({DATABASE_MINUTE} = t.stored_minute, t.stored_in_minute, 0)")
_STATUS_FIELDS = ("p.script_id", *(f"p.{column}" for column in _STATUS_COLUMNS.split(", ")))
_STORED_IN_LAG_MINUTES = f"COALESCE(t.stored_minute >= {lags.FIRST_COUNTED_MINUTE}, 0)"
_FIGURES = (*_SCRIPT_FIELDS, *_TOTALS_FIELDS, *_STATUS_FIELDS, _STORED_IN_LAG_MINUTES)
_TOTALS_AT, _STATUS_AT = len(_SCRIPT_FIELDS), len(_SCRIPT_FIELDS) + len(_TOTALS_FIELDS)
# Where the row holds DATETIME values (JSON carries them as text), found by name so the SQL can change freely.
_DATETIME_FIELDS = ("s.created_at", "s.updated_at", "t.first_traded_at", "t.last_traded_at", "p.last_traded_at",
                    "p.reported_at")
_DATETIME_POSITIONS = tuple(position for position, field in enumerate(_FIGURES) if field in _DATETIME_FIELDS)
_SCRIPT_FIGURES_SQL = (
    f"SELECT JSON_ARRAY({', '.join(_FIGURES)})"
    " FROM scripts AS s"
    " LEFT JOIN tick_totals AS t ON t.script_id = s.id"
    " LEFT JOIN producer_status AS p ON p.script_id = s.id"
    " LEFT JOIN (SELECT script_id, COUNT(*) AS days, SUM(missing) AS missing"
    f"           FROM tick_coverage FORCE INDEX ({INCOMPLETE_INDEX}) WHERE incomplete {{and_script}}"
    "            GROUP BY script_id) AS i ON i.script_id = s.id"
    " {where} ORDER BY s.id")


def _figures_row(document: str | bytes) -> list[Any]:
    """One row of _SCRIPT_FIGURES_SQL as pymysql would have given it (its DATETIME values as datetimes)."""
    row = json.loads(document)
    for position in _DATETIME_POSITIONS:
        if row[position] is not None:
            row[position] = datetime.fromisoformat(row[position] + "+00:00")  # aware at once: UTC
    return row


def _totals(row: Sequence[Any]) -> TickTotals:
    if row[0] is None:
        return NO_TICKS
    return TickTotals(int(row[0]), int(row[1]), int(row[2]), as_utc(row[3]), as_utc(row[4]), int(row[5]), int(row[6]),
                      int(row[7]), int(row[8]))


def _status(row: Sequence[Any]) -> ProducerStatus | None:
    if row[0] is None:
        return None
    return ProducerStatus(row[0], row[1], row[2], row[3], row[4], row[5], as_utc(row[6]), row[7], row[8], row[9],
                          row[10], as_utc(row[11]))


def covered_days(conn: pymysql.Connection, script_id: int) -> int:
    """The script's UTC days with stored ticks (a range of tick_coverage's primary key: O(its days))."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM tick_coverage WHERE script_id = %s", (script_id,))
        return int(cursor.fetchone()[0])


def script_stats(conn: pymysql.Connection, script_id: int | None = None) -> list[ScriptStats]:
    """The figures of every script by id, or of `script_id` only ([] when there is no such script): one
    statement, and one more (the lag histograms) when some stored ticks in the last minute or two; never more with
    more scripts, days or trades."""
    if script_id is None:
        sql, params = _SCRIPT_FIGURES_SQL.format(and_script="", where=""), None
    else:
        sql, params = _SCRIPT_FIGURES_SQL.format(and_script="AND script_id = %s", where="WHERE s.id = %s"), [
            script_id, script_id]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        rows = [_figures_row(document) for (document,) in cursor.fetchall()]
    lag_ms = lags.percentiles_ms(conn, [row[0] for row in rows if row[-1]])
    return [ScriptStats(catalog.script_of(row[:_TOTALS_AT]), _totals(row[_TOTALS_AT:_STATUS_AT]),
                        *lag_ms.get(row[0], (None, None)), _status(row[_STATUS_AT:-1])) for row in rows]
