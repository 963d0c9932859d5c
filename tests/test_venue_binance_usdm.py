"""Binance USD-M futures (`brokers.type` "binance_usdm"), end to end: the adapter is Binance's protocol code with
futures' limits and /fapi/v1 paths; against the simulator speaking USD-M over real sockets and the real local
pipeline (producer → LocalStack SQS → the ingest function of template.yaml → MariaDB), every trade is stored
exactly once through drops, withheld `a` ids, duplicates, malformed frames, `f`/`l` holes, rotation and a REST
outage; live subscribe and unsubscribe stay within USD-M's 10 messages/s (and without pacing the simulator cuts the
connection); and one producer runs a broker of every registered type against one multi-venue simulator."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pymysql
import pytest

from producer_service.exchanges import binance, binance_usdm, registry
from producer_service.exchanges.base import ControlKind, script_target
from producer_service.exchanges.binance import BinanceAdapter
from producer_service.exchanges.registry import adapter_for
from producer_service.rest import RestClient
from simulator import venues as simulator_venues
from simulator.harness import ExchangeSimulator, MultiVenueSimulator
from tests.conftest import SIMULATOR_HOSTS, broker_of, make_broker, make_script, stored_ids
from tests.producer_harness import (
    RunningProducer,
    register_simulator,
    running_producer,
    start_trading,
    stop_trading,
    wait_for,
)
from tickstream import catalog
from tickstream.settings import DatabaseSettings
from tickstream.venues import BINANCE_USDM, venue

USDM = "binance_usdm"
RECEIVED_US = 1_760_000_000_200_000


# --- the adapter ---------------------------------------------------------------------------------------------

def test_usdm_is_binances_protocol_with_futures_limits_and_paths() -> None:
    usdm = adapter_for(USDM)
    assert usdm is binance_usdm.ADAPTER and usdm.venue is BINANCE_USDM
    assert isinstance(usdm, BinanceAdapter) and type(usdm) is type(binance.ADAPTER), "no copied logic"
    limits, keepalive = usdm.limits, usdm.limits.keepalive
    assert (limits.messages_per_second, limits.streams_per_connection) == (10.0, 1024)
    assert (keepalive.server_ping_seconds, keepalive.idle_timeout_seconds) == (180.0, 600.0)
    assert limits.connection_lifetime_seconds == 24 * 3600.0
    assert (usdm.rest_limits.weight_per_window, usdm.rest_limits.window_seconds) == (2400, 60.0)
    assert usdm.rest_limits.page_size == 1000
    assert usdm.venue.streams == ("aggTrade",) and usdm.venue.contiguous_ids


def test_a_frame_is_sequenced_on_a_never_on_f_or_l() -> None:
    """Aggregate 7 covers trades 100-105, aggregate 8 covers 109 (106-108 were insurance-fund/ADL trades, in no
    aggregate): the ticks are 7 and 8, contiguous, whatever f/l say."""
    target = script_target(binance_usdm.ADAPTER, 41, "BTCUSDT", "aggTrade")
    frames = [orjson.dumps({"stream": "btcusdt@aggTrade", "data": {
        "e": "aggTrade", "E": 1_760_000_000_100, "s": "BTCUSDT", "a": a, "p": "65000.10", "q": "0.010",
        "f": f, "l": last, "T": 1_760_000_000_000, "m": True}}) for a, f, last in ((7, 100, 105), (8, 109, 109))]
    decoded = binance_usdm.ADAPTER.decode([*frames, b'{"result": null, "id": 3}'], RECEIVED_US,
                                          {target.stream: target})
    assert [tick.trade_id for tick in decoded.ticks] == [7, 8]
    assert [event.kind for event in decoded.events] == [ControlKind.ACK] and not decoded.malformed


def test_rest_pages_and_symbols_come_from_fapi() -> None:
    """Over real sockets: exchangeInfo and aggTrades by fromId on /fapi/v1 (the simulator 404s /api/v3 there)."""
    with ExchangeSimulator(venue=USDM, symbols=("BTCUSDT", "ETHUSDT"), rate=0, seed=3) as sim:
        sim.burst("BTCUSDT", 3000)
        rest = RestClient(sim.rest_url, binance_usdm.ADAPTER.rest_limits, allowed_hosts=SIMULATOR_HOSTS,
                          venue=BINANCE_USDM)
        assert binance_usdm.ADAPTER.trading_symbols(rest) == {"BTCUSDT", "ETHUSDT"}
        first = sim.emitted_ids("BTCUSDT").start
        page = binance_usdm.ADAPTER.backfill_page(rest, 9, "BTCUSDT", "aggTrade", first + 5, 1000, RECEIVED_US)
        assert [tick.trade_id for tick in page.ticks] == list(range(first + 5, first + 1005)) and not page.rejected
        assert rest.used_weight >= 21, "exchangeInfo (1) and aggTrades (20) are charged futures' weights"
        with pytest.raises(ValueError, match="no 'trade' trades"):
            binance_usdm.ADAPTER.backfill_page(rest, 9, "BTCUSDT", "trade", first, 1000, RECEIVED_US)


# --- the drill: every trade exactly once through the real pipeline --------------------------------------------

def ledger_kind(sim: ExchangeSimulator) -> str:
    """The simulator's ledger of the venue's default stream (binance*: aggTrade; okx: its trades)."""
    return simulator_venues.venue_of(sim.venue).stream_kinds[0]


def assert_stored_exactly_once(db: pymysql.Connection, sim: ExchangeSimulator, scripts: dict[str, int],
                               timeout: float = 60.0) -> None:
    """Every id the simulator emitted (sent, withheld or sent twice) is one row; none that it never emitted."""
    kind = ledger_kind(sim)

    def complete() -> bool:
        return all(len(stored_ids(db, sid)) >= len(sim.emitted_ids(sym, kind)) for sym, sid in scripts.items())

    wait_for(complete, timeout)
    for symbol, script_id in scripts.items():
        emitted = list(sim.emitted_ids(symbol, kind))
        assert emitted, f"{sim.venue} {symbol}: nothing traded"
        assert stored_ids(db, script_id) == emitted, f"{sim.venue} {symbol} (script {script_id})"


def aggregates_with_holes(sim: ExchangeSimulator, symbol: str) -> int:
    """Aggregates whose first trade id does not follow the previous aggregate's last: f/l skip, a does not."""
    rows = sim.history(symbol, "aggTrade")
    assert [row.id for row in rows] == list(range(rows[0].id, rows[0].id + len(rows))), "a is contiguous"
    return sum(1 for before, after in itertools.pairwise(rows) if after.first != before.last + 1)


