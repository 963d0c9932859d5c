"""The ticks queue and its dead-letter queue: approximate depths, and redriving the DLQ after an outage.

boto3 is imported inside the functions: `tickstream` is imported by the ingest Lambda too, whose cold start must not
pay for it (see the package docstring).

Redrive prefers SQS's own message move task (`StartMessageMoveTask`). Where the endpoint does not offer it, an
equivalent loop receives from the DLQ, sends copies to the queue and deletes from the DLQ only what was sent: a
failure at any step leaves the message in the DLQ (it reappears after the visibility timeout), never lost. A delete
that fails after a successful send leaves a second copy in the DLQ; the ingest is idempotent by trade id, so a later
redrive of that copy stores nothing twice.

What SQS says when it refuses (its messages name account ids, roles and ARNs) is logged here; the exceptions and
reasons this module hands out carry only the error code, since the API answers them to its clients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tickstream.aws_clients import client_errors, describe_error, error_code, sqs_client, sqs_message_bytes
from tickstream.settings import Settings, load_settings

log = logging.getLogger(__name__)

RedriveMethod = Literal["auto", "message_move_task", "receive_send_delete"]
# Error codes with which an endpoint says it has no message move tasks (or cannot run one from this queue).
_MOVE_TASK_UNSUPPORTED = {"UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation", "InvalidAction",
                          "NotImplemented", "NotImplementedException", "UnknownOperationException"}
# SendMessageBatch caps the whole request at 256 KiB; the loop groups messages to stay under it.
SEND_BATCH_BYTES = 256 * 1024
LOOP_VISIBILITY_SECONDS = 60
DEFAULT_TIME_BUDGET_SECONDS = 20.0  # an API call must answer well within API Gateway's 29 s
_DEPTH_ATTRIBUTES = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                     "ApproximateNumberOfMessagesDelayed"]


class RedriveError(Exception):
    """A redrive that could not start (not configured, queue unreachable, a move task already running)."""


class RedriveInProgress(RedriveError):
    """SQS allows one message move task per source queue at a time."""


@dataclass(frozen=True, slots=True)
class QueueDepth:
    visible: int | None
    in_flight: int | None
    delayed: int | None
    reason: str | None = None  # why the numbers are missing


@dataclass(frozen=True, slots=True)
class RedriveResult:
    method: str  # message_move_task | receive_send_delete
    moved: int
    failed: int  # messages that stayed in the DLQ because sending them failed
    complete: bool  # False: the time budget or max_messages ran out first, or sends failed; call again
    task_handle: str | None = None


# --- depth ---------------------------------------------------------------------------------------------------

def queue_depth(queue_url: str | None, *, client: Any = None, setting_name: str = "TICKS_QUEUE_URL") -> QueueDepth:
    """Approximate depth of one queue; numbers None with a reason if it is not configured or not reachable."""
    if not queue_url:
        return QueueDepth(None, None, None, f"{setting_name} is not set")
    client = client or sqs_client()
    try:
        attributes = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=_DEPTH_ATTRIBUTES)["Attributes"]
    except client_errors() as error:
        log.warning("%s: depth unavailable: %s", setting_name, describe_error(error))
        return QueueDepth(None, None, None, f"unreachable: {error_code(error)}")
    return QueueDepth(*(int(attributes.get(name, 0)) for name in _DEPTH_ATTRIBUTES))


def queue_depths(settings: Settings | None = None, *, client: Any = None) -> dict[str, QueueDepth]:
    """{"queue": depth of the ticks queue, "dlq": depth of its dead-letter queue}."""
    settings = settings or load_settings()
    if client is None and (settings.ticks_queue_url or settings.ticks_dlq_url):
        client = sqs_client(settings)
    return {
        "queue": queue_depth(settings.ticks_queue_url, client=client, setting_name="TICKS_QUEUE_URL"),
        "dlq": queue_depth(settings.ticks_dlq_url, client=client, setting_name="TICKS_DLQ_URL"),
    }


# --- redrive -------------------------------------------------------------------------------------------------

def redrive(settings: Settings | None = None, *, method: RedriveMethod = "auto", max_messages: int | None = None,
            time_budget: float = DEFAULT_TIME_BUDGET_SECONDS, client: Any = None) -> RedriveResult:
    """Move the DLQ's messages back to the ticks queue; returns how many moved.

    `auto` uses a message move task unless the endpoint lacks it (or `max_messages` asks for a bounded move,
    which tasks cannot do), then the receive → send → delete loop.
    """
    settings = settings or load_settings()
    if not settings.ticks_queue_url or not settings.ticks_dlq_url:
        raise RedriveError("TICKS_QUEUE_URL and TICKS_DLQ_URL must both be set")
    client = client or sqs_client(settings)
    deadline = time.monotonic() + time_budget
    if method == "message_move_task" or (method == "auto" and max_messages is None):
        try:
            return _run_move_task(client, settings.ticks_dlq_url, settings.ticks_queue_url, deadline)
        except _MoveTaskUnsupported as unsupported:
            if method == "message_move_task":
                raise RedriveError(f"the SQS endpoint cannot run a message move task ({unsupported})") from None
            log.info("message move task unavailable (%s); redriving with receive/send/delete", unsupported)
    return move_messages(client, settings.ticks_dlq_url, settings.ticks_queue_url,
                         max_messages=max_messages, deadline=deadline)


class _MoveTaskUnsupported(Exception):
    pass


def _queue_arn(client: Any, queue_url: str) -> str:
    return client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _run_move_task(client: Any, source_url: str, destination_url: str, deadline: float) -> RedriveResult:
    """Start a message move task and follow it until it ends or the time budget does."""
    try:
        source_arn, destination_arn = _queue_arn(client, source_url), _queue_arn(client, destination_url)
        handle = client.start_message_move_task(SourceArn=source_arn, DestinationArn=destination_arn)["TaskHandle"]
    except client_errors() as error:
        raise _start_error(error) from error
    while True:
        task = _latest_task(client, source_arn)
        moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
        status = task.get("Status", "RUNNING")
        if status != "RUNNING" or time.monotonic() >= deadline:
            complete = status == "COMPLETED"
            if status == "FAILED":
                log.warning("message move task failed: %s", task.get("FailureReason"))
            return RedriveResult("message_move_task", moved, 0, complete, handle)
        time.sleep(0.2)


def _start_error(error: Exception) -> Exception:
    code, text = error_code(error), describe_error(error)
    log.warning("StartMessageMoveTask refused: %s", text)
    if code in _MOVE_TASK_UNSUPPORTED or "Dead Letter Queue" in text:
        return _MoveTaskUnsupported(code)
    if "already a task running" in text or "task already" in text.lower():
        return RedriveInProgress("a message move task is already running from the DLQ; wait until it ends")
    return RedriveError(f"could not start a message move task ({code})")


def _latest_task(client: Any, source_arn: str) -> dict[str, Any]:
    try:
        results = client.list_message_move_tasks(SourceArn=source_arn, MaxResults=1).get("Results", [])
    except client_errors() as error:
        log.warning("could not follow the message move task: %s", describe_error(error))
        return {"Status": "UNKNOWN"}
    return results[0] if results else {"Status": "UNKNOWN"}


def move_messages(client: Any, source_url: str, destination_url: str, *, max_messages: int | None = None,
                  deadline: float | None = None) -> RedriveResult:
    """Receive → send → delete until the source is empty, `max_messages` moved, the deadline passes or a send fails.

    A message is deleted from the source only after its copy was accepted by the destination.
    """
    moved = failed = 0
    while max_messages is None or moved < max_messages:
        if deadline is not None and time.monotonic() >= deadline:
            return RedriveResult("receive_send_delete", moved, failed, False)
        wanted = 10 if max_messages is None else min(10, max_messages - moved)
        messages = _receive(client, source_url, wanted)
        if not messages:
            return RedriveResult("receive_send_delete", moved, failed, True)
        sent = _send_copies(client, destination_url, messages)
        _delete(client, source_url, sent)
        moved += len(sent)
        failed += len(messages) - len(sent)
        if len(sent) < len(messages):  # the destination refuses: stop rather than spin; the rest stays put
            return RedriveResult("receive_send_delete", moved, failed, False)
    return RedriveResult("receive_send_delete", moved, failed, False)


def _receive(client: Any, queue_url: str, count: int) -> list[dict[str, Any]]:
    # A 1 s long poll asks every SQS server: a short poll may answer empty while messages remain.
    response = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=count, WaitTimeSeconds=1,
                                      VisibilityTimeout=LOOP_VISIBILITY_SECONDS, MessageAttributeNames=["All"],
                                      MessageSystemAttributeNames=["MessageGroupId", "MessageDeduplicationId"])
    return response.get("Messages", [])


def _send_copies(client: Any, queue_url: str, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send copies of `messages`; returns those the destination accepted."""
    accepted: list[dict[str, Any]] = []
    for group in _size_bounded_groups(messages):
        entries = [_send_entry(str(index), message) for index, message in enumerate(group)]
        try:
            response = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
        except client_errors() as error:
            log.warning("redrive: sending %d message(s) failed: %s", len(group), describe_error(error))
            continue
        ok = {entry["Id"] for entry in response.get("Successful", [])}
        accepted.extend(message for index, message in enumerate(group) if str(index) in ok)
    return accepted


