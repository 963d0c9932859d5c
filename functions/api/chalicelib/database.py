"""The API's MySQL connection: one per process, opened lazily, reused across requests (a warm Lambda container
keeps it), checked with a ping before use, and guarded by a lock because `chalice local` serves each request on
its own thread while a pymysql connection is not thread-safe.

Database trouble becomes JSON errors here: unreachable → 503; a value the database refuses → 422 (validation
should have caught it first; this is the safety net that keeps bad input from ever being a 500).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pymysql

from chalicelib.errors import ApiError, unavailable
from tickstream.db import CONNECTION_ERRORS, connect
from tickstream.settings import load_settings

CONNECT_TIMEOUT_SECONDS = 3


class Database:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: pymysql.Connection | None = None

    @contextlib.contextmanager
    def connection(self) -> Iterator[pymysql.Connection]:
        with self._lock:
            try:
                yield self._connected()
            except CONNECTION_ERRORS as error:  # also lock waits and deadlocks: transient, so 503 too
                self._close()
                raise unavailable("database_unavailable", "the database is unreachable; try again") from error
            except (pymysql.err.DataError, pymysql.err.IntegrityError) as error:
                raise ApiError(422, "invalid_value", f"the database refused a value ({error.args[0]})") from error

    def _connected(self) -> pymysql.Connection:
        if self._conn is not None:
            try:
                self._conn.ping(reconnect=False)  # the server may have closed it while the container was idle
            except CONNECTION_ERRORS:
                self._close()
        if self._conn is None:
            # Autocommit: every read sees the latest committed data; catalog writes open their own transactions.
            self._conn = connect(load_settings().db, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(pymysql.err.Error):
                conn.close()

    def reset(self) -> None:
        """Forget the connection (tests point the API at another server this way)."""
        with self._lock:
            self._close()
