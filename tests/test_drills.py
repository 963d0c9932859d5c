"""Fault drills: every trade exactly once, whatever breaks. The real pipeline, on this machine, under load.

Each drill: the exchange simulator trades ~5,000 ticks/s over five symbols (four aggTrade streams, one trade
stream) for ~30 s — less than the 60 s of the issue, so that all drills together stay well under 10 minutes; the
rate is the one asked for. The producer (`python -m producer_service`, a real process) sends to the queue of
template.yaml, deployed unchanged on a host-mode LocalStack; the ingest function (LocalStack's SQS event source
mapping, the local executor's host process) writes to MariaDB. Mid-run one thing breaks. Afterwards the stored
trade-id set must equal the simulator's emitted set exactly: no id missing, none that was never emitted, and as many
rows as ids emitted (the primary key rules out duplicate rows; redelivered ticks it absorbed are counted).

The drills get a LocalStack of their own (a free port, state under TICKSTREAM_LOCALSTACK_DIR/drills): one drill
restarts it, which would break stacks other modules deployed on the session's LocalStack. They connect to MariaDB
as a dedicated user with a random password, so the last test can look for that password in every log.

Set TICKSTREAM_DRILL_RESULTS=<path> to write the results table there (tests/drill_results.md came from this).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from infra.localstack_config import LocalStackSettings, settings_from_env
from tests.api_fixtures import free_port
from tests.drill_harness import (
    SYMBOLS,
    TARGET_TICKS_PER_SECOND,
    Drill,
    DrillResult,
    DrillStack,
    create_db_user,
    drill,
    drop_db_user,
    kill_worker_mid_invocation,
    results_document,
)
from tests.mariadb_control import mariadb_stopped
from tests.tcp_proxy import TcpProxy
from tickstream.settings import DatabaseSettings

pytestmark = pytest.mark.drills
TRADE_SECONDS = 30  # per drill, split around the fault
OUTAGE_SECONDS = 20
# Below this the drill did not test what it claims (a starved machine); the simulator catches up on short stalls.
MIN_RATE = 0.8 * TARGET_TICKS_PER_SECOND


@pytest.fixture(scope="module")
def drill_db_user(db_settings: DatabaseSettings) -> Iterator[DatabaseSettings]:
    user = create_db_user(db_settings)
    yield user
    drop_db_user(db_settings, user)


@pytest.fixture(scope="module")
def drill_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("drills")


@pytest.fixture(scope="module")
def api_token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def stack(drill_db_user: DatabaseSettings, api_token: str) -> Iterator[DrillStack]:
    session = settings_from_env()
    localstack = LocalStackSettings(port=free_port(), state_dir=session.state_dir / "drills",
                                    localstack_python=session.localstack_python, sam_cli=session.sam_cli)
    localstack.state_dir.mkdir(parents=True, exist_ok=True)
    # A 3 s visibility timeout (AWS default here: 180 s) makes a 20 s MariaDB outage push early messages past
    # maxReceiveCount (5) into the DLQ, so the redrive path is part of the drill rather than a maybe.
    parameters = {"DbHost": drill_db_user.host, "DbPort": str(drill_db_user.port), "DbUser": drill_db_user.user,
                  "DbPassword": drill_db_user.password, "DbName": drill_db_user.name, "ApiToken": api_token,
                  "IngestTimeoutSeconds": "3", "TicksQueueVisibilityTimeoutSeconds": "3"}
    deployed = DrillStack(localstack, parameters)
    try:
        deployed.start()
        yield deployed
    finally:
        deployed.stop()


@pytest.fixture(scope="module")
def results(drill_dir: Path) -> Iterator[list[DrillResult]]:
    collected: list[DrillResult] = []
    started = time.monotonic()
    yield collected
    if collected:
        table = results_document(collected, time.monotonic() - started)
        (drill_dir / "drill_results.md").write_text(table)
        if target := os.environ.get("TICKSTREAM_DRILL_RESULTS"):
            Path(target).write_text(table)


StartDrill = Callable[..., AbstractContextManager[Drill]]


@pytest.fixture
def start_drill(stack: DrillStack, drill_db_user: DatabaseSettings, db_settings: DatabaseSettings,
                drill_dir: Path, db: object) -> StartDrill:
    """`start_drill(name, seed, endpoint_url=None, **producer_env)` → a context manager yielding a Drill, over an
    empty schema (the `db` fixture empties it)."""
    def _start(name: str, seed: int, endpoint_url: str | None = None,
               **producer_env: str) -> AbstractContextManager[Drill]:
        return drill(name, stack, drill_db_user, db_settings, drill_dir, seed, endpoint_url, **producer_env)

    return _start


def record_and_check(results: list[DrillResult], result: DrillResult) -> None:
    results.append(result)
    print(f"\n{result}")
    assert result.missing == 0, f"{result.drill}: {result.missing} emitted trades never stored"
    assert result.unexpected == 0, f"{result.drill}: {result.unexpected} stored trades were never emitted"
    assert result.stored_rows == result.emitted, f"{result.drill}: {result.stored_rows} rows for {result.emitted} ids"
    assert result.rate >= MIN_RATE, f"{result.drill}: only {result.rate:.0f} ticks/s emitted (machine starved?)"


def restart_producer(d: Drill, down_seconds: float) -> None:
    time.sleep(down_seconds)  # the exchange keeps trading while no producer runs: backfilled after the restart
    d.producer.start()
    d.wait_subscribed()


# --- the drills ---------------------------------------------------------------------------------------------

def test_producer_killed_with_sigkill_resumes_from_what_is_stored(
        start_drill: StartDrill, results: list[DrillResult]) -> None:
    """kill -9: whatever sat in the producer's memory (unsent ticks, open backfills) is lost with it. The restarted
    producer resumes from the newest stored id per script, rescans stored ids for holes and backfills by id."""
    with start_drill("producer kill -9", seed=101) as d:
        d.start()
        d.trade(12)
        d.producer.kill()
        restart_producer(d, down_seconds=5)
        d.trade(TRADE_SECONDS - 12 - 5)
        backfilled = d.producer.backfilled()
        result = d.finish(notes=f"SIGKILL at 12 s, restarted 5 s later; {backfilled:,} trades backfilled from REST")
    record_and_check(results, result)
    assert backfilled > 0


def test_producer_sigterm_flushes_and_restart_loses_nothing(
        start_drill: StartDrill, results: list[DrillResult]) -> None:
    """SIGTERM: the producer stops reading, finishes backfills, sends (or journals) every buffered tick and exits 0;
    the journal is empty because SQS took everything. The restart backfills what traded while it was down."""
    with start_drill("producer SIGTERM", seed=102) as d:
        d.start()
        d.trade(12)
        assert d.producer.terminate(timeout=60) == 0
        assert "stopping (flushing buffers and journal)" in d.producer.log()
        assert d.producer.journaled_bytes() == 0, "SQS was up: nothing left in the journal"
        restart_producer(d, down_seconds=5)
        d.trade(TRADE_SECONDS - 12 - 5)
        result = d.finish(notes=f"SIGTERM at 12 s (exit 0), restarted 5 s later; "
                                f"{d.producer.backfilled():,} trades backfilled")
    record_and_check(results, result)


def test_exchange_faults_every_5_seconds(
        start_drill: StartDrill, results: list[DrillResult]) -> None:
    """A different simulator fault every 5 s: abrupt drops, ids withheld from the stream (still in REST history),
    events sent twice, serverShutdown, connections cut by a short maximum lifetime, malformed frames; and the
    producer's own make-before-break rotation by age (PRODUCER_ROTATE_AFTER_SECONDS=8)."""
    with start_drill("exchange faults every 5 s", seed=103, PRODUCER_ROTATE_AFTER_SECONDS="8") as d:
        sim = d.sim

        def short_lifetime() -> None:
            sim.set_max_lifetime(3.0)
            sim.drop_connections()  # the reconnections get the 3 s lifetime, and are cut again by it

        faults = [("drop", sim.drop_connections), ("skip ids", lambda: sim.skip_ids(0.0005)),
                  ("duplicates", lambda: sim.duplicate(0.01)), ("serverShutdown", lambda: sim.announce_shutdown(1.0)),
                  ("3 s lifetime", short_lifetime), ("malformed", lambda: sim.malformed(0.002))]
        d.start()
        for _, inject in faults:
            d.trade(5)
            clear_faults(d)
            inject()
        d.trade(5)
        clear_faults(d)
        d.trade(2)  # clean trades after the last fault reveal any gap still open
        log = d.producer.log
        sent = {key: sum(sim.counts(symbol, kind)[key] for symbol, kind in SYMBOLS.items())
                for key in ("skipped", "duplicated", "malformed")}
        notes = (f"{len(faults)} faults, 5 s apart: {log().count('connection lost')} connections lost, "
                 f"{log().count('rotating (')} rotations; {sent['skipped']} ids withheld from the stream, "
                 f"{sent['duplicated']} sent twice, {sent['malformed']} malformed frames; "
                 f"{d.producer.backfilled():,} trades backfilled")
        result = d.finish(notes=notes)
    record_and_check(results, result)
    assert "server announced shutdown" in log()
    assert "rotating (age limit)" in log()
    assert "skipped malformed frame" in log()