def _size_bounded_groups(messages: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    size = 0
    for message in messages:
        message_size = sqs_message_bytes(message)
        if group and size + message_size > SEND_BATCH_BYTES:
            yield group
            group, size = [], 0
        group.append(message)
        size += message_size
    if group:
        yield group


def _send_entry(entry_id: str, message: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"Id": entry_id, "MessageBody": message["Body"]}
    attributes = {name: _attribute(value) for name, value in message.get("MessageAttributes", {}).items()}
    if attributes:
        entry["MessageAttributes"] = attributes
    system = message.get("Attributes", {})
    if "MessageGroupId" in system:  # FIFO queues
        entry["MessageGroupId"] = system["MessageGroupId"]
        entry["MessageDeduplicationId"] = system.get("MessageDeduplicationId", message["MessageId"])
    return entry


def _attribute(value: dict[str, Any]) -> dict[str, Any]:
    # Received attributes carry empty list fields that SendMessage rejects; keep the type and the value only.
    return {key: value[key] for key in ("DataType", "StringValue", "BinaryValue") if key in value}


def _delete(client: Any, queue_url: str, messages: Sequence[dict[str, Any]]) -> None:
    for start in range(0, len(messages), 10):
        chunk = messages[start:start + 10]
        entries = [{"Id": str(index), "ReceiptHandle": m["ReceiptHandle"]} for index, m in enumerate(chunk)]
        try:
            response = client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
            failed = len(response.get("Failed", []))
        except client_errors() as error:
            log.warning("redrive: deleting %d moved message(s) failed: %s", len(chunk), describe_error(error))
            continue
        if failed:
            log.warning("redrive: %d moved message(s) stay in the DLQ too (a harmless duplicate later)", failed)


# --- dead letters of the ingest --------------------------------------------------------------------------------
