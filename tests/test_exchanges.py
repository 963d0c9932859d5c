"""The exchange seam (issue 14): the registry picks each broker's adapter by `brokers.type`; an unknown type is
reported (log, producer_status) while the other brokers flow; Binance.US is Binance's adapter on its own hosts,
run here against the simulator over real sockets with a real LocalStack queue."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pymysql
import pytest

from producer_service.catalog_targets import broker_targets
from producer_service.config import ProducerSettings
from producer_service.exchanges import binance, binance_us, registry
from producer_service.exchanges.base import script_target
from producer_service.exchanges.binance import BinanceAdapter
from producer_service.exchanges.registry import UnknownExchange, adapter_for
from producer_service.feed import Feed
from producer_service.ledger import GapLedger
from producer_service.pacing import RateLimiter
from producer_service.rest import RestClient
from producer_service.sequencer import Sequencer
from producer_service.status import StatusPublisher
from simulator.harness import ExchangeSimulator
from tests.conftest import make_broker, make_script
from tests.producer_harness import QueueReader, expected_ids, fresh_queue, running_producer, sqs, start_trading
from tickstream import catalog
from tickstream.exchange_endpoints import endpoint_problem
from tickstream.settings import DatabaseSettings
from tickstream.venues import BINANCE, BINANCE_US, VENUES

# --- the registry --------------------------------------------------------------------------------------------

def test_each_broker_type_maps_to_its_adapter() -> None:
    assert adapter_for("binance") is binance.ADAPTER
    assert adapter_for("binance_us") is binance_us.ADAPTER
    assert adapter_for("binance").venue is BINANCE
    assert adapter_for("binance_us").venue is BINANCE_US
    for broker_type, adapter in registry.ADAPTERS.items():
        assert adapter.venue.type == broker_type, "one line per venue, keyed by its own type"
        assert VENUES[broker_type] is adapter.venue, "every adapter's venue is one the API knows"


def test_an_unknown_type_is_refused_by_name() -> None:
    with pytest.raises(UnknownExchange, match=r"'kraken'.*binance, binance_us"):
        adapter_for("kraken")


def test_binance_us_is_binances_protocol_on_its_own_hosts() -> None:
    us = adapter_for("binance_us")
    assert isinstance(us, BinanceAdapter) and type(us) is type(binance.ADAPTER), "no copied logic"
    assert us.rest_limits == binance.ADAPTER.rest_limits
    # Spot's limits, but Binance.US pings every 3 min (pong within 10): the producer pings a quiet connection itself
    assert dataclasses.replace(us.limits, keepalive=binance.ADAPTER.limits.keepalive) == binance.ADAPTER.limits
    assert us.limits.keepalive.server_ping_seconds == 180.0


def test_venues_that_ping_rarely_are_pinged_before_the_watchdog_fires() -> None:
    """A quiet, healthy connection must be heard within the watchdog: either the venue pings more often than half
    the default watchdog, or the adapter has the producer ping first (its pong is heard)."""
    watchdog = ProducerSettings().watchdog_seconds
    for venue_type, adapter in registry.ADAPTERS.items():
        keepalive = adapter.limits.keepalive
        heard_every = min(x for x in (keepalive.server_ping_seconds, keepalive.client_ping_seconds) if x is not None)
        assert heard_every <= watchdog / 2, venue_type
    assert (BINANCE_US.ws_url, BINANCE_US.rest_url) == ("wss://stream.binance.us:9443", "https://api.binance.us")
    assert endpoint_problem(BINANCE_US.ws_url, "ws", frozenset(), BINANCE_US) is None
    assert endpoint_problem(BINANCE_US.rest_url, "rest", frozenset(), BINANCE_US) is None
    assert endpoint_problem("wss://stream.binance.us:9443", "rest", frozenset(), BINANCE_US) is not None


def active(script_id: int, broker_id: int, broker_type: str, ws_url: str | None = None,
           rest_url: str | None = None, stream: str = "aggTrade") -> catalog.ActiveScript:
    return catalog.ActiveScript(script_id, broker_id, "BTCUSD", stream, ws_url, rest_url, broker_type)


def test_broker_targets_take_the_adapter_and_default_endpoints_of_their_type() -> None:
    spot, us = broker_targets([active(1, 1, "binance"), active(2, 2, "binance_us")])
    assert (spot.adapter, spot.ws_url, spot.rest_url) == (binance.ADAPTER, BINANCE.ws_url, BINANCE.rest_url)
    assert (us.adapter, us.ws_url, us.rest_url) == (binance_us.ADAPTER, BINANCE_US.ws_url, BINANCE_US.rest_url)
    assert [target.stream for target in us.targets] == ["btcusd@aggTrade"]
    assert spot.endpoint != us.endpoint


def test_a_broker_of_an_unknown_type_is_kept_for_reporting_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    reported: set[str] = set()
    scripts = [active(1, 7, "kraken"), active(2, 7, "kraken", stream="trade"), active(3, 8, "binance")]
    with caplog.at_level(logging.ERROR):
        unknown, known = broker_targets(scripts, reported=reported)
        broker_targets(scripts, reported=reported)  # the next refresh
    assert unknown.adapter is None and unknown.broker_id == 7
    assert unknown.problem is not None and "'kraken'" in unknown.problem
    assert [target.script_id for target in unknown.targets] == [1, 2]
    assert known.adapter is binance.ADAPTER
    assert len([r for r in caplog.records if "kraken" in r.getMessage()]) == 1, "loud, but once"


# --- against the simulator -----------------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[ExchangeSimulator]:
    with ExchangeSimulator(symbols=("BTCUSDT", "ETHUSDT", "BTCUSD"), rate=0, seed=14, ping_interval=2.0) as simulator:
        yield simulator


def broker_of_type(conn: pymysql.Connection, broker_type: str, sim: ExchangeSimulator, symbols: list[str]
                   ) -> dict[str, int]:
    api_config = orjson.dumps({"ws_url": sim.ws_url, "rest_url": sim.rest_url}).decode()
    broker = make_broker(conn, f"{broker_type} broker", api_config)
    with conn.cursor() as cursor:
        cursor.execute("UPDATE brokers SET type = %s WHERE id = %s", (broker_type, broker))
    return {symbol: make_script(conn, broker, symbol) for symbol in symbols}


def status_of(conn: pymysql.Connection, script_id: int) -> tuple[str, str | None] | None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT state, detail FROM producer_status WHERE script_id = %s", (script_id,))
        row = cursor.fetchone()
    return None if row is None else (row[0], row[1])


@pytest.mark.localstack
def test_brokers_of_each_type_in_one_producer_and_an_unknown_type_is_reported(
        db: pymysql.Connection, db_settings: DatabaseSettings, localstack: Any, sim: ExchangeSimulator,
        tmp_path: Path) -> None:
    """A binance and a binance_us broker (both on the simulator) deliver every trade once through one producer;
    a broker of a type no adapter speaks shows `unknown_type` in producer_status and costs the others nothing."""
    client = sqs(localstack.endpoint_url)
    queue = fresh_queue(client)
    try:
        spot = broker_of_type(db, "binance", sim, ["BTCUSDT"])
        us = broker_of_type(db, "binance_us", sim, ["BTCUSD", "ETHUSDT"])
        unknown = broker_of_type(db, "kraken", sim, ["ETHUSDT"])
        reader = QueueReader(client, queue)
        with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path, status_seconds=0.5) as producer:
            start_trading(sim, producer)
            time.sleep(1.5)
            sim.config.rate = 0
            scripts = {**{sid: sym for sym, sid in spot.items()}, **{sid: sym for sym, sid in us.items()}}
            assert reader.wait_for(lambda: all(reader.ids(sid) >= expected_ids(sim, sym)
                                               for sid, sym in scripts.items()), timeout=60)
            assert sorted(feed.adapter.venue.type for feed in producer.service.feeds.values()) == \
                ["binance", "binance_us"]
            deadline = time.monotonic() + 10
            while status_of(db, unknown["ETHUSDT"]) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            state = status_of(db, unknown["ETHUSDT"])
            us_state = status_of(db, us["BTCUSD"])
        for script_id, symbol in scripts.items():
            assert reader.ids(script_id) == expected_ids(sim, symbol), f"script {script_id} ({symbol})"
        assert reader.duplicates() == []
        assert not any(sid == unknown["ETHUSDT"] for sid, _ in reader.seen), "nothing collected for it"
        assert state is not None and state[0] == "unknown_type" and "'kraken'" in (state[1] or "")
        assert us_state is not None and us_state[0] in ("subscribed", "backfilling", "lagging")
    finally:
        client.delete_queue(QueueUrl=queue)


@pytest.mark.localstack
def test_without_pacing_the_exchange_cuts_the_connection(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                         localstack: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter-test of test_producer's paced subscription: the same 1,000 streams and pings, with the pace
    lifted far above the venue's 5 messages/s, get the connection cut (so the paced test can fail)."""
    unpaced = dataclasses.replace(binance.ADAPTER, limits=dataclasses.replace(binance.SPOT_LIMITS,
                                                                              messages_per_second=1000.0))
    monkeypatch.setitem(registry.ADAPTERS, "binance", unpaced)
    symbols = [f"S{n:04d}USDT" for n in range(1000)]
    client = sqs(localstack.endpoint_url)
    queue = fresh_queue(client)
    try:
        with ExchangeSimulator(symbols=tuple(symbols), rate=0, seed=5, ping_interval=0.5) as many:
            broker_of_type(db, "binance", many, symbols)
            with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path) as producer:
                deadline = time.monotonic() + 15
                sessions = 0
                while time.monotonic() < deadline and sessions < 2:
                    conns = [conn for feed in producer.service.feeds.values() for conn in feed.connections]
                    sessions = max((conn.sessions for conn in conns), default=0)
                    time.sleep(0.2)
                assert sessions >= 2, "unpaced, the exchange cut the connection for exceeding 5 messages/s"
    finally:
        client.delete_queue(QueueUrl=queue)


