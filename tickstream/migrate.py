"""Apply the migrations in `migrations/` with yoyo (applying twice is a no-op).

`python -m tickstream.migrate` creates the database named by DB_NAME if it is missing, then migrates it. A
migration that does long work (0007's populate) commits it in chunks with its own cursor and asks
`stop_requested()` before each chunk: a caller with a deadline (MigrateFunction) passes `should_stop`, and the
migration then raises `MigrationPaused`, leaving the schema as it was before it (plus its committed progress) for
the next run to continue. The host command has no deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pymysql
from yoyo import get_backend, read_migrations

from tickstream.db import connect, tls_arguments
from tickstream.settings import DatabaseSettings, database_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
LOCK_WAIT_SECONDS = 10  # yoyo's own default: a second migrator gives up soon and says why
_should_stop: contextvars.ContextVar[Callable[[], bool]] = contextvars.ContextVar(
    "tickstream_migrate_should_stop", default=lambda: False)


class MigrationPaused(Exception):
    """A migration stopped at its caller's deadline between two committed chunks; run migrate again."""


class MigrationLocked(Exception):
    """Another migrate holds this database's migration lock."""


def stop_requested() -> bool:
    """Whether the caller of `migrate` wants the running migration to stop now (its deadline is near)."""
    return _should_stop.get()()


def create_database(db: DatabaseSettings) -> None:
    conn = connect(db, database=False, autocommit=True)
    try:
        with conn.cursor() as cursor:
            quoted = db.name.replace("`", "``")
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{quoted}` CHARACTER SET utf8mb4")
    finally:
        conn.close()


def backend_url(db: DatabaseSettings) -> str:
    credentials = quote(db.user, safe="") + (":" + quote(db.password, safe="") if db.password else "")
    return f"mysql://{credentials}@{db.host}:{db.port}/{quote(db.name, safe='')}{_tls_query(db)}"


def _tls_query(db: DatabaseSettings) -> str:
    """The TLS of tickstream.db.tls_arguments for yoyo, which passes the URL's query arguments on to
    pymysql.connect as strings (pymysql reads any non-empty string as true, hence no "false" values)."""
    tls = {name: str(value) for name, value in tls_arguments(db).items() if value}
    return "?" + urlencode(tls) if tls else ""


def migration_ids(migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Every migration's id (SQL and Python ones), in the order yoyo applies them to an empty database."""
    return [migration.id for migration in read_migrations(str(migrations_dir))]


@contextlib.contextmanager
def migration_lock(db: DatabaseSettings) -> Iterator[None]:
    """This database's migration lock: a server lock held by a session of its own, so a migrate killed in any way
    (kill -9, a Lambda timeout) releases it with its connection. yoyo's own lock is a row that such a kill leaves
    behind (every later run would time out on it); holding the server lock proves that row stale, so it is
    cleared. Every migrate of this project goes through here."""
    conn = connect(db, autocommit=True)
    name = "tickstream.migrate." + hashlib.sha256(db.name.encode()).hexdigest()[:32]  # ≤ 64 characters
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, %s)", (name, LOCK_WAIT_SECONDS))
            if cursor.fetchone()[0] != 1:
                raise MigrationLocked(f"another migrate of {db.name} is running (server lock {name})")
        yield
    finally:
        with contextlib.suppress(pymysql.err.Error):
            conn.close()  # releases the server lock


def migrate(db: DatabaseSettings, migrations_dir: Path = MIGRATIONS_DIR,
            should_stop: Callable[[], bool] = lambda: False, before: str | None = None) -> list[str]:
    """Create the database if needed and apply pending migrations (only those with ids below `before`, if given:
    an older schema, for tests and benches); returns the ids applied. Raises MigrationPaused when `should_stop`
    said so during a long migration (the ones before it stay applied)."""
    create_database(db)
    with migration_lock(db):
        backend = get_backend(backend_url(db))
        backend.break_lock()  # a row left by a killed run: no live migrate holds it (we hold the server lock)
        migrations = read_migrations(str(migrations_dir))
        if before is not None:
            migrations = migrations.filter(lambda migration: migration.id < before)
        token = _should_stop.set(should_stop)
        try:
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
        finally:
            _should_stop.reset(token)
            backend.connection.close()
    return [migration.id for migration in pending]


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("yoyo").setLevel(logging.WARNING)
    db = database_settings()
    applied = migrate(db)
    print(f"{db.name}: applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")


if __name__ == "__main__":
    main()
