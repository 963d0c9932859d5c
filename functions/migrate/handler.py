"""CloudFormation custom resource: apply the schema migrations (migrations/, shipped in the layer) on deploy.

Create and Update migrate (idempotent: applied migrations are skipped); Delete does nothing — dropping a stack must
never drop the ticks. The result goes back to CloudFormation through the pre-signed ResponseURL.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from tickstream.migrate import migrate
from tickstream.settings import load_settings

log = logging.getLogger()
log.setLevel(logging.INFO)


def handler(event: dict[str, Any], context: Any) -> None:
    status, reason, applied = "SUCCESS", "", []
    try:
        if event["RequestType"] in ("Create", "Update"):
            applied = migrate(load_settings().db)
            log.info("applied %d migration(s): %s", len(applied), ", ".join(applied) or "none pending")
    except Exception as error:  # any failure must reach CloudFormation, or the stack waits for an hour
        log.exception("migration failed")
        status, reason = "FAILED", f"{type(error).__name__}: {error}"[:500]
    respond(event, context, status, reason, {"Applied": ",".join(applied)})


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
