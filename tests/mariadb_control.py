"""Stopping and starting a MariaDB server on this machine for outage tests, and a private server for them.

`make test` runs two test processes side by side (pytest-xdist): a test that stops the server, or changes one of
its global settings, does it to a server of its own process (`private_server`), never to the shared one on
DB_HOST/DB_PORT that the other process is using at that moment.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.api_fixtures import free_port
from tickstream.settings import DatabaseSettings

MARIADBD = "/usr/sbin/mariadbd"
# The options of the default server's configuration that say where it lives; a private server sets its own.
LOCATION_OPTIONS = frozenset({"socket", "pid-file", "datadir", "port", "log-error", "user", "basedir",
                              "bind-address"})


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


@dataclass(frozen=True)
class MariaDBServer:
    """A mariadbd on this machine: how to reach it as root (`root.name` unused) and how it is started."""

    root: DatabaseSettings
    pid_file: str
    arguments: tuple[str, ...] = ()  # mariadbd's command line (a private server: its --defaults-file)

    def stop(self) -> None:
        db = self.root
        subprocess.run(["mysqladmin", f"--host={db.host}", f"--port={db.port}", f"--user={db.user}",
                        *([f"--password={db.password}"] if db.password else []), "shutdown"], check=True)
        _wait(db, up=False)

    def start(self) -> None:
        # By its pid file: matched by executable alone, any other mariadbd on this machine (another port, another
        # datadir) reads as "already running" and this server would stay down.
        subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--pidfile", self.pid_file,
                        "--exec", MARIADBD, "--", *self.arguments], check=True)
        _wait(self.root, up=True)


def _default_options() -> list[str]:
    """The default server's options, as its configuration files give them (`--name=value`)."""
    printed = subprocess.run([MARIADBD, "--print-defaults"], capture_output=True, text=True, check=True).stdout
    return [arg for arg in printed.split() if arg.startswith("--")]


def default_server(db: DatabaseSettings) -> MariaDBServer:
    """The machine's own server (the one `make test` starts), reached through `db`."""
    named = [arg.split("=", 1)[1] for arg in _default_options() if arg.startswith("--pid-file=")]
    return MariaDBServer(db, named[-1] if named else "/run/mysqld/mysqld.pid")


def private_config(directory: Path, port: int) -> str:
    """The default server's configuration (character set, name resolution, ...) with a place of its own: datadir,
    socket, pid file and log under `directory`, `port` on loopback, run as the current user."""
    kept = [arg[2:] for arg in _default_options() if arg[2:].split("=", 1)[0] not in LOCATION_OPTIONS]
    own = [f"datadir={directory / 'data'}", f"socket={directory / 'mysqld.sock'}",
           f"pid-file={directory / 'mysqld.pid'}", f"log-error={directory / 'error.log'}", f"port={port}",
           "bind-address=127.0.0.1", f"user={getpass.getuser()}"]
    return "[mariadbd]\n" + "\n".join([*kept, *own]) + "\n"


@contextlib.contextmanager
def private_server() -> Iterator[MariaDBServer]:
    """A mariadbd of its own on a free loopback port, root without a password, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="tsdb-", dir="/tmp"))  # short: the socket path has ≤ 107 bytes
    try:
        config, port = directory / "my.cnf", free_port()
        config.write_text(private_config(directory, port))
        with (directory / "install.log").open("wb") as log:
            subprocess.run(["mariadb-install-db", f"--defaults-file={config}", "--skip-test-db",
                            "--auth-root-authentication-method=normal"], stdout=log, stderr=subprocess.STDOUT,
                           check=True)
        server = MariaDBServer(DatabaseSettings("127.0.0.1", port, "root", "", ""), str(directory / "mysqld.pid"),
                               (f"--defaults-file={config}",))
        server.start()
        try:
            yield server
        finally:
            if answers(server.root):
                server.stop()
            _wait_removed(Path(server.pid_file))  # removed last: the server is gone, its datadir can go
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_removed(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


@contextlib.contextmanager
def mariadb_stopped(server: MariaDBServer) -> Iterator[None]:
    if server.root.host not in ("127.0.0.1", "localhost"):
        raise RuntimeError("outage tests only stop a MariaDB on this machine")
    server.stop()
    try:
        yield
    finally:
        server.start()
