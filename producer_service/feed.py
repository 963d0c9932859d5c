"""The feed of one broker, whatever its venue: its connections (sharded), the stream → script map, rotation.

The venue is the broker's adapter (`producer_service.exchanges`): it names streams, builds subscribe messages,
decodes frames, lists symbols and fetches backfill pages; its declared limits, capped by the generic settings,
shape the sharding, the pacing and the rotation here.

The hot path is `_on_frames` (the messages of one socket read): the adapter decodes them into ticks of their
scripts, then the feed drops duplicates by id, hands the ticks to the sink, and any gap to the backfiller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque

from producer_service.backfill import Backfiller, BackfillJob
from producer_service.config import ProducerSettings
from producer_service.connection import ConnectionLimits, StreamConnection
from producer_service.exchanges.base import ControlEvent, ControlKind, ExchangeAdapter, Limits, ScriptTarget
from producer_service.ledger import GapLedger
from producer_service.pacing import RateLimiter
from producer_service.rest import RestClient
from producer_service.sequencer import Sequencer
from producer_service.sink import TickSink
from tickstream.ticks import Tick

__all__ = ["Feed", "ScriptTarget", "attempts_limiter", "connection_limits", "rotate_after_seconds"]

log = logging.getLogger(__name__)
MALFORMED_SAMPLE_CHARS = 200
# A rotation's new connection takes over once it has delivered data, or after this long at the latest.
HANDOVER_SECONDS = 10.0
SYMBOL_CHECK_SECONDS = 300.0
LAG_SAMPLES = 512  # per script: one lag per socket read, the newest kept (p50/p99 over a bounded sample)
# Of a venue's declared message rate and connection attempts: the margin for jitter between our clock and its count.
VENUE_LIMIT_SHARE = 0.8
# Connections are rotated (make-before-break) this long before the venue's connection lifetime ends.
ROTATE_BEFORE_LIFETIME_SECONDS = 3600.0


def rotate_after_seconds(settings: ProducerSettings, limits: Limits) -> float:
    """The venue's lifetime less an hour (or 10 % of it, if shorter), capped by PRODUCER_ROTATE_AFTER_SECONDS."""
    lifetime = limits.connection_lifetime_seconds
    venue = float("inf") if lifetime is None else lifetime - min(ROTATE_BEFORE_LIFETIME_SECONDS, lifetime / 10)
    return min(venue, settings.rotate_after_seconds or float("inf"))


def connection_limits(settings: ProducerSettings, limits: Limits) -> ConnectionLimits:
    """What one connection may send: a share of the venue's pace and of its hourly request budget, if it has one."""
    requests = limits.requests_per_hour
    return ConnectionLimits(limits.messages_per_second * VENUE_LIMIT_SHARE, settings.watchdog_seconds,
                            settings.reconnect_backoff_max_seconds,
                            None if requests is None else int(requests * VENUE_LIMIT_SHARE))


def attempts_limiter(limits: Limits) -> RateLimiter:
    """Connection attempts within the venue's per-IP cap: one limiter per venue, shared by its feeds."""
    return RateLimiter(int(limits.connection_attempts * VENUE_LIMIT_SHARE), limits.connection_attempts_seconds)


