"""ExchangeSimulator: runs the simulator in a background thread and exposes thread-safe knobs.

`ExchangeSimulator(venue="okx")` speaks one venue's protocol; `MultiVenueSimulator({"okx": {}, "binance_usdm":
{"port": 9451}})` serves several venues from one thread (each its own port, market and knobs), and
`multi["okx"]` is that venue's ExchangeSimulator.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Self, TypeVar

from simulator.config import SimulatorConfig
from simulator.core import Endpoints, SimulatorCore
from simulator.market import AGG_TRADE, AggTrade, Trade
from simulator.venues import config_for

T = TypeVar("T")
log = logging.getLogger("simulator")
START_TIMEOUT = 10.0
CALL_TIMEOUT = 10.0


class _LoopThread:
    """One background thread whose event loop serves one or more simulator cores until stopped."""

    def __init__(self, cores: list[SimulatorCore]) -> None:
        self.cores = cores
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> list[Endpoints]:
        started: concurrent.futures.Future[list[Endpoints]] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="simulator", daemon=True)
        self._thread.start()
        return started.result(timeout=START_TIMEOUT)

    def _run(self, started: concurrent.futures.Future[list[Endpoints]]) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        self._stop = loop.create_future()
        try:
            loop.run_until_complete(self._serve(started))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                log.exception("the exchange simulator stopped with an error")
        finally:
            loop.close()

    async def _serve(self, started: concurrent.futures.Future[list[Endpoints]]) -> None:
        assert self._stop is not None
        bound: list[Endpoints | None] = [None] * len(self.cores)

        def ready(index: int, endpoints: Endpoints) -> None:
            bound[index] = endpoints
            if all(bound):
                started.set_result([e for e in bound if e is not None])

        serving = [asyncio.create_task(core.serve(lambda e, i=i: ready(i, e), self._stop))
                   for i, core in enumerate(self.cores)]  # fmt: skip
        await asyncio.gather(*serving)

    @property
    def running(self) -> bool:
        return self._thread is not None and self.loop is not None and not self.loop.is_closed()

    def stop(self) -> None:
        if self._thread is None or self.loop is None or self._stop is None:
            return
        stop = self._stop
        self.loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))
        self._thread.join(timeout=START_TIMEOUT)
        self._thread = None


class _Started:
    """`with sim:` starts it and stops it."""

    def start(self) -> object: ...

    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class ExchangeSimulator(_Started):
    """A local exchange simulator speaking one venue's market-data protocol over real sockets.

    `options` are SimulatorConfig fields, e.g. ExchangeSimulator(symbols=("BTCUSDT",), rate=200, seed=7);
    `venue` (binance, binance_us, binance_usdm, okx) picks the protocol and that venue's default limits.
    `config` stays live: changing its fields on a running simulator takes effect (see SimulatorConfig).
    Symbols are given as BTCUSDT or BTC-USDT; every method takes them in the venue's spelling.
    """

    def __init__(self, config: SimulatorConfig | None = None, *, venue: str | None = None, **options: Any) -> None:
        self.config = config_for(venue or (config.venue if config else "binance"), config, **options)
        self.core = SimulatorCore(self.config)
        self.endpoints: Endpoints | None = None
        self._runner: _LoopThread | None = None
        self._owns_runner = False

    @property
    def venue(self) -> str:
        return self.config.venue

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Endpoints:
        """Bind, start emitting in a background thread, and return (ws_url, rest_url)."""
        if self._runner is not None:
            raise RuntimeError("the exchange simulator is already started")
        runner = _LoopThread([self.core])
        self.endpoints = runner.start()[0]
        self._runner, self._owns_runner = runner, True
        return self.endpoints

    def stop(self) -> None:
        """Close every connection and listener, and wait for the thread to end."""
        if self._runner is not None and self._owns_runner:
            self._runner.stop()
        self._runner = None

    # --- addresses --------------------------------------------------------------------------------

    def _endpoints(self) -> Endpoints:
        if self.endpoints is None:
            raise RuntimeError("the exchange simulator is not started")
        return self.endpoints

    @property
    def ws_url(self) -> str:
        return self._endpoints().ws_url

    @property
    def rest_url(self) -> str:
        return self._endpoints().rest_url

    @property
    def port(self) -> int:
        return int(self.ws_url.rsplit(":", 1)[1])

    @property
    def rest_port(self) -> int:
        return int(self.rest_url.rsplit(":", 1)[1])

    def stream_url(self, *streams: str) -> str:
        """URL of a combined-stream connection for `streams`."""
        return f"{self.ws_url}/stream?streams={'/'.join(streams)}"

    def raw_url(self, stream: str = "") -> str:
        """URL of a raw-stream connection (`/ws/<stream>`, or bare `/ws` to SUBSCRIBE later)."""
        return f"{self.ws_url}/ws/{stream}" if stream else f"{self.ws_url}/ws"

    # --- ground truth -----------------------------------------------------------------------------

    def emitted_ids(self, symbol: str, kind: str = AGG_TRADE) -> range:
        """Every id generated so far for `symbol` and `kind` ("aggTrade" or "trade"), sent or not."""
        ledger = self.core.markets[symbol.upper()].ledger(kind)
        return range(ledger.start_id, ledger.next_id)

    def skipped_ids(self, symbol: str, kind: str = AGG_TRADE) -> frozenset[int]:
        """Ids generated (and in REST history) but deliberately withheld by skip_ids()."""
        return self._call(lambda: frozenset(self.core.skipped[(symbol.upper(), kind)]))

    def burst(self, symbol: str, trades: int) -> None:
        """`trades` trades of `symbol` at once, into its history only (not streamed): a market burst the stream
        shows as one id jump, to be backfilled from REST. One call on the loop (~80k aggregates/s here), so that
        no live trade falls inside the burst's ids; streaming and REST wait meanwhile."""
        market = self.core.markets[symbol.upper()]
        unaggregated = self.config.unaggregated_fraction
        self._call(lambda: market.generate(1.0, trades, int(time.time() * 1000), unaggregated), timeout=120)

    def rest_served(self, symbol: str, kind: str = AGG_TRADE) -> list[tuple[int, int]]:
        """(first id, last id) of every page of trades REST answered for `symbol` and `kind`, in order."""
        return self._call(lambda: list(self.core.rest.served.get((symbol.upper(), kind), [])))

    def rest_faults(self, *faults: str, every: int = 0) -> None:
        """REST answers with these faults in turn ("reset", "hang", "503", "429", ...); none: answers again."""
        self.config.rest_faults, self.config.rest_fault_every = tuple(faults), every

    def counts(self, symbol: str, kind: str = AGG_TRADE) -> dict[str, int]:
        """generated / published / skipped / paused / duplicated / malformed event counts."""
        keys = ("generated", "published", "skipped", "paused", "duplicated", "malformed")
        counter = self._call(lambda: dict(self.core.counts[(symbol.upper(), kind)]))
        return {k: counter.get(k, 0) for k in keys}

    def history(self, symbol: str, kind: str = AGG_TRADE) -> list[AggTrade] | list[Trade]:
        """The retained generated rows, oldest first (prices and quantities in 1e-8 units)."""
        ledger = self.core.markets[symbol.upper()].ledger(kind)
        return self._call(lambda: ledger.rows(0, len(ledger)))

    def subscriptions(self) -> set[str]:
        """Every stream some connected client is subscribed to."""
        return self._call(lambda: {stream for client in self.core.clients for stream in client.session.streams})

    def client_messages(self) -> list[str | bytes]:
        """The data messages clients sent (subscribe requests, text pings ...), oldest first: the newest
        simulator.core.CLIENT_MESSAGES_KEPT."""
        return self._call(lambda: list(self.core.client_messages))

    def connection_count(self) -> int:
        return self._call(lambda: len(self.core.clients))

    # --- faults -----------------------------------------------------------------------------------

    def drop_connections(self) -> int:
        """Abruptly close every client socket (no close frame); returns how many."""
        return self._call(self.core.drop_connections)

    def pause(self, seconds: float) -> None:
        """Stop sending trade data for `seconds`; sockets and pings continue, trades still go to history."""
        self._call(lambda: self.core.pause(seconds))

    def skip_ids(self, fraction: float) -> None:
        """Withhold this fraction of trade events from the streams (they stay in REST history)."""
        self.config.skip_fraction = fraction

    def duplicate(self, fraction: float) -> None:
        """Send this fraction of trade events twice."""
        self.config.duplicate_fraction = fraction

    def malformed(self, fraction: float) -> None:
        """Send a bad frame (non-JSON, wrong shape, unknown event, absurd numbers) before this fraction."""
        self.config.malformed_fraction = fraction

    def announce_shutdown(self, delay: float | None = None) -> int:
        """Send the venue's shutdown notice (Binance serverShutdown, OKX notice 64008) to every client; close them
        after `delay` (default config.shutdown_delay)."""
        return self._call(lambda: self.core.announce_shutdown(delay))

    def set_max_lifetime(self, seconds: float) -> None:
        """Maximum connection lifetime for connections opened from now on."""
        self.config.max_lifetime = seconds

    # --- plumbing ---------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], timeout: float = CALL_TIMEOUT) -> T:
        """Run `fn` on the simulator's loop (or directly when it is not running) and return its result."""
        runner = self._runner
        if runner is None or not runner.running or runner.loop is None:
            return fn()
        loop = runner.loop
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except Exception as exc:  # re-raised in the caller's thread
                result.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return result.result(timeout=timeout)


class MultiVenueSimulator(_Started):
    """Several venues served by one simulator thread: `venues` maps a venue to its ExchangeSimulator options
    (e.g. {"okx": {"port": 9450}, "binance_usdm": {}}); `shared` options apply to all of them."""

    def __init__(self, venues: Mapping[str, Mapping[str, Any]], **shared: Any) -> None:
        self.sims = {name: ExchangeSimulator(venue=name, **{**shared, **options}) for name, options in venues.items()}
        self._runner: _LoopThread | None = None

    def __getitem__(self, venue: str) -> ExchangeSimulator:
        return self.sims[venue]

    def start(self) -> dict[str, Endpoints]:
        sims = list(self.sims.values())
        self._runner = _LoopThread([sim.core for sim in sims])
        for sim, endpoints in zip(sims, self._runner.start(), strict=True):
            sim.endpoints, sim._runner = endpoints, self._runner
        return {name: sim._endpoints() for name, sim in self.sims.items()}

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()
        for sim in self.sims.values():
            sim._runner = None
        self._runner = None
