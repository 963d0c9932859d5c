"""The producer against the exchange simulator (real WebSockets, real REST) and a real LocalStack SQS queue."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pymysql
import pytest

from producer_service.backfill import BackfillJob
from producer_service.catalog_targets import load_targets_for
from producer_service.config import ProducerSettings
from producer_service.connection import (
    MAX_MESSAGE_BYTES,
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_CONT,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    ConnectionLimits,
    FrameError,
    FrameReader,
    MessageTooBig,
    StreamConnection,
)
from producer_service.exchanges import registry
from producer_service.exchanges.base import script_target
from producer_service.exchanges.binance import ADAPTER as BINANCE
from producer_service.feed import Feed
from producer_service.journal import Journal
from producer_service.ledger import GapLedger
from producer_service.pacing import RateLimiter
from producer_service.rest import RestClient
from producer_service.sequencer import Gap, Sequencer
from producer_service.service import ProducerService
from producer_service.sink import TickBuffer
from simulator.harness import ExchangeSimulator
from tests.conftest import SIMULATOR_HOSTS, broker_of, make_script
from tests.producer_harness import (
    FAST_PRODUCER,
    QueueReader,
    expected_ids,
    register_simulator,
    running_producer,
    sqs,
    start_trading,
    stop_trading,
    store_with_coverage,
    wait_for,
)
from tests.tcp_proxy import TcpProxy
from tickstream.db import connect
from tickstream.settings import DatabaseSettings
from tickstream.ticks import Tick

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
    broker_id = broker_of(db, scripts["BTCUSDT"])
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


def control_requests(sim: ExchangeSimulator, method: str) -> list[list[str]]:
    """The streams of each `method` request ("SUBSCRIBE", "UNSUBSCRIBE") the clients sent, in order."""
    requests = [orjson.loads(message) for message in sim.client_messages()]
    return [request["params"] for request in requests if request.get("method") == method]


def test_one_change_unsubscribes_in_batches_as_it_subscribes(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                             localstack: Any, queue: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten of twelve scripts deactivated in one change go out as UNSUBSCRIBEs of up to the venue's streams per
    message (4 here, as the SUBSCRIBEs went): three messages over the open connection, not ten."""
    limits = dataclasses.replace(BINANCE.limits, streams_per_message=4)
    monkeypatch.setitem(registry.ADAPTERS, "binance", dataclasses.replace(BINANCE, limits=limits))
    symbols = [f"S{n:02d}USDT" for n in range(12)]
    kept, gone = symbols[10:], symbols[:10]
    with ExchangeSimulator(symbols=tuple(symbols), rate=0, seed=13) as sim:
        scripts = register_simulator(db, sim, symbols)
        with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path):
            assert wait_for(lambda: len(sim.subscriptions()) == len(symbols), timeout=15)
            with db.cursor() as cursor:
                cursor.execute("UPDATE scripts SET is_active = FALSE WHERE id IN %s",
                               (tuple(scripts[symbol] for symbol in gone),))
            assert wait_for(lambda: sim.subscriptions() == {BINANCE.stream_key(s, "aggTrade") for s in kept}, 15)
            subscribed, unsubscribed = (control_requests(sim, method) for method in ("SUBSCRIBE", "UNSUBSCRIBE"))
            connections = sim.connection_count()
    assert [len(streams) for streams in subscribed] == [4, 4, 4]
    assert sorted(len(streams) for streams in unsubscribed) == [2, 4, 4], unsubscribed
    assert sorted(stream for streams in unsubscribed for stream in streams) == sorted(
        BINANCE.stream_key(symbol, "aggTrade") for symbol in gone)
    assert connections == 1, "over the open connection"


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
            journal = producer.service.sink.journal
            # How soon the first send fails depends on botocore's retries, which a loaded machine stretches.
            assert wait_for(lambda: journal.pending() and journal.size_bytes > 0, timeout=30), \
                "ticks went to the journal during the outage"
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
    now_us = time.time_ns() // 1000  # as if ids up to first+5 were stored by an earlier run, with a hole at first+2
    store_with_coverage(db, [Tick(script_id, trade_id, "1", "1", False, now_us, now_us, now_us)
                             for trade_id in [first, first + 1, first + 3, first + 4, first + 5]])
    time.sleep(1.0)  # trades happen while the producer is down
    with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path):
        time.sleep(1.0)
        stop_trading(sim)
        reader = QueueReader(sqs_client, queue)
        wanted = expected_ids(sim, "BTCUSDT") - {first, first + 1, first + 3, first + 4, first + 5}
        assert reader.wait_for(lambda: reader.ids(script_id) >= wanted, timeout=20)
        assert reader.ids(script_id) == wanted
        assert reader.duplicates() == []




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
    monkeypatch.setenv("PRODUCER_JOURNAL_FSYNC_MS", "0")
    monkeypatch.setenv("BROKER_ID", "3, 4")
    settings = ProducerSettings.from_env()
    assert settings.max_streams_per_connection == 1024, "never above Binance's cap"
    assert settings.linger_seconds == 0.25
    assert settings.journal_fsync_seconds == 0.0, "0 is a policy (fsync every append), not 'unset'"
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


