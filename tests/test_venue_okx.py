"""The okx venue end to end (issue 14): frame decoding, gap detection for ids that only increase, backfill by id
over history-trades, and the producer against the simulator's OKX over real sockets into the real pipeline
(producer → LocalStack SQS → ingest Lambda → MariaDB): drops, duplicates, malformed frames, a notice 64008
rotation and a REST outage mid-backfill store every trade exactly once; live subscribe/unsubscribe stays within
OKX's 480 requests per connection per hour; the text ping keeps an idle connection alive; an instId OKX refuses
shows as unknown_symbol."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pymysql
import pytest

from producer_service.connection import StreamConnection
from producer_service.exchanges import okx, registry
from producer_service.exchanges.base import ControlKind, Limits, script_target
from producer_service.exchanges.okx import OKX_LIMITS, OKX_REST, exact_int
from producer_service.feed import connection_limits
from producer_service.pacing import RateLimiter
from producer_service.rest import RestClient, RestError
from producer_service.sequencer import Gap, Sequencer
from simulator import TRADE
from simulator.harness import ExchangeSimulator
from tests.conftest import stored_ids
from tests.producer_harness import FAST_PRODUCER, fresh_queue, register_simulator, running_producer, sqs, wait_for
from tickstream.settings import DatabaseSettings
from tickstream.ticks import Tick
from tickstream.venues import OKX

ADAPTER = okx.ADAPTER
T_MS = 1_764_000_000_000
RECEIVED_US = T_MS * 1000 + 5


def push(item: dict[str, Any], inst_id: str = "BTC-USDT") -> bytes:
    return orjson.dumps({"arg": {"channel": "trades-all", "instId": inst_id}, "data": [item]})


def trade(trade_id: Any = "130639474", px: Any = "42219.9", sz: Any = "0.12060306", side: Any = "buy",
          ts: Any = str(T_MS), **extra: Any) -> dict[str, Any]:
    return {"instId": "BTC-USDT", "tradeId": trade_id, "px": px, "sz": sz, "side": side, "source": "0", "ts": ts,
            **extra}


BTC = script_target(ADAPTER, 7, "BTC-USDT", "trades-all")
BY_KEY = {BTC.stream: BTC}


# --- frames ----------------------------------------------------------------------------------------------------

def test_a_push_becomes_a_tick_with_exact_id_taker_side_and_microseconds() -> None:
    decoded = ADAPTER.decode([push(trade()), push(trade("130639475", side="sell", ts=str(T_MS + 1)))],
                             RECEIVED_US, BY_KEY)
    assert decoded.malformed == [] and decoded.events == []
    assert decoded.targets == [BTC, BTC]
    assert decoded.ticks == [
        Tick(7, 130639474, "42219.9", "0.12060306", False, T_MS * 1000, T_MS * 1000, RECEIVED_US),
        Tick(7, 130639475, "42219.9", "0.12060306", True, (T_MS + 1) * 1000, (T_MS + 1) * 1000, RECEIVED_US),
    ], "a taker buy: the buyer took liquidity (not maker); a taker sell: the buyer was the maker"


@pytest.mark.parametrize("bad_id", ["12a", "-5", "+5", "1e3", " 12", "12 ", "1_000", "", "١٢", "12.0",
                                    "9" * 25, str(2**63), 12, 12.0, None, ["1"]])
def test_a_trade_id_that_is_not_an_exact_numeric_string_is_refused_by_name(bad_id: Any) -> None:
    good = push(trade("5"))
    decoded = ADAPTER.decode([push(trade(bad_id)), good], RECEIVED_US, BY_KEY)
    assert [tick.trade_id for tick in decoded.ticks] == [5], "the bad frame costs itself only"
    assert len(decoded.malformed) == 1
    assert "trade_id" in decoded.malformed[0][1] or "tradeId" in decoded.malformed[0][1]


def test_exact_int_parses_the_largest_id_exactly() -> None:
    assert exact_int(str(2**63 - 1), "tradeId") == 2**63 - 1
    assert exact_int("0", "tradeId") == 0


@pytest.mark.parametrize(("item", "why"), [
    (trade(px=42219.9), "price"),  # a JSON float: its exact decimal is unknown
    (trade(sz=0.5), "quantity"),
    (trade(px="-42"), "price"),
    (trade(sz="1e999"), "quantity"),
    (trade(side="maybe"), "side"),
    (trade(side=None), "side"),
    (trade(ts=T_MS), "ts"),  # a number: OKX sends strings
    (trade(ts=str(2**70)), "ts"),
    (trade(ts="99999999999999"), "time"),  # digits, but year 5138
    ({"instId": "BTC-USDT", "px": "1", "sz": "1", "side": "buy", "ts": str(T_MS)}, "tradeId"),
    ({"instId": "BTC-USDT", "tradeId": "1", "sz": "1", "side": "buy", "ts": str(T_MS)}, "px"),
    ({"instId": "BTC-USDT", "tradeId": "1", "px": "1", "sz": "1", "side": "buy"}, "ts"),
])
def test_a_malformed_trade_is_skipped_with_its_reason(item: dict[str, Any], why: str) -> None:
    decoded = ADAPTER.decode([push(item)], RECEIVED_US, BY_KEY)
    assert decoded.ticks == [] and len(decoded.malformed) == 1
    assert why in decoded.malformed[0][1]


@pytest.mark.parametrize("raw", [b"<<garbage>>", b"", b'{"arg":{"channel":"trades-all"', b"[1,2,3]", b"42",
                                 b'{"data":[]}', b'{"arg":[],"data":[]}', b'{"arg":{},"data":{}}',
                                 b'{"unexpected":true}', push([1, 2, 3]), push("trades-all")])  # type: ignore[arg-type]
def test_frames_that_are_not_pushes_or_events_are_malformed_never_raised(raw: bytes) -> None:
    decoded = ADAPTER.decode([raw, push(trade("9"))], RECEIVED_US, BY_KEY)
    assert [tick.trade_id for tick in decoded.ticks] == [9]
    assert len(decoded.malformed) + len(decoded.events) == 1


def test_control_answers_are_classified() -> None:
    raws = [b"pong",
            orjson.dumps({"id": "3", "event": "subscribe", "arg": {"channel": "trades-all", "instId": "BTC-USDT"},
                          "connId": "a4d3ae55"}),
            orjson.dumps({"id": "4", "event": "error", "code": "60018", "connId": "a4d3ae55",
                          "msg": "Subscribe failed, wrong URL or channel:trades-all,instId:XYZ-USDT doesn't exist. "
                                 "Please use the correct URL, channel and parameters referring to API document."}),
            orjson.dumps({"event": "notice", "code": "64008", "connId": "a4d3ae55",
                          "msg": "The connection will soon be closed for a service upgrade. Please reconnect."}),
            orjson.dumps({"event": "channel-conn-count", "channel": "trades-all", "connCount": "2"}),
            push(trade("1"), inst_id="ETH-USDT")]  # a push of a channel not (or no longer) subscribed
    events = ADAPTER.decode(raws, RECEIVED_US, BY_KEY).events
    assert [event.kind for event in events] == [ControlKind.PONG, ControlKind.ACK, ControlKind.ERROR,
                                                ControlKind.SHUTDOWN, ControlKind.IGNORED, ControlKind.IGNORED]
    assert events[1].stream == BTC.stream
    assert events[2].stream == "trades-all:XYZ-USDT" and events[2].detail.startswith("60018")


def test_requests_carry_up_to_the_limit_of_args_on_the_business_path() -> None:
    assert ADAPTER.connect_url("wss://ws.okx.com:8443/") == "wss://ws.okx.com:8443/ws/v5/business"
    keys = [ADAPTER.stream_key(f"S{n}-USDT", "trades-all") for n in range(3)]
    assert orjson.loads(ADAPTER.subscribe_message(keys, 12)) == {
        "id": "12", "op": "subscribe",
        "args": [{"channel": "trades-all", "instId": f"S{n}-USDT"} for n in range(3)]}
    assert orjson.loads(ADAPTER.unsubscribe_message(keys[:1], 13))["op"] == "unsubscribe"
    assert OKX_LIMITS.streams_per_message <= 100 and OKX_LIMITS.requests_per_hour == 480
    assert OKX_LIMITS.keepalive.client_ping == "ping"
    assert OKX_LIMITS.keepalive.client_ping_seconds is not None
    # a ping due after the client's silence goes out before OKX's 30 s idle disconnect, even after waiting a pace
    assert OKX_LIMITS.keepalive.client_ping_seconds + 1 / OKX_LIMITS.messages_per_second < 30
    assert registry.adapter_for("okx") is ADAPTER and ADAPTER.venue is OKX and not OKX.contiguous_ids


# --- gap detection ---------------------------------------------------------------------------------------------

def ticks_of(script_id: int, *ids: int) -> list[Tick]:
    return [Tick(script_id, trade_id, "1", "1", False, T_MS * 1000, T_MS * 1000, RECEIVED_US) for trade_id in ids]


def test_ids_that_only_increase_are_a_gap_only_across_a_boundary() -> None:
    sequencer = Sequencer()
    sequencer.resume(1, 100)
    sequencer.boundary(1)  # a restart: the first id after what is stored opens the window
    assert sequencer.accept_ticks(ticks_of(1, 104, 105, 109, 109, 107, 110), contiguous=False) == \
        [Gap(1, 101, 103), True, True, False, False, True], "after the boundary: jumps are OKX's, repeats duplicates"
    sequencer.boundary(1)  # a reconnect
    assert sequencer.accept_ticks(ticks_of(1, 110, 111, 130, 131), contiguous=False) == \
        [False, True, True, True], "a duplicate keeps the boundary; the next id after it was contiguous: no gap"
    sequencer.boundary(1)
    assert sequencer.accept_ticks(ticks_of(1, 140), contiguous=False) == [Gap(1, 132, 139)]
    assert sequencer.accept_ticks(ticks_of(1, 150), contiguous=False) == [True]
    assert sequencer.accept_ticks(ticks_of(1, 160)) == [Gap(1, 151, 159)], "contiguous venues: every jump"


# --- backfill by id over history-trades ------------------------------------------------------------------------

class HistoryTrades(http.server.ThreadingHTTPServer):
    """OKX's history-trades over a fixed tape with holes in its ids (the simulator's ids are contiguous):
    newest first, `after` → ids below it, `before` → ids above it, at most `limit`; counts the requests."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = sorted(ids)
        self.requests = 0
        super().__init__(("127.0.0.1", 0), _HistoryHandler)

    def answer(self, query: dict[str, str]) -> list[dict[str, Any]]:
        self.requests += 1
        after, before = int(query.get("after", 2**63)), int(query.get("before", -1))
        chosen = [i for i in self.ids if before < i < after][-int(query.get("limit", "100")):]
        return [trade(str(i), ts=str(T_MS + i % 1000)) for i in reversed(chosen)]


