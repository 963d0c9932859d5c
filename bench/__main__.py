"""`python -m bench` (`make bench`): throughput, latency, cost and cold start, each as a ratio against a ceiling
measured in the same run, printed as one table and written to bench/results/<UTC timestamp>.json.

Stages (issue 7): 1 storage ceiling, 2 ingest handler in-process, 3 end to end through host LocalStack (with the
emulator's own ceiling), 4 latency at 1k ticks/s, 5 cost per million ticks (from stage 3's counts), 6 cold start,
7 candles of a 1M-trade day over HTTP (issue 15), 8 producer start-up with a full journal against an empty one
(issue 12).
Stage 9 (`make bench-scale`, only when asked for: it builds tables of up to 100M rows, ~12 GB, kept between runs
as tickstream_bench_scale_<rows>) measures ingest, reads, size and retention as the table grows (bench/scale.py).
MariaDB from DB_HOST/DB_PORT/DB_USER/DB_PASSWORD (throw-away databases tickstream_bench_*); LocalStack on
BENCH_LOCALSTACK_PORT (default 4610) with state in BENCH_LOCALSTACK_DIR (default .localstack/bench), started and
stopped here unless one already answers there. Every stage stops by itself; the whole run takes ~6 minutes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import candles, coldstart, cost, e2e, ingest, latency, scale, startup, storage
from bench.aws_local import bench_settings, running_localstack
from bench.common import StageResult, ticks_per_message, wait_for_database
from bench.pipeline import Mapping
from bench.report import machine_info, table, write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The ingest mapping for throughput: 40 messages of ≤ 64 KiB (~2.6 MB, under AWS's 6 MB payload limit)
# and a 1 s window (AWS requires ≥ 1 s above 10 messages).
THROUGHPUT_MAPPING = Mapping(batch_size=40, window_seconds=1)
INGEST_BATCH_MESSAGES = 20  # stage 2: records per invocation (the template's default batch size)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="1,2,3,4,5,6,7,8", help="comma-separated subset (default: all)")
    parser.add_argument("--rows", type=int, default=300_000, help="stages 1-2: rows per measurement")
    parser.add_argument("--e2e-rate", type=float, default=100_000, help="stage 3: ticks/s the simulator trades")
    parser.add_argument("--e2e-seconds", type=float, default=60, help="stage 3: measured window")
    parser.add_argument("--warmup-seconds", type=float, default=5, help="stages 3-4: trading before the window")
    parser.add_argument("--latency-rate", type=float, default=1_000, help="stage 4: ticks/s")
    parser.add_argument("--latency-seconds", type=float, default=20, help="stage 4: measured window")
    parser.add_argument("--journal-bytes", type=int, default=None,
                        help="stage 8: the full journal's size (default: the default PRODUCER_JOURNAL_MAX_BYTES)")
    parser.add_argument("--scale-sizes", default="1000000,10000000,100000000",
                        help="stage 9: table sizes in rows, comma-separated")
    parser.add_argument("--scale-samples", type=int, default=100, help="stage 9: requests per read")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def timed(name: str, run: Callable[[], StageResult]) -> StageResult:
    print(f"[bench] {name} …", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        wait_for_database()
        result = run()
    except Exception as error:  # one stage failing must not lose the others' figures
        traceback.print_exc()
        result = StageResult(name, error=f"{type(error).__name__}: {error}")
    result.seconds = time.monotonic() - started
    print(f"[bench] {name}: {result.seconds:.0f} s{' — ' + result.error if result.error else ''}",
          file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    # SIGTERM unwinds like Ctrl-C, so what a stage changed on the server (scale.quiesce's globals) is put back
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    stages = {int(s) for s in args.stages.split(",") if s.strip()}
    started, machine = datetime.now(UTC), machine_info()
    results: list[StageResult] = []
    chunk = round(INGEST_BATCH_MESSAGES * ticks_per_message())  # rows per server-side commit = one stage-2 invocation

    if 1 in stages:
        results.append(timed(storage.NAME, lambda: storage.run(args.rows, chunk)))
    storage_data = next((r.data for r in results if r.data.get("insert_select")), {})
    ceiling = storage_data.get("insert_select", {}).get("rows_per_s")
    load_only = storage_data.get("load_data", {}).get("rows_per_s")
    if 2 in stages:
        results.append(timed(ingest.NAME, lambda: ingest.run(args.rows, INGEST_BATCH_MESSAGES, ceiling, load_only)))
    settings = bench_settings()
    if stages & {3, 4, 5}:
        with running_localstack(settings):
            e2e_result = None
            if stages & {3, 5}:
                e2e_result = timed(e2e.NAME, lambda: e2e.run(settings, THROUGHPUT_MAPPING, args.e2e_rate,
                                                             args.e2e_seconds, args.warmup_seconds))
                results.append(e2e_result)
            if 4 in stages:
                results.append(timed(latency.NAME, lambda: latency.run(settings, args.latency_rate,
                                                                      args.latency_seconds, args.warmup_seconds)))
            if 5 in stages and e2e_result is not None:
                results.append(timed(cost.NAME, lambda: cost.run(e2e_result.data)))
    if 6 in stages:
        results.append(timed(coldstart.NAME, lambda: coldstart.run(settings)))
    if 7 in stages:
        results.append(timed(candles.NAME, candles.run))
    if 8 in stages:
        results.append(timed(startup.NAME, lambda: startup.run(settings, args.journal_bytes)))
    if 9 in stages:
        sizes = [int(size) for size in args.scale_sizes.split(",") if size.strip()]
        results.append(timed(scale.NAME, lambda: scale.run(sizes, args.rows, args.scale_samples)))

    rows = [row for result in results for row in result.rows]
    print(table(rows))
    for result in results:
        if result.error:
            print(f"{result.name}: FAILED: {result.error}")
    machine["load_average_end"] = os.getloadavg()
    path = write_json(results, started, vars(args) | {"out": str(args.out),
                                                     "throughput_mapping": THROUGHPUT_MAPPING.__dict__},
                      machine, args.out)
    print(f"\n{machine['cores']} cores, {machine['cpu_model']}, MariaDB {machine['mariadb_version']}; "
          f"results in {path}")
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
