"""Deterministic synthetic trades and the bounded history that remembers them."""

from __future__ import annotations

import bisect
import random
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, repeat
from math import log
from typing import NamedTuple

from simulator.config import SCALE, SymbolSpec

AGG_TRADE = "aggTrade"
TRADE = "trade"
KINDS = (AGG_TRADE, TRADE)
LOT_COUNTS = (1, 2, 3, 4)
LOT_WEIGHTS = (60, 25, 10, 5)
# What random.choices(LOT_COUNTS, LOT_WEIGHTS) computes on every call, computed once for the hot loop.
LOT_CUMULATIVE = tuple(accumulate(LOT_WEIGHTS))
LOT_TOTAL = LOT_CUMULATIVE[-1] + 0.0
LOT_HI = len(LOT_COUNTS) - 1


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
    # Slicing the decimal digits is twice as fast as divmod and a zero-padded format (this runs per event).
    if units >= SCALE:
        digits = str(units)
        return f"{digits[:-8]}.{digits[-8:]}"
    if units >= 0:
        return f"0.{str(units + SCALE)[1:]}"
    return "-" + fmt_units(-units)


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

    def extend(self, values: Sequence[list[int]]) -> None:
        """Append rows given column-wise, in field order after the id (all columns equally long)."""
        for column, column_values in zip(self.columns.values(), values, strict=True):
            column.fromlist(column_values)  # twice as fast as extend() from a list
        self.next_id += len(values[0])
        if len(self) > self.limit + max(1000, self.limit // 10):
            self._trim(len(self) - self.limit)

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


@dataclass(slots=True)
class Tape:
    """One symbol's trades from one generate() call, column-wise (no row objects: they cost more than the data).

    Aggregate i has id agg_start + i and covers the next sizes[i] trades; trade j has id trade_start + j and
    the price and maker side of its aggregate. Every row of a tape has the same time.

    `gaps` is empty, or holds per aggregate how many trades just before it no aggregate covers (USD-M futures
    does not aggregate insurance-fund and ADL trades: their ids are in the trade ledger, and an aggregate's
    first trade id then skips them while aggregate ids stay contiguous). Their quantities are in `qtys` too.
    """

    symbol: str
    time: int
    agg_start: int
    trade_start: int
    prices: list[int] = field(default_factory=list)  # per aggregate
    agg_qtys: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    makers: list[int] = field(default_factory=list)  # True (1) when the buyer is the maker
    qtys: list[int] = field(default_factory=list)  # per trade
    gaps: list[int] = field(default_factory=list)  # per aggregate, or empty: no unaggregated trades

    def __len__(self) -> int:
        """The number of individual trades."""
        return len(self.qtys)

    def spans(self) -> list[int]:
        """How many trade ids each aggregate accounts for: its own trades and the unaggregated ones before it."""
        return [gap + size for gap, size in zip(self.gaps, self.sizes, strict=True)] if self.gaps else self.sizes

    def lasts(self) -> list[int]:
        """The id of each aggregate's last trade."""
        return list(accumulate(self.spans(), initial=self.trade_start - 1))[1:]

    def agg_columns(self) -> list[list[int]]:
        lasts = self.lasts()
        firsts = [last - size + 1 for last, size in zip(lasts, self.sizes, strict=True)]
        times = [self.time] * len(self.prices)
        return [self.prices, self.agg_qtys, firsts, lasts, times, self.makers]

    def trade_columns(self) -> list[list[int]]:
        spans = self.spans()
        prices = list(chain.from_iterable(map(repeat, self.prices, spans)))
        makers = list(chain.from_iterable(map(repeat, self.makers, spans)))
        return [prices, self.qtys, [self.time] * len(self.qtys), makers]

    def aggregates(self) -> Iterator[tuple[AggTrade, list[Trade]]]:
        """The tape as row objects: each aggregate with the trades it covers (unaggregated trades left out)."""
        time, first, qtys = self.time, self.trade_start, self.qtys
        gaps = self.gaps or [0] * len(self.sizes)
        columns = zip(self.prices, self.agg_qtys, self.sizes, self.makers, gaps, strict=True)
        for i, (price, qty, size, maker, gap) in enumerate(columns):
            first += gap
            agg = AggTrade(self.agg_start + i, price, qty, first, first + size - 1, time, int(maker))
            offset = first - self.trade_start
            yield agg, [Trade(first + j, price, qtys[offset + j], time, int(maker)) for j in range(size)]
            first += size


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

    def generate(self, elapsed: float, rate: float, time_ms: int, unaggregated: float = 0.0) -> Tape:
        """All aggregates due after `elapsed` seconds at `rate` trades per second, recorded in the ledgers.

        `unaggregated`: the fraction of aggregates preceded by 1-3 trades no aggregate covers (see Tape.gaps).
        """
        self.budget += elapsed * rate
        tape = Tape(self.symbol, time_ms, self.aggs.next_id, self.trades.next_id)
        if self.budget > 0:
            self._fill(tape, unaggregated)
            self.aggs.extend(tape.agg_columns())
            self.trades.extend(tape.trade_columns())
        return tape

    def _fill(self, tape: Tape, unaggregated: float) -> None:
        """Generate aggregates into `tape` until the budget is spent.

        One aggregate: a price step, the maker side, how many trades, then each trade's lots. The draws (and
        so the tape of a seed) are exactly those of rng.randint(-steps, steps), rng.choices(LOT_COUNTS,
        LOT_WEIGHTS) and rng.expovariate(1 / mean_lots), spelled out: the calls cost more than the arithmetic.
        Unaggregated trades draw only when `unaggregated` is set, so a seed's tape without them is unchanged.
        """
        spec, rng = self.spec, self.rng
        randrange, uniform = rng.randrange, rng.random
        tick, steps, lot, max_lots = spec.tick, spec.max_step_ticks, spec.lot, spec.max_lots
        lambd = 1 / spec.mean_lots
        price, budget = self.price, self.budget
        prices, agg_qtys, sizes, makers, qtys = tape.prices, tape.agg_qtys, tape.sizes, tape.makers, tape.qtys
        gaps = tape.gaps
        while budget > 0:
            if unaggregated:
                gap = 1 + randrange(3) if uniform() < unaggregated else 0
                qtys += [lot] * gap  # small insurance-fund / ADL fills
                gaps.append(gap)
                budget -= gap
            price = max(tick, price + randrange(-steps, steps + 1) * tick)
            makers.append(uniform() < 0.5)
            count = LOT_COUNTS[bisect.bisect(LOT_CUMULATIVE, uniform() * LOT_TOTAL, 0, LOT_HI)]
            if count == 1:  # the most common case, without a list
                qty = lot * min(max_lots, 1 + int(-log(1.0 - uniform()) / lambd))
                qtys.append(qty)
            else:
                lots = [lot * min(max_lots, 1 + int(-log(1.0 - uniform()) / lambd)) for _ in range(count)]
                qtys += lots
                qty = sum(lots)
            prices.append(price)
            agg_qtys.append(qty)
            sizes.append(count)
            budget -= count
        self.price, self.budget = price, budget