class _HistoryHandler(http.server.BaseHTTPRequestHandler):
    server: HistoryTrades

    def do_GET(self) -> None:
        query = {key: values[0] for key, values in parse_qs(urlsplit(self.path).query).items()}
        body = orjson.dumps({"code": "0", "msg": "", "data": self.server.answer(query)})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def tape_with_holes() -> Iterator[HistoryTrades]:
    ids = [*range(1000, 1250), *range(5000, 5003), *range(10_000_000, 10_000_150, 3), 2**62]
    server = HistoryTrades(ids)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def page_ids(server: HistoryTrades, from_id: int, limit: int = 100) -> list[int]:
    rest = RestClient(f"http://127.0.0.1:{server.server_address[1]}", OKX_REST, allowed_hosts=frozenset({"127.0.0.1"}),
                      venue=OKX)
    page = ADAPTER.backfill_page(rest, 7, "BTC-USDT", "trades-all", from_id, limit, RECEIVED_US)
    assert page.rejected == []
    return [tick.trade_id for tick in page.ticks]


def test_backfill_pages_are_the_earliest_trades_from_an_id_even_across_holes(tape_with_holes: HistoryTrades) -> None:
    ids = tape_with_holes.ids
    for from_id in (0, 1000, 1001, 1200, 1249, 1250, 4999, 5002, 5003, 10_000_001, 10_000_149, 10_000_150, 2**62):
        got, expected = page_ids(tape_with_holes, from_id), [i for i in ids if i >= from_id][:100]
        assert got and got == expected[:len(got)], f"from {from_id}: the earliest ones, ascending, none skipped"
    assert page_ids(tape_with_holes, 2**62 + 1) == [], "nothing from there on: an empty page"
    tape_with_holes.requests = 0
    assert page_ids(tape_with_holes, 1100) == list(range(1100, 1200))
    assert tape_with_holes.requests == 1, "contiguous ids: one request per page"


