"""Ingest Lambda: SQS batches of packed ticks → MySQL, reporting partial batch failures.

Thin on purpose: decode and validate each record (a bad record fails alone and, after the queue's
maxReceiveCount, lands in the DLQ), then store all valid ticks of the batch in one idempotent bulk write. If MySQL
is unreachable the invocation raises, so SQS keeps the whole batch: nothing is acknowledged that was not committed.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from tickstream.codec import InvalidMessage, decode_message
from tickstream.ingest import TickIngestor
from tickstream.settings import load_settings
from tickstream.ticks import Tick

logger = Logger(service="ingest")
metrics = Metrics(namespace="tickstream", service="ingest")
# All records failing is reported per record too (not raised), so poison messages still reach the DLQ one by one.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
ingestor = TickIngestor(load_settings().db)  # connects lazily; the connection outlives invocations
BODY_SAMPLE_CHARS = 300


def decode_record(record: SQSRecord) -> list[Tick]:
    try:
        return decode_message(record.body)
    except InvalidMessage as error:
        logger.warning(
            "rejected SQS record",
            extra={
                "message_id": record.message_id,
                "receive_count": record.attributes.approximate_receive_count,
                "error": str(error),
                "body_sample": record.body[:BODY_SAMPLE_CHARS],
                "body_bytes": len(record.body),
            },
        )
        raise


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with processor(records=event["Records"], handler=decode_record, lambda_context=context):
        results = processor.process()
    ticks = [tick for status, decoded, _ in results if status == "success" for tick in decoded]
    outcome = ingestor.store(ticks)
    if outcome.unknown_script_ticks:
        logger.warning(
            "dropped ticks of scripts that do not exist",
            extra={"ticks": outcome.unknown_script_ticks, "script_ids": sorted(outcome.unknown_script_ids)},
        )
    record_metrics(len(results), len(processor.fail_messages), outcome.stored, outcome.duplicates,
                   outcome.unknown_script_ticks, ticks)
    return processor.response()


def record_metrics(records: int, failed: int, stored: int, duplicates: int, unknown: int,
                   ticks: list[Tick]) -> None:
    metrics.add_metric(name="BatchSize", unit=MetricUnit.Count, value=records)
    metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=failed)
    metrics.add_metric(name="TicksStored", unit=MetricUnit.Count, value=stored)
    metrics.add_metric(name="DuplicatesIgnored", unit=MetricUnit.Count, value=duplicates)
    metrics.add_metric(name="UnknownScriptTicks", unit=MetricUnit.Count, value=unknown)
    if ticks:
        oldest_us = min(tick.traded_at_us for tick in ticks)
        lag_ms = time.time() * 1000 - oldest_us / 1000
        metrics.add_metric(name="MaxLagFromTradeMs", unit=MetricUnit.Milliseconds, value=lag_ms)
