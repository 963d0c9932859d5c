"""Stage 2: the ingest handler in-process, fed real SQS-shaped batches of packed bodies, against MariaDB.

Both write paths (LOAD DATA LOCAL and multi-row INSERT IGNORE), with 0 % and 10 % redelivered messages (a
redelivery is an earlier message of the run sent again, as SQS does after a visibility timeout). The rate that
counts is new rows stored per second of handler time, compared with stage 1's server-only ceiling (INSERT…SELECT)
and with stage 1's server-only LOAD DATA of the same rows already decoded (what decoding and the handler add).
Validation alone (decode and check every row, no MySQL) is reported in CPU µs per tick, for valid bodies and for
bodies with one invalid row each (the failure path that salvages the valid rows).

What keeping tick_coverage and the time index tick_minutes costs (issue 13: at most 10 %): the LOAD DATA path is
measured again without either — the same handler and pipeline, the store told not to keep them — into a second
database (its ticks table the same: its primary key only), invocation by invocation interleaved with the keeping
side, so a busy moment of the shared machine falls on both sides alike. The median of the rounds' ratios of new
rows/s (with coverage and time index / without) is reported, with their spread.
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
COVERAGE_ROUNDS = 9  # rounds of interleaved invocations with and without coverage
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
    """LOAD DATA with and without coverage and time index, 0 % and 10 % redelivered, on the first ~`COVERAGE_ROWS`
    rows: `COVERAGE_ROUNDS` rounds, each storing them once on each side from empty tables, the two sides'
    invocations interleaved (ABBA: which side goes first alternates), so both see the same moments of a shared
    machine. A round's ratio is its new rows/s with / without; the median of the rounds' ratios is reported."""
    sample = list(bodies[:max(1, round(COVERAGE_ROWS / ticks_per_message))])
    rows = sum(split_message(body).valid.count for body in sample)
    with bench_database("ingest_without") as bare_db:
        bare_conn = connect(bare_db, autocommit=True)
        if sorted(make_scripts(bare_conn, SYMBOLS).values()) != sorted(script_ids_of(conn)):
            raise RuntimeError("the two databases' script ids differ")
        sides = {True: (conn, CoverageSide(db, True)), False: (bare_conn, CoverageSide(bare_db, False))}
        try:
            for duplicates in (0, REDELIVERY_EVERY):
                stream = redelivered(sample, duplicates)
                rounds = [interleaved_round(handler, sides, stream, batch_messages, rows, round_)
                          for round_ in range(COVERAGE_ROUNDS)]
                report_coverage_cost(result, 100 // duplicates if duplicates else 0, rows, rounds)
        finally:
            for _, side in sides.values():
                side.ingestor.close()
            bare_conn.close()


def script_ids_of(conn: Any) -> list[int]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT id FROM scripts")
        return [row[0] for row in cursor.fetchall()]


class CoverageSide:
    """A warm container's ingestor on the LOAD DATA path, keeping coverage and time index or not, and the CPU time
    of the MariaDB thread serving its connection (Linux: the server's /proc; None when not readable)."""

    def __init__(self, db: DatabaseSettings, keep_coverage: bool) -> None:
        store = TickStore(connect(db, local_infile=True), use_load_data=True, keep_coverage=keep_coverage)
        self.ingestor = TickIngestor(db, open_store=lambda: store, keep_coverage=keep_coverage)
        self._schedstat = _server_thread_schedstat(store.conn)

    def server_cpu_seconds(self) -> float | None:
        if self._schedstat is None:
            return None
        with contextlib.suppress(OSError):
            return int(self._schedstat.read_text().split()[0]) / 1e9  # ns on CPU
        return None


def _server_thread_schedstat(conn: Any) -> Path | None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT TID FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        (tid,) = cursor.fetchone()
        cursor.execute("SELECT @@pid_file")
        (pid_file,) = cursor.fetchone()
    conn.commit()
    with contextlib.suppress(OSError, ValueError):
        path = Path(f"/proc/{int(Path(pid_file).read_text())}/task/{int(tid)}/schedstat")
        if path.exists():
            return path
    return None


def interleaved_round(handler: ModuleType, sides: dict[bool, tuple[Any, CoverageSide]], stream: Sequence[str],
                      batch_messages: int, rows: int, round_: int) -> dict[str, float | None]:
    """The stream stored once on each side from empty tables, invocation k of one side next to invocation k of
    the other; the side that goes first alternates from pair to pair and round to round."""
    for side_conn, _ in sides.values():
        for table in ("ticks", "tick_coverage", "tick_minutes"):
            side_conn.cursor().execute(f"TRUNCATE TABLE {table}")
    events = invocation_events(stream, batch_messages)
    seconds, cpu = {True: 0.0, False: 0.0}, {True: 0.0, False: 0.0}
    server_started = {keep: side.server_cpu_seconds() for keep, (_, side) in sides.items()}
    for index, event in enumerate(events):
        for keep in ((True, False) if (index + round_) % 2 == 0 else (False, True)):
            handler.ingestor = sides[keep][1].ingestor
            wall, used = invoke(handler, event)
            seconds[keep] += wall
            cpu[keep] += used
    server = {keep: None if server_started[keep] is None else
              (side.server_cpu_seconds() - server_started[keep]) * 1e6 / rows for keep, (_, side) in sides.items()}
    if scalar(sides[True][0], "SELECT SUM(stored) FROM tick_coverage") != rows:
        raise RuntimeError("coverage does not count every stored row once")
    for keep, (side_conn, _) in sides.items():
        if scalar(side_conn, "SELECT COUNT(*) FROM ticks") != rows:
            raise RuntimeError(f"{'with' if keep else 'without'} coverage: not every row was stored")
    return {"with_rows_per_s": rate(rows, seconds[True]), "without_rows_per_s": rate(rows, seconds[False]),
            "with_cpu_us_per_row": cpu[True] * 1e6 / rows, "without_cpu_us_per_row": cpu[False] * 1e6 / rows,
            "with_server_cpu_us_per_row": server[True], "without_server_cpu_us_per_row": server[False]}


def report_coverage_cost(result: StageResult, pct: int, rows: int, rounds: list[dict[str, float | None]]) -> None:
    ratios = sorted(r["with_rows_per_s"] / r["without_rows_per_s"] for r in rounds)
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4)
    cpu_with = statistics.median(r["with_cpu_us_per_row"] for r in rounds)
    cpu_without = statistics.median(r["without_cpu_us_per_row"] for r in rounds)
    without = statistics.median(r["without_rows_per_s"] for r in rounds)
    data = result.data[f"coverage_dup{pct}pct"] = {
        "rows": rows, "rounds": rounds, "median_ratio": ratio, "ratio_quartiles": [quartiles[0], quartiles[2]],
        "ratio_range": [ratios[0], ratios[-1]],
        "handler_cpu_us_per_row": {"with": cpu_with, "without": cpu_without}}
    kept = "coverage and time index"
    result.add(f"load_data, {pct} % redelivered: new rows/s without {kept} (median)", without, "rows/s")
    result.add(f"load_data, {pct} % redelivered: handler CPU per row, with / without {kept} (median)",
               f"{cpu_with:.2f} / {cpu_without:.2f}", "µs")
    if all(r["with_server_cpu_us_per_row"] is not None for r in rounds):
        server_with = statistics.median(r["with_server_cpu_us_per_row"] for r in rounds)
        server_without = statistics.median(r["without_server_cpu_us_per_row"] for r in rounds)
        cpu_ratio = (cpu_without + server_without) / (cpu_with + server_with)
        data["server_thread_cpu_us_per_row"] = {"with": server_with, "without": server_without}
        data["cpu_ratio"] = cpu_ratio
        result.add(f"load_data, {pct} % redelivered: CPU per row, handler + its MariaDB thread, with / without"
                   f" {kept} (median)", f"{cpu_with + server_with:.2f} / {cpu_without + server_without:.2f}", "µs")
        # On a saturated machine throughput follows CPU per row: the ratio that load would give.
        result.add(f"load_data, {pct} % redelivered: that CPU without / with {kept}", cpu_ratio, "×")
    result.add(f"load_data, {pct} % redelivered: with {kept} / without, rounds' quartiles and range",
               f"{quartiles[0]:.2f}–{quartiles[2]:.2f}, {ratios[0]:.2f}–{ratios[-1]:.2f}", "×")
    result.add(f"load_data, {pct} % redelivered: with {kept} / without (median of {len(rounds)} interleaved"
               " rounds)", ratio, "×", "≥ 0.9", ratio >= 0.9)


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


def invocation_events(stream: Sequence[str], batch_messages: int) -> list[dict[str, Any]]:
    return [sqs_event(*[sqs_record(body) for body in stream[start:start + batch_messages]])
            for start in range(0, len(stream), batch_messages)]


def invoke(handler: ModuleType, event: dict[str, Any]) -> tuple[float, float]:
    """One invocation: its wall seconds and the process's CPU seconds; EMF output goes to a buffer."""
    watch, cpu_started = Stopwatch(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        response = handler.handler(event, FakeLambdaContext())
    seconds, cpu = watch.seconds, time.process_time() - cpu_started
    if response["batchItemFailures"]:
        raise RuntimeError(f"handler reported failures: {response['batchItemFailures'][:3]}")
    return seconds, cpu


def ingest(handler: ModuleType, stream: Sequence[str], batch_messages: int,
           ticks_per_message: float) -> dict[str, float]:
    """Invoke the handler batch by batch (records built beforehand, untimed)."""
    events = invocation_events(stream, batch_messages)
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
