"""Candles and tick exports computed from the stored ticks: data access for the API's chart and CSV routes.

Exact decimal arithmetic in SQL (DECIMAL columns, never floats); results come back as decimal strings. Each
query reads one time range of one script, so its cost follows the rows in that range, not the table:

- candles: bars are computed from the ticks of the range — its trade-id bounds found in the time index
  (tickstream.time_index, two dives into tick_minutes), then one pass over that span of the primary key (the clustered
  rows, in order) with the time range as a filter, grouped by bar; open and close are the prices of the bar's lowest
  and highest trade id, read by primary key. Bars of a minute or longer are built from one-minute bars, and a minute
  that can no longer change is kept in `candles_1m` (see the migration), so a day's bars read 1,440 rows instead of
  its trades, and only minutes not yet sealed (the live edge, holes awaiting backfill) are computed again. Sealing
  relies on what the producer's gap detection relies on: trade ids increase with trade time.
- exports: keyset pages by trade id, as the JSON tick pages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from itertools import groupby
from typing import Any

import pymysql

from tickstream import time_index
from tickstream.catalog import _db_time, _decimal_text, tick_range

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = 60
_LOOKUP_CHUNK = 1000  # ids per IN (...) list


@dataclass(frozen=True, slots=True)
class Candle:
    open_time: datetime
    open: str
    high: str
    low: str
    close: str
    volume: str
    quote_volume: str
    trades: int
    first_trade_id: int
    last_trade_id: int


@dataclass(frozen=True, slots=True)
class ExportRow:
    trade_id: int
    price: str
    quantity: str
    traded_at_us: int  # microseconds since the epoch, UTC
    is_buyer_maker: bool


def bucket_floor(moment: datetime, interval_seconds: int) -> datetime:
    """The start of the bar holding `moment`: bars are aligned to the epoch (1d bars are UTC days)."""
    seconds = int((moment - EPOCH).total_seconds() // interval_seconds) * interval_seconds
    return EPOCH + timedelta(seconds=seconds)


# The bucket is whole seconds since the epoch divided by the interval (no time-zone dependence). Grouped in a
# derived table, then open and close joined by primary key.
_CANDLES_SQL = """
SELECT g.bucket, CAST(o.price AS CHAR), CAST(g.high AS CHAR), CAST(g.low AS CHAR), CAST(c.price AS CHAR),
       CAST(g.volume AS CHAR), CAST(g.quote_volume AS CHAR), g.trades, g.first_id, g.last_id
