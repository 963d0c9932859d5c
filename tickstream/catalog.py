"""Brokers, scripts and stored ticks: the data access shared by the API and the producer.

Plain functions over a pymysql connection, parameterised SQL only (column names come from fixed tables in this
module, never from callers). Each write function is its own transaction: it commits on success and rolls back on
error. Reads are meant for autocommit connections; `active_scripts` also ends its read view itself, so a producer
polling on a non-autocommit connection still sees changes made since its last look.

Times come back as aware UTC datetimes (every tickstream session runs with time_zone '+00:00'); prices and
quantities as decimal strings, never floats.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymysql

from tickstream import time_index

DEFAULT_STREAM = "aggTrade"
# Ticks deleted per statement when purging: keeps each transaction (and its undo log) small on big scripts.
PURGE_CHUNK_ROWS = 10_000

_ER_DUP_ENTRY = 1062
_ER_ROW_IS_REFERENCED = 1451
_ER_NO_REFERENCED_ROW = 1452


class CatalogError(Exception):
    """A change the catalog refuses; callers map it to their own errors."""


class Duplicate(CatalogError):
    """A broker name, or a trading symbol within its broker, is already taken."""


class InUse(CatalogError):
    """A delete that would lose data: a script with ticks, a broker with scripts."""


class UnknownBroker(CatalogError):
    """A script refers to a broker that does not exist."""


class IdentityLocked(CatalogError):
    """A change of a script's broker, trading symbol or stream once it has ticks: the stored trade ids belong to
    one market, and the next market's ids would collide with them (IGNORE would drop every colliding trade)."""


@dataclass(frozen=True, slots=True)
class Broker:
    id: int
    type: str
    name: str
    api_config: dict[str, Any]
    is_active: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Script:
    id: int
    broker_id: int
    name: str
    trading_symbol: str
    additional_data: dict[str, Any]
    is_active: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ActiveScript:
    """What the producer needs to subscribe one symbol."""

    script_id: int
    broker_id: int
    trading_symbol: str
    stream: str
    ws_url: str | None
    rest_url: str | None


@dataclass(frozen=True, slots=True)
class StoredTick:
    trade_id: int
    price: str
    quantity: str
    is_buyer_maker: bool
    traded_at: datetime
    event_at: datetime
    received_at_producer: datetime
    stored_at: datetime


@dataclass(frozen=True, slots=True)
class TickPage:
    ticks: list[StoredTick]
    next_cursor: int | None  # the trade id to continue after, in the same order; None on the last page


@dataclass(frozen=True, slots=True)
class DeleteResult:
    scripts_deleted: int
    ticks_deleted: int


# --- helpers -------------------------------------------------------------------------------------------------

