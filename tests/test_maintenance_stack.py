"""A script's purge through the deployed stack: the API behind LocalStack's API Gateway answers 202 with a job, the
jobs queue wakes MaintenanceFunction (run by the local executor), the job survives its function being killed
mid-way (a scheduled run resumes it from the cursor) and the ingest of another script goes on meanwhile."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pymysql
import pytest
import requests

from tests.conftest import make_broker, make_script
from tests.localstack_fixtures import TEST_API_TOKEN
from tests.producer_harness import wait_for
from tests.test_jobs import NOW, add_ticks, scalar
from tests.test_pipeline_e2e import send, ticks
from tickstream.codec import pack_ticks

pytestmark = pytest.mark.localstack
AUTH = {"Authorization": f"Bearer {TEST_API_TOKEN}"}
PURGED_ROWS = 400_000


def maintenance_processes(db_name: str) -> list[int]:
    """Host processes of the local executor running MaintenanceFunction against this test's database."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"bootstrap.py" in cmdline and b"TICK_RETENTION_DAYS=0" in environ
                and f"DB_NAME={db_name}".encode() in environ):
            found.append(int(proc.name))
    return found


def job_state(db: pymysql.Connection, job_id: int) -> tuple[str, int]:
    with db.cursor() as cursor:
        cursor.execute("SELECT state, rows_deleted FROM jobs WHERE id = %s", (job_id,))
        return cursor.fetchone()


def test_purge_runs_in_the_background_survives_a_kill_and_never_stalls_the_ingest(
        localstack: Any, tickstream_stack: dict[str, str], aws: Any, db: pymysql.Connection,
        db_env: dict[str, str]) -> None:
    api = f"{localstack.endpoint_url}/_aws/execute-api/{tickstream_stack['ApiId']}/api"
    broker = make_broker(db)
    doomed, collecting = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "ETHUSDT")
    add_ticks(db, doomed, 1, PURGED_ROWS, NOW, 1000)

    refused = requests.delete(f"{api}/scripts/{doomed}?purge=true", headers=AUTH, timeout=30)
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "script_active")
    assert requests.patch(f"{api}/scripts/{doomed}", json={"is_active": False}, headers=AUTH,
                          timeout=30).status_code == 200

    # The other script's ticks keep arriving through the ticks queue, a message every 50 ms.
    bodies = list(pack_ticks(ticks(collecting, range(1, 20_001)), max_bytes=4096))
    sender = threading.Thread(target=lambda: [send(aws, tickstream_stack["TicksQueueUrl"], [body]) or time.sleep(0.05)
                                              for body in bodies], daemon=True)
    sender.start()
    accepted = requests.delete(f"{api}/scripts/{doomed}?purge=true", headers=AUTH, timeout=30)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert accepted.headers["Location"] == f"/jobs/{job_id}"

    # Kill the function mid-way (a crash, a timeout, a redeploy): the committed chunks and the cursor stay.
    assert wait_for(lambda: job_state(db, job_id)[1] >= 20_000, timeout=120), job_state(db, job_id)
    pids = maintenance_processes(db_env["DB_NAME"])
    assert pids, "MaintenanceFunction's process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    state, deleted = job_state(db, job_id)
    assert state == "running" and 0 < deleted < PURGED_ROWS
    assert scalar(db, "SELECT COUNT(*) FROM ticks WHERE script_id = %s", (doomed,)) == PURGED_ROWS - deleted
    time.sleep(2)  # killed: nothing moves (the message is invisible for the queue's visibility timeout)
    polled = requests.get(f"{api}/jobs/{job_id}", headers=AUTH, timeout=30).json()
    assert (polled["state"], polled["rows_deleted"]) == ("running", deleted)

    # The scheduled run (on AWS every hour; here invoked by hand, LocalStack community has no EventBridge).
    function = aws("cloudformation").describe_stack_resource(
        StackName="tickstream-test", LogicalResourceId="MaintenanceFunction")["StackResourceDetail"]
    response = aws("lambda").invoke(FunctionName=function["PhysicalResourceId"], Payload=b"{}")
    assert "FunctionError" not in response, response["Payload"].read()

    def finished() -> bool:
        return requests.get(f"{api}/jobs/{job_id}", headers=AUTH, timeout=30).json()["state"] == "done"

    assert wait_for(finished, timeout=120)
    final = requests.get(f"{api}/jobs/{job_id}", headers=AUTH, timeout=30).json()
    assert final["rows_deleted"] == PURGED_ROWS and final["finished_at"] is not None
    assert requests.get(f"{api}/scripts/{doomed}", headers=AUTH, timeout=30).status_code == 404
    assert scalar(db, "SELECT COUNT(*) FROM ticks WHERE script_id = %s", (doomed,)) == 0

    sender.join(timeout=120)
    assert wait_for(lambda: scalar(db, "SELECT COUNT(*) FROM ticks WHERE script_id = %s", (collecting,)) == 20_000,
                    timeout=60)
    stored_while_purging = scalar(db, "SELECT COUNT(*) FROM ticks t JOIN jobs j ON j.id = %s WHERE t.script_id = %s"
                                      " AND t.stored_at BETWEEN j.created_at AND j.finished_at", (job_id, collecting))
    assert stored_while_purging > 0  # the ingest went on storing the other script's ticks while the purge ran
