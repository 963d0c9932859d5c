"""The whole pipeline for stages 3 and 4: simulator process → producer process → LocalStack SQS → the deployed
ingest function (through LocalStack's event source mapping) → MariaDB, and the reads that judge it."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pymysql

from bench.aws_local import function_log_messages, purge, queue_depth
from bench.common import SYMBOLS, make_scripts
from bench.producer_process import ProducerProcess
from bench.sim_process import SimulatorProcess
from infra.localstack_config import DUMMY_CREDENTIALS, REGION, LocalStackSettings, aws_client
from tickstream.db import connect
from tickstream.settings import DatabaseSettings

KIND = "trade"  # one tick per simulated trade (aggTrade would group 1-4 trades)
DRAIN_TIMEOUT = 120.0
_REPORT = re.compile(r"REPORT RequestId: \S+\s+Duration: ([\d.]+) ms")


@dataclass(frozen=True)
class Mapping:
    """The ingest mapping's settings (template.yaml parameters), also given to the do-nothing yardstick."""

    batch_size: int
    window_seconds: int
    timeout_seconds: int = 30
    visibility_seconds: int = 180

    def ingest_parameters(self, db: DatabaseSettings) -> dict[str, str]:
        return {"DbHost": db.host, "DbPort": str(db.port), "DbUser": db.user, "DbPassword": db.password,
                "DbName": db.name, "IngestBatchSize": str(self.batch_size),
                "IngestBatchingWindowSeconds": str(self.window_seconds),
                "IngestTimeoutSeconds": str(self.timeout_seconds),
                "TicksQueueVisibilityTimeoutSeconds": str(self.visibility_seconds)}

    def noop_parameters(self) -> dict[str, str]:
        return {"BatchSize": str(self.batch_size), "BatchingWindowSeconds": str(self.window_seconds),
                "TimeoutSeconds": str(self.timeout_seconds), "VisibilityTimeoutSeconds": str(self.visibility_seconds)}