def test_backfill_walks_a_whole_gap_without_skipping(tape_with_holes: HistoryTrades) -> None:
    """As the backfill loop pages (from the last id + 1 until past the gap), every trade of the gap once."""
    got, next_id, last_id = [], 900, 10_000_100
    while next_id <= last_id:
        ids = page_ids(tape_with_holes, next_id)
        assert ids, f"an empty page at {next_id}"
        got += [i for i in ids if i <= last_id]
        next_id = min(ids[-1], last_id) + 1
    assert got == [i for i in tape_with_holes.ids if 900 <= i <= last_id]


def test_a_refusal_in_the_envelope_is_an_error_even_with_http_200() -> None:
    with ExchangeSimulator(venue="okx", symbols=("BTC-USDT",), rate=0, seed=3) as sim:
        rest = RestClient(sim.rest_url, OKX_REST, allowed_hosts=frozenset({"127.0.0.1"}), venue=OKX)
        with pytest.raises(RestError) as refused:
            ADAPTER.backfill_page(rest, 7, "NOPE-USDT", "trades-all", 1, 100, RECEIVED_US)
        assert refused.value.code == "51001" and refused.value.status == 400, "final: the backfill gives up on it"
        assert ADAPTER.trading_symbols(rest) == {"BTC-USDT"}