class DiscardingSink:
    """The sink's interface without SQS, for tests about the producer's threads rather than delivery."""

    def __init__(self, journal_dir: Path) -> None:
        self.journal = Journal(journal_dir, 10**9)
        self.ticks = 0

    def put(self, tick: Tick, stop: threading.Event | None = None) -> None:
        self.ticks += 1

    def put_taken_marker(self, stop: threading.Event | None = None) -> threading.Event:
        taken = threading.Event()
        taken.set()
        return taken

    def close(self) -> None:
        self.journal.close()


def test_an_endpoint_change_ends_the_old_feeds_backfill(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                        tmp_path: Path) -> None:
    """A backfill blocked in a REST wait (the old exchange answers 429 with a Retry-After of up to an hour) ends
    when the broker's endpoint changes and its feed is closed; the new feed takes the gap over."""
    with (ExchangeSimulator(symbols=("BTCUSDT",), rate=0, weight_limit=24, weight_window=3600) as old,
          ExchangeSimulator(symbols=("BTCUSDT",), rate=0) as new):
        script_id = register_simulator(db, old, ["BTCUSDT"])["BTCUSDT"]
        stored = [Tick(script_id, trade_id, "1.5", "2", False, 1_700_000_000_000_000, 1_700_000_000_000_000,
                       1_700_000_000_000_000) for trade_id in (1_000, 5_000)]
        store_with_coverage(db, stored)  # a hole: the audit finds it once the script is resumed
        service = ProducerService(FAST_PRODUCER, DiscardingSink(tmp_path),  # type: ignore[arg-type]
                                  lambda: connect(db_settings, autocommit=True),
                                  load_targets_for(None, SIMULATOR_HOSTS), SIMULATOR_HOSTS)
        try:
            service.refresh()
            (old_feed,) = service.feeds.values()
            old_thread = old_feed.backfiller._thread
            # exchangeInfo (20) and one empty aggTrades page (4) use the old exchange's budget: the retry gets 429
            assert wait_until(lambda: old_feed.rest.used_weight > 24), "the old exchange answered 429"
            time.sleep(0.5)
            assert old_thread.is_alive() and not old_feed.backfiller.idle(), "the backfill waits out the 429"
            with db.cursor() as cursor:
                cursor.execute("UPDATE brokers SET api_config = %s",
                               (orjson.dumps({"ws_url": new.ws_url, "rest_url": new.rest_url}).decode(),))
            service.refresh()
            (new_feed,) = service.feeds.values()
            assert new_feed is not old_feed
            assert wait_until(lambda: not old_thread.is_alive(), timeout=10), "the old feed's backfill thread ended"
            assert not any(conn._thread.is_alive() for conn in old_feed.connections)
            assert wait_until(lambda: not new_feed.backfiller.idle() or bool(new_feed.backfiller.unfilled)), \
                "the new feed resumed the script and found the hole again"
        finally:
            service.close()


