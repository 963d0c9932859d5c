"""ExchangeSimulator: runs the simulator in a background thread and exposes thread-safe knobs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from simulator.config import SimulatorConfig
from simulator.core import Endpoints, SimulatorCore
from simulator.market import AGG_TRADE, AggTrade, Trade

T = TypeVar("T")
log = logging.getLogger("simulator")
START_TIMEOUT = 10.0
CALL_TIMEOUT = 10.0


class ExchangeSimulator:
    """A local exchange simulator speaking the Spot market-data protocol over real sockets.

    `options` are SimulatorConfig fields, e.g. ExchangeSimulator(symbols=("BTCUSDT",), rate=200, seed=7).
    `config` stays live: changing its fields on a running simulator takes effect (see SimulatorConfig).
    """

    def __init__(self, config: SimulatorConfig | None = None, **options: Any) -> None:
        if isinstance(options.get("symbols"), str):
            options["symbols"] = tuple(options["symbols"].split(","))
        self.config = dataclasses.replace(config or SimulatorConfig(), **options)
        self.core = SimulatorCore(self.config)
        self.endpoints: Endpoints | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Endpoints:
        """Bind, start emitting in a background thread, and return (ws_url, rest_url)."""
        if self._thread is not None:
            raise RuntimeError("the exchange simulator is already started")
        started: concurrent.futures.Future[Endpoints] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="simulator", daemon=True)
        self._thread.start()
        self.endpoints = started.result(timeout=START_TIMEOUT)
        return self.endpoints

    def _run(self, started: concurrent.futures.Future[Endpoints]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._stop = loop.create_future()
        try:
            loop.run_until_complete(self.core.serve(started.set_result, self._stop))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                log.exception("the exchange simulator stopped with an error")
        finally:
            loop.close()

    def stop(self) -> None:
        """Close every connection and listener, and wait for the thread to end."""
        if self._thread is None or self._loop is None or self._stop is None:
            return
        stop = self._stop
        self._loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))
        self._thread.join(timeout=START_TIMEOUT)
        self._thread = None

    def __enter__(self) -> ExchangeSimulator:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

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
        self._call(lambda: market.generate(1.0, trades, int(time.time() * 1000)), timeout=120)

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
        """Send serverShutdown to every client; close them after `delay` (default config.shutdown_delay)."""
        return self._call(lambda: self.core.announce_shutdown(delay))

    def set_max_lifetime(self, seconds: float) -> None:
        """Maximum connection lifetime for connections opened from now on."""
        self.config.max_lifetime = seconds

    # --- plumbing ---------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], timeout: float = CALL_TIMEOUT) -> T:
        """Run `fn` on the simulator's loop (or directly when it is not running) and return its result."""
        loop = self._loop
        if self._thread is None or loop is None or loop.is_closed():
            return fn()
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except Exception as exc:  # re-raised in the caller's thread
                result.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return result.result(timeout=timeout)