def test_status_of_a_script_with_absurd_trade_times_is_still_published(db: Any) -> None:
    """A frame far in the past or future gives a lag beyond INT UNSIGNED; the broker's upsert must not fail."""
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO brokers (type, name, api_config) VALUES ('binance', 'absurd', '{}')")
        broker_id = cursor.lastrowid
        cursor.execute("INSERT INTO scripts (broker_id, name, trading_symbol, additional_data)"
                       " VALUES (%s, 'BTCUSDT', 'BTCUSDT', '{}')", (broker_id,))
        script_id = cursor.lastrowid
    stop = threading.Event()
    feed = Feed("absurd", "ws://127.0.0.1:9", binance.ADAPTER, RestClient("http://127.0.0.1:9", stop=stop),
                ProducerSettings(), None, Sequencer(), RateLimiter(10, 1.0), stop,  # type: ignore[arg-type]
                GapLedger(lambda: db))
    try:
        target = script_target(binance.ADAPTER, script_id, "BTCUSDT", "aggTrade")
        feed.by_stream[target.stream] = target
        feed.lag_us[script_id] = deque([10**18, -(10**18)])  # 31,000 years late, and as early
        assert StatusPublisher(5.0).publish(db, broker_id, feed, Sequencer()) == 1
    finally:
        stop.set()
        feed.close()
    with db.cursor() as cursor:
        cursor.execute("SELECT lag_ms_p50, lag_ms_p99 FROM producer_status WHERE script_id = %s", (script_id,))
        assert cursor.fetchone() == (2**32 - 1, 2**32 - 1)