def test_a_put_waiting_for_room_ends_when_its_feed_stops() -> None:
    """A closing feed's backfill may be blocked on a full tick buffer (SQS and the journal backed up): its stop
    ends the wait; a put without a stop (the live path) still waits."""
    buffer = TickBuffer(capacity=1)
    buffer.put("first")
    stop = threading.Event()
    outcome: list[str] = []

    def backfill_put() -> None:
        try:
            buffer.put("second", stop)
            outcome.append("put")
        except InterruptedError:
            outcome.append("interrupted")

    waiter = threading.Thread(target=backfill_put, daemon=True)
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive(), "no room: the put waits"
    stop.set()
    waiter.join(timeout=5)
    assert outcome == ["interrupted"] and len(buffer) == 1


# --- the WebSocket transport: FrameReader and StreamConnection, without LocalStack ----------------------------


def server_frame(opcode: int, payload: bytes, fin: bool = True, first_extra: int = 0, long_form: bool = False,
                 mask: bytes | None = None) -> bytes:
    """One server → client frame; `long_form` forces the 64-bit length, `mask` makes it (wrongly) masked."""
    first = (0x80 if fin else 0) | first_extra | opcode
    size = len(payload)
    mask_bit = 0x80 if mask else 0
    if long_form or size > 0xFFFF:
        header = bytes([first, mask_bit | 127]) + size.to_bytes(8, "big")
    elif size >= 126:
        header = bytes([first, mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([first, mask_bit | size])
    if mask:
        payload = mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + payload


def text(payload: bytes, **options: Any) -> bytes:
    return server_frame(OPCODE_TEXT, payload, **options)


def read_in_pieces(reader: FrameReader, wire: bytes, piece: int) -> list[bytes]:
    messages: list[bytes] = []
    for start in range(0, len(wire), piece):
        messages.extend(reader.parse(wire[start:start + piece]))
    return messages


MIXED_MESSAGES = [b'{"n":1}', b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 70_000, b""]
MIXED_WIRE = b"".join(text(m) for m in MIXED_MESSAGES) + text(b'{"n":2}', long_form=True)


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 1000, 65536, len(MIXED_WIRE)])
def test_frame_reader_splits_frames_however_the_bytes_are_cut(piece: int) -> None:
    """7-, 16- and 64-bit lengths (the 64-bit form also for a short payload), cut at every size down to single
    bytes: the same messages, in order, nothing held back at the end."""
    reader = FrameReader()
    assert read_in_pieces(reader, MIXED_WIRE, piece) == [*MIXED_MESSAGES, b'{"n":2}']
    assert not reader.partial and not reader.controls


def test_frame_reader_holds_a_large_frame_until_complete() -> None:
    big = b"[" + b"1," * 600_000 + b"1]"
    reader = FrameReader()
    wire = text(big) + text(b"next")
    assert reader.parse(wire[:100_000]) == [] and reader.partial
    assert reader.parse(wire[100_000:-3]) == [big]
    assert reader.partial, "the next frame's first bytes wait for the rest"
    assert reader.parse(wire[-3:]) == [b"next"]


def test_frame_reader_joins_fragments_with_a_ping_between_them() -> None:
    wire = (text(b'{"a":', fin=False) + server_frame(OPCODE_PING, b"1700000000000")
            + server_frame(OPCODE_CONT, b"1,", fin=False) + server_frame(OPCODE_PONG, b"")
            + server_frame(OPCODE_CONT, b'"b":2}') + server_frame(OPCODE_BINARY, b"\x00\x01", fin=False)
            + server_frame(OPCODE_CONT, b"\x02"))
    for piece in (1, 5, len(wire)):
        reader = FrameReader()
        assert read_in_pieces(reader, wire, piece) == [b'{"a":1,"b":2}', b"\x00\x01\x02"]
        assert reader.controls == [(OPCODE_PING, b"1700000000000"), (OPCODE_PONG, b"")]


