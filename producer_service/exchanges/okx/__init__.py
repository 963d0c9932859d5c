"""OKX v5 (`brokers.type` "okx"): the adapter (trades-all, history-trades) and its payload parsing."""

from producer_service.exchanges.okx.adapter import OKX_LIMITS, OKX_REST, OkxAdapter
from producer_service.exchanges.okx.parsing import exact_int, trade_to_tick

ADAPTER = OkxAdapter()

__all__ = ["ADAPTER", "OKX_LIMITS", "OKX_REST", "OkxAdapter", "exact_int", "trade_to_tick"]