FROM (
    SELECT TIMESTAMPDIFF(SECOND, '1970-01-01', traded_at) DIV %s AS bucket, MIN(trade_id) AS first_id,
           MAX(trade_id) AS last_id, MAX(price) AS high, MIN(price) AS low, SUM(quantity) AS volume,
           SUM(price * quantity) AS quote_volume, COUNT(*) AS trades
    FROM ticks
    WHERE script_id = %s AND trade_id BETWEEN %s AND %s AND traded_at >= %s AND traded_at < %s
    GROUP BY bucket
) g
JOIN ticks o ON o.script_id = %s AND o.trade_id = g.first_id
JOIN ticks c ON c.script_id = %s AND c.trade_id = g.last_id
ORDER BY g.bucket
"""


def candles(conn: pymysql.Connection, script_id: int, start: datetime, end: datetime,
            interval_seconds: int) -> list[Candle]:
    """The bars of [start, end) with at least one trade, in time order. Callers bound the range."""
    minute_aligned = all(int((t - EPOCH).total_seconds()) % MINUTE == 0 for t in (start, end))
    if interval_seconds % MINUTE or not minute_aligned:
        return candles_from_ticks(conn, script_id, start, end, interval_seconds)
    minutes = _minute_bars(conn, script_id, start, end)
    return minutes if interval_seconds == MINUTE else _merge(minutes, interval_seconds)


def candles_from_ticks(conn: pymysql.Connection, script_id: int, start: datetime, end: datetime,
                     interval_seconds: int) -> list[Candle]:
    bounds = time_index.trade_id_bounds(conn, script_id, start, end)
    if bounds is None:
        return []
    first_id, last_id = bounds
    window = (_db_time(start), _db_time(end))
    with conn.cursor() as cursor:
        cursor.execute(_CANDLES_SQL, (interval_seconds, script_id, first_id, last_id, *window, script_id, script_id))
        rows = cursor.fetchall()
    return [_candle(row, interval_seconds) for row in rows]


# --- one-minute bars and their cache -----------------------------------------------------------------------------

def _minute_of(moment: datetime) -> int:
    return int((moment - EPOCH).total_seconds()) // MINUTE


def _at_minute(minute: int) -> datetime:
    return EPOCH + timedelta(minutes=minute)


def _minute_bars(conn: pymysql.Connection, script_id: int, start: datetime, end: datetime) -> list[Candle]:
    sealed = _sealed_minutes(conn, script_id, _minute_of(start), _minute_of(end))
    fresh = [bar for first, stop in _unsealed_runs(sealed, _minute_of(start), _minute_of(end))
             for bar in candles_from_ticks(conn, script_id, _at_minute(first), _at_minute(stop), MINUTE)]
    _seal(conn, script_id, fresh)
    return sorted([*sealed, *fresh], key=lambda bar: bar.open_time)


_SEALED_SQL = ("SELECT minute, CAST(open AS CHAR), CAST(high AS CHAR), CAST(low AS CHAR), CAST(close AS CHAR),"
               " CAST(volume AS CHAR), CAST(quote_volume AS CHAR), trades, first_trade_id, last_trade_id"
               " FROM candles_1m WHERE script_id = %s AND minute >= %s AND minute < %s ORDER BY minute")


def _sealed_minutes(conn: pymysql.Connection, script_id: int, first: int, stop: int) -> list[Candle]:
    with conn.cursor() as cursor:
        cursor.execute(_SEALED_SQL, (script_id, first, stop))
        return [_candle(row, MINUTE) for row in cursor.fetchall()]


def _unsealed_runs(sealed: list[Candle], first: int, stop: int) -> list[tuple[int, int]]:
    """The minute ranges of [first, stop) to compute from the ticks: all but the sealed minutes and the empty
    minutes between two sealed ones whose ids follow on (no id is left that could fall between them)."""
    runs, cursor, previous = [], first, None
    for bar in sealed:
        minute = _minute_of(bar.open_time)
        if minute > cursor and not (previous and previous.last_trade_id + 1 == bar.first_trade_id):
            runs.append((cursor, minute))
        cursor, previous = minute + 1, bar
    if cursor < stop:
        runs.append((cursor, stop))
    return runs


def _seal(conn: pymysql.Connection, script_id: int, bars: list[Candle]) -> None:
    """Store the bars that can no longer change: ids contiguous inside, and the ids just outside stored in the
    minutes before and after (so nothing is missing at either edge and the minute is over)."""
    whole = [bar for bar in bars if bar.trades == bar.last_trade_id - bar.first_trade_id + 1]
    neighbours = _trade_times(conn, script_id, {i for bar in whole for i in (bar.first_trade_id - 1,
                                                                              bar.last_trade_id + 1)})
    done = []
    for bar in whole:
        before, after = neighbours.get(bar.first_trade_id - 1), neighbours.get(bar.last_trade_id + 1)
        if before and after and before < bar.open_time <= after - timedelta(minutes=1):
            done.append(bar)
    if done:
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT IGNORE INTO candles_1m (script_id, minute, open, high, low, close, volume, quote_volume,"
                " trades, first_trade_id, last_trade_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(script_id, _minute_of(b.open_time), b.open, b.high, b.low, b.close, b.volume, b.quote_volume,
                  b.trades, b.first_trade_id, b.last_trade_id) for b in done])
        if not conn.get_autocommit():
            conn.commit()


def _trade_times(conn: pymysql.Connection, script_id: int, trade_ids: Iterable[int]) -> dict[int, datetime]:
    ids = sorted(i for i in trade_ids if i >= 0)
    found: dict[int, datetime] = {}
    with conn.cursor() as cursor:
        for chunk in range(0, len(ids), _LOOKUP_CHUNK):
            part = ids[chunk:chunk + _LOOKUP_CHUNK]
            cursor.execute("SELECT trade_id, traded_at FROM ticks WHERE script_id = %s AND trade_id IN ("
                           + ", ".join(["%s"] * len(part)) + ")", (script_id, *part))
            found.update((row[0], row[1].replace(tzinfo=UTC)) for row in cursor.fetchall())
    return found


def _merge(minutes: list[Candle], interval_seconds: int) -> list[Candle]:
    """Longer bars from one-minute bars, exactly (Decimal with room for every digit of the columns)."""
    def bucket(bar: Candle) -> datetime:
        return bucket_floor(bar.open_time, interval_seconds)

    merged = []
    with localcontext(prec=200):
        for start, group in groupby(minutes, key=bucket):
            bars = list(group)
            first = min(bars, key=lambda bar: bar.first_trade_id)
            last = max(bars, key=lambda bar: bar.last_trade_id)
            merged.append(replace(
                first, open_time=start, close=last.close, last_trade_id=last.last_trade_id,
                high=_text(max(Decimal(bar.high) for bar in bars)), low=_text(min(Decimal(bar.low) for bar in bars)),
                volume=_text(sum(Decimal(bar.volume) for bar in bars)),
                quote_volume=_text(sum(Decimal(bar.quote_volume) for bar in bars)),
                trades=sum(bar.trades for bar in bars)))
    return merged


def _text(value: Decimal) -> str:
    return _decimal_text(format(value, "f"))


def _candle(row: Sequence[Any], interval_seconds: int) -> Candle:
    bucket, open_, high, low, close, volume, quote_volume, trades, first_id, last_id = row
    return Candle(EPOCH + timedelta(seconds=int(bucket) * interval_seconds), _decimal_text(open_),
                  _decimal_text(high), _decimal_text(low), _decimal_text(close), _decimal_text(volume),
                  _decimal_text(quote_volume), int(trades), int(first_id), int(last_id))


def export_rows(conn: pymysql.Connection, script_id: int, *, start: datetime | None, end: datetime | None,
                after: int | None, limit: int) -> tuple[list[ExportRow], int | None]:
    """Up to `limit` ticks of [start, end) after trade id `after`, ascending; and the cursor for the next page."""
    selection = tick_range(conn, script_id, start, end, after)
    if selection is None:
        return [], None
    from_where, params = selection
    sql = ("SELECT trade_id, CAST(price AS CHAR), CAST(quantity AS CHAR),"
           f" TIMESTAMPDIFF(MICROSECOND, '1970-01-01', traded_at), is_buyer_maker {from_where} ORDER BY trade_id"
           " LIMIT %s")
    with conn.cursor() as cursor:
        cursor.execute(sql, (*params, limit + 1))  # one extra row tells whether another page exists
        rows = cursor.fetchall()
    page = [ExportRow(row[0], _decimal_text(row[1]), _decimal_text(row[2]), int(row[3]), bool(row[4]))
            for row in rows[:limit]]
    return page, (page[-1].trade_id if len(rows) > limit and page else None)
