"""The simulator's venues other than Binance spot (Binance.US, USD-M futures, OKX), over real sockets."""

from __future__ import annotations

import dataclasses
import itertools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import websocket
from websocket import ABNF

from simulator import ExchangeSimulator, MultiVenueSimulator
from simulator.market import AGG_TRADE, TRADE, SymbolMarket
from simulator.protocol import Session
from simulator.venues import VENUES, config_for
from tests.producer_harness import wait_for
from tests.test_simulator import _close_sockets, connect, get, read_until_close, recv_json

__all__ = ["_close_sockets"]  # the autouse fixture closing every socket a test opened

FUTURES_AGG_KEYS = {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m"}
OKX_TRADE_KEYS = {"instId", "tradeId", "px", "sz", "side", "source", "ts"}
BUSINESS, PUBLIC = "/ws/v5/business", "/ws/v5/public"
NO_INSTRUMENT = "Instrument ID code or Spread ID doesn't exist."


@dataclass(frozen=True)
class Speaker:
    """How a test subscribes to one symbol's trades on a venue and reads the trade ids it receives."""

    venue: str
    symbol: str  # in the venue's spelling
    kind: str  # the ledger its stream carries

    def open(self, sim: ExchangeSimulator) -> websocket.WebSocket:
        if self.venue == "okx":
            ws = connect(sim.ws_url + BUSINESS)
            ws.send(okx_op("subscribe", self.symbol))
            assert recv_json(ws)["event"] == "subscribe"
            return ws
        return connect(sim.stream_url(f"{self.symbol.lower()}@aggTrade"))

    def trade_id(self, text: str) -> int | None:
        """The id of a well-formed trade event, None for anything else."""
        try:
            message = json.loads(text)
            if self.venue == "okx":
                (trade,) = message["data"]
                return int(trade["tradeId"]) if trade["instId"] == self.symbol and float(trade["px"]) > 0 else None
            data = message["data"]
            return data["a"] if data["e"] == "aggTrade" and data["a"] > 0 and data["s"] == self.symbol else None
        except (ValueError, KeyError, TypeError):
            return None


SPEAKERS = [
    Speaker("binance", "BTCUSDT", AGG_TRADE),
    Speaker("binance_us", "BTCUSDT", AGG_TRADE),
    Speaker("binance_usdm", "BTCUSDT", AGG_TRADE),
    Speaker("okx", "BTC-USDT", TRADE),
]
BY_VENUE = pytest.mark.parametrize("speaker", SPEAKERS, ids=[s.venue for s in SPEAKERS])


def okx_op(op: str, *inst_ids: str, channel: str = "trades-all", req_id: str | None = None) -> str:
    message: dict[str, Any] = {"op": op, "args": [{"channel": channel, "instId": i} for i in inst_ids]}
    if req_id is not None:
        message["id"] = req_id
    return json.dumps(message)


def okx_events(ws: websocket.WebSocket, count: int) -> list[dict[str, Any]]:
    """The next `count` event answers (subscribe / unsubscribe / error / notice), skipping pushed data."""
    events: list[dict[str, Any]] = []
    while len(events) < count:
        message = recv_json(ws)
        if "event" in message:
            events.append(message)
    return events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- every venue: the same fault knobs ---------------------------------------------------------------


def test_every_venue_is_registered_with_its_own_defaults() -> None:
    assert set(VENUES) == {"binance", "binance_us", "binance_usdm", "okx"}
    spot, usdm, okx = config_for("binance"), config_for("binance_usdm"), config_for("okx")
    assert (spot.max_incoming_per_sec, spot.ping_interval, spot.pong_timeout) == (5, 20.0, 60.0)
    assert dataclasses.replace(config_for("binance_us"), venue="binance") == config_for("binance")
    assert (usdm.max_incoming_per_sec, usdm.ping_interval, usdm.pong_timeout, usdm.max_streams) == (10, 180, 600, 1024)
    assert usdm.weight_limit == 2400 and usdm.unaggregated_fraction > 0
    assert (okx.ping_interval, okx.idle_timeout, okx.max_requests_per_hour, okx.max_connections_per_sec) == (
        None, 30.0, 480, 3)  # fmt: skip
    assert (okx.weight_limit, okx.weight_window) == (20, 2.0)


@BY_VENUE
def test_skipped_ids_are_withheld_from_the_stream_and_served_by_rest(speaker: Speaker) -> None:
    with ExchangeSimulator(venue=speaker.venue, symbols="BTCUSDT", rate=400, seed=5) as sim:
        ws = speaker.open(sim)
        sim.skip_ids(0.1)
        received = [i for i in (speaker.trade_id(ws.recv()) for _ in range(300)) if i is not None]
        sim.skip_ids(0.0)
        skipped = sim.skipped_ids(speaker.symbol, speaker.kind)
        window = set(range(received[0], received[-1] + 1))
        assert skipped & window and not skipped & set(received)
        assert window - set(received) == skipped & window  # every hole is a skipped id
        assert set(backfill(sim, speaker, min(window), max(window))) == window


def backfill(sim: ExchangeSimulator, speaker: Speaker, first: int, last: int) -> list[int]:
    """Every id from first to last fetched by id from the venue's REST, as an adapter would page it."""
    ids: list[int] = []
    if speaker.venue == "okx":
        after = last + 1
        while after > first:
            page = get(sim.rest_url, "/api/v5/market/history-trades", instId=speaker.symbol, type=1, after=after)
            rows = [int(t["tradeId"]) for t in page.json()["data"]]
            assert rows == sorted(rows, reverse=True) and len(rows) <= 100
            ids += [i for i in rows if i >= first]
            after = rows[-1]
        return ids
    path = "/fapi/v1/aggTrades" if speaker.venue == "binance_usdm" else "/api/v3/aggTrades"
    from_id = first
    while from_id <= last:
        rows = [r["a"] for r in get(sim.rest_url, path, symbol=speaker.symbol, fromId=from_id, limit=1000).json()]
        ids += [i for i in rows if i <= last]
        from_id = rows[-1] + 1
    return ids


@BY_VENUE
def test_duplicates_and_malformed_frames(speaker: Speaker) -> None:
    with ExchangeSimulator(venue=speaker.venue, symbols="BTCUSDT", rate=400, seed=3) as sim:
        ws = speaker.open(sim)
        sim.duplicate(1.0)
        sim.malformed(0.5)
        ids = [speaker.trade_id(ws.recv()) for _ in range(300)]
        sim.duplicate(0.0)
        sim.malformed(0.0)
        good = [i for i in ids if i is not None]
        assert ids.count(None) > 10 and len(good) > len(set(good)) > 20
        assert good == sorted(good)  # duplicates arrive right after the original
        counts = sim.counts(speaker.symbol, speaker.kind)
        assert counts["duplicated"] > 0 and counts["malformed"] > 0


@BY_VENUE
def test_shutdown_notice_then_close_and_drop(speaker: Speaker) -> None:
    with ExchangeSimulator(venue=speaker.venue, symbols="BTCUSDT", rate=100, shutdown_delay=0.3) as sim:
        ws = speaker.open(sim)
        assert sim.announce_shutdown() == 1
        frames, code = read_until_close(ws)
        texts = [json.loads(f.data) for f in frames if f.opcode == ABNF.OPCODE_TEXT]
        if speaker.venue == "okx":
            notice = next(t for t in texts if t.get("event") == "notice")
            assert notice["code"] == "64008" and notice["connId"] and "service upgrade" in notice["msg"]
        else:
            assert any(t.get("stream") == "!serverShutdown" for t in texts)
        assert code == 1001

        ws = speaker.open(sim)
        ws.recv()
        assert sim.drop_connections() >= 1  # the closed one may still be finishing its close handshake
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:
                assert ws.recv_data_frame(control_frame=True)[0] != ABNF.OPCODE_CLOSE


REST_PROBES = {
    "binance": ("/api/v3/aggTrades", {"symbol": "BTCUSDT"}),
    "binance_us": ("/api/v3/aggTrades", {"symbol": "BTCUSDT"}),
    "binance_usdm": ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT"}),
    "okx": ("/api/v5/market/history-trades", {"instId": "BTC-USDT"}),
}


@BY_VENUE
def test_rest_faults_answer_in_the_venues_format(speaker: Speaker) -> None:
    path, params = REST_PROBES[speaker.venue]
    with ExchangeSimulator(venue=speaker.venue, symbols="BTCUSDT", rate=100) as sim:
        time.sleep(0.1)
        sim.rest_faults("503", "429")
        answers = [get(sim.rest_url, path, **params) for _ in range(2)]
        sim.rest_faults()
        by_status = {a.status_code: a.json() for a in answers}
        assert set(by_status) == {503, 429}
        if speaker.venue == "okx":
            assert by_status[503] == {"code": "50001", "msg": by_status[503]["msg"], "data": []}
            assert by_status[429]["code"] == "50011"
        else:
            assert by_status[503]["code"] == -1001 and by_status[429]["code"] == -1003
        assert get(sim.rest_url, path, **params).status_code == 200


# --- Binance.US ----------------------------------------------------------------------------------


def test_binance_us_is_the_spot_protocol() -> None:
    with ExchangeSimulator(venue="binance_us", symbols="BTCUSDT", rate=200, seed=7) as us:
        ws = connect(us.stream_url("btcusdt@aggTrade", "btcusdt@trade"))
        events = [recv_json(ws)["data"] for _ in range(50)]
        assert {e["e"] for e in events} == {"aggTrade", "trade"} and all(e["M"] is True for e in events)
        info = get(us.rest_url, "/api/v3/exchangeInfo").json()
        assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT"]
        assert get(us.rest_url, "/api/v3/historicalTrades", symbol="BTCUSDT", limit=5).status_code == 200


# --- USD-M futures -------------------------------------------------------------------------------


def test_usdm_aggregate_ids_are_contiguous_while_trade_ids_skip() -> None:
    with ExchangeSimulator(venue="binance_usdm", symbols="BTCUSDT", rate=500, seed=2, unaggregated_fraction=0.3) as sim:
        ws = connect(sim.stream_url("btcusdt@aggTrade"))
        events = [recv_json(ws)["data"] for _ in range(200)]
        assert all(set(e) == FUTURES_AGG_KEYS for e in events)
        ids = [e["a"] for e in events]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        holes = [b["f"] - a["l"] - 1 for a, b in itertools.pairwise(events)]
        assert all(0 <= h <= 3 for h in holes) and sum(h > 0 for h in holes) > 20
        assert all(e["f"] <= e["l"] for e in events)

        rest = get(sim.rest_url, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=ids[0], limit=200).json()
        assert [{k: r[k] for k in ("a", "f", "l", "p", "q", "m")} for r in rest] == [
            {k: e[k] for k in ("a", "f", "l", "p", "q", "m")} for e in events
        ]
        assert all(set(r) == FUTURES_AGG_KEYS - {"e", "E", "s"} for r in rest)


def test_usdm_trade_ids_stay_whole_in_the_ledger() -> None:
    """The unaggregated trades exist (in the trade history), they are only left out of every aggregate."""
    config = config_for("binance_usdm", symbols=("BTCUSDT",), unaggregated_fraction=0.5)
    market = SymbolMarket(config.specs()[0], 1, 100, 500, 10_000)
    tape = market.generate(1.0, 2000, 1_700_000_000_000, config.unaggregated_fraction)
    aggs, trades = market.aggs.rows(0, len(market.aggs)), market.trades.rows(0, len(market.trades))
    covered = {t for a in aggs for t in range(a.first, a.last + 1)}
    assert len(trades) == len(tape) and [t.id for t in trades] == list(range(500, 500 + len(trades)))
    assert covered < {t.id for t in trades} and sum(tape.gaps) == len(trades) - len(covered)
    assert [agg for agg, _ in tape.aggregates()] == aggs


def test_usdm_limits_and_errors() -> None:
    with ExchangeSimulator(venue="binance_usdm", symbols="BTCUSDT", rate=0) as sim:
        ws = connect(sim.ws_url + "/ws")
        for i in range(10):
            ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        assert [recv_json(ws)["id"] for _ in range(10)] == list(range(10))
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 10}))
        assert read_until_close(ws)[1] == 1008

        refused = get(sim.rest_url, "/fapi/v1/aggTrades", symbol="NOPE")
        assert refused.status_code == 400 and refused.json() == {"code": -1121, "msg": "Invalid symbol."}
        assert get(sim.rest_url, "/api/v3/aggTrades", symbol="BTCUSDT").status_code == 404
        page = get(sim.rest_url, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=5000)
        assert page.status_code == 200 and page.headers["X-MBX-USED-WEIGHT-1M"] == "40"  # 20 per aggTrades call
        info = get(sim.rest_url, "/fapi/v1/exchangeInfo").json()
        assert info["symbols"][0]["contractType"] == "PERPETUAL" and info["rateLimits"][0]["limit"] == 2400


