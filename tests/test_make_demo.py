"""`make demo`'s entry point end to end: the README's one-command pipeline must start, collect and stop cleanly."""

from __future__ import annotations

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

pytestmark = pytest.mark.localstack
COUNT_LINE = re.compile(rb"BTCUSDT: ([\d,]+) ticks")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_collects_ticks_and_stops_on_sigterm(db_env: dict[str, str], tmp_path: Path) -> None:
    localstack_port = free_port()
    env = {**os.environ, **db_env, "DB_NAME": f"tickstream_demo_{uuid.uuid4().hex[:8]}",
           "LOCALSTACK_PORT": str(localstack_port), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{localstack_port}",
           "TICKSTREAM_LOCALSTACK_DIR": str(tmp_path / "localstack"), "API_PORT": str(free_port()),
           "SIMULATOR_PORT": str(free_port()), "API_TOKEN": "demo-test-token",
           "PRODUCER_JOURNAL_DIR": str(tmp_path / "journal")}
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        demo = subprocess.Popen([sys.executable, "-m", "infra.up", "--demo"], env=env, cwd=REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        counts: list[int] = []
        while time.monotonic() < deadline and len(counts) < 2:
            counts = [int(n.replace(b",", b"")) for n in COUNT_LINE.findall(log_path.read_bytes())]
            counts = [n for n in counts if n > 0]
            assert demo.poll() is None, log_path.read_text()[-3000:]
            time.sleep(1)
        assert len(counts) >= 2 and counts[-1] >= counts[0], log_path.read_text()[-3000:]
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
        _drop_database(env["DB_NAME"])
    output = log_path.read_bytes()
    assert b"created script PEPEUSDT through the API" in output
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
