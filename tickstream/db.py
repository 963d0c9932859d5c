"""MySQL connections (pymysql), the same way in every runtime.

`LOAD DATA LOCAL` lets the *server* name a file that the client then sends: in reply to any query, a rogue server
or a man in the middle can ask for `/proc/self/environ` (the Lambda role's credentials). So every connection here
refuses such a request, unless it was opened with `local_infile=True` (only the ingest's writer is) and the file
named is the one buffer it is loading at that moment (`Connection.sending`). TLS settings come from
`DatabaseSettings` (DB_SSL_CA, DB_SSL_VERIFY_IDENTITY; README: Security).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pymysql
import pymysql.connections
import pymysql.converters
from pymysql.constants import FIELD_TYPE
from pymysql.protocol import LoadLocalPacketWrapper

from tickstream.settings import DatabaseSettings

# Connection errors that mean "the server went away", after which a fresh connection may succeed.
CONNECTION_ERRORS = (pymysql.err.OperationalError, pymysql.err.InterfaceError)


def _datetime(text: str) -> datetime | str:
    """A DATETIME or TIMESTAMP as the server sends it ('YYYY-MM-DD HH:MM:SS[.ffffff]'): read by the C parser, ~15×
    faster than pymysql's regex (/stats reads hundreds per request); what it cannot read (a zero date) goes to
    pymysql's own converter, as before."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return pymysql.converters.convert_datetime(text)


def as_utc(value: datetime | None) -> datetime | None:
    """A DATETIME read from the database (UTC by convention: every writer stores UTC) as an aware datetime; one
    already aware is returned as it is (`replace` costs ~2 µs, which a read of many rows notices)."""
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)


CONVERSIONS = {**pymysql.converters.conversions, FIELD_TYPE.DATETIME: _datetime, FIELD_TYPE.TIMESTAMP: _datetime}


class LocalFileRefused(pymysql.err.DatabaseError):
    """The server asked for a local file this connection may not send (not a connection error: do not retry)."""


class Connection(pymysql.connections.Connection):
    """pymysql's connection, whose answer to a LOAD DATA LOCAL request is nothing unless `sending(path)` allows
    exactly that path."""

    def __init__(self, **kwargs: Any) -> None:
        self.sendable_file: bytes | None = None
        self.local_infile = bool(kwargs.get("local_infile"))
        super().__init__(**kwargs)

    @contextlib.contextmanager
    def sending(self, path: str) -> Iterator[None]:
        """Allow the server to ask for `path`, and no other file, until the block ends."""
        if not self.local_infile:
            raise LocalFileRefused("this connection was opened without local_infile")
        self.sendable_file = os.fsencode(path)
        try:
            yield
        finally:
            self.sendable_file = None

    def _read_query_result(self, unbuffered: bool = False) -> int:
        # pymysql 1.2.4's body (pinned), with the result class that checks the requested file name.
        self._result = None
        result = _CheckedResult(self)
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        if result.server_status is not None:
            self.server_status = result.server_status
        return result.affected_rows


class _CheckedResult(pymysql.connections.MySQLResult):
    def _read_load_local_packet(self, first_packet: Any) -> None:
        conn: Connection = self.connection
        requested = LoadLocalPacketWrapper(first_packet).filename
        if conn.sendable_file is None or requested != conn.sendable_file:
            conn.write_packet(b"")  # an empty file: the protocol's way of sending nothing, keeps the session in step
            with contextlib.suppress(pymysql.err.MySQLError):
                conn._read_packet()  # the server's OK or error for the empty load
            raise LocalFileRefused(f"the server asked for local file {requested[:200]!r}; refused (only the buffer"
                                   " of the ingest's own LOAD DATA may be sent)")
        super()._read_load_local_packet(first_packet)


def connect(db: DatabaseSettings, *, database: bool = True, autocommit: bool = False, connect_timeout: float = 5,
            local_infile: bool = False) -> Connection:
    """A connection whose session speaks UTC, so DATETIME columns hold UTC times. `local_infile` only for the
    ingest's writer (LOAD DATA LOCAL of its own buffer)."""
    return Connection(
        host=db.host,
        port=db.port,
        user=db.user,
        password=db.password,
        database=db.name if database else None,
        charset="utf8mb4",
        autocommit=autocommit,
        local_infile=local_infile,
        connect_timeout=connect_timeout,
        init_command="SET time_zone = '+00:00'",
        conv=CONVERSIONS,
        **tls_arguments(db),
    )


def tls_arguments(db: DatabaseSettings) -> dict[str, Any]:
    """pymysql's TLS arguments. With a CA file, TLS is required (no plain-text fallback) and the certificate must
    chain to it, and with `ssl_verify_identity` name the host; without, pymysql's default: TLS if the server
    offers it, unverified (local stacks)."""
    if not db.ssl_ca:
        return {}
    return {"ssl_ca": db.ssl_ca, "ssl_verify_cert": True, "ssl_verify_identity": db.ssl_verify_identity}
