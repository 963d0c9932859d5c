"""Ingest Lambda: SQS batches of packed ticks → MySQL, reporting partial batch failures.

Thin on purpose: decode and validate each record and hand its valid ticks to the ingestor's pipeline, which writes
them while the next record is decoded; all valid ticks of the batch are committed in one idempotent transaction. If
MySQL is unreachable the invocation raises, so SQS keeps the whole batch: nothing is acknowledged that was not
committed.

A bad row costs that row, never its neighbours: a record with invalid rows stores its valid ones and sends only the
invalid rows to the DLQ, as a message of their own (attributes name each row and field), before it succeeds; if
that send fails, the record fails and is retried. A record that is invalid as a whole (not a tickstream body) fails
alone and, after the queue's maxReceiveCount, lands in the DLQ as it was.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from tickstream.codec import InvalidMessage, SplitMessage, TickBatch, split_message
from tickstream.ingest import TickIngestor
from tickstream.settings import load_settings

logger = Logger(service="ingest")
metrics = Metrics(namespace="tickstream", service="ingest")
# All records failing is reported per record too (not raised), so poison messages still reach the DLQ one by one.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
ingestor = TickIngestor(load_settings().db)  # connects lazily; the connection outlives invocations
BODY_SAMPLE_CHARS = 300


def decode_record(record: SQSRecord) -> TickBatch:
    """The record's valid ticks, once its invalid rows (if any) are safe in the DLQ."""
    try:
        split = split_message(record.body)
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
    if split.invalid:
        dead_letter_rows(record, split)
    return split.valid


def dead_letter_rows(record: SQSRecord, split: SplitMessage) -> None:
    from tickstream.dead_letters import DeadLetterError, send_invalid_rows  # with boto3, only on this path (cold start)

    first = split.invalid[0]
    try:
        letters = send_invalid_rows(split, record.message_id)
    except DeadLetterError as error:  # the record fails and SQS delivers it again: nothing is lost
        logger.error("could not dead-letter invalid rows; the record fails and is retried",
                     extra={"message_id": record.message_id, "invalid_rows": len(split.invalid), "error": str(error),
                            "first_invalid": f"tick {first.index}: {first.reason}"})
        raise
    logger.warning(
        "sent invalid rows to the DLQ, storing the rest",
        extra={"message_id": record.message_id, "invalid_rows": len(split.invalid), "valid_rows": split.valid.count,
               "dead_letters": letters, "first_invalid": f"tick {first.index}: {first.reason}"},
    )
    metrics.add_metric(name="InvalidRowsDeadLettered", unit=MetricUnit.Count, value=len(split.invalid))


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Each decoded record goes straight to the pipeline's writer thread, which loads it while the next is decoded.
    with ingestor.pipeline() as pipeline:
        def decode_and_store(record: SQSRecord) -> TickBatch:
            return pipeline.add(decode_record(record))

        with processor(records=event["Records"], handler=decode_and_store, lambda_context=context):
            results = processor.process()
    outcome = pipeline.outcome
    if outcome.unknown_script_ticks:
        logger.warning(
            "dropped ticks of scripts that do not exist",
            extra={"ticks": outcome.unknown_script_ticks, "script_ids": sorted(outcome.unknown_script_ids)},
        )
    batches = [decoded for status, decoded, _ in results if status == "success"]
    record_metrics(len(results), len(processor.fail_messages), outcome.stored, outcome.duplicates,
                   outcome.unknown_script_ticks, batches)
    return processor.response()


def record_metrics(records: int, failed: int, stored: int, duplicates: int, unknown: int,
                   batches: list[TickBatch]) -> None:
    metrics.add_metric(name="BatchSize", unit=MetricUnit.Count, value=records)
    metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=failed)
    metrics.add_metric(name="TicksStored", unit=MetricUnit.Count, value=stored)
    metrics.add_metric(name="DuplicatesIgnored", unit=MetricUnit.Count, value=duplicates)
    metrics.add_metric(name="UnknownScriptTicks", unit=MetricUnit.Count, value=unknown)
    first_traded = [us for batch in batches if (us := batch.first_traded_us()) is not None]
    if first_traded:  # each message's first row: rows are in arrival order, so this is about the oldest tick
        lag_ms = time.time() * 1000 - min(first_traded) / 1000
        metrics.add_metric(name="MaxLagFromTradeMs", unit=MetricUnit.Milliseconds, value=lag_ms)
