"""MySQL connections (pymysql), the same way in every runtime."""

from __future__ import annotations

import pymysql

from tickstream.settings import DatabaseSettings

# Connection errors that mean "the server went away", after which a fresh connection may succeed.
CONNECTION_ERRORS = (pymysql.err.OperationalError, pymysql.err.InterfaceError)


def connect(db: DatabaseSettings, *, database: bool = True, autocommit: bool = False,
            connect_timeout: float = 5) -> pymysql.Connection:
    """A connection whose session speaks UTC, so DATETIME columns hold UTC times."""
    return pymysql.connect(
        host=db.host,
        port=db.port,
        user=db.user,
        password=db.password,
        database=db.name if database else None,
        charset="utf8mb4",
        autocommit=autocommit,
        local_infile=True,
        connect_timeout=connect_timeout,
        init_command="SET time_zone = '+00:00'",
    )
