"""Coverage per script per UTC day (table `tick_coverage`): how many ticks are stored, and their id and time span.

Written by the ingest in the same transaction as the ticks (`TickStore` keeps a `CoverageDelta` per transaction and
upserts it just before COMMIT), so a committed tick is always counted and a rolled-back one never is. `stored`
counts rows really inserted: every `LOAD DATA … IGNORE` / `INSERT IGNORE` statement reports how many of its rows
were new, and a statement only ever holds rows of one (script, day) when the split is not known otherwise (see
`TickStore`), so a redelivered duplicate adds nothing, also when two writers race for the same rows (the storage
engine, not a count made beforehand, decides which one stored a row).

For a venue with contiguous trade ids (Binance), expected = last_trade_id − first_trade_id + 1 and
missing = expected − stored (generated columns, and an index on whether it is more than none, so incomplete days
are an index range). Every writer of
tick_coverage also adds what it changes to the script's row of `tick_totals` (`add_to_totals`), in the same
transaction: a script's stored ticks without summing its days; the ingest's delta also counts the lags of the rows
it stores (tickstream.lags), sampled by `summarize_batch`. The audit's read side lives here too:
`incomplete_days` (from tick_coverage only) and `missing_ranges` (a keyset walk over the primary key between two
ids, in bounded chunks), plus `boundary_gaps` (ids missing between one day's last id and the next day's first).

Data stored before coverage existed (or written around the ingest): `python -m tickstream.coverage rebuild`
widens the time index from the ticks (tickstream.time_index.reindex, a walk of the primary key), then recounts
coverage day by day (each day a primary-key range from the time index's bounds), safely while the ingest runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import NamedTuple

import pymysql

from tickstream import lags, time_index
from tickstream.db import as_utc
from tickstream.lags import DATABASE_MINUTE

DAY_US = 86_400_000_000
MINUTE_US = time_index.MINUTE_US
_EPOCH = datetime(1970, 1, 1)
_EPOCH_DAY = date(1970, 1, 1)
INCOMPLETE_INDEX = "ix_tick_coverage_incomplete"  # (incomplete, script_id): else the optimizer walks every day
MISSING_RANGES_CHUNK_ROWS = 50_000  # ids read per statement by the audit's walk: bounded work per round trip
_FIELDS = 8  # a row's tab-separated fields (tickstream.codec's row format)

Key = tuple[int, int]  # (script_id, UTC day as days since the epoch)


@dataclass(frozen=True, slots=True)
class RowGroup:
    """The rows of one (script, UTC day) in a batch: how many, their id and time span, and the received_at_producer
of a sample of them (tickstream.lags, as the rows hold them)."""

    script_id: int
    day: int
    count: int
    first_trade_id: int
    last_trade_id: int
    first_traded_us: int
    last_traded_us: int
    received_sample: tuple[bytes, ...] = dataclasses.field(default=(), compare=False)

    def merged(self, other: RowGroup) -> RowGroup:
        return RowGroup(self.script_id, self.day, self.count + other.count,
                        min(self.first_trade_id, other.first_trade_id), max(self.last_trade_id, other.last_trade_id),
                        min(self.first_traded_us, other.first_traded_us),
                        max(self.last_traded_us, other.last_traded_us),
                        self.received_sample + other.received_sample)


class Summary(NamedTuple):
    """A batch's coverage groups and its time-index spans (tickstream.time_index), made in one pass."""

    groups: dict[Key, RowGroup]
    minutes: dict[time_index.Bucket, time_index.Span]

    def for_scripts(self, keep: set[int] | frozenset[int]) -> Summary:
        return Summary({key: group for key, group in self.groups.items() if key[0] in keep},
                       {key: span for key, span in self.minutes.items() if key[0] in keep})


def summarize(rows: bytes) -> dict[Key, RowGroup]:
    """The (script, day) groups of validated rows (tickstream.codec's format)."""
    return summarize_batch(rows).groups


