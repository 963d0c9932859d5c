"""Real SQS-shaped Lambda events and contexts for invoking handlers in-process."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

QUEUE_ARN = "arn:aws:sqs:us-east-1:000000000000:tickstream-ticks"


def sqs_record(body: str, message_id: str | None = None, receive_count: int = 1) -> dict:
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": uuid.uuid4().hex,
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": "1700000000000",
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": "1700000000001",
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "us-east-1",
    }


def sqs_event(*records: dict) -> dict:
    return {"Records": list(records)}


@dataclass
class FakeLambdaContext:
    """What the Lambda runtime passes as `context` (AWS itself cannot run here)."""

    function_name: str = "tickstream-ingest"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:tickstream-ingest"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 30_000
