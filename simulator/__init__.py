"""The exchange simulator: a local stand-in for a Spot exchange's market-data WebSocket and REST APIs.

Use ExchangeSimulator in tests, or run `python -m simulator --help` for the command line.
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
