"""The simulator's event-loop side: listeners, trade emission, clients and faults, for one venue of it.

Generic: what is venue-specific (wire formats, control messages, REST endpoints and errors) is asked of the
venue's protocol module (simulator.venues).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame
from websockets.http11 import Request, Response

from simulator.config import SimulatorConfig
from simulator.connection import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    Client,
    CountingConnection,
    Outgoing,
    Part,
    TapeOut,
)
from simulator.market import AGG_TRADE, KINDS, TRADE, SymbolMarket, Tape
from simulator.protocol import dumps
from simulator.rest import RestApi, now_ms
from simulator.venues import venue_of
from simulator.venues.base import Refusal

log = logging.getLogger("simulator")

MAX_CATCH_UP = 1.0  # seconds of trades generated at most after a stalled tick
IDLE_CLOSE = (4004, "No data received in 30s")  # OKX's close for an idle connection (the only venue with one)
# Client messages kept for tests to inspect (what a client sent, not only its effect); bounded, since a benchmark's
# clients keep pinging for as long as it runs.
CLIENT_MESSAGES_KEPT = 10_000


class Endpoints(NamedTuple):
    ws_url: str
    rest_url: str


class FaultDice:
    """Seeded random decisions for injected faults, independent of the trade tape."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"{seed}:faults")

    def roll(self, fraction: float) -> bool:
        return fraction > 0 and self.rng.random() < fraction


