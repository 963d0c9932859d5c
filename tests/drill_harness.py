"""Plumbing for the fault drills (tests/test_drills.py): the real pipeline, a fault, then an exact comparison.

- `DrillStack`: template.yaml deployed unchanged onto a LocalStack of the drills' own (so restarting it cannot
  break other test modules' stacks), wired to a dedicated MariaDB user with a random password (so the secrets
  test has a real password to look for).
- `ProducerProcess`: `python -m producer_service` as a real process (kill -9 and SIGTERM mean something), its
  output appended to one log file across restarts.
- `Drill`: the exchange simulator as ground truth (`emitted_ids`), scripts registered for it, trading at a target
  rate, and `finish()`, which waits until everything emitted is stored and compares the sets exactly.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pymysql
import requests

from infra.localstack import start_localstack, stop_localstack
from infra.localstack_config import REPO_ROOT, LocalStackSettings, aws_client
from infra.stack import LOCALSTACK_COMMUNITY_PARAMETERS, create_or_update, sam_package, wait_for_functions
from simulator.harness import ExchangeSimulator
from tests.conftest import make_broker, make_script
from tickstream import coverage
from tickstream.db import CONNECTION_ERRORS, connect
from tickstream.settings import DatabaseSettings

# Four aggTrade streams and one trade stream: both backfill paths (aggTrades, historicalTrades) get exercised.
SYMBOLS: dict[str, str] = {"BTCUSDT": "aggTrade", "ETHUSDT": "aggTrade", "BNBUSDT": "aggTrade",
                           "SOLUSDT": "aggTrade", "PEPEUSDT": "trade"}
TARGET_TICKS_PER_SECOND = 5000
# simulator.market groups 1-4 trades (weights 60/25/10/5) into one aggregate: 1.6 trades per aggTrade on average.
TRADES_PER_AGG_TRADE = 1.6
STACK_NAME = "tickstream-drills"


def simulator_rate(symbols: dict[str, str], ticks_per_second: float) -> float:
    """The simulator's per-symbol trade rate that makes all `symbols`' streams carry `ticks_per_second`."""
    ticks_per_trade = sum(1 / TRADES_PER_AGG_TRADE if kind == "aggTrade" else 1.0 for kind in symbols.values())
    return ticks_per_second / ticks_per_trade


# --- MariaDB --------------------------------------------------------------------------------------------------

def create_db_user(root: DatabaseSettings) -> DatabaseSettings:
    """A user with a random password and all rights on the test database only."""
    user, password = f"drill_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    conn = connect(root, autocommit=True)
    try:
        with conn.cursor() as cursor:
            for host in ("%", "localhost"):
                quoted_host = host.replace("%", "%%")  # pymysql formats the statement with %
                cursor.execute(f"CREATE USER '{user}'@'{quoted_host}' IDENTIFIED BY %s", (password,))
                cursor.execute(f"GRANT ALL ON `{root.name}`.* TO '{user}'@'{host}'")
    finally:
        conn.close()
    return DatabaseSettings(root.host, root.port, user, password, root.name)


def drop_db_user(root: DatabaseSettings, user: DatabaseSettings) -> None:
    with contextlib.suppress(pymysql.err.Error):
        conn = connect(root, autocommit=True)
        with conn.cursor() as cursor:
            for host in ("%", "localhost"):
                cursor.execute(f"DROP USER IF EXISTS '{user.user}'@'{host}'")
        conn.close()


class Database:
    """A root connection that survives a MariaDB restart (reconnects when the server went away)."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self._conn: pymysql.Connection | None = None

    def query(self, sql: str, args: Any = None) -> list[tuple]:
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = connect(self.settings, autocommit=True)
                with self._conn.cursor() as cursor:
                    cursor.execute(sql, args)
                    return list(cursor.fetchall())
            except CONNECTION_ERRORS:
                self.close()
                if attempt == 2:
                    raise
        return []

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(pymysql.err.Error):
                self._conn.close()
            self._conn = None


