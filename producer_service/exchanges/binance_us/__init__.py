"""Binance.US (`brokers.type` "binance_us"): Binance's spot protocol and limits on Binance.US's own hosts
(wss://stream.binance.us:9443, https://api.binance.us; tickstream.venues.BINANCE_US). No logic of its own."""

from producer_service.exchanges.binance import BinanceAdapter
from tickstream.venues import BINANCE_US

ADAPTER = BinanceAdapter(BINANCE_US)
