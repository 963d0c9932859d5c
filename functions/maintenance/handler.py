"""Maintenance Lambda: background jobs on the ticks table, apart from the ingest and the API.

Two triggers (template.yaml): the jobs queue, whose messages name a job (a script's purge) for it to run now, and
a schedule, on which it runs retention (TICK_RETENTION_DAYS, if set) and resumes every unfinished job (a wake-up
message lost, a run killed). Work is chunked and committed with its cursor (tickstream.jobs), so being stopped at
any moment costs one chunk. A run stops a margin before the function's timeout and sends the job's wake-up message
again, so a purge longer than one invocation goes on in the next.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pymysql

from tickstream import coverage, job_queue, jobs
from tickstream.db import CONNECTION_ERRORS, connect
from tickstream.settings import load_settings

log = logging.getLogger()
log.setLevel(logging.INFO)
STOP_MARGIN_MS = 15_000  # a chunk takes well under a second; the rest is for the wake-up message and the reply
_conn: pymysql.Connection | None = None


def connection() -> pymysql.Connection:
    """One connection per container; READ COMMITTED, so a chunk's delete locks the rows it deletes and not the
    gaps around them (where the ingest inserts)."""
    global _conn
    if _conn is not None:
        try:
            _conn.ping(reconnect=False)
        except pymysql.err.Error:  # the server restarted, or a failed run closed it
            forget_connection()
    if _conn is None:
        _conn = connect(load_settings().db, autocommit=True)
        with _conn.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    return _conn


def forget_connection() -> None:
    global _conn
    conn, _conn = _conn, None
    if conn is not None:
        with contextlib.suppress(pymysql.err.Error):
            conn.close()


def _deadline(context: Any) -> Any:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return lambda: False
    return lambda: remaining() < STOP_MARGIN_MS


def run(job_id: int, context: Any) -> jobs.RunResult:
    settings = load_settings()
    try:
        result = jobs.run_job(connection(), job_id, retention_days=settings.tick_retention_days,
                              should_stop=_deadline(context))
    except CONNECTION_ERRORS:
        forget_connection()  # the next run connects afresh and goes on from the job's cursor
        raise
    log.info("job %s: %s, %d rows deleted in this run", job_id, "done" if result.done else "to be continued",
             result.rows_deleted)
    if not result.done:
        job_queue.wake(job_id, settings)
    return result


def scheduled(context: Any) -> dict[str, Any]:
    """The scripts' totals recounted where they drifted (a deploy's older ingest keeps none; O(coverage rows)), then
    retention (it may need the whole run), then whatever job is unfinished."""
    settings = load_settings()
    conn = connection()
    corrected = coverage.recount_totals(conn)
    if corrected:
        log.warning("tick_totals: recounted %d scripts whose totals differed from their coverage", corrected)
    if settings.tick_retention_days is not None:
        jobs.create_retention_job(conn)
    ran = []
    for job_id in jobs.unfinished_jobs(conn):
        if _deadline(context)():
            break
        ran.append(run(job_id, context).job_id)
    return {"jobs": ran, "totals_corrected": corrected}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "Records" not in event:  # the schedule (an EventBridge event)
        return scheduled(context)
    failures = []
    for record in event["Records"]:
        job_id = job_queue.job_id_of(record.get("body", ""))
        if job_id is None:
            log.warning("dropped a jobs-queue message that names no job: %r", record.get("body", "")[:200])
            continue
        try:
            run(job_id, context)
        except Exception:  # logged by run_job; the message comes back after the visibility timeout
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
