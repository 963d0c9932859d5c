"""Candles and tick exports computed from the stored ticks: data access for the API's chart and CSV routes.

Exact decimal arithmetic in SQL (DECIMAL columns, never floats); results come back as decimal strings. Each
query reads one time range of one script, so its cost follows the rows in that range, not the table:

- candles: the trade-id span of the range is found on the (script_id, traded_at) index alone (it holds the
  primary key), then the rows are aggregated in one pass over that span of the primary key (the clustered rows, in
  order) with the time range as a filter, so ids outside the time order cannot make a bar wrong. Open and close are
  the prices of the bar's lowest and highest trade id, read by primary key.
- exports: keyset pages by trade id, as the JSON tick pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pymysql

from tickstream.catalog import _db_time, _decimal_text

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


_SPAN_SQL = ("SELECT MIN(trade_id), MAX(trade_id) FROM ticks FORCE INDEX (ix_ticks_script_traded_at)"
             " WHERE script_id = %s AND traded_at >= %s AND traded_at < %s")

# The bucket is whole seconds since the epoch divided by the interval (no time-zone dependence). Grouped in a
# derived table, then open and close joined by primary key.
_CANDLES_SQL = """
SELECT g.bucket, CAST(o.price AS CHAR), CAST(g.high AS CHAR), CAST(g.low AS CHAR), CAST(c.price AS CHAR),
       CAST(g.volume AS CHAR), CAST(g.quote_volume AS CHAR), g.trades, g.first_id, g.last_id
FROM (
    SELECT TIMESTAMPDIFF(SECOND, '1970-01-01', traded_at) DIV %s AS bucket, MIN(trade_id) AS first_id,
           MAX(trade_id) AS last_id, MAX(price) AS high, MIN(price) AS low, SUM(quantity) AS volume,
           SUM(price * quantity) AS quote_volume, COUNT(*) AS trades
    FROM ticks FORCE INDEX (PRIMARY)
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
    window = (_db_time(start), _db_time(end))
    with conn.cursor() as cursor:
        cursor.execute(_SPAN_SQL, (script_id, *window))
        first_id, last_id = cursor.fetchone()
        if first_id is None:
            return []
        cursor.execute(_CANDLES_SQL, (interval_seconds, script_id, first_id, last_id, *window, script_id, script_id))
        rows = cursor.fetchall()
    return [_candle(row, interval_seconds) for row in rows]


def _candle(row: Sequence[Any], interval_seconds: int) -> Candle:
    bucket, open_, high, low, close, volume, quote_volume, trades, first_id, last_id = row
    return Candle(EPOCH + timedelta(seconds=int(bucket) * interval_seconds), _decimal_text(open_),
                  _decimal_text(high), _decimal_text(low), _decimal_text(close), _decimal_text(volume),
                  _decimal_text(quote_volume), int(trades), int(first_id), int(last_id))


def export_rows(conn: pymysql.Connection, script_id: int, *, start: datetime | None, end: datetime | None,
                after: int | None, limit: int) -> tuple[list[ExportRow], int | None]:
    """Up to `limit` ticks of [start, end) after trade id `after`, ascending; and the cursor for the next page."""
    where, params = ["script_id = %s"], [script_id]
    if start is not None:
        where.append("traded_at >= %s")
        params.append(_db_time(start))
    if end is not None:
        where.append("traded_at < %s")
        params.append(_db_time(end))
    if after is not None:
        where.append("trade_id > %s")
        params.append(after)
    sql = ("SELECT trade_id, CAST(price AS CHAR), CAST(quantity AS CHAR),"
           " TIMESTAMPDIFF(MICROSECOND, '1970-01-01', traded_at), is_buyer_maker"
           f" FROM ticks WHERE {' AND '.join(where)} ORDER BY trade_id LIMIT %s")
    with conn.cursor() as cursor:
        cursor.execute(sql, (*params, limit + 1))  # one extra row tells whether another page exists
        rows = cursor.fetchall()
    page = [ExportRow(row[0], _decimal_text(row[1]), _decimal_text(row[2]), int(row[3]), bool(row[4]))
            for row in rows[:limit]]
    return page, (page[-1].trade_id if len(rows) > limit and page else None)
