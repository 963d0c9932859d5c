"""The exchange simulator, exercised over real sockets with websocket-client and requests."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket
from websocket import ABNF
from websockets.frames import Frame, Opcode

from simulator import ExchangeSimulator, spec_for
from simulator.connection import ascii_text_frames, text_frame
from simulator.market import SymbolMarket
from simulator.protocol import agg_event, dumps, tape_texts, to_microseconds, trade_event
from tests.producer_harness import wait_for

AGG_KEYS = {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"}
TRADE_KEYS = {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
REST_AGG_KEYS = {"a", "p", "q", "f", "l", "T", "m", "M"}
DECIMAL_8 = re.compile(r"^\d+\.\d{8}$")


# --- helpers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[ExchangeSimulator]:
    """A shared simulator with no incoming-message limit, for tests that don't change knobs."""
    with ExchangeSimulator(rate=300, seed=7, max_incoming_per_sec=None) as simulator:
        yield simulator


_opened: list[websocket.WebSocket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _opened:
        ws = _opened.pop()
        with contextlib.suppress(websocket.WebSocketException, OSError):
            ws.close(timeout=0.1)
        ws.shutdown()


def connect(url: str) -> websocket.WebSocket:
    ws = websocket.create_connection(url, timeout=5)
    _opened.append(ws)
    return ws


def recv_json(ws: websocket.WebSocket) -> Any:
    return json.loads(ws.recv())


def collect(ws: websocket.WebSocket, count: int) -> list[Any]:
    return [recv_json(ws) for _ in range(count)]


def request(ws: websocket.WebSocket, message: dict[str, Any] | str) -> dict[str, Any]:
    """Send a control message and return its reply, skipping stream data in between."""
    ws.send(message if isinstance(message, str) else json.dumps(message))
    while True:
        reply = recv_json(ws)
        if isinstance(reply, dict) and ("result" in reply or "error" in reply):
            return reply


def call(ws: websocket.WebSocket, method: str, params: list[Any], req_id: int) -> dict[str, Any]:
    return request(ws, {"method": method, "params": params, "id": req_id})


def read_until_close(ws: websocket.WebSocket, answer_pings: bool = True) -> tuple[list[ABNF], int]:
    """All frames up to the server's close frame, and its close code."""
    frames = []
    while True:
        frame = ws.recv_data_frame(control_frame=True)[1] if answer_pings else ws.recv_frame()
        frames.append(frame)
        if frame.opcode == ABNF.OPCODE_CLOSE:
            return frames, struct.unpack("!H", frame.data[:2])[0]


def get(base: str, path: str, **params: Any) -> requests.Response:
    return requests.get(base + path, params=params, timeout=5)


# --- streams --------------------------------------------------------------------------------------


def test_combined_stream_wraps_payloads_in_envelopes(sim: ExchangeSimulator) -> None:
    wanted = {"btcusdt@aggTrade", "ethusdt@trade", "pepeusdt@aggTrade"}
    ws = connect(sim.stream_url(*sorted(wanted)))
    messages = collect(ws, 60)
    ws.close()
    assert all(set(m) == {"stream", "data"} for m in messages)
    assert {m["stream"] for m in messages} == wanted
    last_id: dict[str, int] = {}
    for m in messages:
        data, stream = m["data"], m["stream"]
        is_agg = stream.endswith("@aggTrade")
        assert set(data) == (AGG_KEYS if is_agg else TRADE_KEYS)
        assert data["e"] == ("aggTrade" if is_agg else "trade")
        assert data["s"].lower() == stream.split("@")[0]
        assert DECIMAL_8.match(data["p"]) and DECIMAL_8.match(data["q"])
        assert isinstance(data["E"], int) and data["E"] >= data["T"] > 1_600_000_000_000
        row_id = data["a" if is_agg else "t"]
        assert row_id == last_id.get(stream, row_id - 1) + 1
        last_id[stream] = row_id
    pepe = [m["data"] for m in messages if m["stream"] == "pepeusdt@aggTrade"]
    assert pepe[0]["p"].startswith("0.0000")


def test_raw_stream_sends_unwrapped_payloads(sim: ExchangeSimulator) -> None:
    ws = connect(sim.raw_url("btcusdt@trade"))
    messages = collect(ws, 10)
    ws.close()
    assert all(set(m) == TRADE_KEYS and m["e"] == "trade" for m in messages)
    assert [m["t"] for m in messages] == list(range(messages[0]["t"], messages[0]["t"] + 10))
    micro = recv_json(connect(sim.raw_url("btcusdt@trade") + "?timeUnit=MICROSECOND"))
    assert micro["T"] > 1_600_000_000_000_000 and micro["E"] > 1_600_000_000_000_000


def test_aggregate_trade_ids_cover_trade_ids(sim: ExchangeSimulator) -> None:
    ws = connect(sim.stream_url("ethusdt@aggTrade"))
    aggs = [m["data"] for m in collect(ws, 30)]
    ws.close()
    for prev, cur in itertools.pairwise(aggs):
        assert cur["f"] == prev["l"] + 1 and cur["l"] >= cur["f"]
    assert aggs[0]["a"] != aggs[0]["f"]  # separate id sequences


def test_subscribe_list_unsubscribe_and_combined_property(sim: ExchangeSimulator) -> None:
    ws = connect(sim.raw_url())
    assert request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {"result": [], "id": 1}
    reply = request(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@aggTrade"], "id": "a1"})
    assert reply == {"result": None, "id": "a1"}
    events = collect(ws, 20)
    assert {e["e"] for e in events} == {"trade", "aggTrade"}  # raw endpoint: no envelope
    listed = request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3})
    assert listed == {"result": ["btcusdt@trade", "ethusdt@aggTrade"], "id": 3}
    assert call(ws, "SET_PROPERTY", ["combined", True], 4) == {"result": None, "id": 4}
    assert call(ws, "GET_PROPERTY", ["combined"], 5) == {"result": True, "id": 5}
    assert set(recv_json(ws)) == {"stream", "data"}
    assert call(ws, "UNSUBSCRIBE", ["btcusdt@trade"], 6) == {"result": None, "id": 6}
    assert call(ws, "LIST_SUBSCRIPTIONS", [], 7) == {"result": ["ethusdt@aggTrade"], "id": 7}
    assert call(ws, "UNSUBSCRIBE", ["ethusdt@aggTrade"], 8) == {"result": None, "id": 8}
    ws.settimeout(0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()
    ws.close()


@pytest.mark.parametrize(
    ("message", "code", "reply_id"),
    [
        ({"method": "SET_PROPERTY", "params": ["colour", True], "id": 1}, 0, 1),
        ({"method": "GET_PROPERTY", "params": ["colour"], "id": 2}, 0, 2),
        ({"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 3}, 1, 3),
        ({"method": "SUBSCRIBE_ALL", "params": [], "id": 4}, 2, 4),
        ({"params": ["btcusdt@trade"], "id": 5}, 2, 5),
        ({"method": "LIST_SUBSCRIPTIONS", "params": ["extra"], "id": 6}, 2, 6),
        ({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1.5}, 2, None),
        ({"method": "SUBSCRIBE", "params": [42], "id": 8}, 2, 8),
        ('{"method": "SUBSCRIBE", "params": [', 3, None),
        ("not json at all", 3, None),
    ],
)
def test_control_message_errors(sim: ExchangeSimulator, message: Any, code: int, reply_id: Any) -> None:
    ws = connect(sim.raw_url())
    reply = request(ws, message)
    ws.close()
    assert set(reply) == {"error", "id"} and reply["id"] == reply_id
    assert reply["error"]["code"] == code and isinstance(reply["error"]["msg"], str)


def test_too_many_streams_rejected() -> None:
    with ExchangeSimulator(rate=0, max_streams=3) as sim:
        ws = connect(sim.raw_url())
        streams = [f"sym{i}usdt@trade" for i in range(4)]
        assert request(ws, {"method": "SUBSCRIBE", "params": streams[:3], "id": 1})["result"] is None
        assert request(ws, {"method": "SUBSCRIBE", "params": streams[3:], "id": 2})["error"]["code"] == 2
        ws.close()


def test_unknown_symbol_is_acknowledged_but_silent(sim: ExchangeSimulator) -> None:
    ws = connect(sim.raw_url())
    assert call(ws, "SUBSCRIBE", ["nosuchcoinusdt@aggTrade"], 1) == {"result": None, "id": 1}
    ws.settimeout(0.4)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()
    ws.close()
    response = get(sim.rest_url, "/api/v3/exchangeInfo", symbol="NOSUCHCOINUSDT")
    assert response.status_code == 400 and response.json() == {"code": -1121, "msg": "Invalid symbol."}
    listed = get(sim.rest_url, "/api/v3/exchangeInfo", symbols='["BTCUSDT","PEPEUSDT"]').json()["symbols"]
    assert [(s["symbol"], s["status"], s["baseAsset"], s["quoteAsset"]) for s in listed] == [
        ("BTCUSDT", "TRADING", "BTC", "USDT"),
        ("PEPEUSDT", "TRADING", "PEPE", "USDT"),
    ]


# --- connection limits ----------------------------------------------------------------------------


def test_incoming_message_rate_limit_disconnects() -> None:
    with ExchangeSimulator(rate=0, max_incoming_per_sec=5) as sim:
        ws = connect(sim.raw_url())
        for i in range(5):
            assert request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": i}) == {"result": [], "id": i}
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 99}))
        frames, code = read_until_close(ws)
        assert code == 1008 and all(f.opcode != ABNF.OPCODE_TEXT for f in frames)

        pinger = connect(sim.raw_url())  # control frames count too
        for _ in range(6):
            pinger.pong(b"")
        assert read_until_close(pinger)[1] == 1008


