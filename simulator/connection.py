"""One WebSocket client of the simulator: its outgoing queue and its incoming-frame accounting.

Outgoing data frames are encoded here rather than by websockets: one text frame per event (as the exchange
sends them), but all the frames of an emission tick go to the transport in one write. A server's frames are
unmasked, so a frame is just its header (FIN + text opcode, payload length) and the UTF-8 payload.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

from simulator.market import Tape

COUNTED_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG})

# Close codes used by the simulator.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008

FIN_TEXT = chr(0x81)  # header byte 1: final frame, text opcode
LENGTH_16, LENGTH_64 = 126, 127  # header byte 2 when the length follows in 2 or 8 bytes


def _build_text_header(length: int) -> str:
    """The header of an unmasked final text frame, as latin-1 characters (one per byte)."""
    if length < LENGTH_16:
        return FIN_TEXT + chr(length)
    if length < 1 << 16:
        return FIN_TEXT + chr(LENGTH_16) + chr(length >> 8) + chr(length & 0xFF)
    return FIN_TEXT + chr(LENGTH_64) + length.to_bytes(8).decode("latin-1")


_TEXT_HEADERS = [_build_text_header(n) for n in range(4096)]  # every event's size, looked up per frame


def _text_header(length: int) -> str:
    return _TEXT_HEADERS[length] if length < len(_TEXT_HEADERS) else _build_text_header(length)


def text_frame(text: str) -> bytes:
    """One text frame carrying `text`."""
    payload = text.encode()
    return _text_header(len(payload)).encode("latin-1") + payload


def ascii_text_frames(texts: list[str]) -> bytes:
    """Consecutive text frames, one per text; every text must be ASCII (so that a character is a byte)."""
    parts: list[str] = []
    add = parts.append
    for text in texts:
        add(_text_header(len(text)))
        add(text)
    return "".join(parts).encode("latin-1")


class CountingConnection(ServerConnection):
    """A server connection that reports every incoming frame, control frames included."""

    frame_hook: Callable[[Frame], None] | None = None

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and self.frame_hook is not None:
            self.frame_hook(event)


class Session(Protocol):
    """A connection's protocol state, as each venue module keeps it."""

    streams: dict[str, None]  # what the core publishes to this connection (ordered set)

    @property
    def flavour(self) -> Hashable:
        """Sessions with equal flavours get byte-identical frames of a message."""
        ...

    def render(self, stream: str, payload: Any) -> str:
        """The text of one message on `stream` for this session."""
        ...


TapeRenderer = Callable[[Tape, str | None, str | None, int, Any], list[str]]  # venue.tape_texts


class Part(Protocol):
    """Something in an emission batch: frames for clients subscribed to (some of) its streams."""

    def frames_for(self, session: Session) -> tuple[bytes, int] | None:
        """(encoded frames, how many) for a client with this session; None if it wants none of them."""
        ...


@dataclass(slots=True)
class Outgoing:
    """One message for a stream, rendered lazily once per session flavour."""

    stream: str
    payload: Any
    verbatim: str | None = None  # sent as-is on every kind of connection
    cache: dict[Hashable, bytes] = field(default_factory=dict)

    def frame(self, session: Session) -> bytes:
        flavour = session.flavour
        encoded = self.cache.get(flavour)
        if encoded is None:
            text = self.verbatim if self.verbatim is not None else session.render(self.stream, self.payload)
            encoded = self.cache[flavour] = text_frame(text)
        return encoded

    def frames_for(self, session: Session) -> tuple[bytes, int] | None:
        if self.stream not in session.streams:
            return None
        return self.frame(session), 1


class TapeOut:
    """One symbol's whole tape of a tick on its two streams (None: the venue has no such stream), no fault applied."""

    __slots__ = ("agg_stream", "cache", "event_ms", "render", "tape", "trade_stream")

    def __init__(
        self, tape: Tape, agg_stream: str | None, trade_stream: str | None, event_ms: int, render: TapeRenderer
    ) -> None:
        self.tape = tape
        self.agg_stream = agg_stream
        self.trade_stream = trade_stream
        self.event_ms = event_ms
        self.render = render
        self.cache: dict[tuple[bool, bool, Hashable], tuple[bytes, int]] = {}

    def frames_for(self, session: Session) -> tuple[bytes, int] | None:
        streams = session.streams
        agg, trade = self.agg_stream in streams, self.trade_stream in streams
        if not (agg or trade):
            return None
        key = (agg, trade, session.flavour)
        encoded = self.cache.get(key)
        if encoded is None:
            agg_stream, trade_stream = self.agg_stream if agg else None, self.trade_stream if trade else None
            texts = self.render(self.tape, agg_stream, trade_stream, self.event_ms, session.flavour)
            encoded = self.cache[key] = ascii_text_frames(texts), len(texts)
        return encoded


class Client:
    """A connected client: subscriptions, a send queue drained by a writer task, and rate accounting.

    The queue holds encoded frames not yet handed to the transport; the writer hands over everything queued
    in one write and then waits while the transport's buffer is above its high-water mark, so a client that
    reads too slowly makes the queue grow until max_queue messages, and is then cut off.
    """

    def __init__(self, ws: ServerConnection, session: Session, max_queue: int) -> None:
        self.ws = ws
        self.session = session
        self.max_queue = max_queue
        self.pending: list[bytes] = []
        self.queued = 0  # messages in pending
        self.wake = asyncio.Event()
        self.recent: deque[float] = deque()  # arrival times of counted incoming frames
        self.closing = False
        self.tasks: set[asyncio.Task[Any]] = set()  # close handshakes in flight
        self.last_sent = time.monotonic()  # when something was last queued for the client

    def enqueue(self, text: str) -> None:
        self.deliver(text_frame(text), 1)

    def deliver(self, frames: bytes, count: int) -> None:
        """Queue `count` encoded frames."""
        if self.closing:
            return
        if self.queued + count > self.max_queue:
            self.abort()
            return
        self.pending.append(frames)
        self.queued += count
        self.last_sent = time.monotonic()
        self.wake.set()

    async def writer(self) -> None:
        ws = self.ws
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.pending:
                    # websockets writes its own frames (pings, the close frame) straight to the transport;
                    # after a close frame no data frame may follow.
                    if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
                        return
                    data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
                    self.pending.clear()
                    self.queued = 0
                    ws.transport.write(data)
                    await ws.drain()
        except OSError:  # the connection was lost while the transport's buffer was full
            return

    def count_incoming(self, limit: int | None) -> bool:
        """Record one incoming message; True when the last second holds more than `limit`."""
        now = time.monotonic()
        self.recent.append(now)
        while now - self.recent[0] >= 1.0:
            self.recent.popleft()
        return limit is not None and len(self.recent) > limit

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close(self, code: int, reason: str) -> None:
        """Start a proper close handshake (once); queued messages are discarded."""
        if self.closing:
            return
        self.closing = True
        self.pending.clear()
        self.queued = 0
        self.spawn(self.ws.close(code, reason))

    def close_after_sending(self, code: int, reason: str) -> None:
        """Hand what is queued to the transport, then close (an error answer that precedes a disconnect)."""
        if self.pending and not self.closing and self.ws.protocol.state is State.OPEN:
            self.ws.transport.write(b"".join(self.pending))
        self.close(code, reason)

    def abort(self) -> None:
        """Cut the TCP connection with no close frame."""
        self.closing = True
        self.pending.clear()
        self.queued = 0
        self.ws.transport.abort()