def test_a_script_that_names_no_stream_collects_its_venues_default(db: Any) -> None:
    """additional_data without a stream means the venue's first stream (OKX: trades-all), not spot's aggTrade, which
    the OKX adapter would refuse; and writing that default explicitly later is no change of market."""
    with db.cursor() as cursor:
        for venue in VENUES.values():
            cursor.execute("INSERT INTO brokers (type, name, api_config) VALUES (%s, %s, '{}')",
                           (venue.type, venue.title))
            cursor.execute("INSERT INTO scripts (broker_id, name, trading_symbol, additional_data)"
                           " VALUES (%s, %s, %s, '{}')", (cursor.lastrowid, venue.symbol_example,
                                                           venue.symbol_example))
    streams = {row.broker_type: row.stream for row in catalog.active_scripts(db)}
    assert streams == {venue.type: venue.streams[0] for venue in VENUES.values()}
    okx_script = next(row.script_id for row in catalog.active_scripts(db) if row.broker_type == "okx")
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO ticks (script_id, trade_id, price, quantity, is_buyer_maker, traded_at, event_at,"
                       " received_at_producer) VALUES (%s, 1, 1, 1, 0, NOW(6), NOW(6), NOW(6))", (okx_script,))
    changed = catalog.update_script(db, okx_script, {"additional_data": {"stream": "trades-all"}})
    assert changed is not None and changed.additional_data == {"stream": "trades-all"}