def test_server_pings_and_drops_a_client_that_does_not_pong() -> None:
    with ExchangeSimulator(rate=0, ping_interval=0.25, pong_timeout=1.0, close_timeout=0.5) as sim:
        silent, polite = connect(sim.raw_url()), connect(sim.raw_url())
        started = time.monotonic()
        answering = threading.Thread(target=answer_pings, args=(polite, started + 2.0))
        answering.start()
        frames, code = read_until_close(silent, answer_pings=False)
        elapsed = time.monotonic() - started
        pings = [f for f in frames if f.opcode == ABNF.OPCODE_PING]
        assert pings and all(p.data for p in pings) and len({p.data for p in pings}) == len(pings)
        assert code == 1008 and 0.9 <= elapsed < 3.0

        answering.join()
        assert request(polite, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {"result": [], "id": 1}
        polite.close()


def answer_pings(ws: websocket.WebSocket, until: float) -> None:
    """Read (recv() answers each ping with a pong echoing its payload) until `until`."""
    ws.settimeout(0.1)
    while time.monotonic() < until:
        with contextlib.suppress(websocket.WebSocketTimeoutException):
            ws.recv()
    ws.settimeout(5)


def test_connection_closed_at_max_lifetime() -> None:
    with ExchangeSimulator(rate=100, max_lifetime=1.0) as sim:
        ws = connect(sim.stream_url("btcusdt@aggTrade"))
        started = time.monotonic()
        frames, code = read_until_close(ws)
        assert code == 1000 and 0.9 <= time.monotonic() - started < 2.5
        assert sum(f.opcode == ABNF.OPCODE_TEXT for f in frames) > 10


def test_server_shutdown_announced_then_closed() -> None:
    with ExchangeSimulator(rate=100, shutdown_delay=0.4) as sim:
        combined, raw = connect(sim.stream_url("btcusdt@aggTrade")), connect(sim.raw_url("btcusdt@aggTrade"))
        recv_json(combined), recv_json(raw)
        announced = time.monotonic()
        assert sim.announce_shutdown() == 2
        notices = []
        for ws in (combined, raw):
            frames, code = read_until_close(ws)
            texts = [json.loads(f.data) for f in frames if f.opcode == ABNF.OPCODE_TEXT]
            notices.append(next(t for t in texts if "serverShutdown" in json.dumps(t)))
            assert code == 1001
        assert time.monotonic() - announced >= 0.35
        assert notices[0]["stream"] == "!serverShutdown" and notices[0]["data"]["e"] == "serverShutdown"
        assert set(notices[1]) == {"e", "E"} and notices[1]["e"] == "serverShutdown"


def test_drop_connections_cuts_without_close_frame() -> None:
    with ExchangeSimulator(rate=100) as sim:
        ws = connect(sim.stream_url("btcusdt@aggTrade"))
        recv_json(ws)
        assert sim.drop_connections() == 1
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:
                assert ws.recv_data_frame(control_frame=True)[0] != ABNF.OPCODE_CLOSE


# --- faults on the data -----------------------------------------------------------------------------


def test_duplicate_malformed_and_pause_faults() -> None:
    with ExchangeSimulator(symbols="BTCUSDT", rate=500, seed=3) as sim:
        ws = connect(sim.stream_url("btcusdt@aggTrade"))
        sim.duplicate(1.0)
        sim.malformed(0.5)
        texts = [ws.recv() for _ in range(200)]
        sim.duplicate(0.0)
        sim.malformed(0.0)
        ids, bad = [], 0
        for text in texts:
            try:
                data = json.loads(text)["data"]
                valid = data["e"] == "aggTrade" and data["a"] > 0
            except (ValueError, KeyError, TypeError):
                valid = False
            if valid:
                ids.append(data["a"])
            else:
                bad += 1
        assert bad > 0 and len(ids) > len(set(ids)) > 0
        sim.pause(0.5)
        time.sleep(0.1)
        ws.settimeout(0.1)
        with pytest.raises(websocket.WebSocketTimeoutException):
            while True:  # drain what was queued before the pause
                ws.recv()
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()
        assert sim.counts("BTCUSDT")["paused"] > 0
        ws.close()


def test_rest_paging_returns_every_emitted_id_including_skipped() -> None:
    with ExchangeSimulator(symbols="BTCUSDT", rate=2000, seed=11) as sim:
        sim.skip_ids(0.2)
        ws = connect(sim.stream_url("btcusdt@aggTrade"))
        streamed = {m["data"]["a"]: m["data"] for m in collect(ws, 600)}
        ws.close()
        emitted = sim.emitted_ids("BTCUSDT")
        skipped = sim.skipped_ids("BTCUSDT")
        assert skipped and not skipped & streamed.keys()
        assert set(range(min(streamed), max(streamed) + 1)) <= streamed.keys() | skipped  # nothing else lost

        paged: dict[int, dict[str, Any]] = {}
        next_id = emitted.start
        while next_id < emitted.stop:
            page = get(sim.rest_url, "/api/v3/aggTrades", symbol="BTCUSDT", fromId=next_id, limit=1000).json()
            assert page[0]["a"] == next_id and len(page) <= 1000
            paged.update((item["a"], item) for item in page)
            next_id = page[-1]["a"] + 1
        assert set(emitted) <= paged.keys() and skipped <= paged.keys()
        assert all(set(item) == REST_AGG_KEYS for item in paged.values())
        for agg_id, event in streamed.items():
            assert paged[agg_id] == {k: event[k] for k in REST_AGG_KEYS}


def test_rest_trades_and_historical_trades() -> None:
    with ExchangeSimulator(symbols="PEPEUSDT", rate=1000, seed=5) as sim:
        assert wait_for(lambda: len(sim.emitted_ids("PEPEUSDT", "trade")) > 100, timeout=5)
        recent = get(sim.rest_url, "/api/v3/trades", symbol="PEPEUSDT", limit=5).json()
        assert len(recent) == 5 and set(recent[0]) == {
            "id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch",
        }  # fmt: skip
        start = sim.emitted_ids("PEPEUSDT", "trade").start
        response = get(
            sim.rest_url, "/api/v3/historicalTrades", symbol="PEPEUSDT", fromId=start + 10, limit=20
        )
        history = response.json()
        assert [t["id"] for t in history] == list(range(start + 10, start + 30))
        assert history[0]["price"].startswith("0.0000")


# --- rendering and framing -------------------------------------------------------------------------


@pytest.mark.parametrize("combined", [False, True])
@pytest.mark.parametrize("micro", [False, True])
@pytest.mark.parametrize(("aggs", "trades"), [(True, True), (True, False), (False, True)])
def test_template_rendering_is_byte_identical_to_the_payload_dicts(
    combined: bool, micro: bool, aggs: bool, trades: bool
) -> None:
    for symbol in ("BTCUSDT", "PEPEUSDT"):
        market = SymbolMarket(spec_for(symbol), 3, 1_000, 5_000, 10_000)
        tape = market.generate(0.5, 200, 1_700_000_000_123)
        agg_stream, trade_stream = f"{symbol.lower()}@aggTrade", f"{symbol.lower()}@trade"
        event_ms = 1_700_000_000_999
        expected = []
        for agg, covered in tape.aggregates():
            events = [(agg_stream, agg_event(symbol, agg, event_ms))] if aggs else []
            events += [(trade_stream, trade_event(symbol, t, event_ms)) for t in covered] if trades else []
            for stream, payload in events:
                payload = to_microseconds(payload) if micro else payload
                expected.append(dumps({"stream": stream, "data": payload} if combined else payload))
        texts = tape_texts(tape, agg_stream if aggs else None, trade_stream if trades else None, event_ms,
                           combined, micro)
        assert texts == expected and len(texts) > 50
        history = market.trades.rows(0, len(market.trades)), market.aggs.rows(0, len(market.aggs))
        assert history == ([t for _, ts in tape.aggregates() for t in ts], [a for a, _ in tape.aggregates()])


@pytest.mark.parametrize("length", [0, 1, 125, 126, 200, 65_535, 65_536, 70_000])
def test_hand_encoded_frames_match_websockets(length: int) -> None:
    def reference(text: str) -> bytes:
        return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])

    assert text_frame("é" * length) == reference("é" * length)  # the length counts UTF-8 bytes
    assert ascii_text_frames(["x" * length, "{}"]) == reference("x" * length) + reference("{}")