def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _db_time(value: datetime) -> datetime:
    """A naive UTC datetime, as the UTC session compares DATETIME columns."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _json_object(text: str | bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}  # a column edited by hand into something odd must not break every reader
    return value if isinstance(value, dict) else {}


def _decimal_text(text: str) -> str:
    """'95234.560000000000000000' → '95234.56'; exact, no float on the way."""
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _error_code(error: pymysql.err.MySQLError) -> int | None:
    return error.args[0] if error.args and isinstance(error.args[0], int) else None


def _in_list(values: Sequence[int]) -> str:
    return "(" + ", ".join(["%s"] * len(values)) + ")"


@contextmanager
def _transaction(conn: pymysql.Connection) -> Iterator[pymysql.cursors.Cursor]:
    conn.begin()
    try:
        with conn.cursor() as cursor:
            yield cursor
        conn.commit()
    except BaseException:
        with contextlib.suppress(pymysql.err.Error):  # the connection is gone; the server rolls back on its own
            conn.rollback()
        raise


transaction = _transaction  # the one transaction helper, for the other data-access modules (tickstream.jobs)


@contextmanager
def _constraint_errors() -> Iterator[None]:
    """Unique and foreign-key violations as catalog errors: the database is the judge, even under races."""
    try:
        yield
    except pymysql.err.IntegrityError as error:
        code = _error_code(error)
        if code == _ER_DUP_ENTRY:
            raise Duplicate(str(error.args[-1])) from error
        if code == _ER_NO_REFERENCED_ROW:
            raise UnknownBroker("the broker does not exist") from error
        if code == _ER_ROW_IS_REFERENCED:
            raise InUse("the broker still has scripts") from error
        raise


def _set_clause(changes: Mapping[str, Any], columns: Mapping[str, str]) -> tuple[str, list[Any]]:
    """`a = %s, b = %s` for the known columns in `changes`; JSON columns are serialised."""
    unknown = set(changes) - set(columns)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    parts, values = [], []
    for field, value in changes.items():
        parts.append(f"{field} = %s")
        values.append(json.dumps(value) if columns[field] == "json" else value)
    return ", ".join(parts), values


# --- brokers -------------------------------------------------------------------------------------------------

_BROKER_COLUMNS = "id, type, name, api_config, is_active, created_at, updated_at"
_BROKER_UPDATABLE = {"type": "text", "name": "text", "api_config": "json", "is_active": "bool"}


def _broker(row: Sequence[Any]) -> Broker:
    return Broker(row[0], row[1], row[2], _json_object(row[3]), bool(row[4]), _utc(row[5]), _utc(row[6]))


def list_brokers(conn: pymysql.Connection) -> list[Broker]:
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {_BROKER_COLUMNS} FROM brokers ORDER BY id")
        return [_broker(row) for row in cursor.fetchall()]


def get_broker(conn: pymysql.Connection, broker_id: int) -> Broker | None:
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {_BROKER_COLUMNS} FROM brokers WHERE id = %s", (broker_id,))
        row = cursor.fetchone()
    return _broker(row) if row else None


def create_broker(conn: pymysql.Connection, *, name: str, type: str = "binance",
                  api_config: Mapping[str, Any] | None = None, is_active: bool = True) -> Broker:
    with _constraint_errors(), _transaction(conn) as cursor:
        cursor.execute(
            "INSERT INTO brokers (type, name, api_config, is_active) VALUES (%s, %s, %s, %s)",
            (type, name, json.dumps(dict(api_config or {})), is_active),
        )
        broker_id = cursor.lastrowid
    return get_broker(conn, broker_id)


def update_broker(conn: pymysql.Connection, broker_id: int, changes: Mapping[str, Any]) -> Broker | None:
    """Apply `changes` (any of type, name, api_config, is_active); None if there is no such broker."""
    if changes:
        assignments, values = _set_clause(changes, _BROKER_UPDATABLE)
        with _constraint_errors(), _transaction(conn) as cursor:
            cursor.execute(f"UPDATE brokers SET {assignments} WHERE id = %s", (*values, broker_id))
    return get_broker(conn, broker_id)


def delete_broker(conn: pymysql.Connection, broker_id: int, *, purge: bool = False) -> DeleteResult | None:
    """Delete a broker; with `purge` its scripts and their ticks too. None if it does not exist.

    Raises InUse when the broker has scripts and `purge` is false: nothing is lost by accident.
    """
    if get_broker(conn, broker_id) is None:
        return None
    script_ids = [script.id for script in list_scripts(conn, broker_id)]
    if script_ids and not purge:
        raise InUse(f"broker {broker_id} has {len(script_ids)} script(s)")
    ticks_deleted = sum(_purge_script(conn, script_id) for script_id in script_ids)
    with _constraint_errors(), _transaction(conn) as cursor:
        scripts_deleted = 0
        if script_ids:
            scripts_deleted = cursor.execute(f"DELETE FROM scripts WHERE id IN {_in_list(script_ids)}", script_ids)
        # A script added meanwhile makes the foreign key refuse this delete (InUse): it is not swept away unseen.
        found = cursor.execute("DELETE FROM brokers WHERE id = %s", (broker_id,))
    return DeleteResult(scripts_deleted, ticks_deleted) if found else None


# --- scripts -------------------------------------------------------------------------------------------------

_SCRIPT_COLUMNS = "id, broker_id, name, trading_symbol, additional_data, is_active, created_at, updated_at"
_SCRIPT_UPDATABLE = {"broker_id": "int", "name": "text", "trading_symbol": "text", "additional_data": "json",
                     "is_active": "bool"}


def _script(row: Sequence[Any]) -> Script:
    return Script(row[0], row[1], row[2], row[3], _json_object(row[4]), bool(row[5]), _utc(row[6]), _utc(row[7]))


def list_scripts(conn: pymysql.Connection, broker_id: int | None = None) -> list[Script]:
    with conn.cursor() as cursor:
        if broker_id is None:
            cursor.execute(f"SELECT {_SCRIPT_COLUMNS} FROM scripts ORDER BY id")
        else:
            cursor.execute(f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE broker_id = %s ORDER BY id", (broker_id,))
        return [_script(row) for row in cursor.fetchall()]


def get_script(conn: pymysql.Connection, script_id: int) -> Script | None:
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE id = %s", (script_id,))
        row = cursor.fetchone()
    return _script(row) if row else None


def create_script(conn: pymysql.Connection, *, broker_id: int, name: str, trading_symbol: str,
                  additional_data: Mapping[str, Any] | None = None, is_active: bool = True) -> Script:
    """Raises UnknownBroker, or Duplicate when the broker already has this symbol."""
    with _constraint_errors(), _transaction(conn) as cursor:
        cursor.execute(
            "INSERT INTO scripts (broker_id, name, trading_symbol, additional_data, is_active)"
            " VALUES (%s, %s, %s, %s, %s)",
            (broker_id, name, trading_symbol, json.dumps(dict(additional_data or {})), is_active),
        )
        script_id = cursor.lastrowid
    return get_script(conn, script_id)


def update_script(conn: pymysql.Connection, script_id: int, changes: Mapping[str, Any]) -> Script | None:
    """Apply `changes` (any of broker_id, name, trading_symbol, additional_data, is_active); None if missing.

    Raises IdentityLocked when the change moves the script to another market (broker, symbol or stream) while it
    has ticks. The script row is locked and the tick probe is a locking read, so a tick stored meanwhile either
    comes first (and the change is refused) or waits for this transaction.
    """
    if changes:
        assignments, values = _set_clause(changes, _SCRIPT_UPDATABLE)
        with _constraint_errors(), _transaction(conn) as cursor:
            cursor.execute(f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE id = %s FOR UPDATE", (script_id,))
            row = cursor.fetchone()
            if row is None:
                return None
            moved = _identity_changes(_script(row), changes)
            if moved and _has_ticks(cursor, script_id, lock=True):
                raise IdentityLocked(f"script {script_id} has ticks, so its {' and '.join(moved)} cannot change")
            cursor.execute(f"UPDATE scripts SET {assignments} WHERE id = %s", (*values, script_id))
    return get_script(conn, script_id)


def _stream_of(additional_data: Mapping[str, Any]) -> str:
    stream = additional_data.get("stream")
    return stream if isinstance(stream, str) and stream else DEFAULT_STREAM


def _identity_changes(script: Script, changes: Mapping[str, Any]) -> list[str]:
    """The fields that name the script's market (broker_id, trading_symbol, stream) which `changes` alters."""
    moved = [field for field in ("broker_id", "trading_symbol")
             if field in changes and changes[field] != getattr(script, field)]
    if "additional_data" in changes and _stream_of(changes["additional_data"]) != _stream_of(script.additional_data):
        moved.append("stream")
    return moved


