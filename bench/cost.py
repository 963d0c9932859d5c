"""Stage 5: requests and dollars per million ticks, from what stage 3 counted, next to one message per tick.

Counted: SendMessageBatch calls and their payload bytes (the producer's SqsSender, through a counting client);
Lambda invocations, their records and durations (the function's CloudWatch Logs: REPORT lines and the handler's
EMF metrics). Modelled from those counts, as AWS's event source mapping does it: ReceiveMessage returns at most 10
messages, DeleteMessageBatch deletes at most 10. Every request is billed per started 64 KiB of payload. Not
counted: the mapping's empty long polls on an idle queue (a fixed cost per hour, not per tick) and free tiers.
"""

from __future__ import annotations

import math
from typing import Any

from bench.common import StageResult, rate

NAME = "5 cost per million ticks"
PRICES = {
    "date": "2026-11-24 (us-east-1 list prices as stated in issue 7's brief; not re-checked from this offline host)",
    "sqs_standard_per_million_requests": 0.40,
    "sqs_billing_chunk_bytes": 64 * 1024,
    "lambda_per_million_requests": 0.20,
    "lambda_per_gb_second_x86": 0.0000166667,
    "lambda_memory_mb": 256,  # template.yaml Globals
    "free_tiers": "ignored",
}
MILLION = 1_000_000
SQS_MAX_RECEIVE = 10
GOAL_REQUESTS = 2_000


def run(e2e: dict[str, Any]) -> StageResult:
    result = StageResult(NAME)
    producer, invocations = e2e.get("producer") or {}, e2e.get("invocations") or {}
    ticks = producer.get("ticks_in") or 0
    if not ticks or not invocations.get("invocations"):
        result.error = "stage 3 produced no counts (producer or function logs missing)"
        return result
    packed = packed_design(producer, invocations, ticks)
    single = one_message_per_tick(packed)
    result.data = {"prices": PRICES, "ticks_counted": ticks, "packed": packed, "one_message_per_tick": single}
    requests = packed["api_requests_per_million"]
    result.add("SQS API requests (send+receive+delete)", requests, "/M ticks", f"≤ {GOAL_REQUESTS:,}",
               requests <= GOAL_REQUESTS)
    billed = packed["billed_requests_per_million"]
    result.add("SQS billed requests (each 64 KiB = 1)", billed, "/M ticks", f"≤ {GOAL_REQUESTS:,}",
               billed <= GOAL_REQUESTS)
    result.add("  of which SendMessageBatch calls (counted)", packed["send_calls_per_million"], "/M ticks")
    result.add("Lambda invocations (counted)", packed["invocations_per_million"], "/M ticks")
    result.add("AWS price, packed (this design)", packed["usd_per_million"], "$/M ticks")
    result.add("AWS price, one message per tick", single["usd_per_million"], "$/M ticks")
    result.add("prices", f"SQS $0.40/M requests (64 KiB = 1), Lambda $0.20/M + $0.0000166667/GB-s at "
               f"{PRICES['lambda_memory_mb']} MB; {PRICES['date'].split(' ')[0]}")
    return result


def packed_design(producer: dict[str, Any], invocations: dict[str, Any], ticks: int) -> dict[str, float]:
    per_million = MILLION / ticks
    messages = producer["messages_sent"]
    body_bytes = producer["payload_bytes"] / max(1, messages)
    batches = [int(n) for n in invocations.get("BatchSize") or []] or [messages // invocations["invocations"]]
    receives = sum(math.ceil(n / SQS_MAX_RECEIVE) for n in batches)
    receive_units = sum(_receive_units(n, body_bytes) for n in batches)
    deletes = receives  # one DeleteMessageBatch per received group of ≤ 10
    sends, send_units = producer["send_requests"], producer["billed_send_units"]
    gb_seconds = sum(invocations["durations_ms"]) / 1000 * PRICES["lambda_memory_mb"] / 1024
    sqs_usd = (send_units + receive_units + deletes) * PRICES["sqs_standard_per_million_requests"] / MILLION
    lambda_usd = (invocations["invocations"] * PRICES["lambda_per_million_requests"] / MILLION
                  + gb_seconds * PRICES["lambda_per_gb_second_x86"])
    return {
        "ticks_per_message": rate(ticks, messages), "body_bytes_mean": body_bytes,
        "send_calls_per_million": sends * per_million, "receive_calls_per_million": receives * per_million,
        "delete_calls_per_million": deletes * per_million,
        "api_requests_per_million": (sends + receives + deletes) * per_million,
        "billed_requests_per_million": (send_units + receive_units + deletes) * per_million,
        "invocations_per_million": invocations["invocations"] * per_million,
        "records_per_invocation": rate(sum(batches), len(batches)),
        "gb_seconds_per_million": gb_seconds * per_million,
        "usd_per_million": (sqs_usd + lambda_usd) * per_million,
        "sqs_usd_per_million": sqs_usd * per_million, "lambda_usd_per_million": lambda_usd * per_million,
    }


def _receive_units(records: int, body_bytes: float) -> int:
    full, rest = divmod(records, SQS_MAX_RECEIVE)
    units = full * math.ceil(SQS_MAX_RECEIVE * body_bytes / PRICES["sqs_billing_chunk_bytes"])
    return units + (math.ceil(rest * body_bytes / PRICES["sqs_billing_chunk_bytes"]) if rest else 0)


def one_message_per_tick(packed: dict[str, float]) -> dict[str, float]:
    """Per million ticks: 1M SendMessage, 100k ReceiveMessage of 10, 100k DeleteMessageBatch of 10, 100k
    invocations (batch size 10), and the same Lambda compute per tick as measured."""
    sends, receives, deletes, invocations = MILLION, MILLION // 10, MILLION // 10, MILLION // 10
    sqs_usd = (sends + receives + deletes) * PRICES["sqs_standard_per_million_requests"] / MILLION
    lambda_usd = (invocations * PRICES["lambda_per_million_requests"] / MILLION
                  + packed["gb_seconds_per_million"] * PRICES["lambda_per_gb_second_x86"])
    return {"api_requests_per_million": sends + receives + deletes, "invocations_per_million": invocations,
            "usd_per_million": sqs_usd + lambda_usd, "sqs_usd_per_million": sqs_usd,
            "lambda_usd_per_million": lambda_usd}
