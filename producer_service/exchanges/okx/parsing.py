"""OKX v5 payloads → normalised ticks (parsing only: no sockets, no REST calls).

A `trades-all` push and a `history-trades` item are the same object: `{"instId", "tradeId", "px", "sz", "side",
"source", "ts"}`, every value a string (docs/venues/okx.md). Each function returns a `Tick` or raises
`MalformedPayload`, so a bad frame or item costs one skipped message, never the connection.
"""

from __future__ import annotations

from typing import Any

from producer_service.exchanges.base import MalformedPayload
from tickstream.ticks import Tick, sample, tick_problem

MAX_ID_DIGITS = 19  # 2**63 - 1 (BIGINT) has 19 digits, as have ms times (tick_problem checks the exact bounds)
# `side` is the taker's: a taker "sell" hit a resting bid, so the buyer was the maker.
BUYER_IS_MAKER = {"sell": True, "buy": False}


def exact_int(value: Any, name: str) -> int:
    """A numeric string (ASCII digits only: no sign, space, underscore, exponent or fraction) as its exact integer;
    anything else, a JSON number included (OKX sends strings), is refused by name."""
    if type(value) is not str or not value.isascii() or not value.isdigit():
        raise MalformedPayload(f"{name} {sample(value)} is not a numeric string")
    if len(value) > MAX_ID_DIGITS:
        raise MalformedPayload(f"{name} {sample(value)} is out of range (more than {MAX_ID_DIGITS} digits)")
    return int(value)


def trade_to_tick(item: Any, script_id: int, received_us: int) -> Tick:
    """One trade (a push's `data` item or a `history-trades` item) → Tick. OKX has no separate event time: the
    trade time `ts` (ms) stands in for both."""
    try:
        trade_id = exact_int(item["tradeId"], "tradeId")
        price, quantity, side, ts = item["px"], item["sz"], item["side"], item["ts"]
    except KeyError as missing:
        raise MalformedPayload(f"trade lacks field {missing}") from None
    except TypeError:
        raise MalformedPayload("trade is not a JSON object") from None
    maker = BUYER_IS_MAKER.get(side) if type(side) is str else None
    if maker is None:
        raise MalformedPayload(f"side {sample(side)} is neither 'buy' nor 'sell'")
    traded_us = exact_int(ts, "ts") * 1000
    tick = Tick(script_id, trade_id, price, quantity, maker, traded_us, traded_us, received_us)
    problem = tick_problem(tick)  # px/sz must be decimal strings (a JSON float is refused), ids and times in range
    if problem is not None:
        raise MalformedPayload(problem)
    return tick
