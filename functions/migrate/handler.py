"""CloudFormation custom resource: apply the schema migrations (migrations/, shipped in the layer) on deploy.

Create and Update migrate (idempotent: applied migrations are skipped); Delete does nothing — dropping a stack must
never drop the ticks. The result goes back to CloudFormation through the pre-signed ResponseURL.

A long migration (0007's populate of a big table) stops STOP_MARGIN_MS before the function's timeout, between two
committed chunks, with the old schema still whole, and the deploy FAILS with a reason that says so: CloudFormation
rolls the stack back to the code that reads the old schema, never on to code that would read a half-filled one.
Deploying again continues from the kept progress; a table beyond one invocation's reach is migrated from a host
with `python -m tickstream.migrate` (no time limit), after which the deploy finds nothing pending.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable
from typing import Any

from tickstream.migrate import MigrationPaused, migrate
from tickstream.settings import load_settings

log = logging.getLogger()
log.setLevel(logging.INFO)
STOP_MARGIN_MS = 60_000  # one chunk (a script's day of trades), the old index's drop and the reply fit in it


def handler(event: dict[str, Any], context: Any) -> None:
    status, reason, applied = "SUCCESS", "", []
    try:
        if event["RequestType"] in ("Create", "Update"):
            applied = migrate(load_settings().db, should_stop=deadline(context))
            log.info("applied %d migration(s): %s", len(applied), ", ".join(applied) or "none pending")
    except MigrationPaused as paused:
        log.warning("%s", paused)
        status, reason = "FAILED", (f"{paused}. The old schema is intact; deploy again to go on, or run `python -m "
                                    "tickstream.migrate` from a host for a table too big for one invocation")[:500]
    except Exception as error:  # any failure must reach CloudFormation, or the stack waits for an hour
        log.exception("migration failed")
        status, reason = "FAILED", f"{type(error).__name__}: {error}"[:500]
    respond(event, context, status, reason, {"Applied": ",".join(applied)})


def deadline(context: Any) -> Callable[[], bool]:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return lambda: False
    return lambda: remaining() < STOP_MARGIN_MS


def respond(event: dict[str, Any], context: Any, status: str, reason: str, data: dict[str, str]) -> None:
    body = json.dumps({
        "Status": status,
        "Reason": reason or f"see CloudWatch Logs stream {context.log_stream_name}",
        "PhysicalResourceId": event.get("PhysicalResourceId") or "tickstream-schema",
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
        "Data": data,
    }).encode()
    request = urllib.request.Request(event["ResponseURL"], data=body, method="PUT",
                                     headers={"Content-Type": "", "Content-Length": str(len(body))})
    with urllib.request.urlopen(request, timeout=30) as response:
        log.info("CloudFormation answered %s", response.status)