@pytest.mark.localstack
def test_drill_every_trade_is_stored_exactly_once(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                  localstack: Any, tickstream_stack: dict[str, str],
                                                  tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A fault every 2 s while trading: drops, withheld ids, duplicates, malformed frames, serverShutdown, a REST
    outage (503s and resets) with the connections dropped during it, and the producer's rotation by age; f/l
    skip around 20 % of aggregates throughout."""
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    with (caplog.at_level(logging.INFO),
          ExchangeSimulator(venue=USDM, symbols=symbols, rate=0, seed=52, ping_interval=1.0,
                            unaggregated_fraction=0.2) as sim):
        scripts = register_simulator(db, sim, list(symbols), name="USD-M drill")
        with running_producer(db_settings, localstack.endpoint_url, tickstream_stack["TicksQueueUrl"], tmp_path,
                              rotate_after_seconds=7.0) as producer:
            start_trading(sim, producer, rate=200)

            def rest_outage() -> None:
                sim.rest_faults("503", "reset")
                sim.drop_connections()  # the gaps this opens wait in the ledger until REST answers again

            faults = [sim.drop_connections, lambda: sim.skip_ids(0.01), lambda: sim.duplicate(0.02),
                      lambda: sim.malformed(0.01), lambda: sim.announce_shutdown(0.5), rest_outage]
            for inject in faults:
                time.sleep(2)
                clear_faults(sim)
                inject()
            time.sleep(2)
            clear_faults(sim)
            time.sleep(1.5)  # clean trades after the last fault reveal any gap still open
            stop_trading(sim)
            assert_stored_exactly_once(db, sim, scripts)
            malformed = sum(feed.malformed for feed in producer.service.feeds.values())
        sent = {key: sum(sim.counts(symbol)[key] for symbol in symbols) for key in ("skipped", "duplicated")}
        holes = sum(aggregates_with_holes(sim, symbol) for symbol in symbols)
        served = sum(len(sim.rest_served(symbol)) for symbol in symbols)
    log = caplog.text
    assert sent["skipped"] > 0 and sent["duplicated"] > 0 and malformed > 0, (sent, malformed)
    assert holes > 10, "f/l skipped ids, and no false gap came of it"
    assert served > 0, "gaps were backfilled from /fapi/v1/aggTrades"
    assert "server announced shutdown" in log
    assert "rotating (age limit)" in log
    assert "503" in log or "reset" in log.lower(), "the backfill met the REST outage"


def clear_faults(sim: ExchangeSimulator) -> None:
    sim.skip_ids(0)
    sim.duplicate(0)
    sim.malformed(0)
    sim.rest_faults()


# --- live subscribe and unsubscribe within 10 messages/s --------------------------------------------------------

def resubscribe_live(db: pymysql.Connection, db_settings: DatabaseSettings, localstack: Any, queue: str,
                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch, messages_per_second: float) -> tuple[int, bool]:
    """6 streams, then in one change 5 of them unsubscribed and 30 others subscribed, one stream a message (the
    adapter's streams per message cut to 1, so that one change owes many messages; the first 6 fit in USD-M's
    second even unpaced), while the server pings every 0.5 s: ~35 messages owed at once, paced at
    `messages_per_second`. Returns (sessions of the connection, whether the simulator ended up with exactly the
    wanted streams)."""
    limits = dataclasses.replace(binance_usdm.USDM_LIMITS, streams_per_message=1,
                                 messages_per_second=messages_per_second)
    monkeypatch.setitem(registry.ADAPTERS, USDM, dataclasses.replace(binance_usdm.ADAPTER, limits=limits))
    symbols = tuple(f"S{n:03d}USDT" for n in range(36))
    with ExchangeSimulator(venue=USDM, symbols=symbols, rate=0, seed=7, ping_interval=0.5) as sim:
        first = register_simulator(db, sim, list(symbols[:6]), name="USD-M live")
        broker_id = broker_of(db, next(iter(first.values())))
        with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path) as producer:
            assert wait_for(lambda: len(sim.subscriptions()) == 6, timeout=15)
            with db.cursor() as cursor:
                db.begin()
                cursor.execute("UPDATE scripts SET is_active = 0 WHERE id IN %s",
                               (tuple(first[symbol] for symbol in symbols[:5]),))
                for symbol in symbols[6:]:
                    make_script(db, broker_id, symbol)
                db.commit()
            wanted = {f"{symbol.lower()}@aggTrade" for symbol in symbols[5:]}
            settled = wait_for(lambda: sim.subscriptions() == wanted, timeout=20)
            time.sleep(1.5)  # past the limit's one-second window
            sessions = max(conn.sessions for feed in producer.service.feeds.values() for conn in feed.connections)
    return sessions, settled


@pytest.mark.localstack
def test_live_subscribe_and_unsubscribe_stay_within_10_messages_per_second(
        db: pymysql.Connection, db_settings: DatabaseSettings, localstack: Any, queue: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pace = binance_usdm.USDM_LIMITS.messages_per_second
    sessions, settled = resubscribe_live(db, db_settings, localstack, queue, tmp_path, monkeypatch, pace)
    assert settled, "the live changes reached the exchange"
    assert sessions == 1, "the exchange cut the connection for exceeding USD-M's 10 messages/s"


@pytest.mark.localstack
def test_without_pacing_usdm_cuts_the_connection(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                 localstack: Any, queue: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter-test: the same changes with the pace lifted far above 10 messages/s get the connection cut."""
    sessions, _ = resubscribe_live(db, db_settings, localstack, queue, tmp_path, monkeypatch, 1000.0)
    assert sessions >= 2, "unpaced, the exchange cut the connection"


# --- a broker of every registered type in one producer ----------------------------------------------------------

def simulated_types() -> list[str]:
    """Every broker type the producer has an adapter for (the simulator speaks each: test_every_adapter_...)."""
    return sorted(registry.ADAPTERS)


def test_the_simulator_speaks_every_registered_type() -> None:
    assert set(simulated_types()) <= set(simulator_venues.VENUES)


@pytest.mark.localstack
def test_a_broker_of_every_type_in_one_producer_stores_each_trade_once(
        db: pymysql.Connection, db_settings: DatabaseSettings, localstack: Any, tickstream_stack: dict[str, str],
        tmp_path: Path) -> None:
    """binance, binance_us, binance_usdm (and every type registered later, OKX included) in one producer process
    against one simulator serving each venue on its own port; each broker's trades land in MariaDB once."""
    types = simulated_types()
    with MultiVenueSimulator({broker_type: {} for broker_type in types}, symbols=("BTCUSDT", "ETHUSDT"), rate=0,
                             seed=61, ping_interval=1.0) as multi:
        scripts = {t: register_simulator(db, multi[t], sorted(multi[t].core.symbols), name=f"{t} broker")
                   for t in types}
        with running_producer(db_settings, localstack.endpoint_url, tickstream_stack["TicksQueueUrl"],
                              tmp_path) as producer:
            trade_everywhere(multi, types, producer)
            time.sleep(3)
            multi[types[0]].drop_connections()  # one venue's drop costs nothing anywhere
            time.sleep(1)
            for broker_type in types:
                stop_trading(multi[broker_type])
            for broker_type in types:
                assert_stored_exactly_once(db, multi[broker_type], scripts[broker_type])
            running = sorted(feed.adapter.venue.type for feed in producer.service.feeds.values())
    assert running == types


def trade_everywhere(multi: MultiVenueSimulator, types: list[str], producer: RunningProducer) -> None:
    """Trading starts on every venue once the producer has a feed for each and every connection is subscribed."""
    assert wait_for(lambda: len(producer.service.feeds) == len(types), timeout=15)
    start_trading(multi[types[0]], producer, rate=100)
    for broker_type in types[1:]:
        multi[broker_type].config.rate = 100


def test_a_script_without_a_stream_collects_its_venues_default(db: pymysql.Connection) -> None:
    """The API documents an unset additional_data.stream as the venue's first stream; the producer must read it so
    (make demo creates its scripts that way: an OKX script read as aggTrade was skipped, collecting nothing)."""
    scripts = {}
    for broker_type in ("binance", USDM, "okx"):
        broker = make_broker(db, f"{broker_type} defaults", "{}", broker_type)
        with db.cursor() as cursor:
            cursor.execute("INSERT INTO scripts (broker_id, name, trading_symbol, additional_data) VALUES "
                           "(%s, 'x', %s, '{}')", (broker, venue(broker_type).symbol_example))
            scripts[cursor.lastrowid] = broker_type
    streams = {scripts[row.script_id]: row.stream for row in catalog.active_scripts(db)}
    assert streams == {"binance": "aggTrade", USDM: "aggTrade", "okx": "trades-all"}
