"""`make demo`'s entry point end to end: the README's one-command pipeline must start, collect from a broker of every
registered type (one simulator process, a port per venue) and stop cleanly."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from infra.localstack_config import REPO_ROOT
from producer_service.exchanges.registry import ADAPTERS

pytestmark = pytest.mark.localstack
COUNT_LINE = re.compile(r"tick count by symbol — (.*) \| queue")
COUNT = re.compile(r"(\w+) (\S+): ([\d,]+) ticks")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (the demo's simulator takes one per venue from there)."""
    for _ in range(50):
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports")


def counts_by_type(rows: str) -> dict[str, list[int]]:
    """A count line's rows → broker type → its symbols' tick counts ("binance_usdm BTCUSDT: 1,245 ticks (…)")."""
    counts: dict[str, list[int]] = {}
    for row in rows.split("; "):
        if match := COUNT.match(row):
            counts.setdefault(match[1], []).append(int(match[3].replace(",", "")))
    return counts


def collecting_types(log: str) -> list[set[str]]:
    """Per count line so far, the broker types all of whose symbols have ticks."""
    return [{t for t, counts in counts_by_type(rows).items() if min(counts) > 0} for rows in COUNT_LINE.findall(log)]


def test_demo_collects_ticks_and_stops_on_sigterm(db_env: dict[str, str], tmp_path: Path) -> None:
    localstack_port = free_port()
    env = {**os.environ, **db_env, "DB_NAME": f"tickstream_demo_{uuid.uuid4().hex[:8]}",
           "LOCALSTACK_PORT": str(localstack_port), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{localstack_port}",
           "TICKSTREAM_LOCALSTACK_DIR": str(tmp_path / "localstack"), "API_PORT": str(free_port()),
           "SIMULATOR_PORT": str(free_ports(len(ADAPTERS))), "API_TOKEN": "demo-test-token",
           "PRODUCER_JOURNAL_DIR": str(tmp_path / "journal")}
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        demo = subprocess.Popen([sys.executable, "-m", "infra.up", "--demo"], env=env, cwd=REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240  # the deploy takes most of it on a busy machine
        every_type = set(ADAPTERS)
        complete: list[set[str]] = []
        while time.monotonic() < deadline and len(complete) < 2:
            lines = collecting_types(log_path.read_text(errors="replace"))
            complete = [types for types in lines if types == every_type]
            assert demo.poll() is None, log_path.read_text()[-3000:]
            time.sleep(1)
        assert len(complete) >= 2, f"not every broker type collects: {every_type}\n{log_path.read_text()[-3000:]}"
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0
    finally:
        if demo.poll() is None:  # a failed assertion: SIGTERM first, or the LocalStack it started outlives it
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.kill()
        _drop_database(env["DB_NAME"])
    output = log_path.read_bytes()
    for broker_type in ADAPTERS:  # PEPEUSDT in the venue's spelling (OKX: PEPE-USDT)
        assert re.search(rf"created {broker_type} script PEPE-?USDT through the API".encode(), output), broker_type
    assert b"web console on http://127.0.0.1:" in output
    assert b"stopping LocalStack" in output
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", localstack_port), timeout=1).close()


def _drop_database(name: str) -> None:
    from tickstream.db import connect
    from tickstream.settings import database_settings

    conn = connect(database_settings(), database=False, autocommit=True)
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()
