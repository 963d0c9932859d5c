"""Candles and the aggTrades CSV export of a script's stored ticks: query models, response models and the logic
of `GET /scripts/{id}/candles` and `GET /scripts/{id}/ticks.csv`.

Both are bounded per call, so no request costs more than a fixed span of data: candles cover at most `limit`
bars (the range is cut there and `next_from` says where to continue), a CSV page holds at most `limit` rows (the
`X-Next-Cursor` header says where to continue).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import pymysql
from pydantic import Field, StringConstraints, model_validator

from chalicelib.errors import not_found
from chalicelib.models import MAX_TRADE_ID, DecimalText, Out, Query, TimeParam
from chalicelib.service import database
from tickstream import catalog, market_data

INTERVAL_SECONDS = {"1s": 1, "1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
MAX_BARS = 1500  # a UTC day of 1m bars in one call
MAX_CSV_ROWS = 50_000  # ~3 MB of CSV: well under Lambda's 6 MB response limit
# Binance's public aggTrades CSV columns (the header row of its data files), in order.
CSV_COLUMNS = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time",
               "is_buyer_maker")
NEXT_CURSOR_HEADER = "X-Next-Cursor"
LATEST = datetime(9998, 12, 31, tzinfo=UTC)


class CandlesQuery(Query):
    interval: Literal["1s", "1m", "5m", "1h", "1d"] = Field(description="bar length; bars are aligned to UTC")
    from_: TimeParam | None = Field(default=None, alias="from",
                                    description="inclusive, rounded down to a bar start; default: limit bars"
                                                " before to")
    to: TimeParam | None = Field(default=None, description="exclusive, rounded up to a bar end; default: now")
    limit: Annotated[int, Field(ge=1, le=MAX_BARS)] = Field(
        default=MAX_BARS, description="most bars per call; a longer range is cut and next_from returned")

    @model_validator(mode="after")
    def _ordered(self) -> CandlesQuery:
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError("from must not be after to")
        return self


class CandleOut(Out):
    open_time: datetime
    open: DecimalText
    high: DecimalText
    low: DecimalText
    close: DecimalText
    volume: DecimalText = Field(description="sum of quantities")
    quote_volume: DecimalText = Field(description="sum of price × quantity")
    trades: int = Field(description="stored ticks in the bar")
    first_trade_id: int = Field(description="lowest trade id in the bar (its price is the open)")
    last_trade_id: int = Field(description="highest trade id in the bar (its price is the close)")


class CandlesOut(Out):
    script_id: int
    interval: str
    start: datetime = Field(description="the range these bars cover: from (rounded down to a bar start)")
    end: datetime = Field(description="… to (rounded up to a bar end, or cut at limit bars), exclusive")
    candles: list[CandleOut] = Field(description="bars with at least one trade, oldest first")
    next_from: datetime | None = Field(description="the range was cut at limit bars: pass as from to go on")


class TicksCsvQuery(Query):
    from_: TimeParam | None = Field(default=None, alias="from", description="inclusive")
    to: TimeParam | None = Field(default=None, description="exclusive")
    limit: Annotated[int, Field(ge=1, le=MAX_CSV_ROWS)] = Field(default=MAX_CSV_ROWS, description="rows per call")
    cursor: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")] | None = Field(
        default=None, description=f"the {NEXT_CURSOR_HEADER} header of the previous page")

    @model_validator(mode="after")
    def _sane(self) -> TicksCsvQuery:
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError("from must not be after to")
        if self.cursor is not None and int(self.cursor) > MAX_TRADE_ID:
            raise ValueError("cursor is not a trade id")
        return self


def candles(script_id: int, query: CandlesQuery) -> CandlesOut:
    step = INTERVAL_SECONDS[query.interval]
    span = timedelta(seconds=step * query.limit)
    end = _bucket_ceil(_clamp(query.to or datetime.now(UTC)), step)
    start = min(end, market_data.bucket_floor(_clamp(query.from_), step) if query.from_ else end - span)
    cut = min(end, start + span)
    with database.connection() as conn:
        _require_script(conn, script_id)
        bars = market_data.candles(conn, script_id, start, cut, step)
    return CandlesOut.model_validate({
        "script_id": script_id, "interval": query.interval, "start": start, "end": cut,
        "candles": [CandleOut.model_validate(bar, from_attributes=True) for bar in bars],
        "next_from": cut if cut < end else None,
    })


def _clamp(moment: datetime) -> datetime:
    """Into [1970, 9998]: no tick is older (trade times are epoch ms), and bar arithmetic cannot overflow."""
    return min(max(moment, market_data.EPOCH), LATEST)


def _bucket_ceil(moment: datetime, step: int) -> datetime:
    floor = market_data.bucket_floor(moment, step)
    return floor if floor == moment else floor + timedelta(seconds=step)


def ticks_csv(script_id: int, query: TicksCsvQuery) -> tuple[str, dict[str, str]]:
    """The page as CSV text (header row first) and its headers: file name and, unless last, the next cursor."""
    with database.connection() as conn:
        script = _require_script(conn, script_id)
        rows, next_cursor = market_data.export_rows(conn, script_id, start=query.from_, end=query.to,
                                                    after=None if query.cursor is None else int(query.cursor),
                                                    limit=query.limit)
    headers = {"Content-Type": "text/csv; charset=utf-8",
               "Content-Disposition": f'attachment; filename="{csv_file_name(script, query)}"'}
    if next_cursor is not None:
        headers[NEXT_CURSOR_HEADER] = str(next_cursor)
    return render_csv(rows, has_trade_ids=_stream(script) == "trade"), headers


def _require_script(conn: pymysql.Connection, script_id: int) -> catalog.Script:
    script = catalog.get_script(conn, script_id)
    if script is None:
        raise not_found(f"no script with id {script_id}")
    return script


def _stream(script: catalog.Script) -> str:
    return script.additional_data.get("stream") or catalog.DEFAULT_STREAM


def csv_file_name(script: catalog.Script, query: TicksCsvQuery) -> str:
    """`BTCUSDT-aggTrades-<from>-<to>.csv` (times as compact UTC); symbols are [A-Z0-9] only."""
    def stamp(moment: datetime | None, missing: str) -> str:
        return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") if moment else missing

    return f"{script.trading_symbol}-aggTrades-{stamp(query.from_, 'start')}-{stamp(query.to, 'end')}.csv"


def render_csv(rows: list[market_data.ExportRow], *, has_trade_ids: bool) -> str:
    """Binance's aggTrades columns. A `trade` stream's tick is its own aggregate (first = last = its id); an
    `aggTrade` tick's first/last trade ids are not stored, so those fields are empty. Times in milliseconds."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        member = row.trade_id if has_trade_ids else ""
        writer.writerow((row.trade_id, row.price, row.quantity, member, member, row.traded_at_us // 1000,
                         "true" if row.is_buyer_maker else "false"))
    return out.getvalue()