def clear_faults(d: Drill) -> None:
    d.sim.skip_ids(0)
    d.sim.duplicate(0)
    d.sim.malformed(0)
    d.sim.set_max_lifetime(24 * 3600.0)


def test_lambda_worker_killed_mid_batch(start_drill: StartDrill, stack: DrillStack,
                                        results: list[DrillResult]) -> None:
    """kill -9 the ingest function's host process inside an invocation, three times: twice right after START
    (before anything is written), once after the batch was committed but before the answer reached LocalStack (the
    worst case: SQS sees a failure for ticks that are stored). LocalStack fails the invocation (Runtime.ExitError),
    SQS redelivers the batch after the visibility timeout into a fresh process, and the primary key skips what the
    killed process had committed."""
    function_name = stack.function_name()
    with start_drill("Lambda worker kill -9", seed=104) as d:
        d.start()
        confirmed = {}
        for after_commit in (False, True, False):
            d.trade(8)
            killed = kill_worker_mid_invocation(stack.localstack_pid, function_name, after_commit=after_commit)
            confirmed[after_commit] = confirmed.get(after_commit, 0) + killed
        d.trade(TRADE_SECONDS - 24)
        result = d.finish(notes=f"3 worker processes SIGKILLed mid-invocation: {confirmed[False]} before the "
                                f"write, {confirmed[True]} after the commit (confirmed by their logs)")
    exit_errors = sum("Runtime exited with error" in line for line in d.function_lines)
    result.notes += f"; {exit_errors} invocations failed with Runtime.ExitError"
    record_and_check(results, result)
    assert confirmed[False] >= 1 and exit_errors >= 1, "a kill landed inside an invocation"
    if confirmed[True]:
        assert result.redelivered_ignored > 0, "the committed batch was redelivered and its ticks skipped"


