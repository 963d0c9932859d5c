"""Stage 8: producer start-up with a full journal, against start-up with an empty one (both in this run).

A restart must not read the journal before it reads the exchange (issue 12): the backlog replays while the producer
already collects. The journal is filled to the default disk budget (PRODUCER_JOURNAL_MAX_BYTES, 2 GiB) with real
bodies: one 16 MiB segment packed from synthetic ticks, copied to fill the budget, each copy with its index. Each
run starts the real producer process (bench/producer_process.py) on a hard-linked copy of that journal (or on an
empty one) and times it from the spawn until every connection has heard from the exchange simulator; then the process
is killed (SIGKILL, as a crash would end it). SQS is an unreachable loopback port, so nothing is replayed into
the emulator: the replay only retries meanwhile. Runs alternate (empty, full, empty, …) so load hits both alike;
the figure is the ratio of the medians.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import time
from pathlib import Path

import orjson

from bench.common import SYMBOLS, StageResult, bench_database, bodies_of, make_scripts, synthetic_ticks
from bench.pipeline import producer_environment, scratch_dir
from bench.producer_process import ProducerProcess
from bench.sim_process import SimulatorProcess
from infra.localstack_config import LocalStackSettings
from producer_service.config import ProducerSettings
from producer_service.journal import SEGMENT_BYTES, Journal
from tickstream.db import connect

NAME = "8 producer start-up"
RUNS = 5  # of each kind: start-up is a few seconds, and a loaded machine scatters it
GOAL_RATIO = 1.5
RATE_PER_SYMBOL = 50.0  # trades/s: the exchange is live while the producer starts
SIMULATOR_FIRST_TRADE_ID = 5_000_000  # the simulator's first `trade` id: the journal ends just before it
HEADROOM_BYTES = 256 * 1024**2  # above the full journal, so the runs' own ticks are journaled, not blocked


def run(settings: LocalStackSettings, journal_bytes: int | None = None) -> StageResult:
    result = StageResult(NAME)
    budget = journal_bytes or ProducerSettings().journal_max_bytes
    sim = SimulatorProcess(SYMBOLS)
    try:
        with bench_database("startup") as db, scratch_dir("bench-startup-") as work:
            conn = connect(db, autocommit=True)
            try:
                api_config = orjson.dumps({"ws_url": sim.ws_url, "rest_url": sim.rest_url}).decode()
                script_ids = make_scripts(conn, SYMBOLS, api_config, stream="trade")
            finally:
                conn.close()
            full = work / "full-journal"
            filled = fill_journal(full, list(script_ids.values()), budget)
            sim.set_rate(RATE_PER_SYMBOL)
            env = producer_environment(settings, db, "", work)
            dead = f"http://127.0.0.1:{unused_port()}"
            env.update({"AWS_ENDPOINT_URL": dead, "TICKS_QUEUE_URL": f"{dead}/000000000000/unreachable",
                        "PRODUCER_JOURNAL_MAX_BYTES": str(filled + HEADROOM_BYTES)})
            seconds: dict[str, list[float]] = {"empty": [], "full": []}
            for number in range(RUNS):
                for kind in ("empty", "full"):
                    journal_dir = work / f"run-{number}-{kind}"
                    link_journal(full if kind == "full" else None, journal_dir)
                    seconds[kind].append(start_up_seconds(env | {"PRODUCER_JOURNAL_DIR": str(journal_dir)},
                                                          work / f"producer-{number}-{kind}.log"))
                    shutil.rmtree(journal_dir)
            index_started = time.perf_counter()
            Journal(full, budget + HEADROOM_BYTES).last_trade_ids()
            index_seconds = time.perf_counter() - index_started
    finally:
        sim.stop()
    empty, full_median = statistics.median(seconds["empty"]), statistics.median(seconds["full"])
    ratio = full_median / empty
    result.data = {"journal_bytes": filled, "segments": filled // SEGMENT_BYTES, "runs_s": seconds,
                   "median_empty_s": empty, "median_full_s": full_median, "ratio": ratio,
                   "last_trade_ids_full_journal_s": index_seconds}
    result.add(f"start-up, empty journal (baseline), median of {RUNS}", empty, "s")
    result.add(f"start-up, full journal ({filled / 1024**3:.2f} GiB), median of {RUNS}", full_median, "s")
    result.add("full / empty", ratio, "×", f"≤ {GOAL_RATIO}", ratio <= GOAL_RATIO)
    result.add("resume ids from the full journal (its indexes), in process", index_seconds * 1000, "ms")
    return result


def fill_journal(directory: Path, script_ids: list[int], budget: int) -> int:
    """One segment of real bodies (ids ending just before the simulator's first), then copies of it with their
    indexes up to `budget`; returns the bytes written."""
    per_script = SEGMENT_BYTES // 30 // len(script_ids)  # a segment's worth: ~32 compressed bytes per tick
    ticks = synthetic_ticks(script_ids, per_script * len(script_ids), SIMULATOR_FIRST_TRADE_ID - per_script)
    journal = Journal(directory, budget, fsync_seconds=0)
    last = {script_id: SIMULATOR_FIRST_TRADE_ID - 1 for script_id in script_ids}
    journal.append(bodies_of(ticks), last)
    journal.close()
    segments = sorted(directory.glob("*.journal"))
    first = segments[0]
    size, number = sum(path.stat().st_size for path in segments), len(segments)
    while size + first.stat().st_size <= budget:
        number += 1
        copy = directory / f"{number:012d}.journal"
        shutil.copyfile(first, copy)
        shutil.copyfile(first.with_suffix(".ids"), copy.with_suffix(".ids"))
        size += copy.stat().st_size
    return size


def link_journal(source: Path | None, target: Path) -> None:
    """A journal directory the producer may change (new segments, replay) without touching `source`."""
    target.mkdir()
    for path in sorted(source.iterdir()) if source is not None else []:
        if path.is_file():
            os.link(path, target / path.name)


def start_up_seconds(env: dict[str, str], log_path: Path) -> float:
    started = time.monotonic()
    producer = ProducerProcess(env, log_path)
    try:
        producer.wait_subscribed(timeout=120)
        return time.monotonic() - started
    finally:
        producer.kill()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
