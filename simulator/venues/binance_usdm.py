"""Binance USD-M futures: spot's stream protocol with futures' limits and payloads; REST /fapi/v1.

See docs/venues/binance_usdm.md.

Only `<symbol>@aggTrade` streams: its `a` is contiguous while `f`/`l` skip the insurance-fund and ADL trades no
aggregate covers (config.unaggregated_fraction). Events and REST rows have no "M" field.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from simulator.market import AGG_TRADE, SymbolMarket
from simulator.rest import RestApi, now_ms
from simulator.venues.base import Routes
from simulator.venues.binance import BinanceSpot


class BinanceUsdm(BinanceSpot):
    stream_kinds = (AGG_TRADE,)
    rest_root = "/fapi/"
    best_match = False
    defaults: Mapping[str, Any] = {
        "max_incoming_per_sec": 10,
        "ping_interval": 180.0,
        "pong_timeout": 600.0,
        "weight_limit": 2400,
        "unaggregated_fraction": 0.02,
    }

    def rest_routes(self, api: RestApi) -> Routes:
        return {
            "/fapi/v1/ping": (1, lambda _: {}),
            "/fapi/v1/time": (1, lambda _: {"serverTime": now_ms()}),
            "/fapi/v1/exchangeInfo": (1, partial(self.exchange_info, api)),
            "/fapi/v1/aggTrades": (20, partial(self.agg_trades, api)),
        }

    def exchange_info(self, api: RestApi, query: Mapping[str, str]) -> dict[str, Any]:
        """Futures' exchangeInfo takes no parameters: every symbol, always."""
        return super().exchange_info(api, {})

    def symbol_info(self, market: SymbolMarket) -> dict[str, Any]:
        spec = market.spec
        return {
            "symbol": spec.symbol, "pair": spec.symbol, "contractType": "PERPETUAL", "status": "TRADING",
            "baseAsset": spec.base_asset, "quoteAsset": spec.quote_asset, "marginAsset": spec.quote_asset,
            "pricePrecision": 2, "quantityPrecision": 3, "baseAssetPrecision": 8, "quotePrecision": 8,
            "underlyingType": "COIN",
        }  # fmt: skip