def test_mariadb_stopped_for_20_seconds(start_drill: StartDrill, stack: DrillStack, db_settings: DatabaseSettings,
                                        drill_db_user: DatabaseSettings, api_token: str,
                                        results: list[DrillResult]) -> None:
    """MariaDB down for 20 s under load: every ingest invocation fails, SQS keeps the batches and redelivers them
    every 3 s (the drill stack's visibility timeout), so messages received 5 times move to the DLQ. Meanwhile the
    API answers 503, never a 500, and names no secret. After MariaDB is back, what is left in the queue is stored
    and the DLQ is redriven through the deployed API (POST /dlq/redrive) until everything emitted is stored."""
    with start_drill("MariaDB stopped 20 s", seed=105) as d:
        d.start()
        d.trade(8)
        d.db.close()
        with mariadb_stopped(db_settings):
            d.trade(OUTAGE_SECONDS / 2)
            probes = [stack.api("GET", "/health"), stack.api("GET", "/stats", api_token),
                      stack.api("GET", "/brokers", api_token)]
            d.trade(OUTAGE_SECONDS / 2)
        d.trade(TRADE_SECONDS - 8 - OUTAGE_SECONDS + 2)
        d.stop_trading()
        moved, peak_dlq, redrives = redrive_until_stored(d, stack, api_token, timeout=180)
        result = d.finish(notes=f"{OUTAGE_SECONDS} s outage; {peak_dlq} messages reached the DLQ, {moved} redriven "
                                f"by {redrives} POST /dlq/redrive; API during the outage: "
                                f"{', '.join(str(p.status_code) for p in probes)}")
    record_and_check(results, result)
    assert peak_dlq > 0 and moved >= peak_dlq, "the outage pushed messages to the DLQ and the API redrove them"
    assert stack.depth(stack.dlq_url) == 0
    for probe in probes:
        assert probe.status_code in (200, 503), probe.text
        assert drill_db_user.password not in probe.text and api_token not in probe.text


