"""One Binance combined-stream WebSocket: connect, subscribe, read, stay alive. Transport only, no parsing.

Runs in its own thread with websocket-client's low-level API (UTF-8 validation off: orjson validates anyway, and it
costs 4–5× throughput). websocket-client answers server pings with the payload echoed. Control messages (SUBSCRIBE,
UNSUBSCRIBE) are sent from this thread only, paced under Binance's 5 messages/s, pongs included. A watchdog
reconnects a socket that has been silent (no data, no ping) too long; reconnects back off with jitter and share
one limiter per process for Binance's per-IP connection-attempt cap.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import websocket

from producer_service.pacing import Backoff, RateLimiter

log = logging.getLogger(__name__)
STREAMS_PER_CONTROL_MESSAGE = 200
READ_TIMEOUT = 30.0  # once a frame has started arriving


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    control_messages_per_second: float
    watchdog_seconds: float
    backoff_max_seconds: float


class StreamConnection:
    """Holds `streams` subscribed on one socket, reconnecting as needed, until `close()`."""

    def __init__(self, name: str, base_url: str, limits: ConnectionLimits, attempts: RateLimiter,
                 on_frame: Callable[[StreamConnection, bytes, int], None],
                 on_connected: Callable[[StreamConnection], None]) -> None:
        self.name = name
        self.url = base_url.rstrip("/") + "/stream"
        self.limits = limits
        self.attempts = attempts
        self.on_frame = on_frame
        self.on_connected = on_connected
        self.streams: set[str] = set()
        self.connected_at: float | None = None
        self.frames = 0
        self.sessions = 0  # successful connects: more than one means the socket was lost and reopened
        self._wanted: deque[tuple[str, list[str]]] = deque()
        self._control = RateLimiter(max(1, int(limits.control_messages_per_second)), 1.0)
        self._closing = threading.Event()
        self._ws: websocket.WebSocket | None = None
        self._next_id = 1
        self._thread = threading.Thread(target=self._run, name=f"ws-{name}", daemon=True)

    def start(self, streams: set[str]) -> None:
        self.streams = set(streams)
        self._thread.start()

    def subscribe(self, streams: set[str]) -> None:
        new = streams - self.streams
        if new:
            self.streams |= new
            self._wanted.append(("SUBSCRIBE", sorted(new)))

    def unsubscribe(self, streams: set[str]) -> None:
        gone = streams & self.streams
        if gone:
            self.streams -= gone
            self._wanted.append(("UNSUBSCRIBE", sorted(gone)))

    def reconnect(self) -> None:
        """Drop the socket; the thread reconnects (used by the watchdog and tests)."""
        ws = self._ws
        if ws is not None:
            ws.abort()

    def close(self) -> None:
        self._closing.set()
        self.reconnect()
        self._thread.join(timeout=5)

    @property
    def age_seconds(self) -> float:
        return 0.0 if self.connected_at is None else time.monotonic() - self.connected_at

    def _run(self) -> None:
        backoff = Backoff(cap=self.limits.backoff_max_seconds)
        while not self._closing.is_set():
            try:
                self._session(backoff)
            except Exception as error:  # any socket failure: reconnect, never die
                if not self._closing.is_set():
                    log.warning("%s: connection lost (%s: %s)", self.name, type(error).__name__, error)
            self.connected_at, self._ws = None, None
            if not self._closing.is_set():
                self._closing.wait(backoff.next_delay())

    def _session(self, backoff: Backoff) -> None:
        if not self.attempts.acquire(self._closing):
            return
        ws = websocket.create_connection(self.url, timeout=10, skip_utf8_validation=True, enable_multithread=True)
        ws.sock = BufferedSocket(ws.sock)
        ws.sock.settimeout(READ_TIMEOUT)  # the handshake is done: from now on the longer read timeout
        self._ws = ws
        if self._closing.is_set():
            ws.close()
            return
        self.connected_at = time.monotonic()
        self.sessions += 1
        self._wanted.clear()
        streams = sorted(self.streams)
        for start in range(0, len(streams), STREAMS_PER_CONTROL_MESSAGE):
            self._wanted.append(("SUBSCRIBE", streams[start:start + STREAMS_PER_CONTROL_MESSAGE]))
        self.on_connected(self)
        self._read_loop(ws, backoff)

    def _read_loop(self, ws: websocket.WebSocket, backoff: Backoff) -> None:
        last_heard = time.monotonic()
        while not self._closing.is_set():
            self._send_control(ws)
            if not _readable(ws, 0.2):
                if time.monotonic() - last_heard > self.limits.watchdog_seconds:
                    raise TimeoutError(f"silent for {self.limits.watchdog_seconds:.0f} s (watchdog)")
                continue
            opcode, frame = ws.recv_data_frame(control_frame=True)
            last_heard = time.monotonic()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise ConnectionError(f"closed by server: {frame.data[2:].decode(errors='replace')!r}")
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                backoff.reset()
                self.frames += 1
                self.on_frame(self, frame.data, time.time_ns() // 1000)

    def _send_control(self, ws: websocket.WebSocket) -> None:
        while self._wanted and self._control.try_acquire() == 0:
            method, params = self._wanted.popleft()
            ws.send(orjson.dumps({"method": method, "params": params, "id": self._next_id}).decode())
            self._next_id += 1


class BufferedSocket:
    """The connection's socket with a read buffer: one recv syscall per READ_SIZE bytes instead of three per frame.

    websocket-client reads each frame as header, length and payload with a `recv` each, plus our `select`, which
    was ~70 % of the socket thread's CPU. Everything but `recv` and `pending` goes to the wrapped socket.
    """

    READ_SIZE = 256 * 1024

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._offset = 0
        self._timeout: float | None = sock.gettimeout()

    def recv(self, bufsize: int) -> bytes:
        if self._offset >= len(self._buffer):
            data = self._sock.recv(max(bufsize, self.READ_SIZE))
            if len(data) <= bufsize:
                return data  # b"" (closed) included
            self._buffer, self._offset = data, 0
        start = self._offset
        self._offset = start + bufsize
        return self._buffer[start:self._offset]

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)
        self._timeout = timeout

    def gettimeout(self) -> float | None:  # websocket-client asks before every recv
        return self._timeout

    def pending(self) -> int:
        """Bytes readable without waiting: ours, plus what TLS has decrypted and select cannot see."""
        buffered = len(self._buffer) - self._offset
        if buffered > 0:
            return buffered
        inner = getattr(self._sock, "pending", None)
        return inner() if inner is not None else 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _readable(ws: websocket.WebSocket, timeout: float) -> bool:
    sock = ws.sock
    if hasattr(sock, "pending") and sock.pending():  # buffered or TLS-decrypted bytes select cannot see
        return True
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)