class Feed:
    def __init__(self, name: str, ws_url: str, adapter: ExchangeAdapter, rest: RestClient,
                 settings: ProducerSettings, sink: TickSink, sequencer: Sequencer, attempts: RateLimiter,
                 stop: threading.Event, ledger: GapLedger, allowed_hosts: frozenset[str] = frozenset()) -> None:
        """`attempts`: the venue's connection-attempt limiter (`attempts_limiter`), shared by its feeds."""
        self.name = name
        self.ws_url = ws_url
        self.adapter = adapter
        self.allowed_hosts = allowed_hosts  # EXCHANGE_HOST_ALLOWLIST, checked again on every connect
        self.rest = rest
        self.settings = settings
        self.sink = sink
        self.sequencer = sequencer
        self.attempts = attempts
        self.stop = stop  # set by close(): ends the backfill thread and any REST wait of this feed
        self.backfiller = Backfiller(adapter, rest, sink, ledger, stop)
        self.by_stream: dict[str, ScriptTarget] = {}
        self.connections: list[StreamConnection] = []
        self.counts: Counter[int] = Counter()
        self.malformed = 0
        self.last_trade_us: dict[int, int] = {}
        self.lag_us: dict[int, deque[int]] = {}  # receive time − trade time, sampled once per socket read
        self.unknown: dict[str, ScriptTarget] = {}  # wanted, but the exchange does not list the symbol
        self.refused: dict[str, str] = {}  # stream → the venue's answer refusing its subscription (until an ack)
        self._causes: dict[int, str] = {}  # script id → what a gap at its first trade after a (re)connect is due to
        self._retiring: dict[StreamConnection, tuple[StreamConnection, float]] = {}
        self._rotate_requests: set[StreamConnection] = set()
        self._known_symbols: set[str] | None = None
        self._symbols_checked_at = float("-inf")
        self._rejected: dict[str, float] = {}
        self._serial = 0
        limits = adapter.limits
        self.streams_per_connection = min(settings.max_streams_per_connection, limits.streams_per_connection)
        self.rotate_after_seconds = rotate_after_seconds(settings, limits)
        self._limits = connection_limits(settings, limits)
        self.backfiller.start()

    # -- subscriptions -------------------------------------------------------------------------------------
    def apply(self, targets: list[ScriptTarget]) -> list[ScriptTarget]:
        """Make the subscriptions match `targets`; returns the targets newly subscribed."""
        wanted = {target.stream: target for target in self._listed(targets)}
        self._unsubscribe(set(self.by_stream) - set(wanted))
        added = [target for stream, target in wanted.items() if stream not in self.by_stream]
        for target in added:
            self.by_stream[target.stream] = target
        self._subscribe({target.stream for target in added})
        return added

    def _listed(self, targets: list[ScriptTarget]) -> list[ScriptTarget]:
        """Targets whose symbol the exchange lists; unknown symbols are reported, then rechecked slowly."""
        symbols = self._exchange_symbols()
        if symbols is None:
            return targets  # cannot tell: subscribe (a venue ignores or refuses an unknown stream)
        listed = []
        self.unknown = {target.stream: target for target in targets if target.symbol not in symbols}
        for target in targets:
            if target.symbol in symbols:
                listed.append(target)
            elif time.monotonic() - self._rejected.get(target.symbol, float("-inf")) > SYMBOL_CHECK_SECONDS:
                log.error("%s: %s is not a trading symbol on %s; not subscribing (rechecked every %.0f s)",
                          self.name, target.symbol, self.rest.base_url, SYMBOL_CHECK_SECONDS)
                self._rejected[target.symbol] = time.monotonic()
        return listed

    def _exchange_symbols(self) -> set[str] | None:
        if time.monotonic() - self._symbols_checked_at > SYMBOL_CHECK_SECONDS or self._known_symbols is None:
            self._symbols_checked_at = time.monotonic()
            try:
                self._known_symbols = self.adapter.trading_symbols(self.rest)
            except Exception as error:  # REST down: keep the previous answer
                log.warning("%s: could not read the tradable symbols (%s)", self.name, error)
        return self._known_symbols

    def _subscribe(self, streams: set[str]) -> None:
        cap = self.streams_per_connection
        remaining = sorted(streams)
        for conn in self.connections:
            room = cap - len(conn.streams)
            if remaining and room > 0:
                conn.subscribe(set(remaining[:room]))
                remaining = remaining[room:]
        while remaining:
            self._open_connection(set(remaining[:cap]))
            remaining = remaining[cap:]

    def _unsubscribe(self, streams: set[str]) -> None:
        """All of one change at once: each connection batches its share up to the venue's streams per message
        and paces the messages like subscriptions (StreamConnection.unsubscribe)."""
        if not streams:
            return
        for stream in streams:
            del self.by_stream[stream]
            self.refused.pop(stream, None)
        for conn in self.connections:
            conn.unsubscribe(streams)
        for conn in [conn for conn in self.connections if not conn.streams]:
            self.connections.remove(conn)
            threading.Thread(target=conn.close, daemon=True).start()

    def _open_connection(self, streams: set[str]) -> StreamConnection:
        self._serial += 1
        conn = StreamConnection(f"{self.name}#{self._serial}", self.ws_url, self.adapter, self._limits,
                                self.attempts, self._on_frames, self._on_connected, self.allowed_hosts)
        self.connections.append(conn)
        conn.start(streams)
        return conn

    def _on_connected(self, conn: StreamConnection) -> None:
        symbols = sorted(self.by_stream[s].symbol for s in conn.streams if s in self.by_stream)
        for stream in conn.streams:
            if stream in self.by_stream:
                self.note_cause(self.by_stream[stream].script_id, "reconnect", keep=True)
        log.info("%s: connected, subscribed to %d symbols: %s", conn.name, len(symbols), ", ".join(symbols))

    def note_cause(self, script_id: int, cause: str, keep: bool = False) -> None:
        """A gap at this script's next trade is put down to `cause`; `keep`: unless one is noted already. The
        stream (re)starts here, so the sequencer compares its next id with the last even on a venue whose ids
        are not contiguous."""
        self.sequencer.boundary(script_id)
        if not (keep and script_id in self._causes):
            self._causes[script_id] = cause

    # -- rotation ------------------------------------------------------------------------------------------
    def maintain(self) -> None:
        """Called periodically: rotate old or shutting-down connections (make-before-break), finish handovers."""
        for conn in list(self.connections):
            too_old = conn.age_seconds > self.rotate_after_seconds
            if (too_old or conn in self._rotate_requests) and conn not in self._retiring:
                self._rotate(conn, "age limit" if too_old else "server shutdown")
        for old, (new, since) in list(self._retiring.items()):
            if new.frames > 0 or time.monotonic() - since > HANDOVER_SECONDS:
                del self._retiring[old]
                self._rotate_requests.discard(old)
                if old in self.connections:
                    self.connections.remove(old)
                threading.Thread(target=old.close, daemon=True).start()
                log.info("%s: handed over to %s", old.name, new.name)

    def _rotate(self, old: StreamConnection, reason: str) -> None:
        log.info("%s: rotating (%s): opening the new connection before closing this one", old.name, reason)
        new = self._open_connection(set(old.streams))
        self._retiring[old] = (new, time.monotonic())

    # -- the hot path ------------------------------------------------------------------------------------
    def _on_frames(self, conn: StreamConnection, raws: list[bytes], received_us: int) -> None:
        """Every message of one socket read: the adapter decodes them; the ticks are then sequenced together."""
        decoded = self.adapter.decode(raws, received_us, self.by_stream)
        for raw, why in decoded.malformed:
            self._malformed(raw, why)
        for event in decoded.events:
            self._on_event(conn, event)
        if decoded.ticks:
            self._deliver(decoded.ticks, decoded.targets)

    def _deliver(self, ticks: list[Tick], targets: list[ScriptTarget]) -> None:
        """Sequence the ticks (of `targets`): drop duplicates, hand the rest to the sink, and any gap one reveals
        to the backfiller."""
        put, counts, last_trade_us = self.sink.put, self.counts, self.last_trade_us
        contiguous = self.adapter.venue.contiguous_ids
        tick = None
        for tick, verdict, target in zip(ticks, self.sequencer.accept_ticks(ticks, contiguous), targets, strict=True):
            if verdict is False:
                continue
            put(tick)
            counts[tick.script_id] += 1
            last_trade_us[tick.script_id] = tick.traded_at_us
            if verdict is not True:
                self.backfiller.request(BackfillJob(verdict, target.symbol, target.stream_type,
                                                    self._causes.pop(tick.script_id, "stream_jump")))
        if self._causes:  # only in the first reads after a (re)connect: later gaps are the stream's own
            for tick in ticks:
                self._causes.pop(tick.script_id, None)
        if tick is not None:  # one sample per read: the lag percentiles cost nothing per tick
            samples = self.lag_us.get(tick.script_id)
            if samples is None:
                samples = self.lag_us[tick.script_id] = deque(maxlen=LAG_SAMPLES)
            samples.append(tick.received_at_us - tick.traded_at_us)

    def _on_event(self, conn: StreamConnection, event: ControlEvent) -> None:
        if event.kind is ControlKind.SHUTDOWN:
            log.warning("%s: server announced shutdown; rotating now", conn.name)
            self._rotate_requests.add(conn)
        elif event.kind is ControlKind.ERROR:
            log.error("%s: exchange refused a request: %s", self.name, event.detail)
            if event.stream in self.by_stream:  # e.g. OKX 60018 for an instId it does not have: producer_status
                self.refused[event.stream] = event.detail
        elif event.kind is ControlKind.ACK and event.stream is not None:
            self.refused.pop(event.stream, None)
        # pong, ignored (a late frame of a stream just unsubscribed): nothing to do

    def _malformed(self, raw: bytes, error: str) -> None:
        self.malformed += 1
        if self.malformed <= 10 or self.malformed % 1000 == 0:
            log.warning("%s: skipped malformed frame #%d (%s): %r", self.name, self.malformed, error,
                        bytes(raw[:MALFORMED_SAMPLE_CHARS]))

    def close(self) -> None:
        """Stop everything this feed runs: its connections and its backfill (an endpoint change, or shutdown)."""
        self.stop.set()
        for conn in self.connections + [new for new, _ in self._retiring.values()]:
            conn.close()
        self.backfiller.close()