def redrive_until_stored(d: Drill, stack: DrillStack, token: str, timeout: float) -> tuple[int, int, int]:
    """Whenever the ticks queue is empty and the DLQ is not, redrive it through the API; until every emitted id is
    stored. Returns (messages moved, the largest DLQ depth seen, redrive calls)."""
    moved = peak = calls = 0
    deadline = time.monotonic() + timeout
    while not d.complete() and time.monotonic() < deadline:
        in_dlq = stack.depth(stack.dlq_url)
        peak = max(peak, in_dlq)
        if in_dlq and stack.depth(stack.queue_url) == 0:
            reply = stack.api("POST", "/dlq/redrive", token, json={})
            assert reply.status_code == 200, reply.text
            moved, calls = moved + reply.json()["moved"], calls + 1
        time.sleep(1.0)
    return moved, peak, calls


def test_localstack_stopped_for_20_seconds(
        start_drill: StartDrill, stack: DrillStack, results: list[DrillResult]) -> None:
    """LocalStack (SQS, Lambda, everything) stopped for 20 s and started again. What is simulated, honestly:

    - The producer reaches SQS through a TCP proxy that is cut first: from then on its sends fail and it journals.
      The queue is then drained by the ingest function before LocalStack stops, because host LocalStack runs with
      PERSISTENCE=0 (community edition) and would lose queued messages, which SQS on AWS never does.
    - LocalStack is stopped (SIGTERM, its function processes die with it), kept down until 20 s after the cut,
      started again, and template.yaml is redeployed: a new stack whose queue has a new random name, so a new URL.
    - The producer is restarted with the new TICKS_QUEUE_URL (on AWS: a redeploy of the ECS task with the stack's
      new output). SIGTERM leaves the journal on disk (SQS still refuses: the old queue is gone); the new process
      replays it oldest first, then resumes and backfills the seconds it was down.
    """
    proxy = TcpProxy("127.0.0.1", stack.localstack.port)
    try:
        with start_drill("LocalStack stopped 20 s", seed=106, endpoint_url=proxy.url) as d:
            d.start()
            d.trade(10)
            proxy.cut()
            cut_at = time.monotonic()
            drained = wait_for(lambda: stack.depth(stack.queue_url) == 0, timeout=15)
            d.save_function_logs()
            remaining = OUTAGE_SECONDS - (time.monotonic() - cut_at)
            down = stack.restart(down_seconds=remaining)
            outage = time.monotonic() - cut_at
            proxy.restore()
            assert d.producer.terminate(timeout=60) == 0
            journaled = d.producer.journaled_bytes()
            assert journaled > 0, "the outage was journaled and kept for the next start"
            d.producer.start()
            d.wait_subscribed()
            d.trade(8)
            replayed = d.producer.count(r"replayed \d+ journaled messages")
            result = d.finish(notes=f"SQS unreachable {outage:.0f} s (LocalStack down {down:.0f} s, then "
                                    f"redeployed); {journaled / 1e6:.1f} MB journaled and replayed; "
                                    f"{d.producer.backfilled():,} trades backfilled")
    finally:
        proxy.close()
    record_and_check(results, result)
    assert drained, "the queue drained before LocalStack stopped"
    assert replayed >= 1


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return condition()


def test_no_secret_in_any_drill_log(stack: DrillStack, drill_db_user: DatabaseSettings, api_token: str,
                                    drill_dir: Path) -> None:
    """Neither the DB password (the drills' dedicated user's, random) nor the API token appears in any log of the
    drills above: producer, ingest and API function logs (CloudWatch), LocalStack's own log — including their
    failure paths (MariaDB down, SQS down, kills) and the API calls made with the token."""
    logs = [*drill_dir.rglob("*.log"), stack.localstack.log_file]
    if not any(path.name == "producer.log" for path in logs):
        pytest.skip("no drill ran in this session")
    for path in logs:
        text = path.read_text(errors="replace")
        assert drill_db_user.password not in text, f"the DB password appears in {path}"
        assert api_token not in text, f"the API token appears in {path}"