@dataclass
class Pipeline:
    settings: LocalStackSettings
    db: DatabaseSettings
    queue_url: str
    function_name: str
    sim: SimulatorProcess
    producer: ProducerProcess
    conn: pymysql.Connection
    script_ids: dict[str, int]
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    producer_counts: dict[str, Any] = field(default_factory=dict)

    def set_total_rate(self, ticks_per_second: float) -> None:
        self.sim.set_rate(ticks_per_second / len(self.script_ids))

    def emitted(self) -> dict[str, range]:
        return {symbol: self.sim.emitted(symbol, KIND) for symbol in self.script_ids}

    def stop_trading(self) -> dict[str, range]:
        """Rate 0, then the emitted ids once they stop moving (a generation batch may still be in flight)."""
        self.sim.set_rate(0)
        previous = self.emitted()
        while True:
            time.sleep(0.5)
            current = self.emitted()
            if current == previous:
                return current
            previous = current

    def depth(self) -> int:
        return queue_depth(aws_client("sqs", self.settings), self.queue_url)

    def stored(self) -> int:
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM ticks")
            return cursor.fetchone()[0]

    def drain(self, expected: int, timeout: float = DRAIN_TIMEOUT) -> float | None:
        """Seconds until `expected` ticks are stored and the queue is empty; None on timeout."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.stored() >= expected and self.depth() == 0:
                return time.monotonic() - started
            time.sleep(1.0)
        return None

    def exact_check(self, emitted: dict[str, range]) -> dict[str, Any]:
        """Stored trade-id set == emitted set, per script. The primary key makes stored ids unique, so the sets are
        equal exactly when count, min and max all match the emitted (contiguous) range."""
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT script_id, COUNT(*), MIN(trade_id), MAX(trade_id) FROM ticks GROUP BY script_id")
            stored = {row[0]: row[1:] for row in cursor.fetchall()}
        per_symbol = {}
        for symbol, ids in emitted.items():
            count, low, high = stored.get(self.script_ids[symbol], (0, None, None))
            same = count == len(ids) and (not ids or (low == ids.start and high == ids.stop - 1))
            per_symbol[symbol] = {"emitted": len(ids), "stored": count, "equal": same}
        return {"equal": all(s["equal"] for s in per_symbol.values()), "per_symbol": per_symbol,
                "emitted": sum(len(ids) for ids in emitted.values()),
                "stored": sum(s["stored"] for s in per_symbol.values())}

    def stored_between(self, start: float, end: float) -> int:
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM ticks WHERE stored_at >= %s AND stored_at < %s",
                           (_utc(start), _utc(end)))
            return cursor.fetchone()[0]

    def stored_series(self, start: float, bucket_seconds: int) -> list[list[float]]:
        """[seconds after `start`, ticks stored per second in that bucket], from stored_at."""
        with self.conn.cursor() as cursor:
            cursor.execute(
                "SELECT FLOOR((UNIX_TIMESTAMP(stored_at) - %s) / %s), COUNT(*) FROM ticks"
                " WHERE stored_at >= %s GROUP BY 1 ORDER BY 1", (start, bucket_seconds, _utc(start)))
            return [[int(bucket) * bucket_seconds, count / bucket_seconds] for bucket, count in cursor.fetchall()]

    def invocations(self) -> dict[str, Any]:
        """From the function's CloudWatch Logs: REPORT lines (invocations, durations) and the handler's EMF
        metrics (records per batch, ticks stored, duplicates ignored)."""
        messages = function_log_messages(self.settings, self.function_name, self.started_ms)
        durations = [float(m.group(1)) for message in messages if (m := _REPORT.search(message))]
        metrics: dict[str, list[float]] = {"BatchSize": [], "TicksStored": [], "DuplicatesIgnored": [],
                                           "RecordsFailed": []}
        for message in messages:
            for line in message.splitlines():
                if line.startswith("{") and '"_aws"' in line:
                    emf = orjson.loads(line)
                    for name, values in metrics.items():
                        value = emf.get(name)
                        if value is not None:
                            values.extend(float(v) for v in (value if isinstance(value, list) else [value]))
        return {"invocations": len(durations), "durations_ms": durations,
                **{name: values for name, values in metrics.items()}}


@contextlib.contextmanager
def running_pipeline(settings: LocalStackSettings, db: DatabaseSettings, stack: dict[str, str],
                     work_dir: Path) -> Iterator[Pipeline]:
    """Simulator and producer processes on `db` (broker and scripts created here), the producer subscribed and
    the exchange still silent (rate 0), so every id emitted afterwards is expected downstream."""
    purge(aws_client("sqs", settings), stack["TicksQueueUrl"])
    sim = SimulatorProcess(SYMBOLS)
    conn = connect(db, autocommit=True)
    producer: ProducerProcess | None = None
    try:
        api_config = orjson.dumps({"ws_url": sim.ws_url, "rest_url": sim.rest_url}).decode()
        script_ids = make_scripts(conn, SYMBOLS, api_config, stream=KIND)
        producer = ProducerProcess(producer_environment(settings, db, stack["TicksQueueUrl"], work_dir),
                                   work_dir / "producer.log")
        producer.wait_subscribed(timeout=60)
        pipeline = Pipeline(settings, db, stack["TicksQueueUrl"], stack["IngestFunction"], sim, producer, conn,
                            script_ids)
        yield pipeline
        pipeline.producer_counts = producer.stop()
        producer = None
    finally:
        if producer is not None:
            producer.stop(timeout=20)
        sim.stop()
        conn.close()


def producer_environment(settings: LocalStackSettings, db: DatabaseSettings, queue_url: str,
                         work_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "DB_", "PRODUCER_"))}
    env.update({
        "DB_HOST": db.host, "DB_PORT": str(db.port), "DB_USER": db.user, "DB_PASSWORD": db.password,
        "DB_NAME": db.name, "TICKS_QUEUE_URL": queue_url, "AWS_ENDPOINT_URL": settings.endpoint_url,
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"], "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true", "PRODUCER_JOURNAL_DIR": str(work_dir / "journal"),
        "PRODUCER_REFRESH_SECONDS": "1", "PRODUCER_STATS_LOG_SECONDS": "10",
        "EXCHANGE_HOST_ALLOWLIST": "127.0.0.1",  # the simulator (README: Security)
    })
    return env


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        yield Path(directory)


def _utc(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (LocalStack and the function processes it started)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def pids_named(name: str) -> list[int]:
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == name:
                found.append(int(comm.parent.name))
    return found


class CpuMeter:
    """CPU seconds per pipeline component between `start()` and `stop()`, as % of one core."""

    def __init__(self, pipeline: Pipeline) -> None:
        localstack = int(pipeline.settings.pid_file.read_text()) if pipeline.settings.pid_file.exists() else None
        self.groups = {
            "simulator": lambda: [pipeline.sim.process.pid],
            "producer": lambda: [pipeline.producer.process.pid],
            "localstack + function": lambda: process_tree(localstack) if localstack else [],
            "mariadb": lambda: pids_named("mariadbd") or pids_named("mysqld"),
        }
        self._start: dict[str, dict[int, float]] = {}
        self._started_at = 0.0

    def _snapshot(self) -> dict[str, dict[int, float]]:
        return {name: {pid: process_cpu_seconds(pid) for pid in pids()} for name, pids in self.groups.items()}

    def start(self) -> None:
        self._start, self._started_at = self._snapshot(), time.monotonic()

    def stop(self) -> dict[str, float]:
        end, seconds = self._snapshot(), time.monotonic() - self._started_at
        return {name: round(100 * sum(cpu - self._start[name].get(pid, 0.0) for pid, cpu in end[name].items())
                            / seconds, 1) for name in self.groups}