def naive_utc(epoch_ms: float) -> datetime:
    """An epoch time in ms as the naive UTC DATETIME the ticks table holds."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).replace(tzinfo=None)


# --- LocalStack and the stack ---------------------------------------------------------------------------------

@dataclass
class DrillStack:
    localstack: LocalStackSettings
    parameters: dict[str, str]
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def queue_url(self) -> str:
        return self.outputs["TicksQueueUrl"]

    @property
    def dlq_url(self) -> str:
        return self.outputs["TicksDeadLetterQueueUrl"]

    @property
    def localstack_pid(self) -> int:
        return int(self.localstack.pid_file.read_text().strip())

    def client(self, service: str) -> Any:
        return aws_client(service, self.localstack)

    def start(self) -> None:
        from infra.stack import deploy_stack

        start_localstack(self.localstack)
        self.outputs = deploy_stack(self.parameters, settings=self.localstack, template=REPO_ROOT / "template.yaml",
                                    stack_name=STACK_NAME, use_environment=False)

    def stop(self) -> None:
        stop_localstack(self.localstack)

    def restart(self, down_seconds: float) -> float:
        """Stop LocalStack (SIGTERM: it ends its function processes), keep it down, start it, redeploy the same
        template (PERSISTENCE=0: queues, functions and logs are gone). Returns the seconds it was unreachable."""
        stopped_at = time.monotonic()
        stop_localstack(self.localstack)
        time.sleep(max(0.0, down_seconds - (time.monotonic() - stopped_at)))
        start_localstack(self.localstack)
        unreachable = time.monotonic() - stopped_at
        self.redeploy()
        return unreachable

    def redeploy(self) -> None:
        """The template built by `start()` packaged again (the artifact bucket is gone too) and deployed."""
        work_dir = self.localstack.state_dir / "sam" / STACK_NAME
        packaged = sam_package(self.localstack, work_dir / "build" / "template.yaml", work_dir, STACK_NAME)
        # The same parameters as the first deploy, LocalStack's own included (TLS off, no schedule, ...).
        parameters = {**LOCALSTACK_COMMUNITY_PARAMETERS, **self.parameters}
        outputs = create_or_update(self.localstack, STACK_NAME, packaged.read_text(), parameters)
        wait_for_functions(self.localstack, STACK_NAME)
        self.outputs.clear()
        self.outputs.update(outputs)

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        """A request to the stack's management API through LocalStack's API Gateway."""
        url = f"{self.localstack.endpoint_url}/_aws/execute-api/{self.outputs['ApiId']}/api{path}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, url, headers=headers, timeout=60, **kwargs)

    def function_name(self, logical_id: str = "IngestFunction") -> str:
        resources = self.client("cloudformation").describe_stack_resources(StackName=STACK_NAME)["StackResources"]
        return next(r["PhysicalResourceId"] for r in resources if r["LogicalResourceId"] == logical_id)

    def depth(self, queue_url: str) -> int:
        attributes = self.client("sqs").get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                                                "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return sum(int(value) for value in attributes.values())

    def function_logs(self, since_ms: int, logical_id: str = "IngestFunction") -> list[str]:
        """A function's CloudWatch log lines since `since_ms` (LocalStack forgets them on restart)."""
        logs = self.client("logs")
        group = f"/aws/lambda/{self.function_name(logical_id)}"
        lines: list[str] = []
        with contextlib.suppress(logs.exceptions.ResourceNotFoundException):
            for page in logs.get_paginator("filter_log_events").paginate(logGroupName=group, startTime=since_ms):
                lines.extend(event["message"].rstrip("\n") for event in page["events"])
        return lines


def metric_sums(log_lines: list[str], names: tuple[str, ...]) -> dict[str, int]:
    """Sums of Powertools EMF metrics (one JSON object per invocation) in function log lines."""
    sums = dict.fromkeys(names, 0)
    for line in log_lines:
        if '"_aws"' not in line:
            continue
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
            record = orjson.loads(line[line.index("{"):])
            for name in names:
                value = record.get(name, 0)
                sums[name] += int(sum(value) if isinstance(value, list) else value)
    return sums


