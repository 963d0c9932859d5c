"""The exchange seam: what the producer asks of a venue, and the plain records it gets back.

One adapter per venue (`producer_service/exchanges/<venue>/`), in the spirit of cryptofeed's one class per exchange
but with no global state: an adapter is an immutable value (its venue, its limits, pure functions); everything that
changes (sockets, subscriptions, sequencing, backfill) is the generic producer's. The registry
(`producer_service/exchanges/registry.py`) maps `brokers.type` to one.

The protocol, as the generic code calls it (`ExchangeAdapter`):

    venue: tickstream.venues.Venue
        The declarative half, shared with the API: type, default ws/rest URLs, official hosts, symbol format,
        allowed streams (the first is the default), `contiguous_ids` (an id jump is a gap to backfill).
    limits: Limits
        Streams per connection, client messages per second (pings and pongs included), streams per subscribe
        message, connection lifetime, connection attempts per IP, `requests_per_hour` (a budget of subscribe and
        unsubscribe messages per connection, e.g. OKX's 480; None: none), and `keepalive: Keepalive` (who pings,
        how often, WS ping frames or text messages like OKX's "ping"/"pong", the server's idle timeout).
    rest_limits: RestLimits
        How the venue's REST budget is counted (weight per window, the header reporting the weight used) and how
        many trades one backfill page holds.

    connect_url(base_url: str) -> str
        The WebSocket URL to open for a broker's ws base URL (e.g. base + "/stream").
    stream_key(symbol: str, stream_type: str) -> str
        The venue's name of one subscription; frames are routed back by it (e.g. "btcusdt@aggTrade").
    subscribe_message(keys: Sequence[str], request_id: int) -> str
    unsubscribe_message(keys: Sequence[str], request_id: int) -> str
        One control message for up to `limits.streams_per_message` keys (a text frame's payload).
    decode(raws: list[bytes], received_us: int, by_key: Mapping[str, ScriptTarget]) -> Decoded
        Every message of one socket read → ticks (with their targets, in order), control events (ack, error,
        shutdown, pong, ignored; an ack or error names its subscription key when the venue's answer tells) and
        malformed frames (with why). The hot path: called once per read, never raises
        for bad input (a bad frame costs one skipped message, never the connection).
    trading_symbols(rest: RestClient) -> set[str]
        Symbols the venue lists as tradable now (unknown ones are reported, not subscribed).
    backfill_page(rest: RestClient, script_id: int, symbol: str, stream_type: str, from_id: int, limit: int,
                  received_us: int) -> Page
        Trades of (symbol, stream_type) with id >= from_id, as ticks of `script_id`, ascending by id, at most
        `limit` (the venue's page size, `rest_limits.page_size`); the first is the earliest the venue still has
        from `from_id` on, and an empty page means it has none. Items that are not well-formed trades come back in
        `Page.rejected` (logged and skipped), never raised. The backfill loop (driven by the gap ledger) pages on
        from the last id + 1 until the gap is filled.

Trade ids are integers (`Tick.trade_id`, numeric strings parsed exactly by the adapter); REST failures raise the
generic client's errors (`producer_service.rest`: RestError, RestBanned, transport errors), which the backfill loop
retries or gives up on as it does for every venue. An adapter calls REST only as `rest.get(path, params, weight)`
(the JSON body; `weight` is what the venue counts for the call against `rest_limits`).

What the generic side does with the declarations:
- pace: everything one connection sends (subscribe, unsubscribe, pongs, client pings) is spaced evenly at 80 % of
  `limits.messages_per_second`; a pong answers only the latest ping; keepalive and control messages take turns.
- keepalive: WS ping frames are always answered; with `client_ping_seconds` set, after that long without receiving
  anything the connection sends `client_ping` as a text message (or a WS ping frame when it is None); the venue's
  text pong comes back through `decode` as a PONG event. The watchdog (PRODUCER_WATCHDOG_SECONDS) reconnects a
  socket silent for longer.
- sharding: at most min(`streams_per_connection`, PRODUCER_MAX_STREAMS_PER_CONNECTION) keys per connection; rotation
  (make-before-break) an hour before `connection_lifetime_seconds` (or PRODUCER_ROTATE_AFTER_SECONDS, if sooner) and
  on a SHUTDOWN event; connection attempts within 80 % of `connection_attempts` per IP, one limiter per venue.
- sequencing: the generic sequencer drops ids at or below the last one and reports every jump as a gap to backfill
  (what `venue.contiguous_ids` promises); a venue without contiguous ids needs its fallback there.
- decode appends to `Decoded.ticks` / `.targets` (in step), `.events` and `.malformed`.

Adding a venue: a `Venue` in tickstream/venues.py, a folder here with an `ADAPTER` value, one line in registry.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from tickstream.ticks import Tick
from tickstream.venues import Venue

if TYPE_CHECKING:
    from producer_service.rest import RestClient


class MalformedPayload(ValueError):
    """A frame or REST item that is not a well-formed trade."""


@dataclass(frozen=True, slots=True)
class ScriptTarget:
    """One script to collect: its symbol and stream type, and `stream`, the adapter's key for that subscription."""

    script_id: int
    symbol: str
    stream_type: str
    stream: str


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The venue's ping/pong rules. WS ping frames from the server are always answered (payload echoed)."""

    server_ping_seconds: float | None  # the server pings this often (e.g. a WS ping frame every 20 s)
    idle_timeout_seconds: float  # the server drops a client that is silent / owes a pong this long (e.g. 60)
    client_ping_seconds: float | None = None  # the client must ping after this long without receiving (OKX: < 30)
    client_ping: str | None = None  # ... as this text message (OKX: "ping", answered "pong"); None: a WS ping frame


