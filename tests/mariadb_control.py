"""Stopping and starting the local MariaDB server for outage tests (only the loopback server we run here)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

from tickstream.settings import DatabaseSettings


def answers(db: DatabaseSettings) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((db.host, db.port), timeout=0.5):
        return True
    return False


def _wait(db: DatabaseSettings, up: bool, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while answers(db) != up:
        if time.monotonic() > deadline:
            raise TimeoutError(f"MariaDB did not {'start' if up else 'stop'} within {timeout:.0f} s")
        time.sleep(0.2)


def stop_mariadb(db: DatabaseSettings) -> None:
    subprocess.run(["mysqladmin", f"--host={db.host}", f"--port={db.port}", f"--user={db.user}",
                    *([f"--password={db.password}"] if db.password else []), "shutdown"], check=True)
    _wait(db, up=False)


def start_mariadb(db: DatabaseSettings) -> None:
    # By its pid file: matched by executable alone, any other mariadbd on this machine (another port, another
    # datadir) reads as "already running" and this server would stay down.
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--pidfile", _pid_file(),
                    "--exec", MARIADBD], check=True)
    _wait(db, up=True)


MARIADBD = "/usr/sbin/mariadbd"


def _pid_file() -> str:
    """The default server's pid file, as its configuration names it."""
    defaults = subprocess.run([MARIADBD, "--print-defaults"], capture_output=True, text=True, check=True).stdout
    named = [arg.split("=", 1)[1] for arg in defaults.split() if arg.startswith("--pid-file=")]
    return named[-1] if named else "/run/mysqld/mysqld.pid"


@contextlib.contextmanager
def mariadb_stopped(db: DatabaseSettings) -> Iterator[None]:
    if db.host not in ("127.0.0.1", "localhost"):
        raise RuntimeError("outage tests only stop a MariaDB on this machine")
    stop_mariadb(db)
    try:
        yield
    finally:
        start_mariadb(db)