def test_a_tick_of_many_frames_arrives_as_one_event_per_frame() -> None:
    """A tick's frames go out in one write; a real client still reads them as separate messages, in order."""
    with ExchangeSimulator(symbols="BTCUSDT", rate=20_000, seed=9) as sim:
        ws = connect(sim.stream_url("btcusdt@aggTrade", "btcusdt@trade"))
        messages = collect(ws, 4000)
        ws.close()
        history = {t.id: t for t in sim.history("BTCUSDT", "trade")}
    agg = None
    expected_trades: list[int] = []
    for message in messages:
        data = message["data"]
        if message["stream"] == "btcusdt@aggTrade":
            assert not expected_trades, "an aggregate is followed by all of its trades"
            assert agg is None or data["a"] == agg["a"] + 1
            agg, expected_trades = data, list(range(data["f"], data["l"] + 1))
        elif agg is not None:
            assert data["t"] == expected_trades.pop(0) and data["p"] == agg["p"] and data["m"] == agg["m"]
            assert int(history[data["t"]].qty) == int(data["q"].replace(".", ""))
    assert agg is not None


def test_a_client_too_far_behind_is_cut_off() -> None:
    with ExchangeSimulator(symbols="BTCUSDT", rate=20_000, max_client_queue=2_000) as sim:
        sleeper = websocket.create_connection(
            sim.stream_url("btcusdt@trade"), timeout=5, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
        )
        _opened.append(sleeper)
        reader = connect(sim.stream_url("btcusdt@trade"))
        assert wait_for(lambda: sim.connection_count() == 1, timeout=20)  # the sleeper, which never reads
        assert len(collect(reader, 1000)) == 1000  # the other client is served throughout
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while True:  # what was sent before the abort, then no close frame
                assert sleeper.recv_data_frame(control_frame=True)[0] != ABNF.OPCODE_CLOSE


