"""Apply the SQL migrations in `migrations/` with yoyo (applying twice is a no-op).

`python -m tickstream.migrate` creates the database named by DB_NAME if it is missing, then migrates it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import quote, urlencode

from yoyo import get_backend, read_migrations

from tickstream.db import connect, tls_arguments
from tickstream.settings import DatabaseSettings, database_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


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


def migrate(db: DatabaseSettings, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Create the database if needed and apply pending migrations; returns the ids applied."""
    create_database(db)
    backend = get_backend(backend_url(db))
    migrations = read_migrations(str(migrations_dir))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [migration.id for migration in pending]


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    db = database_settings()
    applied = migrate(db)
    print(f"{db.name}: applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")


if __name__ == "__main__":
    main()