# --- one connection against the simulator's OKX over a real socket --------------------------------------------

class Listener:
    """A StreamConnection's callbacks: every control event the adapter decoded, and the trades received."""

    def __init__(self) -> None:
        self.events: list[tuple[ControlKind, str]] = []
        self.trades = 0

    def on_frames(self, conn: StreamConnection, raws: list[bytes], received_us: int) -> None:
        decoded = ADAPTER.decode(raws, received_us, {BTC.stream: BTC})
        self.events += [(event.kind, event.detail) for event in decoded.events]
        self.trades += len(decoded.ticks)


@contextlib.contextmanager
def connection(sim: ExchangeSimulator, limits: Limits, listener: Listener) -> Iterator[StreamConnection]:
    adapter = dataclasses.replace(ADAPTER, limits=limits)
    conn = StreamConnection("okx-test", sim.ws_url, adapter, connection_limits(FAST_PRODUCER, limits),
                            RateLimiter(10, 1.0), listener.on_frames, lambda _: None, frozenset({"127.0.0.1"}))
    conn.start({BTC.stream})
    try:
        yield conn
    finally:
        conn.close()


FAST_PACE = dataclasses.replace(OKX_LIMITS, messages_per_second=400.0)  # the per-second pace out of the way


@pytest.mark.parametrize("budget", [OKX_LIMITS.requests_per_hour, None], ids=["paced", "unpaced"])
def test_live_subscribe_and_unsubscribe_stay_within_480_requests_per_hour(budget: int | None) -> None:
    """600 live changes (ETH-USDT subscribed and unsubscribed 300 times) on one connection: within the hourly
    budget the connection stays up and every answer is an ack; without it OKX answers 60014 and closes it."""
    listener = Listener()
    with ExchangeSimulator(venue="okx", symbols=("BTC-USDT", "ETH-USDT"), rate=0, seed=8) as sim, \
            connection(sim, dataclasses.replace(FAST_PACE, requests_per_hour=budget), listener) as conn:
        assert wait_for(lambda: conn.frames > 0, 10), "subscribed"
        for _ in range(300):
            conn.subscribe({"trades-all:ETH-USDT"})
            conn.unsubscribe({"trades-all:ETH-USDT"})
        refused = lambda: any(kind is ControlKind.ERROR and "60014" in detail for kind, detail in listener.events)  # noqa: E731
        if budget is None:
            assert wait_for(lambda: refused() and conn.sessions >= 2, 15), "OKX cut the unpaced connection"
            return
        assert wait_for(lambda: len(listener.events) >= int(480 * 0.8), 15)
        time.sleep(1.0)  # what is over the budget waits: nothing more may go out
        acks = [detail for kind, detail in listener.events if kind is ControlKind.ACK]
        assert not refused() and conn.sessions == 1
        assert len(acks) == int(480 * 0.8), "the budget's share of the hour, every one acknowledged"