def _has_ticks(cursor: pymysql.cursors.Cursor, script_id: int, *, lock: bool = False) -> bool:
    """One probe of the primary key (script_id, trade_id), whatever the table's size: never a COUNT. `lock` also
    holds the probed range until the transaction ends, so no tick of the script can be inserted meanwhile."""
    cursor.execute("SELECT 1 FROM ticks WHERE script_id = %s LIMIT 1" + (" LOCK IN SHARE MODE" if lock else ""),
                   (script_id,))
    return cursor.fetchone() is not None


def script_has_ticks(conn: pymysql.Connection, script_id: int) -> bool:
    with conn.cursor() as cursor:
        return _has_ticks(cursor, script_id)


def delete_script(conn: pymysql.Connection, script_id: int, *, purge: bool = False) -> DeleteResult | None:
    """Delete a script; with `purge` its ticks too. None if it does not exist; InUse if it has ticks and no purge."""
    if get_script(conn, script_id) is None:
        return None
    if not purge and script_has_ticks(conn, script_id):
        raise InUse(f"script {script_id} has ticks")
    ticks_deleted = _purge_script(conn, script_id) if purge else 0
    with _transaction(conn) as cursor:
        found = cursor.execute("DELETE FROM scripts WHERE id = %s", (script_id,))
    return DeleteResult(1, ticks_deleted) if found else None


def _purge_script(conn: pymysql.Connection, script_id: int) -> int:
    """Delete a script's ticks in chunks, each its own transaction, then what describes them; returns how many."""
    deleted = 0
    while True:
        with _transaction(conn) as cursor:
            chunk = cursor.execute("DELETE FROM ticks WHERE script_id = %s LIMIT %s", (script_id, PURGE_CHUNK_ROWS))
        deleted += chunk
        if chunk < PURGE_CHUNK_ROWS:
            break
    with _transaction(conn) as cursor:  # what describes those ticks: candle cache, coverage, ledger, status
        for table in ("candles_1m", "tick_coverage", "gaps", "producer_status"):
            cursor.execute(f"DELETE FROM {table} WHERE script_id = %s", (script_id,))
    return deleted


