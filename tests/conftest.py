"""Shared fixtures: a throw-away MariaDB database per test run, migrated with the real migrations."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pymysql
import pytest

from tests.mariadb_control import MariaDBServer, private_server
from tickstream.db import connect
from tickstream.migrate import migrate
from tickstream.settings import DatabaseSettings, database_settings

pytest_plugins: list[str] = []

# Tests only ever talk to LocalStack on loopback; dummy credentials keep a developer's real AWS profile out of it.
for _name, _value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                      "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ[_name] = _value
# The exchange simulator listens on 127.0.0.1: the one host beyond the venues' official ones that the API accepts
# and the producer connects to (plain ws/http included), for every test and every process a test starts.
SIMULATOR_HOSTS = frozenset({"127.0.0.1"})
os.environ["EXCHANGE_HOST_ALLOWLIST"] = ",".join(SIMULATOR_HOSTS)


def _localstack_of_this_worker() -> None:
    """`make test` runs two pytest-xdist workers, each with its own session LocalStack: the configured port plus the
    worker's number, its state in a directory of the worker's name. Set here, before anything reads the settings,
    so every process a test starts (producer, demo, ...) gets the worker's LocalStack too."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    from infra.localstack_config import settings_from_env

    configured = settings_from_env()
    port = configured.port + int(worker.removeprefix("gw"))
    os.environ.update({"LOCALSTACK_PORT": str(port), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "TICKSTREAM_LOCALSTACK_DIR": str(configured.state_dir / worker)})


_localstack_of_this_worker()
# `make test` hands the workers a file at a time in collection order (`--dist loadfile --no-loadscope-reorder`):
# the longest files go first, so that neither worker is left with a long one at the end. From --durations of
# full runs, longest first; the other files follow in their usual order.
LONGEST_FILES_FIRST = ("test_drills.py", "test_sam_local.py", "test_bad_input.py", "test_producer.py",
                       "test_pipeline_e2e.py", "test_venue_okx.py", "test_api_limits.py", "test_deployment_checks.py",
                       "test_venue_binance_usdm.py", "test_make_demo.py", "test_console_browser.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept


@contextlib.contextmanager
def throwaway_database(server: DatabaseSettings) -> Iterator[DatabaseSettings]:
    """A fresh, migrated database on `server` (its host, port and credentials), dropped afterwards."""
    settings = DatabaseSettings(server.host, server.port, server.user, server.password,
                                f"tickstream_test_{uuid.uuid4().hex[:10]}")
    migrate(settings)
    yield settings
    conn = connect(settings, database=False, autocommit=True)
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{settings.name}`")
    conn.close()


@pytest.fixture(scope="session")
def db_settings() -> Iterator[DatabaseSettings]:
    """A fresh database on the real server named by DB_HOST/DB_PORT/DB_USER/DB_PASSWORD, dropped afterwards."""
    with throwaway_database(database_settings()) as settings:
        yield settings


@pytest.fixture(scope="session")
def own_mariadb() -> Iterator[MariaDBServer]:
    """A MariaDB server of this test process's own (started on first use), for the tests that stop the server or
    change its global settings: the other process of `make test` keeps using the shared one meanwhile."""
    with private_server() as server:
        yield server


@pytest.fixture(scope="session")
def own_db_settings(own_mariadb: MariaDBServer) -> Iterator[DatabaseSettings]:
    """As `db_settings`, on `own_mariadb`."""
    with throwaway_database(own_mariadb.root) as settings:
        yield settings


def database_env(settings: DatabaseSettings) -> dict[str, str]:
    """The environment a tickstream process needs to reach the database of `settings`."""
    return {
        "DB_HOST": settings.host,
        "DB_PORT": str(settings.port),
        "DB_USER": settings.user,
        "DB_PASSWORD": settings.password,
        "DB_NAME": settings.name,
    }


@pytest.fixture(scope="session")
def db_env(db_settings: DatabaseSettings) -> dict[str, str]:
    """The environment a tickstream process needs to reach the test database."""
    return database_env(db_settings)


def emptied_connection(settings: DatabaseSettings) -> Iterator[pymysql.Connection]:
    """An autocommit connection to the database of `settings`, every table emptied first; closed afterwards."""
    conn = connect(settings, autocommit=True)
    with conn.cursor() as cursor:
        for table in ("ticks", "tick_coverage", "tick_totals", "tick_lags", "tick_minutes", "gaps", "producer_status",
                      "jobs", "candles_1m"):
            cursor.execute(f"DELETE FROM {table}")
        cursor.execute("DELETE FROM scripts")
        cursor.execute("DELETE FROM brokers")
    yield conn
    with contextlib.suppress(pymysql.err.Error):  # a test may have closed it (e.g. before stopping MariaDB)
        conn.close()


@pytest.fixture
def db(db_settings: DatabaseSettings) -> Iterator[pymysql.Connection]:
    """An autocommit connection to an empty schema."""
    yield from emptied_connection(db_settings)


@pytest.fixture
def own_db(own_db_settings: DatabaseSettings) -> Iterator[pymysql.Connection]:
    """As `db`, on `own_mariadb`."""
    yield from emptied_connection(own_db_settings)


def make_broker(conn: pymysql.Connection, name: str = "Binance Test", api_config: str = "{}",
                broker_type: str = "binance") -> int:
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO brokers (type, name, api_config) VALUES (%s, %s, %s)",
                       (broker_type, name, api_config))
        return cursor.lastrowid


def make_script(conn: pymysql.Connection, broker_id: int, symbol: str, stream: str = "aggTrade") -> int:
    with conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO scripts (broker_id, name, trading_symbol, additional_data) VALUES (%s, %s, %s, %s)",
            (broker_id, symbol, symbol, f'{{"stream": "{stream}"}}'),
        )
        return cursor.lastrowid


def broker_of(conn: pymysql.Connection, script_id: int) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SELECT broker_id FROM scripts WHERE id = %s", (script_id,))
        return cursor.fetchone()[0]


def stored_ids(conn: pymysql.Connection, script_id: int) -> list[int]:
    """The script's stored trade ids, ascending."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT trade_id FROM ticks WHERE script_id = %s ORDER BY trade_id", (script_id,))
        return [int(row[0]) for row in cursor.fetchall()]


def stored_ticks(conn: pymysql.Connection, script_id: int) -> list[tuple]:
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT trade_id, CAST(price AS CHAR), CAST(quantity AS CHAR), is_buyer_maker,"
            " traded_at, event_at, received_at_producer FROM ticks WHERE script_id = %s ORDER BY trade_id",
            (script_id,),
        )
        return list(cursor.fetchall())


def tick_count(conn: pymysql.Connection) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM ticks")
        return cursor.fetchone()[0]


if os.environ.get("TICKSTREAM_LOCALSTACK_FIXTURES", "1") == "1" and os.path.exists(
    os.path.join(os.path.dirname(__file__), "localstack_fixtures.py")
):
    pytest_plugins.append("tests.localstack_fixtures")