# --- Lambda worker processes ----------------------------------------------------------------------------------

def _proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
    except OSError:
        return ""


def lambda_workers(localstack_pid: int, function_name: str) -> list[int]:
    """Host processes the local executor runs `function_name` in, children of *this* LocalStack only (others run
    LocalStacks on this machine too: a bare `pgrep -f bootstrap.py` would find their functions)."""
    workers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _proc_text(pid, "stat")
        if not stat or int(stat.rsplit(")", 1)[1].split()[1]) != localstack_pid:
            continue
        if "bootstrap.py" in _proc_text(pid, "cmdline") and \
                f"AWS_LAMBDA_FUNCTION_NAME={function_name}\n" in _proc_text(pid, "environ"):
            workers.append(pid)
    return workers


def _output_log(pid: int) -> Path | None:
    """The executor's per-environment log file, which the worker tees all its output (START/END lines) to."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.endswith("output.log"):
                return Path(target)
    return None


def _mid_invocation(log: Path) -> bool:
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - 65536))
        tail = handle.read()
    return tail.rfind(START) > tail.rfind(END)


START, END = b"START RequestId:", b"END RequestId:"
METRICS_LINE = b'"_aws"'  # Powertools prints the invocation's metrics after the handler's commit, before END


def kill_worker_mid_invocation(localstack_pid: int, function_name: str, after_commit: bool = False,
                               timeout: float = 20.0) -> bool:
    """SIGKILL the function's worker inside an invocation: right after its START, or (`after_commit`) after the
    batch was committed but before the answer reached LocalStack. True if the log, read after the kill, confirms
    the invocation never ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in lambda_workers(localstack_pid, function_name):
            log = _output_log(pid)
            if log is not None and _kill_when(pid, log, METRICS_LINE if after_commit else START, deadline):
                time.sleep(0.05)
                return _mid_invocation(log)
        time.sleep(0.01)
    return False


def _kill_when(pid: int, log: Path, marker: bytes, deadline: float) -> bool:
    """Follow the worker's log and SIGKILL it the moment `marker` appears after a START with no END yet."""
    with log.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        recent = b""
        while time.monotonic() < deadline:
            chunk = handle.read()
            if not chunk:
                time.sleep(0)  # busy-wait (yielding the GIL): after the commit the window is well under 1 ms
                continue
            recent = (recent + chunk)[-65536:]
            start = recent.rfind(START)
            if start >= 0 and recent.find(marker, start) >= 0 and recent.find(END, start) < 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    return True
                return False
    return False


# --- the producer ---------------------------------------------------------------------------------------------

class ProducerProcess:
    """`python -m producer_service` for one broker; restarts append to the same log."""

    def __init__(self, db: DatabaseSettings, stack: DrillStack, broker_id: int, journal_dir: Path, log_path: Path,
                 endpoint_url: str | None = None, **extra_env: str) -> None:
        self.stack = stack
        self.log_path = log_path
        self.journal_dir = journal_dir
        self.process: subprocess.Popen[bytes] | None = None
        scrubbed = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DB_", "API_TOKEN", "TICKS_"))}
        self.env = {**scrubbed, "DB_HOST": db.host, "DB_PORT": str(db.port), "DB_USER": db.user,
                    "DB_PASSWORD": db.password, "DB_NAME": db.name,
                    "AWS_ENDPOINT_URL": endpoint_url or stack.localstack.endpoint_url,
                    "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                    "BROKER_ID": str(broker_id), "PRODUCER_JOURNAL_DIR": str(journal_dir),
                    "PRODUCER_REFRESH_SECONDS": "1", "PRODUCER_STATS_LOG_SECONDS": "5", **extra_env}

    def start(self) -> None:
        env = {**self.env, "TICKS_QUEUE_URL": self.stack.queue_url}  # read now: a redeploy changes it
        with self.log_path.open("ab") as log:
            log.write(f"--- producer start (queue {env['TICKS_QUEUE_URL']}) ---\n".encode())
            log.flush()
            self.process = subprocess.Popen([sys.executable, "-m", "producer_service"], env=env, cwd=REPO_ROOT,
                                            stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the producer flushes its buffers (to SQS, else to the journal) and exits."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def backfilled(self) -> int:
        return sum(int(n.replace(",", "")) for n in re.findall(r"backfilled ([\d,]+) trades", self.log()))

    def journaled_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.journal_dir.glob("*.journal"))


