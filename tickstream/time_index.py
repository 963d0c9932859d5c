"""The sparse time index of the ticks (table `tick_minutes`): per script and UTC minute of trade time, the lowest
and highest trade id traded in it.

It replaces the secondary index (script_id, traded_at) of `ticks`, which cost ~26 B per stored tick (a fifth of
the table) to answer one question: which trade ids lie in a time range? One row per script and minute (~45 B)
answers it as well, at a few bytes per tick for any script trading more than once a minute; a reader turns a time
range into trade-id bounds here (two dives) and then reads the rows on the primary key between them, filtering on
traded_at: O(log n + page), as before.

Written by the ingest in the same transaction as the ticks (`TimeIndexDelta`, kept by `TickStore` from the spans
`coverage.summarize_batch` makes in the same pass as coverage's groups, and by `insert_ticks_ignore`), so a
committed tick is always inside its minute's bounds. Bounds only ever widen (LEAST/GREATEST upserts), in any
arrival order: a backfilled trade arriving hours late widens its own (old) minute, a redelivered duplicate changes
nothing (its id is there already), and a bucket's ids need not be contiguous or ordered. No count is kept: bounds
need none, so the ingest never has to know which rows were new. Wider bounds than needed cost only a few rows of
over-read (the primary-key scan re-checks traded_at); a retention or purge removes the buckets of what it deletes.

Across minutes, readers assume what trade ids mean on every supported venue (Binance's are assigned in trade
order): a later minute's trades have higher ids. Within a minute nothing is assumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pymysql

MINUTE_US = 60_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Bucket = tuple[int, int]  # (script_id, minute since the epoch)
Span = tuple[int, int]  # (lowest, highest trade id)


def minute_of(moment: datetime) -> int:
    """The UTC minute since the epoch holding `moment` (naive datetimes are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int((moment - _EPOCH) // timedelta(minutes=1))


def _last_minute_before(end: datetime) -> int:
    """The last minute holding a moment before `end` (exclusive): an end on a minute's start excludes it."""
    return minute_of(end - timedelta(microseconds=1))


def widen(spans: dict[Bucket, Span], bucket: Bucket, low: int, high: int) -> None:
    known = spans.get(bucket)
    spans[bucket] = (low, high) if known is None else (min(known[0], low), max(known[1], high))


def spans_of(ticks: Iterable[tuple[int, int, int]]) -> dict[Bucket, Span]:
    """The spans of (script_id, trade_id, traded_at_us) triples."""
    spans: dict[Bucket, Span] = {}
    for script_id, trade_id, traded_us in ticks:
        widen(spans, (script_id, traded_us // MINUTE_US), trade_id, trade_id)
    return spans


_UPSERT_SQL = (
    "INSERT INTO tick_minutes (script_id, minute, first_trade_id, last_trade_id) VALUES {values}"
    " ON DUPLICATE KEY UPDATE first_trade_id = LEAST(first_trade_id, VALUES(first_trade_id)),"
    " last_trade_id = GREATEST(last_trade_id, VALUES(last_trade_id))"
)


def write(conn: pymysql.Connection, spans: dict[Bucket, Span]) -> None:
    """Widen the buckets by `spans` in the caller's transaction, in key order: two writers never take the same
    bucket rows in opposite orders (no deadlock between them)."""
    if not spans:
        return
    values: list[int] = []
    for bucket in sorted(spans):
        values += [*bucket, *spans[bucket]]
    with conn.cursor() as cursor:
        cursor.execute(_UPSERT_SQL.format(values=",".join(["(%s, %s, %s, %s)"] * len(spans))), values)


class TimeIndexDelta:
    """What one transaction adds to tick_minutes; written by `write` just before COMMIT (as tick_coverage)."""

    def __init__(self) -> None:
        self.spans: dict[Bucket, Span] = {}

    def add(self, spans: dict[Bucket, Span]) -> None:
        for bucket, (low, high) in spans.items():
            widen(self.spans, bucket, low, high)

    def write(self, conn: pymysql.Connection) -> None:
        write(conn, self.spans)

    def clear(self) -> None:
        self.spans = {}


# --- reading: time → trade ids -------------------------------------------------------------------------------

_FIRST_SQL = ("SELECT minute, first_trade_id FROM tick_minutes WHERE script_id = %s AND minute >= %s"
              " ORDER BY minute LIMIT 1")
_LAST_SQL = ("SELECT minute, last_trade_id FROM tick_minutes WHERE script_id = %s AND minute <= %s"
             " ORDER BY minute DESC LIMIT 1")
_NO_UPPER_BOUND = 2**64 - 1


def trade_id_bounds(conn: pymysql.Connection, script_id: int, start: datetime | None,
                    end: datetime | None) -> tuple[int, int] | None:
    """Trade ids that hold every tick of the script traded in [start, end) (either end open): from the first
    bucket at or after start's minute, to the last bucket at or before end's; None when no bucket lies between.
    Two dives into tick_minutes' primary key. The ids between are a superset: callers filter on traded_at."""
    first_minute = None if start is None else minute_of(start)
    last_minute = None if end is None else _last_minute_before(end)
    with conn.cursor() as cursor:
        low = 0
        if first_minute is not None:
            cursor.execute(_FIRST_SQL, (script_id, first_minute))
            row = cursor.fetchone()
            if row is None or (last_minute is not None and row[0] > last_minute):
                return None
            low = int(row[1])
        high = _NO_UPPER_BOUND
        if last_minute is not None:
            cursor.execute(_LAST_SQL, (script_id, last_minute))
            row = cursor.fetchone()
            if row is None or (first_minute is not None and row[0] < first_minute):
                return None
            high = int(row[1])
    return min(low, high), max(low, high)


def trade_id_span(conn: pymysql.Connection, script_id: int, start: datetime, end: datetime) -> tuple[int, int] | None:
    """Like `trade_id_bounds`, assuming nothing about ids across minutes: MIN/MAX over every bucket of [start, end),
    so O(minutes in the range). For bounded ranges where every tick must be found whatever its id (a day's
    recount)."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT MIN(first_trade_id), MAX(last_trade_id) FROM tick_minutes WHERE script_id = %s"
                       " AND minute BETWEEN %s AND %s", (script_id, minute_of(start), _last_minute_before(end)))
        low, high = cursor.fetchone()
    return None if low is None else (int(low), int(high))


def last_trade_id_before(cursor: pymysql.cursors.Cursor, script_id: int, cutoff: datetime) -> int | None:
    """An id at or above every tick of the script traded before `cutoff`: the last id of the last bucket before
    it (one dive); None when there is none."""
    cursor.execute(_LAST_SQL, (script_id, _last_minute_before(cutoff)))
    row = cursor.fetchone()
    return None if row is None else int(row[1])


def first_minute_from(conn: pymysql.Connection, script_id: int, since: datetime | None) -> datetime | None:
    """The start of the script's first bucket at or after `since` (the first of all without it)."""
    with conn.cursor() as cursor:
        cursor.execute(_FIRST_SQL, (script_id, 0 if since is None else minute_of(since)))
        row = cursor.fetchone()
    return None if row is None else _EPOCH + timedelta(minutes=int(row[0]))


# --- rebuilding from the ticks (rows written around the ingest) --------------------------------------------------

REINDEX_CHUNK_ROWS = 100_000

_REINDEX_SQL = (
    "INSERT INTO tick_minutes (script_id, minute, first_trade_id, last_trade_id)"
    " SELECT script_id, TIMESTAMPDIFF(MINUTE, '1970-01-01', traded_at) AS m, MIN(trade_id), MAX(trade_id)"
    " FROM ticks WHERE script_id = %s AND trade_id BETWEEN %s AND %s GROUP BY script_id, m"
    " ON DUPLICATE KEY UPDATE first_trade_id = LEAST(first_trade_id, VALUES(first_trade_id)),"
    " last_trade_id = GREATEST(last_trade_id, VALUES(last_trade_id))"
)


def index_id_range(cursor: pymysql.cursors.Cursor, script_id: int, first_trade_id: int, last_trade_id: int) -> None:
    """Widen the buckets of the script's stored ticks with ids in [first, last] (one grouped primary-key range),
    in the caller's transaction: for rows written by SQL around the ingest (a bulk load, a test)."""
    cursor.execute(_REINDEX_SQL, (script_id, first_trade_id, last_trade_id))


def reindex(conn: pymysql.Connection, script_id: int, chunk_rows: int = REINDEX_CHUNK_ROWS) -> int:
    """Widen the script's buckets to hold every stored tick: a keyset walk of its primary key in chunks of
    `chunk_rows`, each chunk one committed upsert (safe while the ingest runs: bounds only widen). Returns the
    ticks read. O(the script's ticks): the repair for rows stored around the ingest, never a read path."""
    start, seen = 0, 0
    while True:
        with conn.cursor() as cursor:
            cursor.execute("SELECT trade_id FROM ticks WHERE script_id = %s AND trade_id >= %s ORDER BY trade_id"
                           " LIMIT 1 OFFSET %s", (script_id, start, chunk_rows - 1))
            row = cursor.fetchone()
            end = _NO_UPPER_BOUND if row is None else int(row[0])
            index_id_range(cursor, script_id, start, end)
            if row is None:
                cursor.execute("SELECT COUNT(*) FROM ticks WHERE script_id = %s AND trade_id >= %s",
                               (script_id, start))
                seen += int(cursor.fetchone()[0])
            else:
                seen += chunk_rows
        conn.commit()
        if row is None:
            return seen
        start = end + 1