@dataclass(frozen=True, slots=True)
class Limits:
    streams_per_connection: int
    messages_per_second: float  # client → server messages per connection, pings and pongs included
    streams_per_message: int  # keys one subscribe/unsubscribe message carries
    connection_lifetime_seconds: float | None  # the venue cuts a connection after this long (None: never)
    connection_attempts: int  # per IP per `connection_attempts_seconds`
    connection_attempts_seconds: float
    keepalive: Keepalive
    requests_per_hour: int | None = None  # subscribe/unsubscribe messages per connection per hour (OKX: 480)


@dataclass(frozen=True, slots=True)
class RestLimits:
    weight_per_window: int  # the IP's REST budget (e.g. 6000 request weight per minute)
    window_seconds: float
    page_size: int  # trades per backfill page (the venue's maximum)
    used_weight_header: str | None = None  # a response header with the weight used in the current window


class ControlKind(Enum):
    ACK = "ack"  # a subscribe/unsubscribe answer
    ERROR = "error"  # the venue refused a request
    SHUTDOWN = "shutdown"  # the server is going away: rotate the connection now (make-before-break)
    PONG = "pong"  # a text pong (OKX); WS pong frames never reach the adapter
    IGNORED = "ignored"  # e.g. a late frame of a stream just unsubscribed


@dataclass(frozen=True, slots=True)
class ControlEvent:
    kind: ControlKind
    detail: str = ""
    stream: str | None = None  # the subscription key an ack or error is about, when the answer names it


class Decoded:
    """One socket read, decoded: `ticks[i]` belongs to `targets[i]`; `events` and `malformed` (the frame, why) in
    order. A plain slotted class: built once per read on the hot path, where a dataclass with four list factories
    cost ~1 µs more."""

    __slots__ = ("events", "malformed", "targets", "ticks")

    def __init__(self) -> None:
        self.ticks: list[Tick] = []
        self.targets: list[ScriptTarget] = []
        self.events: list[ControlEvent] = []
        self.malformed: list[tuple[bytes, str]] = []


@dataclass(frozen=True, slots=True)
class Page:
    ticks: list[Tick]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (a sample of the item, why)


class ExchangeAdapter(Protocol):
    """See the module docstring."""

    @property
    def venue(self) -> Venue: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def rest_limits(self) -> RestLimits: ...

    def connect_url(self, base_url: str) -> str: ...

    def stream_key(self, symbol: str, stream_type: str) -> str: ...

    def subscribe_message(self, keys: Sequence[str], request_id: int) -> str: ...

    def unsubscribe_message(self, keys: Sequence[str], request_id: int) -> str: ...

    def decode(self, raws: list[bytes], received_us: int, by_key: Mapping[str, ScriptTarget]) -> Decoded: ...

    def trading_symbols(self, rest: RestClient) -> set[str]: ...

    def backfill_page(self, rest: RestClient, script_id: int, symbol: str, stream_type: str, from_id: int,
                      limit: int, received_us: int) -> Page: ...


def script_target(adapter: ExchangeAdapter, script_id: int, symbol: str, stream_type: str) -> ScriptTarget:
    return ScriptTarget(script_id, symbol, stream_type, adapter.stream_key(symbol, stream_type))
