"""Settings of the exchange simulator and the instruments it trades."""

from __future__ import annotations

from dataclasses import dataclass

SCALE = 10**8  # prices and quantities are integers in units of 1e-8
QUOTE_ASSETS = ("USDT", "USDC", "FDUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")


@dataclass(frozen=True)
class SymbolSpec:
    """One instrument: prices and quantities are in 1e-8 units."""

    symbol: str
    base_asset: str
    quote_asset: str
    start_price: int
    tick: int
    max_step_ticks: int
    lot: int
    mean_lots: int
    max_lots: int


KNOWN_SPECS: dict[str, SymbolSpec] = {
    spec.symbol: spec
    for spec in (
        SymbolSpec("BTCUSDT", "BTC", "USDT", 95_000 * SCALE, SCALE // 100, 300, 1_000, 200, 100_000),
        SymbolSpec("ETHUSDT", "ETH", "USDT", 3_500 * SCALE, SCALE // 100, 20, 10_000, 100, 50_000),
        SymbolSpec("BNBUSDT", "BNB", "USDT", 650 * SCALE, SCALE // 100, 5, 100_000, 50, 10_000),
        SymbolSpec("SOLUSDT", "SOL", "USDT", 180 * SCALE, SCALE // 100, 3, 100_000, 100, 20_000),
        SymbolSpec("PEPEUSDT", "PEPE", "USDT", 712, 1, 1, SCALE, 500_000, 50_000_000),
    )
}


def spec_for(symbol: str) -> SymbolSpec:
    """The spec of a known symbol, or a plausible generic one derived from its name.

    `symbol` is `BTCUSDT` or `BTC-USDT`; the spec's symbol is always the concatenated form (a venue renames it).
    """
    symbol = symbol.upper()
    base, dash, quote = symbol.partition("-")
    symbol = base + quote
    if symbol in KNOWN_SPECS:
        return KNOWN_SPECS[symbol]
    if not dash:
        quote = next((q for q in QUOTE_ASSETS if symbol.endswith(q) and len(symbol) > len(q)), symbol[-4:])
        base = symbol[: len(symbol) - len(quote)] or symbol
    return SymbolSpec(symbol, base, quote, 100 * SCALE, SCALE // 100, 5, SCALE // 1000, 100, 100_000)


@dataclass
class SimulatorConfig:
    """Every knob of the simulator (of one venue of it).

    Fields marked "live" are read on every use, so changing them on a running simulator takes effect
    (for connection-level values: on connections opened afterwards). The defaults are Binance spot's;
    simulator.venues.config_for(venue) starts from that venue's own (its limits, keepalive and REST budget).
    """

    venue: str = "binance"  # the protocol spoken: a key of simulator.venues.VENUES
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "PEPEUSDT")
    rate: float = 50.0  # live: individual trades per second per symbol
    seed: int = 1
    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port
    rest_port: int | None = None  # None: REST is served on the WebSocket port too
    agg_start_id: int = 1_000_000
    trade_start_id: int = 5_000_000
    history_limit: int = 1_000_000  # trades remembered per symbol and kind
    tick_interval: float = 0.01  # seconds between emission batches
    # WebSocket connection behaviour
    ping_interval: float | None = 20.0  # live; None: the server sends no pings
    pong_timeout: float = 60.0  # live
    idle_timeout: float | None = None  # live: close a connection nothing was sent to for this long (OKX)
    max_lifetime: float = 24 * 3600.0  # live
    close_timeout: float = 5.0
    max_incoming_per_sec: int | None = 5  # live; None disables the limit (frames the venue counts, Binance)
    max_requests_per_hour: int | None = None  # live: subscribe/unsubscribe requests per connection (OKX)
    max_streams: int = 1024  # live
    max_client_queue: int = 200_000  # live; a client this far behind is cut off
    shutdown_delay: float = 2.0  # live: seconds between serverShutdown and the close
    # REST request weight
    weight_limit: int = 6000  # live
    weight_window: float = 60.0  # live
    ban_after_429: int | None = 5  # live: requests ignoring a 429 before the IP gets 418; None never
    ban_seconds: float = 120.0  # live
    # REST faults: while set, REST requests cycle through these instead of being answered (one in every
    # rest_fault_every is answered normally): "reset" (the connection is aborted), "hang" (no answer for
    # rest_hang_seconds, then 503), "500"/"502"/"503"/"504", "429" (with Retry-After: 1)
    rest_faults: tuple[str, ...] = ()  # live
    rest_fault_every: int = 0  # live: 0: every request gets a fault
    rest_hang_seconds: float = 15.0  # live
    # Faults (fractions of generated events)
    skip_fraction: float = 0.0  # live
    duplicate_fraction: float = 0.0  # live
    malformed_fraction: float = 0.0  # live
    unaggregated_fraction: float = 0.0  # live: aggregates after trades no aggregate covers (f/l skip, a does not)
    # Periodic faults (seconds; None disables)
    drop_every: float | None = None
    pause_every: float | None = None
    pause_for: float = 5.0
    shutdown_every: float | None = None

    def specs(self) -> list[SymbolSpec]:
        return [spec_for(s) for s in dict.fromkeys(s.upper() for s in self.symbols)]
