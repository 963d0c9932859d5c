"""The venues tickstream collects from, as every runtime needs to know them: `brokers.type` → endpoints and formats.

This is the shared, declarative half of the exchange seam. The API validates brokers and scripts with it (which
`type`, which `trading_symbol` format, which `additional_data.stream`, which official hosts), the endpoint
allowlist reads its hosts, and the producer's adapters (`producer_service/exchanges/<venue>/`) take their default
endpoints from it. How a venue's protocol is spoken lives only in its adapter, never here.
Protocol references: docs/venues/<type>.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Venue:
    type: str  # brokers.type
    title: str
    ws_url: str  # default WebSocket base URL (api_config.ws_url overrides it)
    rest_url: str  # default REST base URL (api_config.rest_url overrides it)
    ws_hosts: frozenset[str]  # official WebSocket hosts (wss:// to any of them is allowed)
    rest_hosts: frozenset[str]  # official REST hosts (https://)
    symbol_pattern: str  # a trading_symbol in the venue's own format (full match, after upper-casing)
    symbol_example: str
    streams: tuple[str, ...]  # allowed additional_data.stream values; the first is the default
    contiguous_ids: bool  # trade ids of a stream have no holes: an id jump is a gap to backfill

    def symbol_problem(self, symbol: str) -> str | None:
        if re.fullmatch(self.symbol_pattern, symbol):
            return None
        return f"is not a {self.title} symbol (like {self.symbol_example!r}: {self.symbol_pattern})"


_BINANCE_SYMBOL = r"[A-Z0-9]{2,20}"

BINANCE = Venue(
    type="binance", title="Binance spot",
    ws_url="wss://stream.binance.com:9443", rest_url="https://api.binance.com",
    ws_hosts=frozenset({"stream.binance.com", "data-stream.binance.vision", "stream.testnet.binance.vision"}),
    rest_hosts=frozenset({"api.binance.com", "api-gcp.binance.com", "api1.binance.com", "api2.binance.com",
                          "api3.binance.com", "api4.binance.com", "data-api.binance.vision",
                          "testnet.binance.vision"}),
    symbol_pattern=_BINANCE_SYMBOL, symbol_example="BTCUSDT",
    streams=("aggTrade", "trade"), contiguous_ids=True,
)

# Binance.US speaks spot's protocol on its own hosts.
BINANCE_US = Venue(
    type="binance_us", title="Binance.US",
    ws_url="wss://stream.binance.us:9443", rest_url="https://api.binance.us",
    ws_hosts=frozenset({"stream.binance.us"}), rest_hosts=frozenset({"api.binance.us"}),
    symbol_pattern=_BINANCE_SYMBOL, symbol_example="BTCUSDT",
    streams=("aggTrade", "trade"), contiguous_ids=True,
)

# USD-M futures: aggTrade only, sequenced on `a` (contiguous; `f`/`l` skip the insurance-fund and ADL trades, which
# are not aggregated). Perpetuals are BTCUSDT, delivery contracts BTCUSDT_250627.
BINANCE_USDM = Venue(
    type="binance_usdm", title="Binance USD-M futures",
    ws_url="wss://fstream.binance.com", rest_url="https://fapi.binance.com",
    ws_hosts=frozenset({"fstream.binance.com", "fstream.binancefuture.com"}),
    rest_hosts=frozenset({"fapi.binance.com", "testnet.binancefuture.com"}),
    symbol_pattern=r"(?=.{2,20}$)[A-Z0-9]{2,20}(_[0-9]{6})?", symbol_example="BTCUSDT",
    streams=("aggTrade",), contiguous_ids=True,
)

# OKX v5: trades-all on the business WebSocket path (the adapter adds /ws/v5/business to ws_url). Instrument ids
# are spot BTC-USDT, swaps BTC-USDT-SWAP, futures BTC-USD-250627; options (BTC-USD-250627-50000-C) do not fit the
# 20 characters of scripts.trading_symbol. OKX documents trade ids as increasing per instrument, never as
# contiguous, so an id jump is not a gap (README: Venues).
OKX = Venue(
    type="okx", title="OKX",
    ws_url="wss://ws.okx.com:8443", rest_url="https://www.okx.com",
    ws_hosts=frozenset({"ws.okx.com", "wsaws.okx.com", "wspap.okx.com"}),
    rest_hosts=frozenset({"www.okx.com", "aws.okx.com"}),
    symbol_pattern=r"(?=.{3,20}$)[A-Z0-9]{1,12}-[A-Z0-9]{1,12}(-SWAP|-[0-9]{6})?", symbol_example="BTC-USDT",
    streams=("trades-all",), contiguous_ids=False,
)

VENUES: dict[str, Venue] = {venue.type: venue for venue in (BINANCE, BINANCE_US, BINANCE_USDM, OKX)}
DEFAULT_TYPE = BINANCE.type


class UnknownVenue(ValueError):
    """A brokers.type no adapter speaks."""


def venue(type_: str) -> Venue:
    try:
        return VENUES[type_]
    except KeyError:
        raise UnknownVenue(f"unknown broker type {type_!r}: one of {', '.join(sorted(VENUES))}") from None
