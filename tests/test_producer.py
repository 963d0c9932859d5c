"""The producer against the exchange simulator (real WebSockets, real REST) and a real LocalStack SQS queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from simulator.harness import ExchangeSimulator
from tests.conftest import make_script
from tests.producer_harness import (
    QueueReader,
    expected_ids,
    fresh_queue,
    register_simulator,
    running_producer,
    sqs,
    start_trading,
    stop_trading,
)
from tests.tcp_proxy import TcpProxy
from tickstream.settings import DatabaseSettings

pytestmark = pytest.mark.localstack
SYMBOLS = ["BTCUSDT", "ETHUSDT", "PEPEUSDT"]


@pytest.fixture
def sim() -> Iterator[ExchangeSimulator]:
    with ExchangeSimulator(symbols=tuple([*SYMBOLS, "SOLUSDT", "BNBUSDT"]), rate=0, seed=11,
                           ping_interval=2.0) as simulator:
        yield simulator


@pytest.fixture
def sqs_client(localstack: Any) -> Any:
    return sqs(localstack.endpoint_url)


@pytest.fixture
def queue(sqs_client: Any) -> Iterator[str]:
    url = fresh_queue(sqs_client)
    yield url
    sqs_client.delete_queue(QueueUrl=url)


def assert_exactly_once(reader: QueueReader, sim: ExchangeSimulator, scripts: dict[str, int],
                        resends_allowed: bool = False) -> None:
    """Every emitted id reached SQS, and none twice. `resends_allowed`: when SQS dropped the connection after
    taking a batch, the producer cannot know and journals it again — at-least-once, absorbed by the ingest's
    primary key; missing ids are never allowed."""
    complete = reader.wait_for(lambda: all(reader.ids(sid) >= expected_ids(sim, sym) for sym, sid in scripts.items()),
                               timeout=30)
    for symbol, script_id in scripts.items():
        missing = expected_ids(sim, symbol) - reader.ids(script_id)
        assert not missing, f"{symbol}: {len(missing)} trades never reached SQS, e.g. {sorted(missing)[:5]}"
        assert reader.ids(script_id) <= expected_ids(sim, symbol), f"{symbol}: ids the exchange never emitted"
    assert complete
    if not resends_allowed:
        assert reader.duplicates() == []


def test_every_trade_once_across_drops_skips_duplicates_malformed_rotation_and_shutdown(
        db: pymysql.Connection, db_settings: DatabaseSettings, localstack: Any, sqs_client: Any, queue: str,
        sim: ExchangeSimulator, tmp_path: Path) -> None:
    scripts = register_simulator(db, sim, SYMBOLS)
    sim.skip_ids(0.02)
    sim.duplicate(0.02)
    sim.malformed(0.01)
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path, rotate_after_seconds=4.0) as producer:
        start_trading(sim, producer)
        time.sleep(2.5)
        assert sim.drop_connections() >= 1
        time.sleep(2.5)
        sim.announce_shutdown(delay=1.0)
        time.sleep(4.0)  # includes a make-before-break rotation by age
        sim.skip_ids(0)
        sim.duplicate(0)
        sim.malformed(0)
        time.sleep(1.5)  # clean trades after the last fault reveal any gap still open
        stop_trading(sim)
        reader = QueueReader(sqs_client, queue)
        assert_exactly_once(reader, sim, scripts)
        feed = next(iter(producer.service.feeds.values()))
        assert feed.malformed > 0, "the simulator's malformed frames were seen and skipped"
        assert feed.backfiller.filled > 0, "skipped ids and the reconnect were filled from REST"
        assert producer.service.sequencer.duplicates > 0, "resent trades and the rotation overlap were dropped"
        assert feed.backfiller.unfilled == []


def test_scripts_added_and_removed_live_without_restart(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                        localstack: Any, sqs_client: Any, queue: str,
                                                        sim: ExchangeSimulator, tmp_path: Path) -> None:
    scripts = register_simulator(db, sim, ["BTCUSDT"])
    broker_id = _broker_of(db, scripts["BTCUSDT"])
    reader = QueueReader(sqs_client, queue)
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path) as producer:
        start_trading(sim, producer)
        assert reader.wait_for(lambda: bool(reader.ids(scripts["BTCUSDT"])), timeout=10)
        sol = make_script(db, broker_id, "SOLUSDT")
        assert reader.wait_for(lambda: bool(reader.ids(sol)), timeout=10), "new script subscribed within 10 s"
        with db.cursor() as cursor:
            cursor.execute("UPDATE scripts SET is_active = FALSE WHERE id = %s", (sol,))
        time.sleep(2.0)
        reader.wait_for(lambda: False, timeout=1.0)
        count_after_stop = len(reader.ids(sol))
        reader.wait_for(lambda: False, timeout=2.0)
        assert len(reader.ids(sol)) == count_after_stop, "deactivated script unsubscribed"
        assert sim.connection_count() == 1, "changes went over the open connection, no reconnect"
        feed = next(iter(producer.service.feeds.values()))
        assert set(feed.by_stream) == {"btcusdt@aggTrade"}


def test_streams_are_sharded_over_connections(db: pymysql.Connection, db_settings: DatabaseSettings,
                                              localstack: Any, sqs_client: Any, queue: str, sim: ExchangeSimulator,
                                              tmp_path: Path) -> None:
    symbols = [*SYMBOLS, "SOLUSDT", "BNBUSDT"]
    scripts = register_simulator(db, sim, symbols)
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path,
                          max_streams_per_connection=2) as producer:
        start_trading(sim, producer)
        reader = QueueReader(sqs_client, queue)
        assert reader.wait_for(lambda: all(reader.ids(sid) for sid in scripts.values()), timeout=10)
        assert sim.connection_count() == 3


def test_unknown_symbol_is_reported_and_the_rest_flows(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                       localstack: Any, sqs_client: Any, queue: str,
                                                       sim: ExchangeSimulator, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    scripts = register_simulator(db, sim, ["BTCUSDT", "NOPEUSDT"])
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path) as producer:
        start_trading(sim, producer)
        reader = QueueReader(sqs_client, queue)
        assert reader.wait_for(lambda: bool(reader.ids(scripts["BTCUSDT"])), timeout=10)
        feed = next(iter(producer.service.feeds.values()))
        assert "nopeusdt@aggTrade" not in feed.by_stream
    assert any("NOPEUSDT is not a trading symbol" in record.getMessage() for record in caplog.records)


def test_sqs_outage_is_journaled_then_replayed(db: pymysql.Connection, db_settings: DatabaseSettings,
                                               localstack: Any, sqs_client: Any, queue: str, sim: ExchangeSimulator,
                                               tmp_path: Path) -> None:
    scripts = register_simulator(db, sim, SYMBOLS)
    port = int(localstack.endpoint_url.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port)
    try:
        with running_producer(db_settings, proxy.url, queue, tmp_path) as producer:
            start_trading(sim, producer)
            time.sleep(1.5)
            proxy.cut()
            time.sleep(3.0)
            journal = producer.service.sink.journal
            assert journal.pending() and journal.size_bytes > 0, "ticks went to the journal during the outage"
            proxy.restore()
            time.sleep(1.0)
            stop_trading(sim)
            assert_exactly_once(QueueReader(sqs_client, queue), sim, scripts, resends_allowed=True)
            assert not journal.pending()
    finally:
        proxy.close()


def test_resumes_from_what_is_stored_after_a_restart(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                     localstack: Any, sqs_client: Any, queue: str,
                                                     sim: ExchangeSimulator, tmp_path: Path) -> None:
    """Trades made while no producer ran are backfilled from REST, starting after the newest stored id."""
    scripts = register_simulator(db, sim, ["BTCUSDT"])
    script_id = scripts["BTCUSDT"]
    sim.config.rate = 150
    time.sleep(0.2)
    first = min(sim.emitted_ids("BTCUSDT"))
    with db.cursor() as cursor:  # as if ids up to first+5 were stored by an earlier run, with a hole at first+2
        for trade_id in [first, first + 1, first + 3, first + 4, first + 5]:
            cursor.execute(
                "INSERT INTO ticks (script_id, trade_id, price, quantity, is_buyer_maker, traded_at, event_at,"
                " received_at_producer) VALUES (%s, %s, 1, 1, 0, NOW(6), NOW(6), NOW(6))", (script_id, trade_id))
    time.sleep(1.0)  # trades happen while the producer is down
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path):
        time.sleep(1.0)
        stop_trading(sim)
        reader = QueueReader(sqs_client, queue)
        wanted = expected_ids(sim, "BTCUSDT") - {first, first + 1, first + 3, first + 4, first + 5}
        assert reader.wait_for(lambda: reader.ids(script_id) >= wanted, timeout=20)
        assert reader.ids(script_id) == wanted
        assert reader.duplicates() == []


def _broker_of(conn: pymysql.Connection, script_id: int) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SELECT broker_id FROM scripts WHERE id = %s", (script_id,))
        return cursor.fetchone()[0]




def test_sigterm_flushes_what_is_buffered(db: pymysql.Connection, db_env: dict[str, str], localstack: Any,
                                          sqs_client: Any, queue: str, sim: ExchangeSimulator,
                                          tmp_path: Path) -> None:
    scripts = register_simulator(db, sim, SYMBOLS)
    env = {**os.environ, **db_env, "AWS_ENDPOINT_URL": localstack.endpoint_url, "TICKS_QUEUE_URL": queue,
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "PRODUCER_LINGER_MS": "600000", "PRODUCER_JOURNAL_DIR": str(tmp_path), "PRODUCER_REFRESH_SECONDS": "0.5",
           "BROKER_ID": ""}
    log_path = tmp_path / "producer.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "producer_service"], env=env, stdout=log, stderr=log,
                                   cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 15
        while b"connected, subscribed to 3 symbols" not in log_path.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert time.monotonic() < deadline, log_path.read_text()[-2000:]
        time.sleep(0.5)  # the SUBSCRIBE follows the connect
        sim.config.rate = 150
        time.sleep(1.5)
        stop_trading(sim)
        time.sleep(0.5)
        reader = QueueReader(sqs_client, queue)
        reader.drain_once()
        assert reader.messages == 0, "with a 10-minute linger nothing is sent before the flush"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert b"stopping (flushing buffers and journal)" in log_path.read_bytes()
    assert_exactly_once(reader, sim, scripts)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from producer_service.config import ProducerSettings, broker_ids_from_env

    monkeypatch.setenv("PRODUCER_MAX_STREAMS_PER_CONNECTION", "5000")
    monkeypatch.setenv("PRODUCER_LINGER_MS", "250")
    monkeypatch.setenv("BROKER_ID", "3, 4")
    settings = ProducerSettings.from_env()
    assert settings.max_streams_per_connection == 1024, "never above Binance's cap"
    assert settings.linger_seconds == 0.25
    assert broker_ids_from_env() == [3, 4]


def test_a_restart_resumes_after_what_its_journal_still_holds(db: pymysql.Connection,
                                                              db_settings: DatabaseSettings, localstack: Any,
                                                              sqs_client: Any, queue: str, sim: ExchangeSimulator,
                                                              tmp_path: Path) -> None:
    """Journaled ticks (SQS was down when the last process stopped) are replayed, not fetched again from REST."""
    from producer_service.journal import Journal
    from tickstream.codec import pack_ticks
    from tickstream.ticks import Tick

    scripts = register_simulator(db, sim, ["BTCUSDT"])
    script_id = scripts["BTCUSDT"]
    sim.config.rate = 150
    time.sleep(0.5)
    first = min(sim.emitted_ids("BTCUSDT"))
    now_us = int(time.time() * 1_000_000)
    journaled = [Tick(script_id, i, "1.0", "1.0", False, now_us, now_us, now_us) for i in range(first, first + 50)]
    journal = Journal(tmp_path, 10**9)
    journal.append(list(pack_ticks(journaled, max_bytes=1024)))
    journal.close()
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path):
        time.sleep(1.0)
        stop_trading(sim)
        reader = QueueReader(sqs_client, queue)
        assert reader.wait_for(lambda: reader.ids(script_id) >= expected_ids(sim, "BTCUSDT"), timeout=20)
        assert reader.ids(script_id) == expected_ids(sim, "BTCUSDT")
        assert reader.duplicates() == [], "journaled ids were fetched from REST again"


def test_a_broker_added_later_is_picked_up(db: pymysql.Connection, db_settings: DatabaseSettings, localstack: Any,
                                           sqs_client: Any, queue: str, sim: ExchangeSimulator,
                                           tmp_path: Path) -> None:
    first = register_simulator(db, sim, ["BTCUSDT"], name="first broker")
    reader = QueueReader(sqs_client, queue)
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path) as producer:
        start_trading(sim, producer)
        assert reader.wait_for(lambda: bool(reader.ids(first["BTCUSDT"])), timeout=10)
        later = register_simulator(db, sim, ["ETHUSDT"], name="second broker")
        assert reader.wait_for(lambda: bool(reader.ids(later["ETHUSDT"])), timeout=10), "no restart needed"
        assert len(producer.service.feeds) == 2


def test_subscribing_many_streams_is_paced_under_the_limit(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                           localstack: Any, queue: str, tmp_path: Path) -> None:
    """1,000 streams take 5 SUBSCRIBE messages; with the server's pings answered too that exceeds 5 messages a
    second unless the producer paces them — and the exchange then drops the connection."""
    symbols = [f"S{n:04d}USDT" for n in range(1000)]
    with ExchangeSimulator(symbols=tuple(symbols), rate=0, seed=5, ping_interval=0.5) as many:
        register_simulator(db, many, symbols)
        with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path) as producer:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and len(many.subscriptions()) < 1000:
                time.sleep(0.2)
            assert len(many.subscriptions()) == 1000
            time.sleep(2)
            (conn,) = next(iter(producer.service.feeds.values())).connections
            assert conn.sessions == 1, "the exchange never cut the connection for exceeding 5 messages/s"


def test_server_pings_are_answered(db: pymysql.Connection, db_settings: DatabaseSettings, localstack: Any,
                                   queue: str, sim: ExchangeSimulator, tmp_path: Path) -> None:
    sim.config.ping_interval, sim.config.pong_timeout = 0.3, 1.0  # Binance: 20 s and 60 s
    register_simulator(db, sim, ["BTCUSDT"])
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path) as producer:
        start_trading(sim, producer)
        time.sleep(4)
        (conn,) = next(iter(producer.service.feeds.values())).connections
        assert conn.sessions == 1, "the exchange dropped a client that did not pong"


def test_watchdog_reconnects_a_silent_socket_and_nothing_is_lost(db: pymysql.Connection,
                                                                 db_settings: DatabaseSettings, localstack: Any,
                                                                 sqs_client: Any, queue: str,
                                                                 sim: ExchangeSimulator, tmp_path: Path) -> None:
    sim.config.ping_interval = 3600  # no pings either: the socket goes fully silent during the pause
    scripts = register_simulator(db, sim, ["BTCUSDT", "ETHUSDT"])
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path, watchdog_seconds=1.5) as producer:
        start_trading(sim, producer)
        time.sleep(1)
        sim.pause(4)  # trades go on (and into REST history) but nothing is sent
        time.sleep(5)
        stop_trading(sim)
        (conn,) = next(iter(producer.service.feeds.values())).connections
        assert conn.sessions >= 2, "the watchdog reconnected"
        assert_exactly_once(QueueReader(sqs_client, queue), sim, scripts)
