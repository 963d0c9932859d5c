"""One exchange WebSocket: connect, subscribe, read, stay alive. Transport only, no parsing, no venue.

Runs in its own thread. websocket-client does the handshake and every send (client frames must be masked); the
read side is our own `FrameReader`, which splits each `recv` of up to 256 KiB into the messages it holds: server
frames are unmasked and small, and websocket-client's per-frame machinery (an ABNF object, three `recv` calls, a
lock, our `select`) cost ~6.5 µs of the ~10 µs the producer spent per trade. What to connect to, how to subscribe
and how to keep alive is the venue adapter's (`producer_service.exchanges.base`): its URL, its subscribe and
unsubscribe messages, its keepalive rules.

Everything this client sends goes through one pace, `ConnectionLimits.messages_per_second`, spaced evenly: control
messages (subscribe, unsubscribe), pongs and client pings alike, since venues count them all (e.g. 5 incoming
messages/s, pongs included). A pong goes first and answers only the latest ping (RFC 6455 §5.5.3 allows it), so
pings cannot crowd out subscriptions nor subscriptions delay a pong. A venue that also caps subscribe and
unsubscribe messages per connection per hour (`Limits.requests_per_hour`, OKX: 480) gets a second, sliding-hour
budget for those alone (a share of it, as of the pace): past it they wait, while pings still go. Server pings are
answered with the payload echoed. A watchdog reconnects a socket that has been silent (no data, no ping) too long;
reconnects back off with jitter and share one limiter per venue for its per-IP connection-attempt cap.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import websocket

from producer_service.exchanges.base import ExchangeAdapter
from producer_service.pacing import Backoff, RateLimiter
from tickstream.exchange_endpoints import check_endpoint

log = logging.getLogger(__name__)
READ_TIMEOUT = 30.0  # the socket's timeout once open (sends), and how long a frame cut off mid-way may wait
READ_POLL = 0.2  # longest wait for bytes before the send side and the watchdog get their turn
READ_SIZE = 256 * 1024  # per recv: at 50k trades/s a busy socket holds tens of KiB, i.e. hundreds of frames
OPCODE_CONT, OPCODE_TEXT, OPCODE_BINARY = 0x0, 0x1, 0x2
OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x8, 0x9, 0xA
FIN_TEXT = 0x80 | OPCODE_TEXT  # the first byte of almost every frame an exchange sends: a whole text message
MAX_CONTROL_PAYLOAD = 125
# Market-data messages are < 1 KiB: a larger message (one frame, or the fragments of one message together) is a
# broken or hostile stream, not data; the bound keeps a connection's memory bounded (a 1 MiB junk frame is still
# just skipped as malformed). Such a connection is closed with 1009 (message too big) and reopened.
MAX_MESSAGE_BYTES = 2 * 1024**2


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    messages_per_second: float  # everything this client sends, pongs and pings included (a share of the venue's)
    watchdog_seconds: float
    backoff_max_seconds: float
    requests_per_hour: int | None = None  # subscribe/unsubscribe messages (a share of the venue's; None: no cap)


class StreamConnection:
    """Holds `streams` (the adapter's subscription keys) on one socket, reconnecting as needed, until `close()`."""

    def __init__(self, name: str, base_url: str, adapter: ExchangeAdapter, limits: ConnectionLimits,
                 attempts: RateLimiter, on_frames: Callable[[StreamConnection, list[bytes], int], None],
                 on_connected: Callable[[StreamConnection], None], allowed_hosts: frozenset[str] = frozenset()) -> None:
        """`on_frames(conn, messages, received_us)` gets the data messages of one `recv`, oldest first, and when
        they were received (µs since the epoch). `allowed_hosts`: EXCHANGE_HOST_ALLOWLIST."""
        self.name = name
        self.url = adapter.connect_url(base_url)
        self.adapter = adapter
        self.allowed_hosts = allowed_hosts
        self.limits = limits
        self.attempts = attempts
        self.on_frames = on_frames
        self.on_connected = on_connected
        self.streams: set[str] = set()
        self.connected_at: float | None = None
        self.frames = 0
        self.sessions = 0  # successful connects: more than one means the socket was lost and reopened
        self.oversized_messages = 0  # sessions closed with 1009 for a message above MAX_MESSAGE_BYTES
        self._wanted: deque[tuple[bool, list[str]]] = deque()  # (subscribe?, keys): control messages to send
        self._pong: bytes | None = None  # the payload of the latest ping not answered yet
        self._ping_due = False  # the venue wants a client ping (keepalive.client_ping_seconds of silence)
        self._pinged = False  # a client ping went out since the socket was last heard
        self._keepalive_last = False  # the last message sent was a pong or a ping (a control message goes next)
        self._pace = RateLimiter(1, 1.0 / limits.messages_per_second)
        self._requests: RateLimiter | None = None  # per session: the venue's hourly budget is per connection
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
            self._queue(True, new)

    def unsubscribe(self, streams: set[str]) -> None:
        gone = streams & self.streams
        if gone:
            self.streams -= gone
            self._queue(False, gone)

    def _queue(self, subscribe: bool, keys: set[str]) -> None:
        ordered, per_message = sorted(keys), self.adapter.limits.streams_per_message
        for start in range(0, len(ordered), per_message):
            self._wanted.append((subscribe, ordered[start:start + per_message]))

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
        # The exchange allowlist, again: defence in depth.
        check_endpoint(self.url, "ws", self.allowed_hosts, self.adapter.venue)
        # enable_multithread: `reconnect()` (another thread) aborts the socket while this one may be sending.
        # redirect_limit 0: a redirect is refused, not followed past the allowlist.
        ws = websocket.create_connection(self.url, timeout=10, enable_multithread=True, redirect_limit=0)
        ws.sock.settimeout(READ_TIMEOUT)  # the handshake is done: from now on the longer timeout (sends)
        self._ws = ws
        if self._closing.is_set():
            ws.close()
            return
        self.connected_at = time.monotonic()
        self.sessions += 1
        self._wanted.clear()
        self._pong, self._ping_due, self._pinged = None, False, False
        if self.limits.requests_per_hour is not None:
            self._requests = RateLimiter(self.limits.requests_per_hour, 3600.0)
        self._queue(True, self.streams)
        self.on_connected(self)
        self._read_loop(ws, backoff)

    def _deliver(self, messages: list[bytes], received_us: int, backoff: Backoff) -> None:
        if messages:
            backoff.reset()
            self.frames += len(messages)
            self.on_frames(self, messages, received_us)

    def _read_loop(self, ws: websocket.WebSocket, backoff: Backoff) -> None:
        """Until closed: one `recv` (all the socket holds, up to READ_SIZE) → its messages → `on_frames`."""
        sock, reader = ws.sock, FrameReader()
        last_heard = time.monotonic()
        while not self._closing.is_set():
            next_send = self._send_control(ws)
            if not _readable(sock, min(READ_POLL, next_send)):
                self._check_silence(time.monotonic() - last_heard, reader.partial)
                continue
            data = sock.recv(READ_SIZE)
            if not data:
                raise ConnectionError("connection to the server lost (end of stream without a close frame)")
            received_us = time.time_ns() // 1000  # one clock read per recv, not per frame: they arrived together
            last_heard, self._pinged = time.monotonic(), False
            try:
                messages = reader.parse(data)
            except FrameError as error:
                self._deliver(list(error.messages), received_us, backoff)
                if isinstance(error, MessageTooBig):
                    self._close_too_big(ws)
                raise
            if reader.controls:
                self._answer_controls(ws, reader.controls)  # pings first: delivery may block on a full sink
            self._deliver(messages, received_us, backoff)
            if reader.close_reason is not None:
                raise ConnectionError(f"closed by server: {reader.close_reason!r}")

    def _close_too_big(self, ws: websocket.WebSocket) -> None:
        """Tell the server why (1009, RFC 6455 7.4.1) and drop the socket without reading on: what it still
        sends is not buffered. The session then ends and reconnects as after any lost connection."""
        self.oversized_messages += 1
        log.error("%s: a message above %d bytes: closing with 1009 (message too big), #%d", self.name,
                  MAX_MESSAGE_BYTES, self.oversized_messages)
        with contextlib.suppress(OSError, websocket.WebSocketException):
            ws.send_close(websocket.STATUS_MESSAGE_TOO_BIG, b"message too big")
        ws.abort()

    def _check_silence(self, silent_for: float, mid_frame: bool) -> None:
        """The watchdog: a socket silent too long is dead (a venue pings, or answers our pings, well within it);
        a frame cut off mid-way gets READ_TIMEOUT, as a blocking read of its remaining bytes would. A venue that
        wants the client to ping after some silence gets its ping."""
        ping_after = self.adapter.limits.keepalive.client_ping_seconds
        if ping_after is not None and silent_for > ping_after and not self._pinged:
            self._ping_due = True
        if silent_for > self.limits.watchdog_seconds:
            raise TimeoutError(f"silent for {self.limits.watchdog_seconds:.0f} s (watchdog)")
        if mid_frame and silent_for > READ_TIMEOUT:
            raise TimeoutError(f"a frame stalled mid-way for {READ_TIMEOUT:.0f} s")

    def _answer_controls(self, ws: websocket.WebSocket, controls: list[tuple[int, bytes]]) -> None:
        """A ping is owed a pong with its payload (sent within the pace); a close is replied to, after the pong
        still owed (the connection ends: the pace no longer matters). Pongs are ignored."""
        for opcode, payload in controls:
            if opcode == OPCODE_PING:
                self._pong = payload
            elif opcode == OPCODE_CLOSE:
                with contextlib.suppress(OSError, websocket.WebSocketException):  # the server may be gone already
                    if self._pong is not None:
                        ws.pong(self._pong)
                        self._pong = None
                    ws.send_close()
        controls.clear()
        self._send_control(ws)

    def _send_control(self, ws: websocket.WebSocket) -> float:
        """Send what is owed, within the pace: the pong, then a client ping, then control messages, oldest first;
        after a keepalive message a waiting control message has the next turn, so pings faster than the pace
        cannot starve subscriptions. Returns how long until the next one may go (READ_POLL when nothing waits)."""
        while self._pong is not None or self._ping_due or self._wanted:
            control_only = self._pong is None and not self._ping_due
            if control_only and self._requests is not None:
                budget_wait = self._requests.peek()
                if budget_wait > 0:  # the hour's requests are spent: only a ping or a pong may go meanwhile
                    return min(READ_POLL, budget_wait)
            wait = self._pace.try_acquire()
            if wait > 0:
                return wait
            keepalive_turn = not (self._wanted and self._keepalive_last)
            self._keepalive_last = keepalive_turn and (self._pong is not None or self._ping_due)
            if keepalive_turn and self._pong is not None:
                ws.pong(self._pong)
                self._pong = None
            elif keepalive_turn and self._ping_due:
                self._send_ping(ws)
            else:
                if self._requests is not None:
                    self._requests.try_acquire()  # free: peek() said so, and only this thread takes from it
                subscribe, keys = self._wanted.popleft()
                build = self.adapter.subscribe_message if subscribe else self.adapter.unsubscribe_message
                ws.send(build(keys, self._next_id))
                self._next_id += 1
        return READ_POLL

    def _send_ping(self, ws: websocket.WebSocket) -> None:
        text = self.adapter.limits.keepalive.client_ping
        if text is None:
            ws.ping()
        else:
            ws.send(text)
        self._ping_due, self._pinged = False, True


class FrameError(websocket.WebSocketProtocolException):
    """The server broke RFC 6455 framing; the connection is dropped (and reopened), as websocket-client did.
    `messages`: the whole messages of the same read before the bad frame, delivered before the drop."""

    messages: tuple[bytes, ...] = ()


class MessageTooBig(FrameError):
    """A message (a frame, or a fragmented message so far) exceeds MAX_MESSAGE_BYTES; closed with 1009."""


class FrameReader:
    """A server's byte stream → its WebSocket messages (RFC 6455), as many frames per call as the bytes hold.

    `parse(data)` returns the complete data messages (text or binary, fragments joined) in order and keeps a cut-off
    frame for the next call. Control frames go to `controls` as (opcode, payload) for the connection to act on
    (ping → pong); a close frame ends parsing and sets `close_reason`. Server frames are never masked (RFC 6455
    §5.1): a masked one is an error. No extension is negotiated, so reserved bits are errors too.
    """

    def __init__(self) -> None:
        self.controls: list[tuple[int, bytes]] = []
        self.close_reason: str | None = None
        self._held: list[bytes] = []  # the start of a frame still arriving, as received (joined once complete)
        self._held_size = 0
        self._needed = 0  # bytes `_held` must reach before the frame can complete (0: unknown, try every time)
        self._fragments: list[bytes] | None = None  # a fragmented message being assembled
        self._fragments_size = 0

    @property
    def partial(self) -> bool:
        """True while a frame has started arriving but is not complete."""
        return self._held_size > 0

    def parse(self, data: bytes) -> list[bytes]:
        if self._held:  # join only once the frame can be complete: a large frame must not cost O(n²) copying
            self._held.append(data)
            self._held_size += len(data)
            if self._held_size < self._needed:
                return []
            data = b"".join(self._held)
            self._held, self._held_size = [], 0
        return self._split(data)

    def _split(self, buf: bytes) -> list[bytes]:
        messages: list[bytes] = []
        try:
            return self._split_into(buf, messages)
        except FrameError as error:  # the messages before the bad frame are valid: they go with the error
            error.messages = tuple(messages)
            raise

    def _split_into(self, buf: bytes, messages: list[bytes]) -> list[bytes]:
        # The hot loop (per frame): local names, and the common case (a whole, unfragmented text frame with a
        # 7- or 16-bit length) decided by two byte comparisons before anything else.
        append = messages.append
        pos, end = 0, len(buf)
        assembling = self._fragments is not None
        self._needed = 0  # unless a frame is cut off after its header: then its length is known
        while end - pos >= 2:
            first, length = buf[pos], buf[pos + 1]
            start = pos + 2
            if length == 126:
                if end - start < 2:
                    break
                length = buf[start] << 8 | buf[start + 1]
                start += 2
            elif length > 126:
                if length > 127:
                    raise FrameError("the server sent a masked frame")
                if end - start < 8:
                    break
                length = int.from_bytes(buf[start:start + 8], "big")
                if length > MAX_MESSAGE_BYTES:
                    raise MessageTooBig(f"frame of {length:,} bytes (more than {MAX_MESSAGE_BYTES:,}): not buffered")
                start += 8
            stop = start + length
            if stop > end:
                self._needed = stop - pos
                break
            if first == FIN_TEXT and not assembling:
                append(buf[start:stop])
            else:
                assembling = self._frame(first, buf[start:stop], append)
                if self.close_reason is not None:
                    return messages  # nothing follows a close
            pos = stop
        if pos < end:
            self._held, self._held_size = [buf[pos:] if pos else buf], end - pos
        return messages

    def _frame(self, first: int, payload: bytes, append: Callable[[bytes], None]) -> bool:
        """Any frame but a whole text frame outside a fragmented message; returns whether one is being assembled."""
        if first & 0x70:
            raise FrameError(f"reserved bits set in frame header 0x{first:02x} (no extension was negotiated)")
        fin, opcode = first & 0x80, first & 0x0F
        if opcode >= OPCODE_CLOSE:
            self._control(opcode, payload, fin)
        elif opcode in (OPCODE_TEXT, OPCODE_BINARY):
            if self._fragments is not None:
                raise FrameError("a new message started inside a fragmented one")
            if fin:
                append(payload)
            else:
                self._fragments, self._fragments_size = [payload], len(payload)
        elif opcode == OPCODE_CONT:
            if self._fragments is None:
                raise FrameError("a continuation frame outside a fragmented message")
            self._fragments_size += len(payload)
            if self._fragments_size > MAX_MESSAGE_BYTES:
                raise MessageTooBig(f"a fragmented message of more than {MAX_MESSAGE_BYTES:,} bytes: not buffered")
            self._fragments.append(payload)
            if fin:
                append(b"".join(self._fragments))
                self._fragments = None
        else:
            raise FrameError(f"invalid opcode 0x{opcode:x}")
        return self._fragments is not None

    def _control(self, opcode: int, payload: bytes, fin: int) -> None:
        """Control frames may come between the fragments of a message; they are never fragmented themselves."""
        if opcode not in (OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG):
            raise FrameError(f"invalid opcode 0x{opcode:x}")
        if not fin or len(payload) > MAX_CONTROL_PAYLOAD:
            raise FrameError(f"invalid control frame (opcode 0x{opcode:x}, {len(payload)} bytes, fin={bool(fin)})")
        if opcode == OPCODE_CLOSE:
            if len(payload) == 1:
                raise FrameError("invalid close frame (a 1-byte payload)")
            self.close_reason = payload[2:].decode(errors="replace")
        self.controls.append((opcode, payload))


def _readable(sock: Any, timeout: float) -> bool:
    if hasattr(sock, "pending") and sock.pending():  # TLS-decrypted bytes select cannot see
        return True
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)
