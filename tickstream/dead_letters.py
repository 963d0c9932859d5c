"""Dead letters the ingest writes itself: a body's invalid rows, as messages of their own on the DLQ, so one bad row
never holds back its neighbours. A module apart from `tickstream.queues` (the API's redrive), so the ingest's import
closure holds only the one SQS call it makes (infra/iam_check.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from tickstream.aws_clients import client_errors, describe_error, sqs_client, sqs_message_bytes
from tickstream.codec import InvalidRow, SplitMessage
from tickstream.settings import Settings, load_settings

# One dead letter, body and attributes: SQS's classic message limit (LocalStack's default; AWS allows 1 MiB).
DEAD_LETTER_BYTES = 256 * 1024
SOURCE_MESSAGE_ID = "tickstream.source_message_id"
INVALID_ROWS = "tickstream.invalid_rows"  # JSON [[row, "field"], ...]: each row of the body, in order
REASON = "tickstream.reason"  # the first row's problem, for people


class DeadLetterError(RuntimeError):
    """Invalid rows that could not be sent to the DLQ: the record must fail (and be retried) rather than lose them."""


def send_invalid_rows(split: SplitMessage, source_message_id: str, *, settings: Settings | None = None,
                      client: Any = None) -> int:
    """Send a body's invalid rows to the DLQ as messages of their own (a body of the same version holding only
    those rows, and attributes naming each row and field); returns how many messages. Raises DeadLetterError if
    any send fails or no DLQ is configured."""
    settings = settings or load_settings()
    if not settings.ticks_dlq_url:
        raise DeadLetterError("TICKS_DLQ_URL is not set: invalid rows cannot be dead-lettered")
    client = client or sqs_client(settings)
    letters = list(_dead_letters(split, source_message_id, split.invalid))
    for body, attributes in letters:
        try:
            client.send_message(QueueUrl=settings.ticks_dlq_url, MessageBody=body, MessageAttributes=attributes)
        except client_errors() as error:
            raise DeadLetterError(f"sending invalid rows to the DLQ failed: {describe_error(error)}") from error
    return len(letters)


def _dead_letters(split: SplitMessage, source_message_id: str,
                  rows: Sequence[InvalidRow]) -> Iterator[tuple[str, dict[str, dict[str, str]]]]:
    """(body, attributes) of each dead letter: all the rows in one, or halves until each fits DEAD_LETTER_BYTES."""
    body = split.body_of(rows)
    first = rows[0]
    attributes = {
        SOURCE_MESSAGE_ID: {"DataType": "String", "StringValue": source_message_id},
        INVALID_ROWS: {"DataType": "String",
                       "StringValue": orjson.dumps([[row.index, row.field] for row in rows]).decode()},
        REASON: {"DataType": "String", "StringValue": f"tick {first.index}: {first.reason}"},
    }
    if len(rows) > 1 and sqs_message_bytes({"Body": body, "MessageAttributes": attributes}) > DEAD_LETTER_BYTES:
        half = len(rows) // 2
        yield from _dead_letters(split, source_message_id, rows[:half])
        yield from _dead_letters(split, source_message_id, rows[half:])
        return
    yield body, attributes
