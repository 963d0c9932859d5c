"""Routes that hand work to the maintenance function: a script's or a broker's purge (202 and a job to poll) and
the job itself.

The work is in `tickstream.jobs`; this module maps it onto the API's answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import pymysql

from chalicelib.errors import conflict, not_found
from chalicelib.models import Deleted, JobOut
from chalicelib.service import database
from tickstream import catalog, job_queue, jobs


def job_out(job: jobs.Job) -> JobOut:
    return JobOut(**dataclasses.asdict(job))


def get_job(job_id: int) -> JobOut:
    with database.connection() as conn:
        job = jobs.get_job(conn, job_id)
    if job is None:
        raise not_found(f"no job with id {job_id}")
    return job_out(job)


def purge_script(script_id: int) -> tuple[int, Deleted | JobOut]:
    """A script without ticks is deleted at once (200); one with ticks must be inactive (409 otherwise: the
    producer would keep adding what the purge deletes) and is purged in the background (202, a job)."""
    with database.connection() as conn:
        if catalog.get_script(conn, script_id) is None:
            raise not_found(f"no script with id {script_id}")
        if not catalog.script_has_ticks(conn, script_id):
            with contextlib.suppress(catalog.InUse):  # ticks arrived meanwhile: purge them as below
                if catalog.delete_script(conn, script_id) is None:
                    raise not_found(f"no script with id {script_id}")
                return 200, Deleted(id=script_id, scripts_deleted=1, ticks_deleted=0)
        job = _queue(jobs.create_purge_job, conn, "script", script_id)
    return _accepted(job)


def purge_broker(broker_id: int) -> tuple[int, Deleted | JobOut]:
    """A broker without scripts is deleted at once (200); one with scripts must be inactive (409 otherwise) and
    is purged in the background (202, a job): each of its scripts with its ticks, then the broker."""
    with database.connection() as conn:
        with contextlib.suppress(catalog.InUse):  # it has scripts (or one was added meanwhile): purge as below
            if catalog.delete_broker(conn, broker_id) is None:
                raise not_found(f"no broker with id {broker_id}")
            return 200, Deleted(id=broker_id, scripts_deleted=0, ticks_deleted=0)
        job = _queue(jobs.create_broker_purge_job, conn, "broker", broker_id)
    return _accepted(job)


def _queue(create: Callable[[pymysql.Connection, int], jobs.Job | None], conn: pymysql.Connection, what: str,
           owner_id: int) -> jobs.Job:
    """The purge job of a script or broker (`what`): 409 while it is active (the producer would keep adding what
    the purge deletes), 404 if it is gone."""
    try:
        job = create(conn, owner_id)
    except jobs.NotInactive:
        raise conflict(f"{what}_active", f"{what} {owner_id} is active: deactivate it first (PATCH is_active:"
                                         " false), then purge") from None
    if job is None:
        raise not_found(f"no {what} with id {owner_id}")
    return job


def _accepted(job: jobs.Job) -> tuple[int, JobOut]:
    job_queue.wake(job.id)  # outside the database lock: SQS may be slow to answer
    return 202, job_out(job)