@pytest.mark.parametrize("pinging", [True, False], ids=["ping", "no-ping"])
def test_the_text_ping_keeps_an_idle_connection_alive(pinging: bool) -> None:
    """No trades for 6 s and OKX's idle disconnect at 2 s: the client's `ping` after 0.5 s of silence is answered
    `pong` and the one connection lives on; without it OKX closes the connection (4004) and it is reopened."""
    keepalive = dataclasses.replace(OKX_LIMITS.keepalive, client_ping_seconds=0.5 if pinging else None)
    listener = Listener()
    with ExchangeSimulator(venue="okx", symbols=("BTC-USDT",), rate=0, seed=9, idle_timeout=2.0) as sim, \
            connection(sim, dataclasses.replace(FAST_PACE, keepalive=keepalive), listener) as conn:
        time.sleep(6.0)
        pongs = sum(kind is ControlKind.PONG for kind, _ in listener.events)
        if pinging:
            assert conn.sessions == 1 and pongs >= 5
        else:
            assert conn.sessions >= 2 and pongs == 0, "the counter-test: idle, OKX cut it"


# --- the producer against the simulator's OKX, into the real pipeline ------------------------------------------

def okx_broker(conn: pymysql.Connection, sim: ExchangeSimulator, symbols: list[str]) -> dict[str, int]:
    """A broker of type okx on the simulator (named by its port: a test may run two), one trades-all script per
    symbol; symbol → script id."""
    return register_simulator(conn, sim, symbols, name=f"OKX (simulated, port {sim.port})")


def ledger_rows(conn: pymysql.Connection, script_ids: list[int]) -> list[tuple[Any, ...]]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT script_id, first_trade_id, last_trade_id, cause, state, last_error FROM gaps"
                       " WHERE script_id IN %s ORDER BY id", (tuple(script_ids),))
        return list(cursor.fetchall())


def status_of(conn: pymysql.Connection, script_id: int) -> tuple[str, str | None] | None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT state, detail FROM producer_status WHERE script_id = %s", (script_id,))
        row = cursor.fetchone()
    return None if row is None else (row[0], row[1])


def wait_subscribed(sim: ExchangeSimulator, streams: set[str], timeout: float = 20.0) -> None:
    assert wait_for(lambda: streams <= sim.subscriptions(), timeout), f"subscribed: {sim.subscriptions()}"


