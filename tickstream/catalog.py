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
import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymysql

from tickstream import time_index
from tickstream.db import as_utc
from tickstream.venues import DEFAULT_TYPE, VENUES

DEFAULT_STREAM = "aggTrade"

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
    """A change of a script's broker, trading symbol or stream once it has ticks (or of the type of a broker whose
    scripts have ticks): the stored trade ids belong to one market, and the next market's ids would collide with
    them (IGNORE would drop every colliding trade)."""


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
    broker_type: str = DEFAULT_TYPE  # brokers.type: which exchange adapter the producer speaks it with


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


# A caller's rule for what a broker's scripts may name (the API: the venue's symbol format and streams), applied
# inside the write's transaction with the broker row locked, so a concurrent change of the broker's type cannot
# slip between the check and the write. It raises to refuse.
MarketCheck = Callable[["Broker", str, Mapping[str, Any]], None]  # (broker, trading_symbol, additional_data)
# (the broker as changed; its scripts if the type changes, else none: they were checked against this type)
BrokerCheck = Callable[["Broker", list["Script"]], None]


# --- helpers -------------------------------------------------------------------------------------------------

def _db_time(value: datetime) -> datetime:
    """A naive UTC datetime, as the UTC session compares DATETIME columns."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _json_object(text: str | bytes | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(text, dict):  # already decoded: the column read inside a server-built JSON document
        return text
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
    return Broker(row[0], row[1], row[2], _json_object(row[3]), bool(row[4]), as_utc(row[5]), as_utc(row[6]))


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


def update_broker(conn: pymysql.Connection, broker_id: int, changes: Mapping[str, Any], *,
                  check: BrokerCheck | None = None) -> Broker | None:
    """Apply `changes` (any of type, name, api_config, is_active); None if there is no such broker.

    A change of type or api_config first passes `check`, given the broker as changed and, for a new type, its
    scripts. A new type raises IdentityLocked while any of its scripts has ticks. The broker row is locked
    meanwhile, and script writes share-lock it (create_script, update_script), so no script changes between the
    check and the update.
    """
    if changes:
        assignments, values = _set_clause(changes, _BROKER_UPDATABLE)
        with _constraint_errors(), _transaction(conn) as cursor:
            if "type" in changes or (check is not None and "api_config" in changes):
                cursor.execute(f"SELECT {_BROKER_COLUMNS} FROM brokers WHERE id = %s FOR UPDATE", (broker_id,))
                row = cursor.fetchone()
                if row is None:
                    return None
                current = _broker(row)
                scripts = _scripts_for_new_type(cursor, current, changes.get("type", current.type))
                if check is not None:
                    check(dataclasses.replace(current, **changes), scripts)
            cursor.execute(f"UPDATE brokers SET {assignments} WHERE id = %s", (*values, broker_id))
    return get_broker(conn, broker_id)


def _scripts_for_new_type(cursor: pymysql.cursors.Cursor, broker: Broker, new_type: str) -> list[Script]:
    """The (locked) broker's scripts if its type changes (IdentityLocked if any has ticks), else none."""
    if new_type == broker.type:
        return []
    # A plain read, taken once the broker is locked: every script write that checked against the broker (and
    # share-locked it) has committed by now. Locking the scripts here could deadlock with update_script, which
    # locks its script and then the broker.
    cursor.execute(f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE broker_id = %s ORDER BY id", (broker.id,))
    scripts = [script_of(row) for row in cursor.fetchall()]
    if any(_has_ticks(cursor, script.id, lock=True) for script in scripts):
        raise IdentityLocked(f"broker {broker.id} has scripts with ticks, so its type cannot change")
    return scripts


def _locked_broker(cursor: pymysql.cursors.Cursor, broker_id: int) -> Broker:
    """The broker, share-locked until the transaction ends (its type cannot change meanwhile); UnknownBroker."""
    cursor.execute(f"SELECT {_BROKER_COLUMNS} FROM brokers WHERE id = %s LOCK IN SHARE MODE", (broker_id,))
    row = cursor.fetchone()
    if row is None:
        raise UnknownBroker("the broker does not exist")
    return _broker(row)


def delete_broker(conn: pymysql.Connection, broker_id: int) -> DeleteResult | None:
    """Delete a broker that has no scripts. None if it does not exist; InUse if it has scripts (their purge, and
    the broker's with them, is a background job: tickstream.jobs.create_broker_purge_job)."""
    if get_broker(conn, broker_id) is None:
        return None
    script_ids = [script.id for script in list_scripts(conn, broker_id)]
    if script_ids:
        raise InUse(f"broker {broker_id} has {len(script_ids)} script(s)")
    with _constraint_errors(), _transaction(conn) as cursor:
        # A script added meanwhile makes the foreign key refuse this delete (InUse): it is not swept away unseen.
        found = cursor.execute("DELETE FROM brokers WHERE id = %s", (broker_id,))
    return DeleteResult(0, 0) if found else None


# --- scripts -------------------------------------------------------------------------------------------------

_SCRIPT_COLUMNS = "id, broker_id, name, trading_symbol, additional_data, is_active, created_at, updated_at"
# The same columns of a table named {table}, for a statement that joins scripts with what describes them.
SCRIPT_COLUMNS = ", ".join(f"{{table}}.{column}" for column in _SCRIPT_COLUMNS.split(", "))
_SCRIPT_UPDATABLE = {"broker_id": "int", "name": "text", "trading_symbol": "text", "additional_data": "json",
                     "is_active": "bool"}


def script_of(row: Sequence[Any]) -> Script:
    """A Script from a row of its columns in `SCRIPT_COLUMNS`' order."""
    return Script(row[0], row[1], row[2], row[3], _json_object(row[4]), bool(row[5]), as_utc(row[6]), as_utc(row[7]))


def list_scripts(conn: pymysql.Connection, broker_id: int | None = None) -> list[Script]:
    with conn.cursor() as cursor:
        if broker_id is None:
            cursor.execute(f"SELECT {_SCRIPT_COLUMNS} FROM scripts ORDER BY id")
        else:
            cursor.execute(f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE broker_id = %s ORDER BY id", (broker_id,))
        return [script_of(row) for row in cursor.fetchall()]


def get_script(conn: pymysql.Connection, script_id: int) -> Script | None:
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE id = %s", (script_id,))
        row = cursor.fetchone()
    return script_of(row) if row else None


def create_script(conn: pymysql.Connection, *, broker_id: int, name: str, trading_symbol: str,
                  additional_data: Mapping[str, Any] | None = None, is_active: bool = True,
                  check: MarketCheck | None = None) -> Script:
    """Raises UnknownBroker, or Duplicate when the broker already has this symbol; `check` may refuse the symbol
    and additional_data for the broker."""
    additional_data = dict(additional_data or {})
    with _constraint_errors(), _transaction(conn) as cursor:
        if check is not None:
            check(_locked_broker(cursor, broker_id), trading_symbol, additional_data)
        cursor.execute(
            "INSERT INTO scripts (broker_id, name, trading_symbol, additional_data, is_active)"
            " VALUES (%s, %s, %s, %s, %s)",
            (broker_id, name, trading_symbol, json.dumps(additional_data), is_active),
        )
        script_id = cursor.lastrowid
    return get_script(conn, script_id)


_MARKET_FIELDS = frozenset({"broker_id", "trading_symbol", "additional_data"})


def update_script(conn: pymysql.Connection, script_id: int, changes: Mapping[str, Any], *,
                  check: MarketCheck | None = None) -> Script | None:
    """Apply `changes` (any of broker_id, name, trading_symbol, additional_data, is_active); None if missing.

    Raises IdentityLocked when the change moves the script to another market (broker, symbol or stream) while it
    has ticks. The script row is locked and the tick probe is a locking read, so a tick stored meanwhile either
    comes first (and the change is refused) or waits for this transaction. A change of broker, symbol or
    additional_data first passes `check` with the script's broker (share-locked) as it will be.
    """
    if changes:
        assignments, values = _set_clause(changes, _SCRIPT_UPDATABLE)
        with _constraint_errors(), _transaction(conn) as cursor:
            cursor.execute(f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE id = %s FOR UPDATE", (script_id,))
            row = cursor.fetchone()
            if row is None:
                return None
            script = script_of(row)
            moved = _identity_changes(script, changes, _broker_type(cursor, script.broker_id))
            if moved and _has_ticks(cursor, script_id, lock=True):
                raise IdentityLocked(f"script {script_id} has ticks, so its {' and '.join(moved)} cannot change")
            if check is not None and _MARKET_FIELDS & changes.keys():
                check(_locked_broker(cursor, changes.get("broker_id", script.broker_id)),
                      changes.get("trading_symbol", script.trading_symbol),
                      changes.get("additional_data", script.additional_data))
            cursor.execute(f"UPDATE scripts SET {assignments} WHERE id = %s", (*values, script_id))
    return get_script(conn, script_id)


def default_stream(broker_type: str) -> str:
    """The stream a script of this broker type collects when its additional_data names none: the venue's first."""
    known = VENUES.get(broker_type)
    return known.streams[0] if known is not None else DEFAULT_STREAM


def stream_of(additional_data: Mapping[str, Any], broker_type: str) -> str:
    stream = additional_data.get("stream")
    return stream if isinstance(stream, str) and stream else default_stream(broker_type)


def _broker_type(cursor: pymysql.cursors.Cursor, broker_id: int) -> str:
    cursor.execute("SELECT type FROM brokers WHERE id = %s", (broker_id,))
    row = cursor.fetchone()
    return row[0] if row is not None else DEFAULT_TYPE


def _identity_changes(script: Script, changes: Mapping[str, Any], broker_type: str) -> list[str]:
    """The fields that name the script's market (broker_id, trading_symbol, stream) which `changes` alters."""
    moved = [field for field in ("broker_id", "trading_symbol")
             if field in changes and changes[field] != getattr(script, field)]
    if "additional_data" in changes and (stream_of(changes["additional_data"], broker_type)
                                         != stream_of(script.additional_data, broker_type)):
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


def delete_script(conn: pymysql.Connection, script_id: int) -> DeleteResult | None:
    """Delete a script that has no ticks. None if it does not exist; InUse if it has ticks (their purge is a
    background job: tickstream.jobs.create_purge_job)."""
    if get_script(conn, script_id) is None:
        return None
    if script_has_ticks(conn, script_id):
        raise InUse(f"script {script_id} has ticks")
    with _transaction(conn) as cursor:
        found = cursor.execute("DELETE FROM scripts WHERE id = %s", (script_id,))
    return DeleteResult(1, 0) if found else None


def active_scripts(conn: pymysql.Connection, broker_ids: list[int] | None = None) -> list[ActiveScript]:
    """Active scripts of active brokers (of `broker_ids` only, when given), ordered by script id."""
    sql = (
        "SELECT s.id, s.broker_id, s.trading_symbol, s.additional_data, b.api_config, b.type"
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
        stream=stream_of(_json_object(row[3]), row[5]),
        ws_url=_text_or_none(api_config.get("ws_url")),
        rest_url=_text_or_none(api_config.get("rest_url")),
        broker_type=row[5],
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
    return StoredTick(row[0], _decimal_text(row[1]), _decimal_text(row[2]), bool(row[3]), as_utc(row[4]),
                      as_utc(row[5]), as_utc(row[6]), as_utc(row[7]))