def test_frame_reader_stops_at_a_close_frame() -> None:
    close = server_frame(OPCODE_CLOSE, (1001).to_bytes(2, "big") + b"Server shutdown")
    reader = FrameReader()
    assert reader.parse(text(b"before") + close + text(b"after")) == [b"before"]
    assert reader.close_reason == "Server shutdown"
    assert reader.controls == [(OPCODE_CLOSE, (1001).to_bytes(2, "big") + b"Server shutdown")]
    empty = FrameReader()
    assert empty.parse(server_frame(OPCODE_CLOSE, b"")) == [] and empty.close_reason == ""


def test_frame_reader_keeps_the_messages_read_before_a_framing_error() -> None:
    """Valid messages in the same read as a bad frame are not lost with the connection: they go with the error."""
    reader = FrameReader()
    with pytest.raises(FrameError) as error:
        reader.parse(text(b'{"ok":1}') + text(b"masked", mask=b"abcd") + text(b'{"never":1}'))
    assert error.value.messages == (b'{"ok":1}',)


@pytest.mark.parametrize(
    "wire",
    [
        text(b"hi", mask=b"abcd"),  # servers never mask (RFC 6455 5.1)
        text(b"hi", first_extra=0x40),  # a reserved bit: no extension was negotiated
        server_frame(OPCODE_CONT, b"orphan"),
        text(b"a", fin=False) + text(b"b"),  # a new message inside a fragmented one
        server_frame(OPCODE_PING, b"p", fin=False),  # control frames are never fragmented
        server_frame(OPCODE_PING, b"p" * 126),  # control payloads are at most 125 bytes
        server_frame(OPCODE_CLOSE, b"\x03"),  # a close payload is empty or a 2-byte code (+ reason)
        server_frame(0x3, b"?"),
        server_frame(0xB, b"?"),
        bytes([0x81, 127]) + (2**63).to_bytes(8, "big"),
        bytes([0x81, 127]) + (2**40).to_bytes(8, "big"),  # a terabyte frame is refused, not buffered
    ],
)
def test_frame_reader_rejects_broken_framing(wire: bytes) -> None:
    with pytest.raises(FrameError):
        FrameReader().parse(wire)