def active_scripts(conn: pymysql.Connection, broker_ids: list[int] | None = None) -> list[ActiveScript]:
    """Active scripts of active brokers (of `broker_ids` only, when given), ordered by script id."""
    sql = (
        "SELECT s.id, s.broker_id, s.trading_symbol, s.additional_data, b.api_config"
        " FROM scripts s JOIN brokers b ON b.id = s.broker_id"
        " WHERE s.is_active AND b.is_active"
    )
    params: list[Any] = []
    if broker_ids is not None:
        if not broker_ids:
            return []
        sql += " AND s.broker_id IN (" + ", ".join(["%s"] * len(broker_ids)) + ")"
        params.extend(broker_ids)
    with conn.cursor() as cursor:
        cursor.execute(sql + " ORDER BY s.id", params)
        rows = cursor.fetchall()
    conn.commit()  # end the read view, so the next call sees scripts changed since
    return [_active_script(row) for row in rows]


def _active_script(row: Sequence[Any]) -> ActiveScript:
    api_config = _json_object(row[4])
    return ActiveScript(
        script_id=row[0],
        broker_id=row[1],
        trading_symbol=row[2],
        stream=_stream_of(_json_object(row[3])),
        ws_url=_text_or_none(api_config.get("ws_url")),
        rest_url=_text_or_none(api_config.get("rest_url")),
    )


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- ticks ---------------------------------------------------------------------------------------------------

_TICK_COLUMNS = ("trade_id, CAST(price AS CHAR), CAST(quantity AS CHAR), is_buyer_maker, traded_at, event_at,"
                 " received_at_producer, stored_at")


def tick_range(conn: pymysql.Connection, script_id: int, start: datetime | None, end: datetime | None,
               after: int | None, descending: bool = False) -> tuple[str, list[Any]] | None:
    """`FROM ticks … WHERE …` (and its parameters) of a keyset page: traded in [start, end), after the cursor id;
    None when nothing was traded then.

    A time range is first turned into trade-id bounds through the time index (tickstream.time_index: two O(log n)
    dives into tick_minutes), then rows are read on the primary key between them, re-checked on traded_at:
    O(log n + page), however many rows lie outside the range or inside it.
    """
    where, params = ["script_id = %s"], [script_id]
    if start is not None or end is not None:
        bounds = time_index.trade_id_bounds(conn, script_id, start, end)
        if bounds is None:
            return None
        where.append("trade_id BETWEEN %s AND %s")
        params.extend(bounds)
    _add_time_range(where, params, start, end)
    if after is not None:
        where.append("trade_id < %s" if descending else "trade_id > %s")
        params.append(after)
    return f"FROM ticks WHERE {' AND '.join(where)}", params


def read_ticks(conn: pymysql.Connection, script_id: int, *, start: datetime | None = None,
               end: datetime | None = None, after: int | None = None, limit: int = 100,
               descending: bool = False) -> TickPage:
    """One page of a script's ticks traded in [start, end), ordered by trade id.

    Keyset pagination: `after` is the previous page's `next_cursor` (a trade id), so every page is an index range
    scan on the primary key, however deep, and rows inserted meanwhile never shift a page (no OFFSET).
    """
    selection = tick_range(conn, script_id, start, end, after, descending)
    if selection is None:
        return TickPage([], None)
    from_where, params = selection
    direction = "DESC" if descending else "ASC"
    sql = f"SELECT {_TICK_COLUMNS} {from_where} ORDER BY trade_id {direction} LIMIT %s"
    with conn.cursor() as cursor:
        cursor.execute(sql, (*params, limit + 1))  # one extra row tells whether another page exists
        rows = cursor.fetchall()
    ticks = [_stored_tick(row) for row in rows[:limit]]
    more = len(rows) > limit
    return TickPage(ticks, ticks[-1].trade_id if more and ticks else None)


def _add_time_range(where: list[str], params: list[Any], start: datetime | None, end: datetime | None) -> None:
    """traded_at in [start, end), either end open."""
    if start is not None:
        where.append("traded_at >= %s")
        params.append(_db_time(start))
    if end is not None:
        where.append("traded_at < %s")
        params.append(_db_time(end))


def _stored_tick(row: Sequence[Any]) -> StoredTick:
    return StoredTick(row[0], _decimal_text(row[1]), _decimal_text(row[2]), bool(row[3]), _utc(row[4]),
                      _utc(row[5]), _utc(row[6]), _utc(row[7]))