def summarize_batch(rows: bytes) -> Summary:
    """The (script, day) groups and (script, minute) spans of validated rows (tickstream.codec's format).

    The hot path of coverage and the time index (~0.5 µs per row, run on the handler's thread while the writer
    loads the previous chunk): one split of the whole batch, then per block of consecutive rows of one script,
    min/max over C-level lists; only a block whose times span two minutes is split row by row (a live stream's
    block of ~1,000 rows is a second or less of one script's trades, so few do). The lag sample: the rows on the
    batch's stride of `lags.SAMPLE_STRIDE`, and a group's first row when none of its rows is on it.
    """
    fields = rows.replace(b"\n", b"\t").split(b"\t")
    scripts, ids, times = fields[0:-1:_FIELDS], fields[1:-1:_FIELDS], fields[5:-1:_FIELDS]
    received = fields[7:-1:_FIELDS]
    groups: dict[Key, RowGroup] = {}
    minutes: dict[time_index.Bucket, time_index.Span] = {}
    samples: dict[Key, list[bytes]] = {}
    firsts: dict[Key, bytes] = {}
    position = 0
    for script, block in itertools.groupby(scripts):
        count = len(list(block))
        start, end = position, position + count
        block_ids, block_times = ids[start:end], times[start:end]
        position = end
        (first_id, last_id), (first_time, last_time) = _span(block_ids), _span(block_times)
        script_id = int(script)
        key = (script_id, first_time // DAY_US)
        firsts.setdefault(key, received[start])
        samples.setdefault(key, []).extend(received[start + -start % lags.SAMPLE_STRIDE:end:lags.SAMPLE_STRIDE])
        if first_time // MINUTE_US == last_time // MINUTE_US:
            _add(groups, RowGroup(script_id, key[1], count, first_id, last_id, first_time, last_time))
            time_index.widen(minutes, (script_id, first_time // MINUTE_US), first_id, last_id)
            continue
        same_day = first_time // DAY_US == last_time // DAY_US
        if same_day:
            _add(groups, RowGroup(script_id, key[1], count, first_id, last_id, first_time, last_time))
        for trade_id, traded, at in zip(map(int, block_ids), map(int, block_times), received[start:end], strict=True):
            time_index.widen(minutes, (script_id, traded // MINUTE_US), trade_id, trade_id)
            if not same_day:  # crosses midnight: the block's sample counts with its first day
                _add(groups, RowGroup(script_id, traded // DAY_US, 1, trade_id, trade_id, traded, traded))
                firsts.setdefault((script_id, traded // DAY_US), at)
    for key, group in groups.items():
        groups[key] = dataclasses.replace(group, received_sample=tuple(samples.get(key) or (firsts[key],)))
    return Summary(groups, minutes)


def _span(numbers: list[bytes]) -> tuple[int, int]:
    """min and max of decimal integers without leading zeros: compared as bytes when all have the same length
    (times always, ids nearly always), which spares converting every one."""
    if len(set(map(len, numbers))) == 1:
        return int(min(numbers)), int(max(numbers))
    values = list(map(int, numbers))
    return min(values), max(values)


def _add(groups: dict[Key, RowGroup], group: RowGroup) -> None:
    key = (group.script_id, group.day)
    known = groups.get(key)
    groups[key] = group if known is None else known.merged(group)


def rows_by_group(rows: bytes) -> dict[Key, bytes]:
    """The rows of each (script, day) group, in their order (the slow path: a chunk partly stored already)."""
    grouped: dict[Key, list[bytes]] = {}
    for line in rows.splitlines(keepends=True):
        fields = line.split(b"\t", 6)
        grouped.setdefault((int(fields[0]), int(fields[5]) // DAY_US), []).append(line)
    return {key: b"".join(lines) for key, lines in grouped.items()}


def day_of(day: int) -> date:
    return _EPOCH_DAY + timedelta(days=day)


def _time(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


_UPSERT_SQL = (
    "INSERT INTO tick_coverage (script_id, day, stored, first_trade_id, last_trade_id, first_traded_at,"
    " last_traded_at) VALUES {values} ON DUPLICATE KEY UPDATE stored = stored + VALUES(stored),"
    " first_trade_id = LEAST(first_trade_id, VALUES(first_trade_id)),"
    " last_trade_id = GREATEST(last_trade_id, VALUES(last_trade_id)),"
    " first_traded_at = LEAST(first_traded_at, VALUES(first_traded_at)),"
    " last_traded_at = GREATEST(last_traded_at, VALUES(last_traded_at))"
)


class CoverageDelta:
    """What one transaction adds to tick_coverage; written by `write` just before COMMIT.

    Last in the transaction on purpose: the upsert locks the (script, day) rows until COMMIT, so two writers of one
    hot script serialise only for that statement and the commit, not for their loads. Rows go in key order, so two
    writers never take the same coverage rows in opposite orders (no deadlock between them). The lags of the stored
    groups' samples (tickstream.lags) are taken on `clock` (µs since the epoch) then, just before COMMIT.
    """

    def __init__(self, clock: Callable[[], int] = lags.now_us) -> None:
        self._groups: dict[Key, RowGroup] = {}
        self._clock = clock

    def add(self, group: RowGroup, stored: int) -> None:
        """`group`'s rows were all stored or already there; `stored` of them are new (a group of duplicates
        only adds nothing, its lag sample included)."""
        if stored:
            _add(self._groups, dataclasses.replace(group, count=stored))

    def __len__(self) -> int:
        return len(self._groups)

    def stored(self, key: Key) -> int:
        group = self._groups.get(key)
        return group.count if group else 0

    def write(self, conn: pymysql.Connection) -> None:
        if not self._groups:
            return
        groups = [self._groups[key] for key in sorted(self._groups)]
        values: list[object] = []
        for group in groups:
            values += [group.script_id, day_of(group.day), group.count, group.first_trade_id, group.last_trade_id,
                       _time(group.first_traded_us), _time(group.last_traded_us)]
        with conn.cursor() as cursor:
            cursor.execute(_UPSERT_SQL.format(values=",".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(groups))),
                           values)
            add_to_totals(cursor, groups)
            received: dict[int, list[bytes]] = {}
            for group in groups:
                received.setdefault(group.script_id, []).extend(group.received_sample)
            lags.add(cursor, received, self._clock())

    def clear(self) -> None:
        self._groups = {}


# --- per-script totals ------------------------------------------------------------------------------------------

_TOTALS_COLUMNS = "stored, first_trade_id, last_trade_id, first_traded_at, last_traded_at"
_ADD_TO_TOTALS_SQL = (
    f"INSERT INTO tick_totals (script_id, {_TOTALS_COLUMNS}, stored_minute, stored_in_minute) VALUES {{values}}"
    " ON DUPLICATE KEY UPDATE"
    " stored = stored + VALUES(stored), first_trade_id = LEAST(first_trade_id, VALUES(first_trade_id)),"
    " last_trade_id = GREATEST(last_trade_id, VALUES(last_trade_id)),"
    " first_traded_at = LEAST(first_traded_at, VALUES(first_traded_at)),"
    " last_traded_at = GREATEST(last_traded_at, VALUES(last_traded_at)), "
    + lags.per_minute_counts("stored_minute", "stored_in_minute", "stored_in_previous_minute"))
_TOTALS_ROW = f"(%s, %s, %s, %s, %s, %s, {DATABASE_MINUTE}, %s)"
_SUMMED_COVERAGE = ("SUM(stored), MIN(first_trade_id), MAX(last_trade_id), MIN(first_traded_at),"
                    " MAX(last_traded_at)")


def add_to_totals(cursor: pymysql.cursors.Cursor, groups: Sequence[RowGroup]) -> None:
    """Add the new rows of `groups` to their scripts' totals and this minute's stored count, in the caller's
    transaction and after its tick_coverage upsert (every writer locks tick_minutes, then tick_coverage, then
    tick_totals, each in key order). Relative, so two writers of one script never lose each other's counts."""
    per_script: dict[Key, RowGroup] = {}  # keyed (script, 0): all its days in one
    for group in groups:
        _add(per_script, dataclasses.replace(group, day=0, received_sample=()))
    values: list[object] = []
    for key in sorted(per_script):
        group = per_script[key]
        values += [group.script_id, group.count, group.first_trade_id, group.last_trade_id,
                   _time(group.first_traded_us), _time(group.last_traded_us), group.count]
    if values:
        cursor.execute(_ADD_TO_TOTALS_SQL.format(values=", ".join([_TOTALS_ROW] * len(per_script))), values)


def remove_days_before(cursor: pymysql.cursors.Cursor, script_id: int, day: date) -> None:
    """Delete the script's coverage before `day` and take it off the script's totals (the retention): the removed
    days' ticks subtracted, the lowest id and time those of the first day left, read with a lock (so an ingest
    writing that day, or a day before it, has committed first or comes after)."""
    cursor.execute("SELECT COALESCE(SUM(stored), 0) FROM tick_coverage WHERE script_id = %s AND day < %s"
                   " FOR UPDATE", (script_id, day))
    (removed,) = cursor.fetchone()
    if not removed:
        return
    cursor.execute("DELETE FROM tick_coverage WHERE script_id = %s AND day < %s", (script_id, day))
    cursor.execute("SELECT first_trade_id, first_traded_at FROM tick_coverage WHERE script_id = %s ORDER BY day"
                   " LIMIT 1 FOR UPDATE", (script_id,))
    first = cursor.fetchone()
    if first is None:
        cursor.execute("DELETE FROM tick_totals WHERE script_id = %s", (script_id,))
    else:
        cursor.execute("UPDATE tick_totals SET stored = stored - %s, first_trade_id = %s, first_traded_at = %s"
                       " WHERE script_id = %s", (removed, *first, script_id))


def recount_totals(conn: pymysql.Connection, script_ids: Sequence[int] | None = None) -> int:
    """Set each script's totals to its coverage rows summed up (all scripts without `script_ids`); returns how many
    were wrong. The repair for coverage written without totals: by an ingest of the previous version during a
    deploy (the maintenance schedule runs this), by `rebuild`, by hand.

    Exact beside a running ingest: per script one REPEATABLE READ transaction that share-locks the script's
    coverage rows and the gap after them before it writes. An ingest that changed one of them first has committed
    (its totals with it) by the time the lock is granted; one that comes later waits, then adds to the new totals.
    O(coverage rows), never a tick.
    """
    conn.commit()  # no transaction open: the isolation level set below is the next one's
    if script_ids is None:
        with conn.cursor() as cursor:
            cursor.execute("SELECT script_id FROM tick_coverage UNION SELECT script_id FROM tick_totals")
            script_ids = sorted(row[0] for row in cursor.fetchall())
        conn.commit()
    return sum(_recount_script_totals(conn, script_id) for script_id in script_ids)


def _recount_script_totals(conn: pymysql.Connection, script_id: int) -> bool:
    with conn.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.begin()
        try:
            cursor.execute(f"SELECT {_SUMMED_COVERAGE} FROM tick_coverage WHERE script_id = %s LOCK IN SHARE MODE",
                           (script_id,))
            summed = cursor.fetchone()
            cursor.execute(f"SELECT {_TOTALS_COLUMNS} FROM tick_totals WHERE script_id = %s FOR UPDATE",
                           (script_id,))
            known = cursor.fetchone()
            wrong = (summed if summed[0] is not None else None) != known
            if wrong and summed[0] is None:
                cursor.execute("DELETE FROM tick_totals WHERE script_id = %s", (script_id,))
            elif wrong:  # the per-minute counters stay: they count what was stored, not what is there
                cursor.execute(f"INSERT INTO tick_totals (script_id, {_TOTALS_COLUMNS})"
                               " VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE stored = VALUES(stored),"
                               " first_trade_id = VALUES(first_trade_id), last_trade_id = VALUES(last_trade_id),"
                               " first_traded_at = VALUES(first_traded_at), last_traded_at = VALUES(last_traded_at)",
                               (script_id, *summed))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return wrong


# --- reading coverage (the API, the audit) -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CoverageDay:
    script_id: int
    day: date
    stored: int
    first_trade_id: int
    last_trade_id: int
    first_traded_at: datetime
    last_traded_at: datetime
    audited_at: datetime | None

    @property
    def expected(self) -> int:
        """For contiguous trade ids (Binance): every id between the day's first and last."""
        return self.last_trade_id - self.first_trade_id + 1

    @property
    def missing(self) -> int:
        return max(0, self.expected - self.stored)

    @property
    def complete(self) -> bool:
        return self.missing == 0


_DAY_COLUMNS = ("script_id, day, stored, first_trade_id, last_trade_id, first_traded_at, last_traded_at,"
                " audited_at")


def _coverage_day(row: Sequence[object]) -> CoverageDay:
    return CoverageDay(int(row[0]), row[1], int(row[2]), int(row[3]), int(row[4]), as_utc(row[5]), as_utc(row[6]),
                       as_utc(row[7]))


def coverage_days(conn: pymysql.Connection, script_id: int, first_day: date | None = None,
                  last_day: date | None = None) -> list[CoverageDay]:
    """The script's days with stored ticks in [first_day, last_day], oldest first (a range of the primary key)."""
    where, params = ["script_id = %s"], [script_id]
    if first_day is not None:
        where.append("day >= %s")
        params.append(first_day)
    if last_day is not None:
        where.append("day <= %s")
        params.append(last_day)
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {_DAY_COLUMNS} FROM tick_coverage WHERE {' AND '.join(where)} ORDER BY day", params)
        return [_coverage_day(row) for row in cursor.fetchall()]


def incomplete_days(conn: pymysql.Connection, script_id: int) -> list[CoverageDay]:
    """The script's days where expected > stored, oldest first: what an audit must walk (an index range of
    tick_coverage over the incomplete days only)."""
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {_DAY_COLUMNS} FROM tick_coverage FORCE INDEX ({INCOMPLETE_INDEX})"
                       " WHERE incomplete AND script_id = %s ORDER BY day", (script_id,))
        days = [_coverage_day(row) for row in cursor.fetchall()]
    conn.commit()  # end the read view: a non-autocommit caller's next look sees newer coverage
    return days


def boundary_gaps(conn: pymysql.Connection, script_id: int) -> list[tuple[int, int]]:
    """Ids missing between one covered day's last id and the next day's first (first, last inclusive), oldest first.

    Per-day coverage cannot see these (each day's expected starts at its own first id); O(days) rows of
    tick_coverage, no tick is read.
    """
    with conn.cursor() as cursor:
        cursor.execute("SELECT first_trade_id, last_trade_id FROM tick_coverage WHERE script_id = %s ORDER BY day",
                       (script_id,))
        spans = cursor.fetchall()
    conn.commit()
    return [(int(last) + 1, int(first) - 1) for (_, last), (first, _) in itertools.pairwise(spans)
            if first > last + 1]


def missing_ranges(conn: pymysql.Connection, script_id: int, first_trade_id: int, last_trade_id: int,
                   chunk_rows: int = MISSING_RANGES_CHUNK_ROWS) -> Iterator[tuple[int, int]]:
    """The ids in [first_trade_id, last_trade_id] not stored for the script (first, last inclusive), oldest first.

    A keyset walk over the primary key (script_id, trade_id): each statement reads at most `chunk_rows` ids after
    the previous one, so the work is O(ids in the range) in bounded steps, never the table, however deep below the
    newest id the range lies. A chunk without holes is recognised at C speed (its span equals its length).
    """
    expected = first_trade_id
    while expected <= last_trade_id:
        with conn.cursor() as cursor:
            cursor.execute("SELECT trade_id FROM ticks WHERE script_id = %s AND trade_id >= %s AND trade_id <= %s"
                           " ORDER BY trade_id LIMIT %s", (script_id, expected, last_trade_id, chunk_rows))
            ids = [row[0] for row in cursor.fetchall()]
        conn.commit()
        if ids and ids[0] == expected and ids[-1] - expected + 1 == len(ids):
            expected = ids[-1] + 1  # contiguous: nothing missing in this chunk
        else:
            for trade_id in ids:
                if trade_id > expected:
                    yield expected, trade_id - 1
                expected = trade_id + 1
        if len(ids) < chunk_rows:
            if expected <= last_trade_id:
                yield expected, last_trade_id
            return


def day_missing_ranges(conn: pymysql.Connection, script_id: int, day: date,
                       chunk_rows: int = MISSING_RANGES_CHUNK_ROWS) -> list[tuple[int, int]]:
    """The holes of one covered day (between its first and last stored id); [] for a day without coverage."""
    days = coverage_days(conn, script_id, day, day)
    conn.commit()
    if not days:
        return []
    return list(missing_ranges(conn, script_id, days[0].first_trade_id, days[0].last_trade_id, chunk_rows))


def mark_audited(conn: pymysql.Connection, script_id: int, day: date) -> None:
    """Record that an audit compared this day with the ticks (commits)."""
    with conn.cursor() as cursor:
        cursor.execute("UPDATE tick_coverage SET audited_at = UTC_TIMESTAMP(6) WHERE script_id = %s AND day = %s",
                       (script_id, day))
    conn.commit()


# --- rebuilding coverage from the ticks (data older than coverage) ----------------------------------------------

@dataclass(frozen=True, slots=True)
class RebuildResult:
    scripts: int
    days: int
    ticks: int


def rebuild(conn: pymysql.Connection, script_ids: Sequence[int] | None = None) -> RebuildResult:
    """Widen each script's time index to its stored ticks, then recount its tick_coverage, one transaction per
    day (each a primary-key range between the lowest and highest id of the day's buckets). Safe while the ingest
    runs: see `time_index.reindex` and `rebuild_day`. Last, the scripts' totals are recounted from their coverage
    (`recount_totals`)."""
    if script_ids is None:
        with conn.cursor() as cursor:
            cursor.execute("SELECT id FROM scripts ORDER BY id")
            script_ids = [row[0] for row in cursor.fetchall()]
        conn.commit()
    days = ticks = 0
    for script_id in script_ids:
        time_index.reindex(conn, script_id)
        day = _next_day_with_ticks(conn, script_id, None)
        while day is not None:
            ticks += rebuild_day(conn, script_id, day)
            days += 1
            day = _next_day_with_ticks(conn, script_id, day + timedelta(days=1))
    recount_totals(conn, script_ids)
    return RebuildResult(len(script_ids), days, ticks)


def _next_day_with_ticks(conn: pymysql.Connection, script_id: int, since: date | None) -> date | None:
    """The first UTC day at or after `since` with a bucket in the time index."""
    moment = None if since is None else datetime.combine(since, datetime.min.time())
    minute = time_index.first_minute_from(conn, script_id, moment)
    conn.commit()
    return None if minute is None else minute.date()


def rebuild_day(conn: pymysql.Connection, script_id: int, day: date) -> int:
    """Set one day's coverage to what the ticks hold; returns the day's tick count.

    Safe against a concurrent ingest: the coverage row is locked first (FOR UPDATE, no read view yet), then the
    ticks are counted in a read view taken after that lock. A writer that upserted this row before has committed
    (its lock was released), so its ticks are in the count; one that has not upserted yet waits for this commit and
    adds its own, uncounted, ticks afterwards.
    """
    start = datetime.combine(day, datetime.min.time())
    conn.begin()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT stored FROM tick_coverage WHERE script_id = %s AND day = %s FOR UPDATE",
                           (script_id, day))
            bounds = time_index.trade_id_span(conn, script_id, start, start + timedelta(days=1)) or (1, 0)
            cursor.execute(
                "SELECT COUNT(*), MIN(trade_id), MAX(trade_id), MIN(traded_at), MAX(traded_at) FROM ticks"
                " WHERE script_id = %s AND trade_id BETWEEN %s AND %s AND traded_at >= %s AND traded_at < %s",
                (script_id, *bounds, start, start + timedelta(days=1)))
            count, first_id, last_id, first_at, last_at = cursor.fetchone()
            if count:
                cursor.execute(
                    "INSERT INTO tick_coverage (script_id, day, stored, first_trade_id, last_trade_id,"
                    " first_traded_at, last_traded_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON DUPLICATE KEY UPDATE stored = VALUES(stored), first_trade_id = VALUES(first_trade_id),"
                    " last_trade_id = VALUES(last_trade_id), first_traded_at = VALUES(first_traded_at),"
                    " last_traded_at = VALUES(last_traded_at)",
                    (script_id, day, count, first_id, last_id, first_at, last_at))
            else:
                cursor.execute("DELETE FROM tick_coverage WHERE script_id = %s AND day = %s", (script_id, day))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return int(count)


def main(argv: list[str] | None = None) -> int:
    from tickstream.db import connect
    from tickstream.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m tickstream.coverage", description="tick_coverage upkeep")
    commands = parser.add_subparsers(dest="command", required=True)
    rebuild_parser = commands.add_parser("rebuild", help="recount coverage from the ticks, by script and day")
    rebuild_parser.add_argument("--script-id", type=int, action="append", help="only this script (repeatable)")
    args = parser.parse_args(argv)
    conn = connect(load_settings().db)
    try:
        result = rebuild(conn, args.script_id)
    finally:
        conn.close()
    print(f"rebuilt coverage: {result.scripts} scripts, {result.days} days, {result.ticks:,} ticks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