class CraftedServer:
    """A WebSocket server on a real socket that sends each connection a scripted byte stream, in small pieces,
    and records every frame the client sends (unmasked) as (connection number, opcode, payload)."""

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, script: bytes, piece: int = 5) -> None:
        self.script = script
        self.piece = piece
        self.received: list[tuple[int, int, bytes]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                sock, _ = self.listener.accept()
                self.connections += 1
                threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _handshake(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = b""
        while b"\r\n\r\n" not in request:
            request += sock.recv(4096)
        key = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.IGNORECASE)
        assert key is not None
        accept = base64.b64encode(hashlib.sha1(key.group(1) + self.GUID).digest())  # the protocol's hash
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")

    def _serve(self, sock: socket.socket, number: int) -> None:
        with sock, contextlib.suppress(OSError):
            self._handshake(sock)
            if number == 1:
                for start in range(0, len(self.script), self.piece):
                    sock.sendall(self.script[start:start + self.piece])
                    time.sleep(0.0005)
            self._record(sock, number)

    def _record(self, sock: socket.socket, number: int) -> None:
        stream = sock.makefile("rb")
        while header := stream.read(2):
            size = header[1] & 0x7F
            if size >= 126:
                size = int.from_bytes(stream.read(2 if size == 126 else 8), "big")
            mask = stream.read(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(stream.read(size)))
            self.received.append((number, header[0] & 0x0F, payload))

    def close(self) -> None:
        self.listener.close()


class FragmentFloodServer(CraftedServer):
    """The first connection gets a text frame without FIN, then continuation frames of 1 MiB, never the last one
    (up to `flood_bytes`, or until the client goes away); later connections get `script`. Every frame the client
    sends is recorded meanwhile."""

    def __init__(self, script: bytes, flood_bytes: int) -> None:
        super().__init__(script)
        self.flood_bytes = flood_bytes
        self.flooded = 0

    def _serve(self, sock: socket.socket, number: int) -> None:
        if number > 1:
            super()._serve(sock, 1)  # the scripted stream
            return
        with sock, contextlib.suppress(OSError):
            self._handshake(sock)
            threading.Thread(target=self._record_until_reset, args=(sock, number), daemon=True).start()
            chunk = b"x" * 1024**2
            sock.sendall(server_frame(OPCODE_TEXT, b'{"start":"', fin=False))
            header = bytes([OPCODE_CONT, 127]) + len(chunk).to_bytes(8, "big")  # no FIN, a 64-bit length
            while self.flooded < self.flood_bytes:
                sock.sendall(header)
                sock.sendall(chunk)
                self.flooded += len(chunk)
            time.sleep(30)  # keep the socket open: the client must act on its own

    def _record_until_reset(self, sock: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError):
            self._record(sock, number)


# Socket and thread events here follow each other within milliseconds: poll often.
wait_until = functools.partial(wait_for, timeout=10.0, interval=0.02)


def collecting_connection(url: str, streams: set[str], watchdog_seconds: float = 10.0,
                          ) -> tuple[StreamConnection, list[bytes]]:
    got: list[bytes] = []
    conn = StreamConnection("test", url, BINANCE, ConnectionLimits(3.0, watchdog_seconds, 0.2),
                            RateLimiter(100, 1.0), lambda _conn, messages, _us: got.extend(messages),
                            lambda _conn: None, SIMULATOR_HOSTS)
    conn.start(streams)
    return conn, got


def test_stream_connection_over_a_real_socket_fragments_pings_long_frames_and_close() -> None:
    """Crafted server frames, sent a few bytes at a time: a fragmented message with a ping between its fragments
    (answered with a pong echoing the payload), a frame with a 64-bit length, a pong (ignored), then a close,
    which the client answers before reconnecting."""
    big = b'{"big":"' + b"b" * 70_000 + b'"}'
    close_payload = (1001).to_bytes(2, "big") + b"going away"
    script = (text(b'{"part":', fin=False) + server_frame(OPCODE_PING, b"1700000000123")
              + server_frame(OPCODE_CONT, b'"one"}') + text(big) + server_frame(OPCODE_PONG, b"x")
              + text(b'{"last":1}') + server_frame(OPCODE_CLOSE, close_payload))
    server = CraftedServer(script, piece=1000)
    conn, got = collecting_connection(server.url, {"btcusdt@trade"})
    try:
        assert wait_until(lambda: conn.sessions >= 2), "reconnected after the server's close"
        assert got[:3] == [b'{"part":"one"}', big, b'{"last":1}']
        assert wait_until(lambda: (1, OPCODE_CLOSE, (1000).to_bytes(2, "big")) in server.received)
        first = [(opcode, payload) for number, opcode, payload in server.received if number == 1]
        assert (OPCODE_PONG, b"1700000000123") in first, "the ping was answered with its payload"
        assert first.index((OPCODE_PONG, b"1700000000123")) < first.index((OPCODE_CLOSE, (1000).to_bytes(2, "big")))
        assert OPCODE_PING not in [opcode for opcode, _ in first], "a pong is not answered"
        subscribe = orjson.loads(next(payload for opcode, payload in first if opcode == OPCODE_TEXT))
        assert subscribe["method"] == "SUBSCRIBE" and subscribe["params"] == ["btcusdt@trade"]
        assert conn.frames >= 3
    finally:
        conn.close()
        server.close()


def test_frame_reader_caps_a_fragmented_message_not_only_its_frames() -> None:
    """Frames of 1 MiB each are allowed, but not a message of more than MAX_MESSAGE_BYTES in total."""
    reader = FrameReader()
    chunk = b"x" * 1024**2
    assert reader.parse(text(b"[", fin=False)) == []
    with pytest.raises(MessageTooBig):
        for _ in range(MAX_MESSAGE_BYTES // len(chunk) + 1):
            reader.parse(server_frame(OPCODE_CONT, chunk, fin=False))
    with pytest.raises(MessageTooBig):  # one frame claiming more
        FrameReader().parse(bytes([0x81, 127]) + (MAX_MESSAGE_BYTES + 1).to_bytes(8, "big"))
    whole = FrameReader()  # a message just under the cap, in fragments, still arrives
    wire = text(b"[", fin=False) + server_frame(OPCODE_CONT, b"1" * (MAX_MESSAGE_BYTES - 2), fin=False) \
        + server_frame(OPCODE_CONT, b"]")
    assert read_in_pieces(whole, wire, 256 * 1024) == [b"[" + b"1" * (MAX_MESSAGE_BYTES - 2) + b"]"]


def test_stream_connection_closes_an_endless_fragmented_message_with_1009_and_reconnects() -> None:
    """A server that opens a text message and sends continuation frames forever (data keeps the watchdog quiet):
    the client closes with 1009 once the message passes MAX_MESSAGE_BYTES, counts it, reconnects, and its memory
    stays near the cap however much the server sends."""
    server = FragmentFloodServer(text(b'{"after":1}'), flood_bytes=96 * 1024**2)
    tracemalloc.start()
    conn, got = collecting_connection(server.url, {"btcusdt@trade"})
    try:
        assert wait_until(lambda: conn.sessions >= 2, timeout=30), "reconnected after the oversized message"
        assert wait_until(lambda: got == [b'{"after":1}']), "the new session delivers"
        peak = tracemalloc.get_traced_memory()[1]
        assert (1, OPCODE_CLOSE, (1009).to_bytes(2, "big") + b"message too big") in server.received
        assert conn.oversized_messages == 1
        assert server.flooded < server.flood_bytes, "the client stopped reading: the server could not send it all"
        assert peak < 4 * MAX_MESSAGE_BYTES, f"peak {peak / 1024**2:.0f} MiB while flooded"
    finally:
        tracemalloc.stop()
        conn.close()
        server.close()


def test_stream_connection_drops_a_connection_that_breaks_framing() -> None:
    server = CraftedServer(text(b'{"ok":1}') + text(b"masked", mask=b"abcd") + text(b'{"never":1}'))
    conn, got = collecting_connection(server.url, {"btcusdt@trade"})
    try:
        assert wait_until(lambda: conn.sessions >= 2), "the broken connection was replaced"
        assert got == [b'{"ok":1}']
    finally:
        conn.close()
        server.close()


def test_stream_connection_against_the_simulator_gets_every_trade_in_order_and_answers_pings() -> None:
    """The real simulator (websockets) at a few thousand trades/s, pings every 0.2 s with a 1 s pong timeout."""
    symbols = ("BTCUSDT", "ETHUSDT")
    with ExchangeSimulator(symbols=symbols, rate=0, seed=3, ping_interval=0.2, pong_timeout=1.0) as sim:
        conn, got = collecting_connection(sim.ws_url, {f"{s.lower()}@trade" for s in symbols})
        try:
            assert wait_until(lambda: len(sim.subscriptions()) == 2)
            sim.config.rate = 2000
            time.sleep(2.0)
            sim.config.rate = 0
            expected = {s: list(sim.emitted_ids(s, "trade")) for s in symbols}
            total = sum(len(ids) for ids in expected.values())
            assert wait_until(lambda: len(got) >= total + 1)  # + the SUBSCRIBE reply
            events = [orjson.loads(message) for message in got]
            for symbol in symbols:
                ids = [e["data"]["t"] for e in events if e.get("stream") == f"{symbol.lower()}@trade"]
                assert ids == expected[symbol] and len(ids) > 1000
            assert conn.sessions == 1, "pings were answered in time"
            sim.announce_shutdown(delay=0.1)
            assert wait_until(lambda: conn.sessions == 2), "the server's close frame ended the session"
        finally:
            conn.close()


class RecordingSink:
    def __init__(self) -> None:
        self.ticks: list[Tick] = []

    def put(self, tick: Tick, stop: threading.Event | None = None) -> None:
        self.ticks.append(tick)

    def put_taken_marker(self, stop: threading.Event | None = None) -> threading.Event:
        taken = threading.Event()
        taken.set()
        return taken


def trade_frame(stream: str, trade_id: int, **changes: Any) -> bytes:
    event = {"e": "trade", "E": 1_700_000_000_123, "s": stream.split("@")[0].upper(), "t": trade_id,
             "p": "1.50000000", "q": "2.00000000", "T": 1_700_000_000_120, "m": True, "M": True, **changes}
    return orjson.dumps({"stream": stream, "data": event})


def test_feed_sorts_one_read_of_mixed_frames(tmp_path: Path) -> None:
    """One socket read holding trades of two scripts, a duplicate, a gap, a control reply, malformed frames, an
    unsubscribed stream and serverShutdown: each frame is handled as on its own, the trades in order."""
    stop = threading.Event()
    sink = RecordingSink()
    sequencer = Sequencer()
    feed = Feed("test", "ws://127.0.0.1:9", BINANCE, RestClient("http://127.0.0.1:9", stop=stop), ProducerSettings(),
                sink, sequencer, RateLimiter(10, 1.0), stop,  # type: ignore[arg-type]
                GapLedger(lambda: pytest.fail("the ledger is not used here")))
    jobs: list[BackfillJob] = []
    feed.backfiller.request = jobs.append  # type: ignore[method-assign]
    for target in (script_target(BINANCE, 1, "BTCUSDT", "trade"), script_target(BINANCE, 2, "SOLUSDT", "trade")):
        feed.by_stream[target.stream] = target
    conn = StreamConnection("test#1", "ws://127.0.0.1:9", BINANCE, ConnectionLimits(3.0, 10.0, 1.0),
                            RateLimiter(1, 1.0), feed._on_frames, feed._on_connected)
    btc, sol = "btcusdt@trade", "solusdt@trade"
    try:
        feed._on_frames(conn, [
            trade_frame(btc, 100), trade_frame(sol, 7), b'{"result":null,"id":1}', trade_frame(btc, 101),
            b"not json", orjson.dumps({"stream": btc, "data": [1]}), trade_frame("ethusdt@trade", 5),
            orjson.dumps({"stream": ["odd"], "data": {}}), trade_frame(btc, 101), trade_frame(btc, 105),
            trade_frame(btc, 106, p=1.5), trade_frame(sol, 8),
            orjson.dumps({"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": 1_700_000_000_000}}),
        ], 1_700_000_000_200_000)
        feed._on_frames(conn, [trade_frame(btc, 106)], 1_700_000_000_300_000)
    finally:
        stop.set()
    assert [(t.script_id, t.trade_id) for t in sink.ticks] == [(1, 100), (2, 7), (1, 101), (1, 105), (2, 8), (1, 106)]
    assert sink.ticks[0] == Tick(1, 100, "1.50000000", "2.00000000", True, 1_700_000_000_120_000,
                                 1_700_000_000_123_000, 1_700_000_000_200_000)
    assert feed.malformed == 3, "not JSON, data not an object, a float price"
    assert sequencer.duplicates == 1
    assert jobs == [BackfillJob(Gap(1, 102, 104), "BTCUSDT", "trade")]
    assert feed.counts == {1: 4, 2: 2}
    assert feed.last_trade_us == {1: 1_700_000_000_120_000, 2: 1_700_000_000_120_000}
    assert conn in feed._rotate_requests, "serverShutdown asks for a rotation"


def test_sequencer_batches_agree_with_one_by_one() -> None:
    ids = [(1, 10), (1, 11), (2, 5), (1, 11), (1, 9), (1, 14), (2, 6), (1, 10_000_000), (1, 15), (1, 10_000_001),
           (1, 10_000_002), (2, 4), (3, 1)]
    one_by_one, batched = Sequencer(max_jump=1000), Sequencer(max_jump=1000)
    ticks = [Tick(sid, tid, "1", "1", False, 0, 0, 0) for sid, tid in ids]
    assert batched.accept_ticks(ticks) == [one_by_one.accept(sid, tid) for sid, tid in ids]
    assert (batched.duplicates, batched.suspects) == (one_by_one.duplicates, one_by_one.suspects) != (0, 0)
    assert all(batched.last_id(sid) == one_by_one.last_id(sid) for sid in (1, 2, 3))
    strict = Sequencer(max_jump=0)  # every move is a jump: the next id must not take the shortcut
    assert strict.accept_ticks(ticks[:2]) == [True, False]
