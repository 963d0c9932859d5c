"""Deterministic synthetic trades and the bounded history that remembers them."""

from __future__ import annotations

import bisect
import random
from array import array
from collections.abc import Sequence
from typing import NamedTuple

from simulator.config import SCALE, SymbolSpec

AGG_TRADE = "aggTrade"
TRADE = "trade"
KINDS = (AGG_TRADE, TRADE)
LOT_COUNTS = (1, 2, 3, 4)
LOT_WEIGHTS = (60, 25, 10, 5)


class AggTrade(NamedTuple):
    id: int
    price: int
    qty: int
    first: int
    last: int
    time: int
    maker: int


class Trade(NamedTuple):
    id: int
    price: int
    qty: int
    time: int
    maker: int


def fmt_units(units: int) -> str:
    """An integer amount of 1e-8 units as an 8-decimal string."""
    sign = "-" if units < 0 else ""
    units = abs(units)
    return f"{sign}{units // SCALE}.{units % SCALE:08d}"


class Ledger[Row: (AggTrade, Trade)]:
    """Rows with contiguous ids, stored column-wise, trimmed to the newest `limit` rows."""

    def __init__(self, row_type: type[Row], start_id: int, limit: int) -> None:
        self.row_type = row_type
        self.start_id = start_id
        self.next_id = start_id
        self.base_id = start_id  # id of the oldest retained row
        self.limit = limit
        self.columns = {name: array("q") for name in row_type._fields[1:]}
        self.times = self.columns["time"]

    def __len__(self) -> int:
        return self.next_id - self.base_id

    def append(self, values: Sequence[int]) -> Row:
        row = self.row_type(self.next_id, *values)
        for column, value in zip(self.columns.values(), values, strict=True):
            column.append(value)
        self.next_id += 1
        if len(self) > self.limit + max(1000, self.limit // 10):
            self._trim(len(self) - self.limit)
        return row

    def _trim(self, count: int) -> None:
        for column in self.columns.values():
            del column[:count]
        self.base_id += count

    def index_of_id(self, row_id: int) -> int:
        return min(max(row_id - self.base_id, 0), len(self))

    def index_of_time(self, time_ms: int, after: bool = False) -> int:
        search = bisect.bisect_right if after else bisect.bisect_left
        return search(self.times, time_ms)

    def rows(self, start: int, stop: int) -> list[Row]:
        start, stop = max(start, 0), min(stop, len(self))
        if start >= stop:
            return []
        slices = [column[start:stop] for column in self.columns.values()]
        make, first_id = self.row_type._make, self.base_id + start
        return [make((first_id + i, *values)) for i, values in enumerate(zip(*slices, strict=True))]


class SymbolMarket:
    """One symbol's trade tape: a seeded random walk, grouped into aggregate trades."""

    def __init__(self, spec: SymbolSpec, seed: int, agg_start_id: int, trade_start_id: int, limit: int):
        self.spec = spec
        self.symbol = spec.symbol
        self.rng = random.Random(f"{seed}:{spec.symbol}")
        self.price = spec.start_price
        self.aggs: Ledger[AggTrade] = Ledger(AggTrade, agg_start_id, limit)
        self.trades: Ledger[Trade] = Ledger(Trade, trade_start_id, limit)
        self.budget = 0.0  # trades owed by the emission schedule

    def ledger(self, kind: str) -> Ledger[AggTrade] | Ledger[Trade]:
        return self.aggs if kind == AGG_TRADE else self.trades

    def next_aggregate(self, time_ms: int) -> tuple[AggTrade, list[Trade]]:
        """Generate one aggregate trade and the individual trades it covers."""
        spec, rng = self.spec, self.rng
        step = rng.randint(-spec.max_step_ticks, spec.max_step_ticks) * spec.tick
        self.price = max(spec.tick, self.price + step)
        maker = int(rng.random() < 0.5)
        count = rng.choices(LOT_COUNTS, LOT_WEIGHTS)[0]
        qtys = [spec.lot * self._lots(rng) for _ in range(count)]
        first = self.trades.next_id
        trades = [self.trades.append((self.price, qty, time_ms, maker)) for qty in qtys]
        agg = self.aggs.append((self.price, sum(qtys), first, first + count - 1, time_ms, maker))
        return agg, trades

    def _lots(self, rng: random.Random) -> int:
        return min(self.spec.max_lots, 1 + int(rng.expovariate(1 / self.spec.mean_lots)))

    def generate(self, elapsed: float, rate: float, time_ms: int) -> list[tuple[AggTrade, list[Trade]]]:
        """All aggregates due after `elapsed` seconds at `rate` trades per second."""
        self.budget += elapsed * rate
        out = []
        while self.budget > 0:
            agg, trades = self.next_aggregate(time_ms)
            self.budget -= len(trades)
            out.append((agg, trades))
        return out