# --- a drill --------------------------------------------------------------------------------------------------

@dataclass
class DrillResult:
    drill: str
    trading_seconds: float
    emitted: int
    stored_rows: int
    missing: int
    unexpected: int
    redelivered_ignored: int  # ticks the ingest skipped because their (script_id, trade_id) was already stored
    notes: str = ""

    @property
    def rate(self) -> float:
        return self.emitted / self.trading_seconds if self.trading_seconds else 0.0


class Drill:
    """The simulator trading ~TARGET_TICKS_PER_SECOND over SYMBOLS into the producer → SQS → ingest → MariaDB."""

    def __init__(self, name: str, stack: DrillStack, db_user: DatabaseSettings, root: DatabaseSettings,
                 work_dir: Path, seed: int, endpoint_url: str | None = None,
                 sim_options: dict[str, Any] | None = None, **producer_env: str) -> None:
        self.name = name
        self.stack = stack
        self.db = Database(root)
        self.sim = ExchangeSimulator(symbols=tuple(SYMBOLS), rate=0, seed=seed, ping_interval=5.0,
                                     **(sim_options or {}))
        self.sim.start()
        self.scripts = self._register()
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        self.work_dir = work_dir / slug
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.producer = ProducerProcess(db_user, stack, self.broker_id, self.work_dir / "journal",
                                        self.work_dir / "producer.log", endpoint_url, **producer_env)
        self.started_ms = int(time.time() * 1000)
        self.function_lines: list[str] = []
        self.api_lines: list[str] = []
        self.trading_seconds = 0.0
        self._trading_since: float | None = None

    def _register(self) -> dict[str, int]:
        conn = connect(self.db.settings, autocommit=True)
        try:
            api_config = orjson.dumps({"ws_url": self.sim.ws_url, "rest_url": self.sim.rest_url}).decode()
            self.broker_id = make_broker(conn, f"drill {self.name}", api_config)
            return {symbol: make_script(conn, self.broker_id, symbol, kind) for symbol, kind in SYMBOLS.items()}
        finally:
            conn.close()

    # -- running -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the producer; trading begins once it has subscribed to every stream, so every id is expected."""
        self.producer.start()
        self.wait_subscribed()
        self.sim.config.rate = simulator_rate(SYMBOLS, TARGET_TICKS_PER_SECOND)
        self._trading_since = time.monotonic()

    def wait_subscribed(self, timeout: float = 30.0) -> None:
        wanted = {f"{symbol.lower()}@{kind}" for symbol, kind in SYMBOLS.items()}
        deadline = time.monotonic() + timeout
        while not wanted <= self._subscribed():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the producer did not subscribe in {timeout:.0f} s:\n{self.producer.log()[-3000:]}")
            time.sleep(0.05)

    def _subscribed(self) -> set[str]:
        return self.sim.subscriptions()

    def trade(self, seconds: float) -> None:
        time.sleep(seconds)

    def stop_trading(self) -> None:
        self.sim.config.rate = 0
        if self._trading_since is not None:
            self.trading_seconds += time.monotonic() - self._trading_since
            self._trading_since = None

    # -- checking ----------------------------------------------------------------------------------------------
    def emitted(self, symbol: str) -> range:
        return self.sim.emitted_ids(symbol, SYMBOLS[symbol])

    def stored_counts(self) -> dict[int, int]:
        rows = self.db.query("SELECT script_id, COUNT(*) FROM ticks WHERE script_id IN %s GROUP BY script_id",
                             (tuple(self.scripts.values()),))
        return {int(script): int(count) for script, count in rows}

    def complete(self) -> bool:
        counts = self.stored_counts()
        return all(counts.get(sid, 0) >= len(self.emitted(symbol)) for symbol, sid in self.scripts.items())

    def wait_until_stored(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(*CONNECTION_ERRORS):
                if self.complete():
                    return True
            time.sleep(1.0)
        return self.complete()

    def compare(self) -> tuple[int, int, int, int]:
        """(emitted, stored rows, missing ids, stored ids never emitted), over every symbol."""
        emitted = missing = unexpected = 0
        counts = self.stored_counts()
        for symbol, script_id in self.scripts.items():
            expected = set(self.emitted(symbol))
            ids = {row[0] for row in self.db.query("SELECT trade_id FROM ticks WHERE script_id = %s", (script_id,))}
            emitted += len(expected)
            missing += len(expected - ids)
            unexpected += len(ids - expected)
        return emitted, sum(counts.values()), missing, unexpected

    def gaps(self, symbol: str) -> list[dict[str, Any]]:
        """The gap ledger's rows of a symbol's script, oldest id first."""
        columns = ("first_trade_id", "last_trade_id", "next_trade_id", "cause", "state", "attempts", "last_error",
                   "trades_filled")
        rows = self.db.query(f"SELECT {', '.join(columns)} FROM gaps WHERE script_id = %s ORDER BY first_trade_id",
                             (self.scripts[symbol],))
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def wait_for_gap(self, symbol: str, condition: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(*CONNECTION_ERRORS):
                for gap in self.gaps(symbol):
                    if condition(gap):
                        return gap
            time.sleep(0.2)
        raise TimeoutError(f"no gap of {symbol} as wanted in {timeout:.0f} s: {self.gaps(symbol)}\n"
                           f"{self.producer.log()[-3000:]}")

    def refetched(self, symbol: str, first_id: int, last_id: int) -> int:
        """Ids in [first_id, last_id] that REST served more than once."""
        served: Counter[int] = Counter()
        for first, last in self.sim.rest_served(symbol, SYMBOLS[symbol]):
            served.update(range(max(first, first_id), min(last, last_id) + 1))
        return sum(count - 1 for count in served.values())

    def store_history(self, symbol: str) -> int:
        """Store every id the simulator generated for `symbol` directly, as an earlier run would have (rows and
        tick_coverage); returns the rows stored. Built on the server by one `INSERT … SELECT` over the sequence
        engine (as bench/scale_build.py does): ~1M rows in seconds rather than minutes of Python. Trade times follow
        the simulator's (interpolated by id between its oldest and newest, exact for a burst: one time per tape);
        prices and quantities are synthetic, which nothing compares (the drills compare trade-id sets)."""
        ids = self.emitted(symbol)
        ledger = self.sim.core.markets[symbol.upper()].ledger(SYMBOLS[symbol])
        first_ms, last_ms = ledger.times[ids[0] - ledger.base_id], ledger.times[ids[-1] - ledger.base_id]
        step_us = 1000 * (last_ms - first_ms) / max(1, len(ids) - 1)
        self.db.query(
            "INSERT INTO ticks (script_id, trade_id, price, quantity, is_buyer_maker, traded_at, event_at,"
            " received_at_producer) SELECT %(script)s, %(first_id)s + t.seq, 95000 + (t.seq * 7919) MOD 5000,"
            " ((t.seq * 31) MOD 99999 + 1) / 100000, t.seq MOD 3 = 0, t.traded, t.traded, %(now)s"
            " FROM (SELECT seq, %(first_at)s + INTERVAL FLOOR(seq * %(step_us)s) MICROSECOND AS traded"
            f" FROM seq_0_to_{len(ids) - 1}) t",
            {"script": self.scripts[symbol], "first_id": ids[0], "first_at": naive_utc(first_ms),
             "step_us": step_us, "now": naive_utc(time.time() * 1000)})
        self.recompute_coverage(symbol)
        return len(ids)

    def recompute_coverage(self, symbol: str) -> None:
        """tick_coverage of a script as it is now (after rows were written or deleted behind the ingest's back)."""
        conn = connect(self.db.settings)
        try:
            coverage.rebuild(conn, [self.scripts[symbol]])
        finally:
            conn.close()

    def save_function_logs(self) -> None:
        """Keep the functions' log lines so far (call once before LocalStack restarts: it forgets them)."""
        self.function_lines += self.stack.function_logs(self.started_ms)
        self.api_lines += self.stack.function_logs(self.started_ms, "ApiFunction")

    def finish(self, notes: str = "", timeout: float = 90.0) -> DrillResult:
        """Stop trading, let the pipeline drain, stop the producer (SIGTERM), compare stored with emitted."""
        self.stop_trading()
        self.wait_until_stored(timeout)
        exit_code = self.producer.terminate()
        assert exit_code == 0, f"producer exited with {exit_code}:\n{self.producer.log()[-3000:]}"
        self._wait_for_queue_empty(30.0)
        emitted, stored, missing, unexpected = self.compare()
        self.save_function_logs()
        (self.work_dir / "function.log").write_text("\n".join(self.function_lines) + "\n")
        (self.work_dir / "api-function.log").write_text("\n".join(self.api_lines) + "\n")
        ignored = metric_sums(self.function_lines, ("DuplicatesIgnored",))["DuplicatesIgnored"]
        return DrillResult(self.name, self.trading_seconds, emitted, stored, missing, unexpected, ignored, notes)

    def _wait_for_queue_empty(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.stack.depth(self.stack.queue_url) and time.monotonic() < deadline:
            time.sleep(0.5)

    def close(self) -> None:
        if self.producer.process is not None and self.producer.process.poll() is None:
            self.producer.kill()
        self.sim.stop()
        self.db.close()


@contextlib.contextmanager
def drill(name: str, stack: DrillStack, db_user: DatabaseSettings, root: DatabaseSettings, work_dir: Path,
          seed: int, endpoint_url: str | None = None, sim_options: dict[str, Any] | None = None,
          **producer_env: str) -> Iterator[Drill]:
    running = Drill(name, stack, db_user, root, work_dir, seed, endpoint_url, sim_options, **producer_env)
    try:
        yield running
    finally:
        running.close()


def results_document(results: list[DrillResult], seconds: float) -> str:
    """The results as Markdown: what ran, on what, then one row per drill."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"Fault drills, {when}, `pytest -m drills` on {os.cpu_count()} cores: {len(results)} drills in "
            f"{seconds / 60:.1f} min. Each: the exchange simulator at ~{TARGET_TICKS_PER_SECOND:,} ticks/s over "
            f"{len(SYMBOLS)} symbols ({', '.join(f'{s} {k}' for s, k in SYMBOLS.items())}), producer → SQS → "
            "ingest Lambda → MariaDB on host LocalStack with template.yaml; after the fault, the stored trade ids are "
            "compared with the simulator's emitted ids.\n\n" + results_table(results))


def results_table(results: list[DrillResult]) -> str:
    header = ("| drill | trading s | ticks/s | emitted | stored rows | missing | not emitted | duplicate rows "
              "| redelivered ticks ignored by the PK | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    rows = "".join(
        f"| {r.drill} | {r.trading_seconds:.0f} | {r.rate:,.0f} | {r.emitted:,} | {r.stored_rows:,} | {r.missing} "
        f"| {r.unexpected} | {r.stored_rows - (r.emitted - r.missing + r.unexpected)} | {r.redelivered_ignored:,} "
        f"| {r.notes} |\n"
        for r in results)
    return header + rows
