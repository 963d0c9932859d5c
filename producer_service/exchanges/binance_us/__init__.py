"""Binance.US (`brokers.type` "binance_us"): Binance's spot protocol on Binance.US's own hosts
(wss://stream.binance.us:9443, https://api.binance.us; tickstream.venues.BINANCE_US). No logic of its own.

Binance.US's stream docs (binance-us-api-docs, web-socket-streams.md) give spot's 1024 streams, 5 messages/s and
24 h, but a server ping every 3 minutes with a pong due within 10 (spot: 20 s / 60 s): the producer pings when the
connection is quiet, as for USD-M, so the watchdog hears a healthy connection whichever cadence the venue uses.
"""

import dataclasses

from producer_service.exchanges.base import Keepalive
from producer_service.exchanges.binance import BinanceAdapter
from producer_service.exchanges.binance.adapter import SPOT_API, SPOT_LIMITS, SPOT_REST
from tickstream.venues import BINANCE_US

US_LIMITS = dataclasses.replace(SPOT_LIMITS, keepalive=Keepalive(server_ping_seconds=180.0, idle_timeout_seconds=600.0,
                                                                 client_ping_seconds=15.0))
ADAPTER = BinanceAdapter(BINANCE_US, US_LIMITS, SPOT_REST, SPOT_API)
