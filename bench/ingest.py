"""Stage 2: the ingest handler in-process, fed real SQS-shaped batches of packed bodies, against MariaDB.

Both write paths (LOAD DATA LOCAL and multi-row INSERT IGNORE), with 0 % and 10 % redelivered messages (a
redelivery is an earlier message of the run sent again, as SQS does after a visibility timeout). The rate that
counts is new rows stored per second of handler time, compared with stage 1's server-only ceiling (INSERT…SELECT)
and with stage 1's server-only LOAD DATA of the same rows already decoded (what decoding and the handler add).
Validation alone (decode and check every row, no MySQL) is reported in CPU µs per tick, for valid bodies and for
bodies with one invalid row each (the failure path that salvages the valid rows).

What keeping tick_coverage and the time index tick_minutes costs (issue 13: at most 10 %): the LOAD DATA path is
measured again without either (ticks then has its primary key only), in back-to-back pairs with the keeping runs,
and the median of the pairs' ratios of new rows/s (with coverage and time index / without) is reported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common import (
    SYMBOLS,
    StageResult,
    Stopwatch,
    bench_database,
    bodies_of,
    make_scripts,
    rate,
    scalar,
    synthetic_ticks,
)
from tests.sqs_events import FakeLambdaContext, sqs_event, sqs_record
from tickstream.codec import encode_rows, split_message
from tickstream.db import connect
from tickstream.ingest import TickIngestor
from tickstream.settings import DatabaseSettings, load_settings
from tickstream.tick_store import TickStore

NAME = "2 ingest handler"
HANDLER_PATH = Path(__file__).resolve().parent.parent / "functions" / "ingest" / "handler.py"
REDELIVERY_EVERY = 10  # 10 %: every 10th message of the stream is a redelivery
METHODS = ("load_data", "insert_ignore")
COVERAGE_ROUNDS = 7  # back-to-back pairs with and without coverage
COVERAGE_ROWS = 100_000


def run(rows: int, batch_messages: int, ceiling_rows_per_s: float | None,
        load_data_rows_per_s: float | None = None) -> StageResult:
    result = StageResult(NAME)
    with bench_database("ingest") as db:
        conn = connect(db, autocommit=True)
        script_ids = list(make_scripts(conn, SYMBOLS).values())
        bodies = bodies_of(synthetic_ticks(script_ids, rows))
        ticks_per_message = rows / len(bodies)
        result.data["validation"] = validation_cost(bodies)
        for path, us in result.data["validation"].items():
            result.add(f"validation only ({path}): CPU per tick", us, "µs")
        with loaded_handler(db) as handler:
            coverage_cost(result, conn, handler, db, bodies, batch_messages, ticks_per_message)
            for method in METHODS:
                for duplicates in (0, REDELIVERY_EVERY):
                    stream = redelivered(bodies, duplicates)
                    conn.cursor().execute("TRUNCATE TABLE ticks")
                    conn.cursor().execute("TRUNCATE TABLE tick_coverage")
                    conn.cursor().execute("TRUNCATE TABLE tick_minutes")
                    use_store(handler, db, method)
                    outcome = ingest(handler, stream, batch_messages, ticks_per_message)
                    outcome["stored"] = scalar(conn, "SELECT COUNT(*) FROM ticks")
                    if outcome["stored"] != rows:
                        raise RuntimeError(f"{method}: stored {outcome['stored']} rows, expected {rows}")
                    outcome["rows_per_s"] = rate(rows, outcome["seconds"])
                    key = f"{method}_dup{100 // duplicates if duplicates else 0}pct"
                    result.data[key] = outcome
                    report(result, method, duplicates, outcome, ceiling_rows_per_s)
                    if method == "load_data" and load_data_rows_per_s:
                        result.add(f"{method}, {100 // duplicates if duplicates else 0} % redelivered: ratio to"
                                   " server-only LOAD DATA", outcome["rows_per_s"] / load_data_rows_per_s, "×")
        conn.close()
    result.data.update({"rows": rows, "messages": len(bodies), "ticks_per_message": ticks_per_message,
                        "batch_messages": batch_messages})
    return result


def coverage_cost(result: StageResult, conn: Any, handler: ModuleType, db: DatabaseSettings, bodies: Sequence[str],
                  batch_messages: int, ticks_per_message: float) -> None:
    """LOAD DATA with and without coverage, 0 % and 10 % redelivered: `COVERAGE_ROUNDS` back-to-back pairs (the
    order alternating) on the first ~`COVERAGE_ROWS` rows; the ratio reported is the median of the pairs' ratios, so
    a busy moment of the (shared) machine shifts one pair, not the answer."""
    sample = list(bodies[:max(1, round(COVERAGE_ROWS / ticks_per_message))])
    rows = sum(split_message(body).valid.count for body in sample)
    for duplicates in (0, REDELIVERY_EVERY):
        stream = redelivered(sample, duplicates)
        pairs: list[dict[bool, float]] = []
        cpu: dict[bool, list[float]] = {True: [], False: []}
        for round_ in range(COVERAGE_ROUNDS):
            pair: dict[bool, float] = {}
            for keep in ((True, False) if round_ % 2 == 0 else (False, True)):
                conn.cursor().execute("TRUNCATE TABLE ticks")
                conn.cursor().execute("TRUNCATE TABLE tick_coverage")
                conn.cursor().execute("TRUNCATE TABLE tick_minutes")
                use_store(handler, db, "load_data", keep_coverage=keep)
                outcome = ingest(handler, stream, batch_messages, ticks_per_message)
                if keep and scalar(conn, "SELECT SUM(stored) FROM tick_coverage") != rows:
                    raise RuntimeError("coverage does not count every stored row once")
                pair[keep] = rate(rows, outcome["seconds"])
                cpu[keep].append(outcome["handler_cpu_seconds"] * 1e6 / rows)
            pairs.append(pair)
        pct = 100 // duplicates if duplicates else 0
        ratio = statistics.median(pair[True] / pair[False] for pair in pairs)
        without = statistics.median(pair[False] for pair in pairs)
        result.data[f"coverage_dup{pct}pct"] = {"rows": rows, "pairs": [{"with_rows_per_s": pair[True],
                                                                         "without_rows_per_s": pair[False]}
                                                                        for pair in pairs],
                                                 "median_ratio": ratio,
                                                 "handler_cpu_us_per_row": {"with": statistics.median(cpu[True]),
                                                                            "without": statistics.median(cpu[False])}}
        kept = "coverage and time index"
        result.add(f"load_data, {pct} % redelivered: new rows/s without {kept} (median)", without, "rows/s")
        result.add(f"load_data, {pct} % redelivered: handler CPU per row, with / without {kept} (median)",
                   f"{statistics.median(cpu[True]):.2f} / {statistics.median(cpu[False]):.2f}", "µs")
        result.add(f"load_data, {pct} % redelivered: with {kept} / without (median of {COVERAGE_ROUNDS} pairs)",
                   ratio, "×", "≥ 0.9", ratio >= 0.9)


def report(result: StageResult, method: str, duplicates: int, outcome: dict[str, Any],
           ceiling: float | None) -> None:
    label = f"{method}, {100 // duplicates if duplicates else 0} % redelivered"
    per_s = outcome["rows_per_s"]
    met = per_s >= 150_000 if method == "load_data" else None
    result.add(f"{label}: new rows/s", per_s, "rows/s", "≥ 150k (per writer)" if method == "load_data" else "",
               met)
    if ceiling:
        ratio = per_s / ceiling
        result.add(f"{label}: ratio to server-only ceiling", ratio, "×",
                   "≥ 0.75" if method == "load_data" else "", ratio >= 0.75 if method == "load_data" else None)


def validation_cost(bodies: Sequence[str], rounds: int = 3) -> dict[str, float]:
    """CPU µs per tick of `split_message` (best of `rounds`): the bodies as they are, and each with its middle row
    made invalid (the failure path: the valid rows salvaged, the bad one named)."""
    spoiled = []
    for body in bodies:
        lines = split_message(body).valid.rows.splitlines(keepends=True)
        lines[len(lines) // 2] = lines[len(lines) // 2].replace(b"\t", b"\tx", 1)
        spoiled.append(encode_rows(lines))
    ticks = sum(len(split_message(body).valid) for body in bodies)
    return {path: min(_cpu_seconds(sample) for _ in range(rounds)) * 1e6 / ticks
            for path, sample in (("all rows valid", bodies), ("one bad row per message", spoiled))}


def _cpu_seconds(bodies: Sequence[str]) -> float:
    started = time.process_time()
    for body in bodies:
        split_message(body)
    return time.process_time() - started


def redelivered(bodies: Sequence[str], every: int) -> list[str]:
    """The message stream SQS would deliver: every `every`-th delivery repeats the message `every` back."""
    if not every:
        return list(bodies)
    stream: list[str] = []
    for index, body in enumerate(bodies):
        stream.append(body)
        if index % (every - 1) == every - 2 and index >= every:
            stream.append(bodies[index - every])
    return stream


@contextlib.contextmanager
def loaded_handler(db: DatabaseSettings) -> Iterator[ModuleType]:
    """functions/ingest/handler.py imported fresh with DB_* pointing at `db`, as a cold container would."""
    saved = dict(os.environ)
    os.environ.update({"DB_HOST": db.host, "DB_PORT": str(db.port), "DB_USER": db.user, "DB_PASSWORD": db.password,
                       "DB_NAME": db.name, "POWERTOOLS_METRICS_NAMESPACE": "tickstream-bench",
                       "POWERTOOLS_SERVICE_NAME": "ingest"})
    load_settings.cache_clear()
    try:
        spec = importlib.util.spec_from_file_location("bench_ingest_handler", HANDLER_PATH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
        module.ingestor.close()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        load_settings.cache_clear()


def use_store(handler: ModuleType, db: DatabaseSettings, method: str, keep_coverage: bool = True) -> None:
    """A fresh warm-container ingestor forced onto one write path (and, to measure its cost, without coverage)."""
    handler.ingestor.close()
    load_data = method == "load_data"
    handler.ingestor = TickIngestor(
        db, open_store=lambda: TickStore(connect(db, local_infile=True), use_load_data=load_data,
                                         keep_coverage=keep_coverage),
        keep_coverage=keep_coverage)


def ingest(handler: ModuleType, stream: Sequence[str], batch_messages: int,
           ticks_per_message: float) -> dict[str, float]:
    """Invoke the handler batch by batch (records built beforehand, untimed); EMF output goes to a buffer."""
    events = [sqs_event(*[sqs_record(body) for body in stream[start:start + batch_messages]])
              for start in range(0, len(stream), batch_messages)]
    sink = io.StringIO()
    watch, cpu_started = Stopwatch(), time.process_time()
    with contextlib.redirect_stdout(sink):
        for event in events:
            response = handler.handler(event, FakeLambdaContext())
            if response["batchItemFailures"]:
                raise RuntimeError(f"handler reported failures: {response['batchItemFailures'][:3]}")
    seconds = watch.seconds
    return {"messages": len(stream), "invocations": len(events), "seconds": seconds,
            "handler_cpu_seconds": time.process_time() - cpu_started,
            "ticks_handled_per_s": rate(len(stream) * ticks_per_message, seconds),
            "ms_per_invocation": seconds * 1000 / len(events)}


def ingest_hot_path(rows: int, batch_messages: int = 20) -> dict[str, float]:
    """For bench.hotpaths: LOAD DATA, no redeliveries."""
    with bench_database("hot") as db:
        conn = connect(db, autocommit=True)
        script_ids = list(make_scripts(conn, SYMBOLS).values())
        bodies = bodies_of(synthetic_ticks(script_ids, rows))
        with loaded_handler(db) as handler:
            use_store(handler, db, "load_data")
            outcome = ingest(handler, bodies, batch_messages, rows / len(bodies))
        conn.close()
    outcome["rows_per_s"] = rate(rows, outcome["seconds"])
    return outcome
