"""Handing a background job to the maintenance function: one small SQS message naming the job, on the jobs queue.

The job itself lives in MySQL (`jobs`, with its cursor); the message is only a wake-up call. A message lost or
never sent delays the job until the maintenance function's next scheduled run, which resumes every unfinished
job: nothing depends on the message arriving exactly once. A module of its own, so each runtime's import closure
holds only the SQS calls it makes (infra/iam_check.py).
"""

from __future__ import annotations

import json
import logging

from tickstream.aws_clients import client_errors, describe_error, sqs_client
from tickstream.settings import Settings, load_settings

log = logging.getLogger(__name__)


def job_message(job_id: int) -> str:
    return json.dumps({"job_id": job_id})


def job_id_of(body: str) -> int | None:
    """The job a message names, or None for anything else (logged and dropped by the caller)."""
    try:
        value = json.loads(body).get("job_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def wake(job_id: int, settings: Settings | None = None) -> bool:
    """Send the job's wake-up message; False (logged) when no queue is configured or SQS refused: the scheduled
    run picks the job up then."""
    settings = settings or load_settings()
    if not settings.jobs_queue_url:
        log.warning("JOBS_QUEUE_URL is not set: job %s waits for the maintenance function's scheduled run", job_id)
        return False
    try:
        sqs_client(settings).send_message(QueueUrl=settings.jobs_queue_url, MessageBody=job_message(job_id))
    except client_errors() as error:
        log.warning("job %s: wake-up message not sent (%s); the scheduled run will pick it up", job_id,
                    describe_error(error))
        return False
    return True
