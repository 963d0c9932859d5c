"""The API's MySQL connection: one per process, opened lazily, reused across requests (a warm Lambda container
keeps it), checked with a ping before use, and guarded by a lock because `chalice local` serves each request on
its own thread while a pymysql connection is not thread-safe.

Database trouble becomes JSON errors here: unreachable → 503; a value the database refuses → 422 (validation
should have caught it first; this is the safety net that keeps bad input from ever being a 500); a statement that
ran past the session's statement timeout → 504.

Every connection gets a statement timeout below the function's: when API Gateway gives up (29 s) and the function
is stopped, the server does not run the abandoned query on, holding locks, CPU and the connection.
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
# Below ApiFunction's Timeout (29 s, API Gateway's limit; tests/test_api_limits.py keeps them in order).
STATEMENT_TIMEOUT_SECONDS = 25.0
# "Interrupted: statement timeout": MariaDB's ER_STATEMENT_TIMEOUT, MySQL's ER_QUERY_TIMEOUT.
STATEMENT_TIMEOUT_ERRORS = frozenset({1969, 3024})


def limit_statement_time(conn: pymysql.Connection, seconds: float) -> None:
    """MariaDB: max_statement_time (seconds, every statement); MySQL: max_execution_time (milliseconds, SELECTs
    only; MySQL has no session limit for writes, which are short here: single-row catalog changes)."""
    with conn.cursor() as cursor:
        if "MariaDB" in conn.get_server_info():
            cursor.execute("SET SESSION max_statement_time = %s", (seconds,))
        else:
            cursor.execute("SET SESSION max_execution_time = %s", (round(seconds * 1000),))


class Database:
    def __init__(self, statement_timeout_seconds: float = STATEMENT_TIMEOUT_SECONDS) -> None:
        self._lock = threading.Lock()
        self._conn: pymysql.Connection | None = None
        self.statement_timeout_seconds = statement_timeout_seconds

    @contextlib.contextmanager
    def connection(self) -> Iterator[pymysql.Connection]:
        with self._lock:
            try:
                yield self._connected()
            except CONNECTION_ERRORS as error:  # also lock waits and deadlocks: transient, so 503 too
                if error.args and error.args[0] in STATEMENT_TIMEOUT_ERRORS:  # the connection itself is fine
                    raise self._timed_out() from error
                self._close()
                raise unavailable("database_unavailable", "the database is unreachable; try again") from error
            except (pymysql.err.DataError, pymysql.err.IntegrityError) as error:
                raise ApiError(422, "invalid_value", f"the database refused a value ({error.args[0]})") from error

    def _timed_out(self) -> ApiError:
        return ApiError(504, "query_timeout", f"the query ran longer than {self.statement_timeout_seconds:g} s and was"
                        " stopped; ask for less (a shorter time range, a smaller limit)")

    def _connected(self) -> pymysql.Connection:
        if self._conn is not None:
            try:
                self._conn.ping(reconnect=False)  # the server may have closed it while the container was idle
            except CONNECTION_ERRORS:
                self._close()
        if self._conn is None:
            # Autocommit: every read sees the latest committed data; catalog writes open their own transactions.
            conn = connect(load_settings().db, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
            try:
                limit_statement_time(conn, self.statement_timeout_seconds)
            except pymysql.err.Error:
                conn.close()
                raise
            self._conn = conn
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