# --- REST weight ----------------------------------------------------------------------------------


def test_weight_header_and_429_with_retry_after() -> None:
    with ExchangeSimulator(rate=0, weight_limit=50, ban_after_429=None) as sim:
        used = []
        for path in ("ping", "exchangeInfo", "aggTrades?symbol=BTCUSDT", "trades?symbol=BTCUSDT"):
            response = get(sim.rest_url, "/api/v3/" + path)
            assert response.status_code == 200
            used.append(int(response.headers["X-MBX-USED-WEIGHT-1M"]))
        assert used == [1, 21, 25, 50]
        over = get(sim.rest_url, "/api/v3/ping")
        assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
        assert over.json()["code"] == -1003 and int(over.headers["X-MBX-USED-WEIGHT-1M"]) > 50


def test_418_after_ignoring_429() -> None:
    with ExchangeSimulator(rate=0, weight_limit=10, ban_after_429=2, ban_seconds=30) as sim:
        statuses = [get(sim.rest_url, "/api/v3/exchangeInfo").status_code for _ in range(4)]
        assert statuses == [429, 429, 418, 418]
        banned = get(sim.rest_url, "/api/v3/ping")
        assert banned.status_code == 418 and 25 <= int(banned.headers["Retry-After"]) <= 30


def test_rest_parameter_errors(sim: ExchangeSimulator) -> None:
    assert get(sim.rest_url, "/api/v3/ping").json() == {}
    assert get(sim.rest_url, "/api/v3/aggTrades").json()["code"] == -1102
    assert get(sim.rest_url, "/api/v3/aggTrades", symbol="btcusdt").json()["code"] == -1100
    assert get(sim.rest_url, "/api/v3/aggTrades", symbol="BTCUSDT", fromId="x").json()["code"] == -1100
    assert get(sim.rest_url, "/api/v3/aggTrades", symbol="NOPEUSDT").status_code == 400


# --- determinism ----------------------------------------------------------------------------------


def first_aggs(seed: int, count: int = 50) -> list[tuple[Any, ...]]:
    with ExchangeSimulator(symbols="BTCUSDT,PEPEUSDT", rate=2000, seed=seed) as sim:
        assert wait_for(lambda: len(sim.emitted_ids("PEPEUSDT")) >= count, timeout=5)
        rows = []
        for symbol in ("BTCUSDT", "PEPEUSDT"):
            start = sim.emitted_ids(symbol).start
            page = get(sim.rest_url, "/api/v3/aggTrades", symbol=symbol, fromId=start, limit=count).json()
            rows += [(symbol, a["a"], a["p"], a["q"], a["f"], a["l"], a["m"]) for a in page]
        return rows


def test_same_seed_gives_same_trades() -> None:
    first, again, other = first_aggs(42), first_aggs(42), first_aggs(43)
    assert len(first) == 100
    assert first == again
    assert first != other
