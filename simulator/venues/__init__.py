"""The venues the simulator speaks, by brokers.type: one protocol module each (binance, binance_usdm, okx).

`config_for(venue, **options)` is a SimulatorConfig with that venue's limits and keepalive as defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from simulator.config import SimulatorConfig
from simulator.venues.base import Venue
from simulator.venues.binance import BinanceSpot
from simulator.venues.binance_usdm import BinanceUsdm
from simulator.venues.okx import Okx

VENUES: dict[str, Venue] = {
    venue.name: venue
    for venue in (BinanceSpot("binance"), BinanceSpot("binance_us"), BinanceUsdm("binance_usdm"), Okx())
}


def venue_of(name: str) -> Venue:
    try:
        return VENUES[name]
    except KeyError:
        raise ValueError(f"unknown venue {name!r}: one of {', '.join(VENUES)}") from None


def config_for(venue: str, base: SimulatorConfig | None = None, **options: Any) -> SimulatorConfig:
    """`base` (or the defaults) with `venue`'s own defaults, then `options`, applied."""
    if isinstance(options.get("symbols"), str):
        options["symbols"] = tuple(options["symbols"].split(","))
    defaults = {} if base is not None and base.venue == venue else dict(venue_of(venue).defaults)
    return dataclasses.replace(base or SimulatorConfig(), **{**defaults, **options, "venue": venue})
