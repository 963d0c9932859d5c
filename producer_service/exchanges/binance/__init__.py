"""Binance spot (`brokers.type` "binance"): the adapter, and the payload parsing Binance.US shares."""

from producer_service.exchanges.base import MalformedPayload
from producer_service.exchanges.binance.adapter import (
    SPOT_API,
    SPOT_LIMITS,
    SPOT_REST,
    BinanceAdapter,
    BinanceRest,
    Endpoint,
)
from producer_service.exchanges.binance.parsing import (
    SERVER_SHUTDOWN,
    event_to_tick,
    parse_frame,
    rest_aggtrade_to_tick,
    rest_trade_to_tick,
    stream_name,
)
from tickstream.venues import BINANCE

ADAPTER = BinanceAdapter(BINANCE)

__all__ = ["ADAPTER", "SERVER_SHUTDOWN", "SPOT_API", "SPOT_LIMITS", "SPOT_REST", "BinanceAdapter", "BinanceRest",
           "Endpoint", "MalformedPayload",
           "event_to_tick", "parse_frame", "rest_aggtrade_to_tick", "rest_trade_to_tick", "stream_name"]
