"""Stage 4: latency at a low, steady rate (1k ticks/s), through the same pipeline as stage 3.

Twice, each with its own stack: the template's default mapping (batch 20, 1 s window; the goal is judged on this)
and a no-window mapping (batch 10, window 0). On this emulator a window only bounds a long poll that returns as
soon as messages are there, while window 0 means short polls and LocalStack's back-off (1 s here, see
infra/localstack.py) after every empty one; AWS differs the other way (a window may hold a partial batch).
For every tick traded in the window: stored_at − traded_at (trade → row committed; MariaDB's
CURRENT_TIMESTAMP(6) at the statement's start) and received_at_producer − traded_at (trade → the producer's
socket). The simulator's trade times are whole milliseconds, as Binance's are.
"""

from __future__ import annotations

import time
from typing import Any

from bench.aws_local import TICKSTREAM_TEMPLATE, deploy
from bench.common import StageResult, bench_database, percentile
from bench.pipeline import Mapping, Pipeline, _utc, running_pipeline, scratch_dir
from infra.localstack_config import LocalStackSettings

NAME = "4 latency"
VARIANTS = {"template default (batch 20, window 1 s)": Mapping(batch_size=20, window_seconds=1),
            "no window (batch 10, window 0)": Mapping(batch_size=10, window_seconds=0)}
GOALS_MS = {"p50": 250.0, "p99": 1000.0}


def run(settings: LocalStackSettings, total_rate: float, window: float, warmup: float) -> StageResult:
    result = StageResult(NAME)
    for number, (label, mapping) in enumerate(VARIANTS.items()):
        measured = measure_variant(settings, mapping, f"bench-tickstream-latency{number}", total_rate, window,
                                   warmup)
        result.data[label] = {"mapping": mapping.__dict__, **measured}
        report(result, label, measured, judged=number == 0)
    return result


def measure_variant(settings: LocalStackSettings, mapping: Mapping, stack_name: str, total_rate: float,
                    window: float, warmup: float) -> dict[str, Any]:
    with bench_database("latency") as db, scratch_dir("bench-latency-") as work:
        stack = deploy(settings, TICKSTREAM_TEMPLATE, stack_name, mapping.ingest_parameters(db))
        with running_pipeline(settings, db, stack, work) as pipeline:
            return measure(pipeline, total_rate, window, warmup)


def report(result: StageResult, label: str, measured: dict[str, Any], judged: bool) -> None:
    stored, received = measured["stored"], measured["received"]
    for name in ("p50", "p95", "p99"):
        value, goal = stored[name], GOALS_MS.get(name) if judged else None
        result.add(f"{label}: trade → stored {name}", value, "ms", f"≤ {goal:.0f} ms" if goal else "",
                   None if goal is None or value is None else value <= goal)
    result.add(f"{label}: trade → producer p50 / p95 / p99",
               " / ".join(f"{received[name]:.1f}" for name in ("p50", "p95", "p99")), "ms")
    check = measured["exact_check"]
    result.add(f"{label}: stored set == emitted set", f"{check['equal']} ({check['stored']}/{check['emitted']})")


def measure(pipeline: Pipeline, total_rate: float, window: float, warmup: float) -> dict[str, Any]:
    pipeline.set_total_rate(total_rate)
    started = time.time()
    time.sleep(warmup + window)
    final = pipeline.stop_trading()
    drained = pipeline.drain(sum(len(ids) for ids in final.values()), timeout=60)
    with pipeline.conn.cursor() as cursor:
        cursor.execute(
            "SELECT TIMESTAMPDIFF(MICROSECOND, traded_at, stored_at),"
            " TIMESTAMPDIFF(MICROSECOND, traded_at, received_at_producer) FROM ticks"
            " WHERE traded_at >= %s AND traded_at < %s", (_utc(started + warmup), _utc(started + warmup + window)))
        rows = cursor.fetchall()
    stored_ms = [row[0] / 1000 for row in rows]
    received_ms = [row[1] / 1000 for row in rows]
    return {"total_rate": total_rate, "window_seconds": window, "ticks": len(rows), "drain_seconds": drained,
            "exact_check": pipeline.exact_check(final), "stored": summary(stored_ms),
            "received": summary(received_ms)}


def summary(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.50), "p95": percentile(values, 0.95), "p99": percentile(values, 0.99),
            "max": max(values, default=None)}