class SimulatorCore:
    """Everything of one venue that runs inside the simulator's event loop (several cores may share a loop)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.venue = venue_of(config.venue)
        self.markets = {
            spec.symbol: SymbolMarket(
                spec, config.seed, config.agg_start_id, config.trade_start_id, config.history_limit
            )
            for spec in map(self.venue.instrument, config.specs())
        }
        self.symbols = frozenset(self.markets)
        self.streams = {
            (symbol, kind): self.venue.stream_name(symbol, kind) if kind in self.venue.stream_kinds else None
            for symbol in self.markets
            for kind in KINDS
        }  # None: the venue has no such stream
        self.rest = RestApi(config, self.markets, self.venue)
        self.dice = FaultDice(config.seed)
        self.clients: set[Client] = set()
        self.paused_until = 0.0  # time.monotonic() deadline
        self.counts: dict[tuple[str, str], Counter[str]] = {
            (s, k): Counter() for s in self.markets for k in KINDS
        }
        self.skipped: dict[tuple[str, str], set[int]] = {key: set() for key in self.counts}
        self.background: set[asyncio.Task[Any]] = set()
        # the session of each accepted handshake, until served (weak: a handshake may fail after being accepted)
        self.handshakes: weakref.WeakKeyDictionary[ServerConnection, Any] = weakref.WeakKeyDictionary()
        self.handshake_times: dict[str, deque[float]] = {}  # per IP, the last second's
        self.client_messages: deque[str | bytes] = deque(maxlen=CLIENT_MESSAGES_KEPT)  # every client's, oldest first

    # --- lifecycle --------------------------------------------------------------------------------

    async def serve(self, ready: Callable[[Endpoints], None], stop: asyncio.Future[None]) -> None:
        """Listen until `stop` completes; `ready` receives the endpoints once bound."""
        cfg = self.config
        servers = [await self._listen(cfg.port)]
        if cfg.rest_port is not None:
            servers.append(await self._listen(cfg.rest_port))
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        endpoints = Endpoints(f"ws://{cfg.host}:{ports[0]}", f"http://{cfg.host}:{ports[-1]}")
        tasks = [asyncio.create_task(self._tick_loop()), *self._periodic_faults()]
        ready(endpoints)
        try:
            await stop
        finally:
            for task in tasks:
                task.cancel()
            self._abort_all()
            for server in servers:
                server.close(close_connections=False)
                await server.wait_closed()

    async def _listen(self, port: int) -> Server:
        cfg = self.config
        return await serve(
            self._serve_client, cfg.host, port,
            process_request=self._process_request, create_connection=CountingConnection,
            ping_interval=None, ping_timeout=None, close_timeout=cfg.close_timeout, compression=None,
        )  # fmt: skip

    def _periodic_faults(self) -> list[asyncio.Task[None]]:
        cfg = self.config
        actions: list[tuple[float | None, Callable[[], object]]] = [
            (cfg.drop_every, self.drop_connections),
            (cfg.pause_every, lambda: self.pause(cfg.pause_for)),
            (cfg.shutdown_every, lambda: self.announce_shutdown(None)),
        ]
        return [asyncio.create_task(_every(period, act)) for period, act in actions if period]

    # --- HTTP and WebSocket handshake ------------------------------------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        venue = self.venue
        if venue.is_rest(urlsplit(request.path).path):
            fault = self.rest.next_fault()
            if fault == "reset":
                conn.transport.abort()  # the client sees a connection reset
                return _json_response(500, b"{}")
            if fault == "hang":
                await asyncio.sleep(self.config.rest_hang_seconds)  # past the client's timeout
                fault = "503"
            answer = self.rest.handle(request.path, str(conn.remote_address[0])) if fault is None else (
                venue.rest_fault(int(fault)))  # fmt: skip
            return _json_response(answer.status, answer.encoded(), answer.headers)
        if self._too_many_connections(str(conn.remote_address[0])):
            answer = venue.rest_fault(429)
            return _json_response(answer.status, answer.encoded(), answer.headers)
        session = venue.open_session(request.path, self.config, self.symbols)
        if session is None:
            return _json_response(404, dumps({"code": -1, "msg": "Unknown path."}).encode())
        if isinstance(session, Refusal):
            return _json_response(session.status, dumps(session.body).encode())
        self.handshakes[conn] = session
        return None

    def _too_many_connections(self, ip: str) -> bool:
        """Count a handshake from `ip`; True when over max_connections_per_sec (refused with HTTP 429)."""
        limit, now = self.config.max_connections_per_sec, time.monotonic()
        recent = self.handshake_times.setdefault(ip, deque())
        recent.append(now)
        while now - recent[0] >= 1.0:
            recent.popleft()
        return limit is not None and len(recent) > limit

    async def _serve_client(self, ws: ServerConnection) -> None:
        assert isinstance(ws, CountingConnection)
        session = self.handshakes.pop(ws)
        client = Client(ws, session, self.config.max_client_queue)
        ws.frame_hook = lambda frame: self._count_frame(client, frame)
        self.clients.add(client)
        jobs = (client.writer(), self._keepalive(client), self._expire(client), self._idle_watch(client))
        helpers = [asyncio.create_task(job) for job in jobs]
        try:
            async for message in ws:
                self.client_messages.append(message)
                reply = self.venue.on_message(message, session, self.config)
                for text in reply.texts:
                    client.enqueue(text)
                if reply.close is not None:
                    client.close_after_sending(*reply.close)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            for task in helpers:
                task.cancel()

    def _count_frame(self, client: Client, frame: Frame) -> None:
        if self.venue.counts_frame(frame.opcode) and client.count_incoming(self.config.max_incoming_per_sec):
            close = self.venue.over_limit().close
            if close is not None:
                client.close(*close)

    async def _idle_watch(self, client: Client) -> None:
        """Close a connection nothing was sent to for idle_timeout (OKX: 30 s, code 4004)."""
        timeout = self.config.idle_timeout
        if timeout is None:
            return
        while True:
            wait = client.last_sent + timeout - time.monotonic()
            if wait <= 0:
                client.close(*IDLE_CLOSE)
                return
            await asyncio.sleep(wait)

    async def _keepalive(self, client: Client) -> None:
        """Ping every ping_interval; close if the oldest unanswered ping is older than pong_timeout."""
        interval, timeout = self.config.ping_interval, self.config.pong_timeout
        if interval is None:
            return
        pending: list[tuple[float, asyncio.Future[float]]] = []
        next_ping, last_payload = time.monotonic() + interval, 0
        try:
            while True:
                pending = [p for p in pending if not p[1].done()]
                now = time.monotonic()
                if pending and now - pending[0][0] >= timeout:
                    client.close(CLOSE_POLICY, "Pong timeout")
                    return
                if now >= next_ping:
                    last_payload = max(now_ms(), last_payload + 1)
                    pending.append((now, await client.ws.ping(str(last_payload))))
                    next_ping = now + interval
                wake = min(next_ping, pending[0][0] + timeout) if pending else next_ping
                await asyncio.sleep(max(0.0, wake - time.monotonic()))
        except ConnectionClosed:
            return

    async def _expire(self, client: Client) -> None:
        await asyncio.sleep(self.config.max_lifetime)
        client.close(CLOSE_NORMAL, "Connection lifetime expired")

    # --- trade emission ---------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.config.tick_interval)
            now = time.monotonic()
            elapsed, last = min(now - last, MAX_CATCH_UP), now
            try:
                self._publish(self._emit(elapsed, now_ms()))
            except Exception:
                log.exception("trade emission failed; continuing")

    def _emit(self, elapsed: float, ms: int) -> list[Part]:
        batch: list[Part] = []
        active = {s for client in self.clients for s in client.session.streams}
        paused = self.paused_until > time.monotonic()
        cfg = self.config
        faulty = cfg.skip_fraction > 0 or cfg.malformed_fraction > 0 or cfg.duplicate_fraction > 0
        for market in self.markets.values():
            tape = market.generate(elapsed, cfg.rate, ms, cfg.unaggregated_fraction)
            if not tape:
                continue
            if faulty:
                self._emit_each(batch, tape, ms, active, paused)
            else:
                self._emit_whole(batch, tape, ms, active, paused)
        return batch

    def _emit_whole(self, batch: list[Part], tape: Tape, ms: int, active: set[str], paused: bool) -> None:
        """No fault knob is set: the whole tape goes out as one part, counted in bulk."""
        symbol, sizes = tape.symbol, {AGG_TRADE: len(tape.prices), TRADE: len(tape)}
        streams = {kind: self.streams[(symbol, kind)] for kind in KINDS}
        for kind, size in sizes.items():
            counts = self.counts[(symbol, kind)]
            counts["generated"] += size
            if paused:
                counts["paused"] += size
            elif streams[kind] in active:
                counts["published"] += size
        if not paused and not active.isdisjoint(streams.values()):
            batch.append(TapeOut(tape, streams[AGG_TRADE], streams[TRADE], ms, self.venue.tape_texts))

    def _emit_each(self, batch: list[Part], tape: Tape, ms: int, active: set[str], paused: bool) -> None:
        """Some fault knob is set: decide event by event, in emission order."""
        symbol, event = tape.symbol, self.venue.event
        for agg, trades in tape.aggregates():
            make = partial(event, symbol, AGG_TRADE, agg, ms)
            self._offer(batch, symbol, AGG_TRADE, agg.id, make, active, paused)
            for trade in trades:
                make = partial(event, symbol, TRADE, trade, ms)
                self._offer(batch, symbol, TRADE, trade.id, make, active, paused)

    def _offer(
        self, batch: list[Part], symbol: str, kind: str, row_id: int,
        make: Callable[[], dict[str, Any]], active: set[str], paused: bool,
    ) -> None:  # fmt: skip
        """Apply the fault knobs to one generated event and add what should be sent to `batch`."""
        cfg, counts = self.config, self.counts[(symbol, kind)]
        counts["generated"] += 1
        skip = self.dice.roll(cfg.skip_fraction)
        bad = self.dice.roll(cfg.malformed_fraction)
        dup = self.dice.roll(cfg.duplicate_fraction)
        if skip:
            counts["skipped"] += 1
            self.skipped[(symbol, kind)].add(row_id)
            return
        if paused:
            counts["paused"] += 1
            return
        stream = self.streams[(symbol, kind)]
        if stream not in active:
            return
        if bad:
            counts["malformed"] += 1
            batch.append(self._malformed(stream, symbol, kind))
        out = Outgoing(stream, make())
        batch.extend([out, out] if dup else [out])
        counts["published"] += 1
        counts["duplicated"] += dup

    def _malformed(self, stream: str, symbol: str, kind: str) -> Outgoing:
        sort, value = self.venue.malformed(self.dice.rng, symbol, kind, now_ms())
        return Outgoing(stream, None, verbatim=value) if sort == "text" else Outgoing(stream, value)

    def _publish(self, batch: list[Part]) -> None:
        """Hand each client all of its frames of this tick at once (they go to its socket in one write)."""
        if not batch:
            return
        for client in list(self.clients):
            chunks, count = [], 0
            for part in batch:
                frames = part.frames_for(client.session)
                if frames is not None:
                    chunks.append(frames[0])
                    count += frames[1]
            if count:
                client.deliver(chunks[0] if len(chunks) == 1 else b"".join(chunks), count)

    # --- faults -----------------------------------------------------------------------------------

    def drop_connections(self) -> int:
        """Cut every client's TCP connection without a close frame."""
        count = self._abort_all()
        log.info("fault: dropped %d connections", count)
        return count

    def _abort_all(self) -> int:
        clients = list(self.clients)
        for client in clients:
            client.abort()
        return len(clients)

    def pause(self, seconds: float) -> None:
        self.paused_until = time.monotonic() + seconds
        log.info("fault: data paused for %.1f s", seconds)

    def announce_shutdown(self, delay: float | None) -> int:
        """Send the venue's shutdown notice to every client, then close them after `delay` seconds."""
        delay = self.config.shutdown_delay if delay is None else delay
        clients = list(self.clients)
        ms = now_ms()
        for client in clients:
            client.enqueue(self.venue.shutdown_text(client.session, ms))
        task = asyncio.create_task(self._close_later(clients, delay))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        log.info("fault: shutdown notice sent to %d connections, closing in %.1f s", len(clients), delay)
        return len(clients)

    @staticmethod
    async def _close_later(clients: list[Client], delay: float) -> None:
        await asyncio.sleep(delay)
        for client in clients:
            client.close(CLOSE_GOING_AWAY, "Server shutdown")


async def _every(period: float, action: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(period)
        action()


def _json_response(status: int, body: bytes, extra: dict[str, str] | None = None) -> Response:
    headers = Headers(
        [
            ("Date", formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", "application/json;charset=UTF-8"),
            ("Content-Length", str(len(body))),
            *(extra or {}).items(),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, body)