def test_usdm_pings_at_its_own_cadence() -> None:
    with ExchangeSimulator(venue="binance_usdm", rate=0, ping_interval=0.2, pong_timeout=0.7) as sim:
        ws = connect(sim.ws_url + "/ws")
        started = time.monotonic()
        frames, code = read_until_close(ws, answer_pings=False)
        assert code == 1008 and sum(f.opcode == ABNF.OPCODE_PING for f in frames) >= 2
        assert 0.6 < time.monotonic() - started < 2.5


# --- OKX -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def okx() -> Iterator[ExchangeSimulator]:
    options = {"weight_limit": 1000, "max_connections_per_sec": None}  # tests connect faster than OKX allows
    with ExchangeSimulator(venue="okx", symbols="BTCUSDT,ETHUSDT", rate=300, seed=9, **options) as sim:
        yield sim


def test_okx_subscribe_acks_errors_and_pushes(okx: ExchangeSimulator) -> None:
    ws = connect(okx.ws_url + BUSINESS)
    ws.send(okx_op("subscribe", "BTC-USDT", "NOPE-USDT", req_id="15"))
    ack, refused = okx_events(ws, 2)
    conn_id = ack["connId"]
    assert ack == {"id": "15", "event": "subscribe", "arg": {"channel": "trades-all", "instId": "BTC-USDT"},
                   "connId": conn_id}  # fmt: skip
    assert refused["event"] == "error" and refused["code"] == "60018" and "NOPE-USDT" in refused["msg"]
    pushes = [recv_json(ws) for _ in range(100)]
    pushes = [p for p in pushes if "data" in p]
    assert all(p["arg"] == {"channel": "trades-all", "instId": "BTC-USDT"} and len(p["data"]) == 1 for p in pushes)
    trades = [p["data"][0] for p in pushes]
    assert all(set(t) == OKX_TRADE_KEYS and all(isinstance(v, str) for v in t.values()) for t in trades)
    ids = [int(t["tradeId"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # increasing (and, here, contiguous)
    assert all(t["side"] in ("buy", "sell") and not t["px"].endswith("0") for t in trades)

    ws.send(okx_op("unsubscribe", "BTC-USDT"))
    (gone,) = okx_events(ws, 1)
    assert gone == {"event": "unsubscribe", "arg": {"channel": "trades-all", "instId": "BTC-USDT"}, "connId": conn_id}
    ws.settimeout(0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        while True:
            ws.recv()


def test_okx_bad_requests(okx: ExchangeSimulator) -> None:
    public = connect(okx.ws_url + PUBLIC)
    public.send(okx_op("subscribe", "BTC-USDT"))  # trades-all lives on /business only
    assert okx_events(public, 1)[0]["code"] == "60018"
    ws = connect(okx.ws_url + BUSINESS)
    ws.send('{"op": "subscribe", "argss": []')
    ws.send(json.dumps({"op": "subscribe", "argss": [{"channel": "trades-all", "instId": "BTC-USDT"}]}))
    ws.send(json.dumps({"op": "explode", "args": []}))
    ws.send(okx_op("subscribe", "BTC-USDT", channel="trades"))
    ws.send(json.dumps({"op": "subscribe", "args": [{"channel": "trades-all", "instId": ["BTC-USDT"]}]}))
    codes = [e["code"] for e in okx_events(ws, 5)]
    assert codes == ["60012", "60012", "60019", "60018", "60018"]
    assert requests.get(okx.ws_url.replace("ws://", "http://") + "/ws/v5/nowhere", timeout=5).status_code == 404


def test_okx_text_ping_keeps_an_idle_connection_open() -> None:
    with ExchangeSimulator(venue="okx", rate=0, idle_timeout=0.6) as sim:
        idle, pinging = connect(sim.ws_url + BUSINESS), connect(sim.ws_url + BUSINESS)
        started = time.monotonic()
        pinging.settimeout(0.1)
        for _ in range(10):
            pinging.send("ping")
            assert pinging.recv() == "pong"
            time.sleep(0.15)
        frames, code = read_until_close(idle)
        assert code == 4004 and not [f for f in frames if f.opcode == ABNF.OPCODE_TEXT]
        assert time.monotonic() - started > 0.5
        pinging.send("ping")
        assert pinging.recv() == "pong"  # still open after 1.5 s of pings and no data


def test_okx_request_limit_per_connection() -> None:
    with ExchangeSimulator(venue="okx", rate=0, max_requests_per_hour=3) as sim:
        ws = connect(sim.ws_url + BUSINESS)
        for op in ("subscribe", "unsubscribe", "subscribe"):
            ws.send(okx_op(op, "BTC-USDT"))
            assert okx_events(ws, 1)[0]["event"] == op
        ws.send("ping")  # not a request
        assert ws.recv() == "pong"
        ws.send(okx_op("unsubscribe", "BTC-USDT"))
        frames, code = read_until_close(ws)
        texts = [json.loads(f.data) for f in frames if f.opcode == ABNF.OPCODE_TEXT]
        assert texts[-1]["code"] == "60014" and code == 4002


def test_okx_refuses_a_fourth_connection_within_a_second() -> None:
    with ExchangeSimulator(venue="okx", rate=0) as sim:
        opened = [connect(sim.ws_url + BUSINESS) for _ in range(3)]
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            connect(sim.ws_url + BUSINESS)
        assert refused.value.status_code == 429 and json.loads(refused.value.resp_body)["code"] == "50011"
        time.sleep(1.0)
        opened.append(connect(sim.ws_url + BUSINESS))  # the next second has room again
        assert sim.connection_count() == 4


def test_okx_history_trades_pages_newest_first_by_trade_id(okx: ExchangeSimulator) -> None:
    assert wait_for(lambda: len(okx.emitted_ids("BTC-USDT", TRADE)) > 400, timeout=5)
    newest = okx.emitted_ids("BTC-USDT", TRADE).stop - 1
    page = get(okx.rest_url, "/api/v5/market/history-trades", instId="BTC-USDT", type=1, after=newest - 50).json()
    assert page["code"] == "0" and page["msg"] == ""
    ids = [int(t["tradeId"]) for t in page["data"]]
    assert ids == list(range(newest - 51, newest - 151, -1))  # 100, below `after`, newest first
    history = {t.id: t for t in okx.history("BTC-USDT", TRADE)}
    sample = page["data"][0]
    assert sample["ts"] == str(history[ids[0]].time) and set(sample) == OKX_TRADE_KEYS
    short = get(okx.rest_url, "/api/v5/market/history-trades", instId="BTC-USDT", after=ids[0], limit=500).json()
    assert len(short["data"]) == 100
    between = get(okx.rest_url, "/api/v5/market/history-trades", instId="BTC-USDT", after=ids[0], before=ids[10])
    assert [int(t["tradeId"]) for t in between.json()["data"]] == ids[1:10]
    served = okx.rest_served("BTC-USDT", TRADE)
    assert (ids[-1], ids[0]) in served


def test_okx_rest_errors_and_instruments(okx: ExchangeSimulator) -> None:
    missing = get(okx.rest_url, "/api/v5/market/history-trades")
    assert missing.status_code == 400 and missing.json()["code"] == "50014"
    unknown = get(okx.rest_url, "/api/v5/market/history-trades", instId="NOPE-USDT")
    assert unknown.status_code == 200 and unknown.json() == {"code": "51001", "data": [],
                                                             "msg": f"Instrument ID, {NO_INSTRUMENT}"}  # fmt: skip
    assert get(okx.rest_url, "/api/v5/market/history-trades", instId="BTC-USDT", after="x").json()["code"] == "51000"
    listed = get(okx.rest_url, "/api/v5/public/instruments", instType="SPOT").json()["data"]
    assert [(i["instId"], i["baseCcy"], i["quoteCcy"], i["state"]) for i in listed] == [
        ("BTC-USDT", "BTC", "USDT", "live"), ("ETH-USDT", "ETH", "USDT", "live")]  # fmt: skip
    assert get(okx.rest_url, "/api/v5/public/instruments").json()["code"] == "50014"
    assert get(okx.rest_url, "/api/v5/public/instruments", instType="SWAP").json()["data"] == []


def test_okx_rest_rate_limit_is_429_with_50011() -> None:
    with ExchangeSimulator(venue="okx", rate=0, weight_limit=3, weight_window=60.0) as sim:
        answers = [get(sim.rest_url, "/api/v5/public/time") for _ in range(5)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
        assert answers[-1].json() == {"code": "50011", "msg": "Too Many Requests", "data": []}


# --- several venues, one process ---------------------------------------------------------------


def test_two_venues_served_by_one_simulator_at_once() -> None:
    venues = {"okx": {"seed": 1}, "binance_usdm": {"seed": 2}}
    with MultiVenueSimulator(venues, symbols="BTCUSDT", rate=300) as multi:
        okx, usdm = multi["okx"], multi["binance_usdm"]
        assert okx.port != usdm.port and okx.core is not usdm.core and okx._runner is usdm._runner
        okx_speaker, usdm_speaker = SPEAKERS[3], SPEAKERS[2]
        okx_ws, usdm_ws = okx_speaker.open(okx), usdm_speaker.open(usdm)
        usdm.skip_ids(0.2)  # knobs are per venue
        okx_ids = [okx_speaker.trade_id(okx_ws.recv()) for _ in range(200)]
        usdm_ids = [usdm_speaker.trade_id(usdm_ws.recv()) for _ in range(200)]
        assert None not in okx_ids and okx_ids == list(range(okx_ids[0], okx_ids[0] + 200))
        assert usdm.skipped_ids("BTCUSDT") and not okx.skipped_ids("BTC-USDT", TRADE)
        assert None not in usdm_ids and len(set(usdm_ids)) == 200 and usdm_ids[-1] - usdm_ids[0] > 200
        assert get(usdm.rest_url, "/api/v5/public/time").status_code == 404  # each port speaks one venue


def test_command_line_serves_each_venue_on_its_port() -> None:
    ports = {"okx": free_port(), "binance_usdm": free_port()}
    args = [f"--venue={venue}={port}" for venue, port in ports.items()]
    process = subprocess.Popen([sys.executable, "-m", "simulator", *args, "--symbols=BTCUSDT", "--rate=100"],
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        lines = [process.stderr.readline() for _ in range(2)] if process.stderr else []
        assert all("listening" in line for line in lines), lines
        okx_rest, usdm_rest = (f"http://127.0.0.1:{ports[v]}" for v in ("okx", "binance_usdm"))
        assert get(okx_rest, "/api/v5/public/instruments", instType="SPOT").json()["data"][0]["instId"] == "BTC-USDT"
        assert get(usdm_rest, "/fapi/v1/exchangeInfo").json()["symbols"][0]["symbol"] == "BTCUSDT"
        ws = connect(f"ws://127.0.0.1:{ports['binance_usdm']}/ws/btcusdt@aggTrade")
        assert set(recv_json(ws)) == FUTURES_AGG_KEYS
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_futures_templates_match_the_event_dicts() -> None:
    """The fast path (templates) and the faulty path (dicts) render a futures tape identically."""
    venue = VENUES["binance_usdm"]
    for unaggregated in (0.0, 0.5):
        market = SymbolMarket(config_for("binance_usdm").specs()[0], 4, 10, 20, 10_000)
        tape = market.generate(1.0, 300, 1_700_000_000_000, unaggregated)
        for combined, micro in ((True, False), (False, True)):
            texts = venue.tape_texts(tape, "btcusdt@aggTrade", None, 5, (combined, micro))
            session = Session(combined, {}, micro)
            expected = [session.render("btcusdt@aggTrade", venue.event("BTCUSDT", AGG_TRADE, a, 5))
                        for a, _ in tape.aggregates()]  # fmt: skip
            assert texts == expected
