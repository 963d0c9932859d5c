"""Binance payloads → ticks, including the malformed ones a real feed (or our simulator) sends."""

from __future__ import annotations

import pytest

from producer_service.exchanges.binance import (
    MalformedPayload,
    event_to_tick,
    parse_frame,
    rest_aggtrade_to_tick,
    rest_trade_to_tick,
    stream_name,
)

RECEIVED = 1_700_000_000_200_000
AGG = {"e": "aggTrade", "E": 1700000000123, "s": "BTCUSDT", "a": 123456789, "p": "95234.56000000",
       "q": "0.00100000", "f": 100, "l": 105, "T": 1700000000120, "m": True, "M": True}
TRADE = {"e": "trade", "E": 1700000000123, "s": "PEPEUSDT", "t": 12345, "p": "0.00000712", "q": "1.00000000",
         "T": 1700000000120, "m": False, "M": True}


def test_stream_names_are_lowercase() -> None:
    assert stream_name("BTCUSDT", "aggTrade") == "btcusdt@aggTrade"


def test_aggtrade_and_trade_events() -> None:
    agg = event_to_tick(AGG, 7, RECEIVED)
    assert (agg.script_id, agg.trade_id, agg.price, agg.is_buyer_maker) == (7, 123456789, "95234.56000000", True)
    assert (agg.traded_at_us, agg.event_at_us, agg.received_at_us) == (1700000000120000, 1700000000123000, RECEIVED)
    trade = event_to_tick(TRADE, 8, RECEIVED)
    assert (trade.trade_id, trade.price) == (12345, "0.00000712")


def test_rest_items() -> None:
    item = {"a": 5, "p": "1.5", "q": "2", "f": 1, "l": 2, "T": 1700000000000, "m": False, "M": True}
    assert rest_aggtrade_to_tick(item, 1, RECEIVED).trade_id == 5
    trade = {"id": 9, "price": "1.5", "qty": "2", "quoteQty": "3", "time": 1700000000000, "isBuyerMaker": True,
             "isBestMatch": True}
    assert rest_trade_to_tick(trade, 1, RECEIVED).is_buyer_maker is True


@pytest.mark.parametrize(
    "event",
    [
        {**AGG, "e": "depthUpdate"},
        {k: v for k, v in AGG.items() if k != "p"},
        {**AGG, "p": 95234.56},
        {**AGG, "a": -1},
        {**AGG, "T": "1700000000120"},
        {**AGG, "T": 10**30},
        {**AGG, "q": "1" * 40},
        ["not", "an", "object"],
    ],
)
def test_malformed_events_raise(event: object) -> None:
    with pytest.raises(MalformedPayload):
        event_to_tick(event, 1, RECEIVED)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_frames_raise(raw: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_frame(raw)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({k: v for k, v in TRADE.items() if k != "q"}, "event lacks field 'q'"),
        ({**AGG, "e": ["aggTrade"]}, "unknown event type ['aggTrade']"),
        ({**TRADE, "E": 1.5}, "trade/event time 1700000000120/1.5 is not integer milliseconds"),
        ({**TRADE, "T": True}, "trade/event time True/1700000000123 is not integer milliseconds"),
        ({**TRADE, "m": "false"}, "is_buyer_maker 'false' is not a boolean"),
        ({**TRADE, "t": "12345"}, "trade_id '12345' is not a non-negative 64-bit integer"),
        ("a string", "event is not a JSON object"),
        (None, "event is not a JSON object"),
    ],
)
def test_malformed_events_say_why(event: object, message: str) -> None:
    with pytest.raises(MalformedPayload) as raised:
        event_to_tick(event, 1, RECEIVED)  # type: ignore[arg-type]
    assert str(raised.value) == message


def test_live_and_rest_conversions_agree() -> None:
    """The live hot path builds the same tick as the REST path would from the same trade."""
    live = event_to_tick(TRADE, 8, RECEIVED)
    rest = rest_trade_to_tick({"id": TRADE["t"], "price": TRADE["p"], "qty": TRADE["q"], "time": TRADE["T"],
                               "isBuyerMaker": TRADE["m"]}, 8, RECEIVED)
    assert live == rest._replace(event_at_us=TRADE["E"] * 1000)
    assert type(live) is type(rest)
