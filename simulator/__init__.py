"""The exchange simulator: a local stand-in for exchanges' market-data WebSocket and REST APIs.

Each venue's protocol is chosen per listening port: binance (spot), binance_us, binance_usdm (USD-M futures),
okx (v5, trades-all); protocol references in docs/venues/. One generic core (markets, fault knobs, history) and one
protocol module per venue (simulator/venues/<venue>.py).

    ExchangeSimulator(venue="okx", symbols="BTCUSDT,ETHUSDT", rate=100)   # one venue; ws_url, rest_url, knobs
    with MultiVenueSimulator({"okx": {}, "binance_usdm": {"port": 9451}}, rate=100) as sim:
        sim["okx"].skip_ids(0.01)                                         # each venue its own market and knobs
    python -m simulator --venue binance=9443 --venue okx=9450 --venue binance_usdm=9451

Paths: binance*: /ws, /stream?streams=, /api/v3 (spot, US) or /fapi/v1 (USD-M); okx: /ws/v5/business (trades-all),
/ws/v5/public, /api/v5/market/history-trades, /api/v5/public/instruments. Symbols are given as BTCUSDT or BTC-USDT and
spelled the venue's way everywhere else (OKX: BTC-USDT). Without a venue everything is Binance spot, as before.
"""

from simulator.config import SimulatorConfig, SymbolSpec, spec_for
from simulator.core import Endpoints
from simulator.harness import ExchangeSimulator, MultiVenueSimulator
from simulator.market import AGG_TRADE, TRADE, AggTrade, Trade

__all__ = [
    "AGG_TRADE",
    "TRADE",
    "AggTrade",
    "Endpoints",
    "ExchangeSimulator",
    "MultiVenueSimulator",
    "SimulatorConfig",
    "SymbolSpec",
    "Trade",
    "spec_for",
]
