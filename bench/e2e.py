"""Stage 3: end to end, and the emulator's own ceiling it is judged against (both in this run).

Ceiling: a do-nothing function behind an event source mapping with the same settings (bench/fixtures/
noop_stack); its mapping is disabled while a backlog of full 64 KiB bodies is queued, then enabled, and the drain
time gives messages/s (× ticks per message = ticks/s).

Pipeline: the simulator trades at a fixed total rate for warm-up + the measured window; queue depth is sampled
every SAMPLE_SECONDS; the window's rate is what was stored (stored_at) inside it. Then trading stops, the
pipeline drains, and the stored trade-id set is compared with the emitted one, exactly.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.aws_local import (
    NOOP_TEMPLATE,
    TICKSTREAM_TEMPLATE,
    deploy,
    mapping_uuid,
    purge,
    queue_depth,
    send_bodies,
    set_mapping_enabled,
)
from bench.common import StageResult, bench_database, bodies_of, rate, synthetic_ticks
from bench.pipeline import CpuMeter, Mapping, Pipeline, running_pipeline, scratch_dir
from infra.localstack_config import LocalStackSettings, aws_client

NAME = "3 end to end"
SAMPLE_SECONDS = 2.0
CEILING_TICKS = 1_200_000  # ~1,150 full messages: several seconds of draining
CEILING_TIMEOUT = 120.0


def run(settings: LocalStackSettings, mapping: Mapping, total_rate: float, window: float,
        warmup: float) -> StageResult:
    result = StageResult(NAME)
    ceiling = emulator_ceiling(settings, mapping)
    result.data["ceiling"] = ceiling
    result.add("emulator ceiling (do-nothing function, same mapping)", ceiling["ticks_per_s"], "ticks/s")
    result.add("emulator ceiling, messages", ceiling["messages_per_s"], "msg/s")
    with bench_database("e2e") as db, scratch_dir("bench-e2e-") as work:
        stack = deploy(settings, TICKSTREAM_TEMPLATE, "bench-tickstream", mapping.ingest_parameters(db))
        with running_pipeline(settings, db, stack, work) as pipeline:
            measured = measure(pipeline, total_rate, window, warmup)
        measured["producer"] = pipeline.producer_counts
        measured["invocations"] = pipeline.invocations()
    result.data.update(measured)
    report(result, measured, ceiling)
    return result


def emulator_ceiling(settings: LocalStackSettings, mapping: Mapping) -> dict[str, float]:
    stack = deploy(settings, NOOP_TEMPLATE, "bench-noop", mapping.noop_parameters())
    lam, sqs = aws_client("lambda", settings), aws_client("sqs", settings)
    uuid = mapping_uuid(lam, stack["FunctionName"])
    bodies = bodies_of(synthetic_ticks((1, 2, 3, 4), CEILING_TICKS))
    set_mapping_enabled(lam, uuid, False)
    purge(sqs, stack["QueueUrl"])
    send_bodies(sqs, stack["QueueUrl"], bodies)
    set_mapping_enabled(lam, uuid, True)
    started = time.monotonic()
    while queue_depth(sqs, stack["QueueUrl"]) > 0:
        if time.monotonic() - started > CEILING_TIMEOUT:
            raise TimeoutError(f"the do-nothing function did not drain {len(bodies)} messages in time")
        time.sleep(0.2)
    seconds = time.monotonic() - started
    set_mapping_enabled(lam, uuid, False)  # idle from now on: it must not poll during the pipeline run
    return {"messages": len(bodies), "ticks_per_message": CEILING_TICKS / len(bodies), "seconds": seconds,
            "messages_per_s": rate(len(bodies), seconds), "ticks_per_s": rate(CEILING_TICKS, seconds),
            "body_bytes": len(bodies[0])}


def measure(pipeline: Pipeline, total_rate: float, window: float, warmup: float) -> dict[str, Any]:
    pipeline.set_total_rate(total_rate)
    trading_from = time.time()
    window_start, window_end = trading_from + warmup, trading_from + warmup + window
    depths: list[list[float]] = []
    emitted_at_start: dict[str, range] | None = None
    cpu = CpuMeter(pipeline)
    while (now := time.time()) < window_end:
        if emitted_at_start is None and now >= window_start:
            emitted_at_start = pipeline.emitted()
            cpu.start()
        depths.append([round(now - trading_from, 1), pipeline.depth()])
        time.sleep(max(0.0, min(SAMPLE_SECONDS, window_end - time.time())))
    emitted_at_end = pipeline.emitted()
    cpu_percent = cpu.stop()
    final = pipeline.stop_trading()
    expected = sum(len(ids) for ids in final.values())
    drain_seconds = pipeline.drain(expected)
    offered = sum(len(final[s]) for s in final) if emitted_at_start is None else sum(
        len(emitted_at_end[s]) - len(emitted_at_start[s]) for s in final)
    return {
        "total_rate_asked": total_rate, "window_seconds": window, "warmup_seconds": warmup,
        "offered_ticks_per_s": rate(offered, window),
        "stored_in_window": (stored := pipeline.stored_between(window_start, window_end)),
        "stored_ticks_per_s": rate(stored, window),
        "queue_depth": depths, "drain_seconds": drain_seconds, "cpu_percent_of_one_core": cpu_percent,
        "stored_per_s_series": pipeline.stored_series(trading_from, 5),
        "exact_check": pipeline.exact_check(final),
    }


def depth_trend(depths: list[list[float]], warmup: float) -> dict[str, float]:
    """Least-squares slope (messages/s) of the depth inside the window, and its range."""
    points = [(t, d) for t, d in depths if t >= warmup] or depths
    if len(points) < 2:
        return {"slope_per_s": 0.0, "max": max((d for _, d in points), default=0), "mean": 0.0}
    n = len(points)
    mean_t, mean_d = sum(t for t, _ in points) / n, sum(d for _, d in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (d - mean_d) for t, d in points) / var if var else 0.0
    return {"slope_per_s": slope, "max": max(d for _, d in points), "mean": mean_d}


def report(result: StageResult, measured: dict[str, Any], ceiling: dict[str, float]) -> None:
    stored = measured["stored_ticks_per_s"]
    offered = measured["offered_ticks_per_s"]
    result.add(f"offered by the simulator (asked {measured['total_rate_asked']:,.0f})", offered, "ticks/s")
    result.add(f"sustained, stored over {measured['window_seconds']:.0f} s", stored, "ticks/s", "≥ 50k",
               stored >= 50_000)
    result.add("ratio to the emulator ceiling", rate(stored, ceiling["ticks_per_s"]), "×")
    trend = depth_trend(measured["queue_depth"], measured["warmup_seconds"])
    batch_growth = trend["slope_per_s"] * measured["window_seconds"]
    steady = batch_growth < max(10.0, trend["mean"])  # grew by less than its own mean (or 10 messages) in the window
    result.data["queue_depth_trend"] = trend
    result.add("queue depth in window: mean / max", f"{trend['mean']:.0f} / {trend['max']:.0f}", "msg")
    result.add("queue depth slope", trend["slope_per_s"], "msg/s", "steady", steady)
    drain = measured["drain_seconds"]
    result.add("drain after trading stopped", "timed out" if drain is None else drain, "s")
    cpu = measured["cpu_percent_of_one_core"]
    result.add("CPU in window, % of one core", ", ".join(f"{name} {value:.0f}" for name, value in cpu.items())
               + f"; load avg {os.getloadavg()[0]:.1f}", "%")
    per_tick = {name: value / 100 * 1e6 / offered for name, value in cpu.items()} if offered else {}
    result.data["cpu_us_per_tick"] = per_tick
    result.add("CPU per tick", ", ".join(f"{name} {value:.0f}" for name, value in per_tick.items()), "µs")
    check = measured["exact_check"]
    result.add("stored trade-id set == emitted set", f"{check['equal']} ({check['stored']}/{check['emitted']})", "",
               "nothing lost or duplicated", check["equal"])