@pytest.mark.localstack
def test_okx_drill_stores_every_trade_exactly_once(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                   localstack: Any, tickstream_stack: dict[str, str],
                                                   tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Producer → SQS → ingest Lambda → MariaDB with OKX faults 3 s apart: a drop, duplicates, malformed
    frames, notice 64008 (make-before-break rotation), the producer stopped for 2 s and restarted, then a drop
    while REST answers 503 (the backfill of the reconnect's window retries until REST is back). Every window
    is bounded by ids (the last one stored or seen, the first new one): stored = emitted, exactly."""
    symbols = ["BTC-USDT", "ETH-USDT"]
    queue = tickstream_stack["TicksQueueUrl"]
    with ExchangeSimulator(venue="okx", symbols=tuple(symbols), rate=0, seed=61) as sim:
        scripts = okx_broker(db, sim, symbols)
        with caplog.at_level(logging.INFO):
            with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path, status_seconds=0.5):
                wait_subscribed(sim, {f"trades-all:{symbol}" for symbol in symbols})
                sim.config.rate = 150.0
                time.sleep(2)
                sim.drop_connections()
                time.sleep(3)
                sim.duplicate(0.05)
                time.sleep(3)
                sim.duplicate(0)
                sim.malformed(0.03)
                time.sleep(3)
                sim.malformed(0)
                sim.announce_shutdown(1.5)
                time.sleep(3)
            time.sleep(2)  # the producer is stopped (SIGTERM's path) while OKX trades on
            with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path, status_seconds=0.5):
                time.sleep(3)
                sim.rest_faults("503")
                sim.drop_connections()
                time.sleep(3)
                sim.rest_faults()
                time.sleep(2)
                sim.config.rate = 0
                emitted = {symbol: list(sim.emitted_ids(symbol, TRADE)) for symbol in symbols}
                assert wait_for(lambda: all(len(stored_ids(db, scripts[s])) >= len(emitted[s]) for s in symbols),
                                60), "everything emitted reached MariaDB"
            counts = {key: sum(sim.counts(symbol, TRADE)[key] for symbol in symbols)
                      for key in ("duplicated", "malformed")}
        gaps = ledger_rows(db, list(scripts.values()))
    for symbol in symbols:
        assert stored_ids(db, scripts[symbol]) == emitted[symbol], f"{symbol}: every trade once, none missing"
    log = caplog.text
    assert counts["duplicated"] > 0 and counts["malformed"] > 0, counts
    assert "skipped malformed frame" in log
    assert "server announced shutdown" in log and "rotating (server shutdown)" in log
    assert gaps and all(state == "filled" for *_, state, _ in gaps), gaps
    assert any(error and "503" in error for *_, error in gaps), f"the REST outage hit a backfill: {gaps}"
    assert {cause for _, _, _, cause, _, _ in gaps} == {"reconnect", "restart"}, gaps


@pytest.mark.localstack
def test_an_instrument_okx_does_not_have_is_reported_unknown(db: pymysql.Connection, db_settings: DatabaseSettings,
                                                            localstack: Any, tmp_path: Path) -> None:
    """Not in /api/v5/public/instruments: unknown_symbol, never subscribed. And when the instruments cannot be
    read (REST down), the subscription goes out and OKX's 60018 refusal is what producer_status shows."""
    client = sqs(localstack.endpoint_url)
    queue = fresh_queue(client)
    try:
        with ExchangeSimulator(venue="okx", symbols=("BTC-USDT",), rate=0, seed=62) as listed, \
                ExchangeSimulator(venue="okx", symbols=("BTC-USDT",), rate=0, seed=63) as rest_down:
            rest_down.rest_faults("503")
            checked = okx_broker(db, listed, ["BTC-USDT", "XYZ-USDT"])
            refused = okx_broker(db, rest_down, ["BTC-USDT", "XYZ-USDT"])
            with running_producer(db_settings, localstack.endpoint_url, queue, tmp_path, status_seconds=0.5):
                wait_subscribed(listed, {"trades-all:BTC-USDT"})
                wait_subscribed(rest_down, {"trades-all:BTC-USDT"})
                assert wait_for(lambda: (status_of(db, checked["XYZ-USDT"]) or ("",))[0] == "unknown_symbol"
                                and (status_of(db, refused["XYZ-USDT"]) or ("",))[0] == "unknown_symbol", 15)
                statuses = {key: status_of(db, script) for key, script in
                            [("checked", checked["XYZ-USDT"]), ("refused", refused["XYZ-USDT"]),
                             ("good", refused["BTC-USDT"])]}
                subscribed = listed.subscriptions()
    finally:
        client.delete_queue(QueueUrl=queue)
    assert "trades-all:XYZ-USDT" not in subscribed, "not listed: never subscribed"
    assert "is not a trading symbol" in (statuses["checked"] or ("", ""))[1]
    assert "60018" in (statuses["refused"] or ("", ""))[1] and "XYZ-USDT" in (statuses["refused"] or ("", ""))[1]
    assert statuses["good"] is not None and statuses["good"][0] == "subscribed"
