"""One WebSocket client of the simulator: its outgoing queue and its incoming-frame accounting."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from simulator.protocol import Session, dumps, to_microseconds

COUNTED_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG})

# Close codes used by the simulator.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008


class CountingConnection(ServerConnection):
    """A server connection that reports every incoming frame, control frames included."""

    frame_hook: Callable[[Frame], None] | None = None

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and self.frame_hook is not None:
            self.frame_hook(event)


@dataclass(slots=True)
class Outgoing:
    """One message for a stream, rendered lazily per (combined, microseconds) flavour."""

    stream: str
    payload: Any
    verbatim: str | None = None  # sent as-is on every kind of connection
    cache: dict[tuple[bool, bool], str] = field(default_factory=dict)

    def render(self, combined: bool, micro: bool) -> str:
        if self.verbatim is not None:
            return self.verbatim
        text = self.cache.get((combined, micro))
        if text is None:
            payload = self.payload
            if micro and isinstance(payload, dict):
                payload = to_microseconds(payload)
            text = dumps({"stream": self.stream, "data": payload} if combined else payload)
            self.cache[(combined, micro)] = text
        return text


class Client:
    """A connected client: subscriptions, a send queue drained by a writer task, and rate accounting."""

    def __init__(self, ws: ServerConnection, session: Session, max_queue: int) -> None:
        self.ws = ws
        self.session = session
        self.max_queue = max_queue
        self.queue: deque[str] = deque()
        self.wake = asyncio.Event()
        self.recent: deque[float] = deque()  # arrival times of counted incoming frames
        self.closing = False
        self.tasks: set[asyncio.Task[Any]] = set()  # close handshakes in flight

    def send(self, out: Outgoing) -> None:
        self.enqueue(out.render(self.session.combined, self.session.microseconds))

    def enqueue(self, text: str) -> None:
        if self.closing:
            return
        if len(self.queue) >= self.max_queue:
            self.abort()
            return
        self.queue.append(text)
        self.wake.set()

    async def writer(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue:
                    await self.ws.send(self.queue.popleft())
        except ConnectionClosed:
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
        self.queue.clear()
        self.spawn(self.ws.close(code, reason))

    def abort(self) -> None:
        """Cut the TCP connection with no close frame."""
        self.closing = True
        self.queue.clear()
        self.ws.transport.abort()
