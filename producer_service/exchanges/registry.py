"""`brokers.type` → the adapter that speaks that venue: one line per venue."""

from __future__ import annotations

from producer_service.exchanges import binance, binance_us, binance_usdm, okx
from producer_service.exchanges.base import ExchangeAdapter

ADAPTERS: dict[str, ExchangeAdapter] = {
    "binance": binance.ADAPTER,
    "binance_us": binance_us.ADAPTER,
    "binance_usdm": binance_usdm.ADAPTER,
    "okx": okx.ADAPTER,
}


class UnknownExchange(LookupError):
    """A broker type no adapter speaks (the producer reports its scripts and carries on with the rest)."""


def adapter_for(broker_type: str) -> ExchangeAdapter:
    try:
        return ADAPTERS[broker_type]
    except KeyError:
        raise UnknownExchange(f"no exchange adapter for broker type {broker_type!r} (known: "
                              f"{', '.join(sorted(ADAPTERS))})") from None
