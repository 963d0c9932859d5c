"""What a venue's protocol module gives the generic simulator core.

The core (simulator.core) owns the markets, the fault dice, the clients, their queues, keepalive and limits
bookkeeping; a venue module only renders, parses and answers in its exchange's wire format.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from simulator.config import SymbolSpec
from simulator.connection import CLOSE_POLICY, Session
from simulator.market import AggTrade, Tape, Trade

if TYPE_CHECKING:
    from simulator.rest import RestApi, RestResponse, Verdict

Handler = Callable[[Mapping[str, str]], Any]
Routes = dict[str, tuple[int, Handler]]  # REST path → (request weight, handler of the query parameters)


class Refusal(NamedTuple):
    """A WebSocket handshake the venue answers with an HTTP error instead."""

    status: int
    body: Any


@dataclass
class Reply:
    """What the venue answers to one client message: texts to send, and maybe a close (code, reason)."""

    texts: list[str] = field(default_factory=list)
    close: tuple[int, str] | None = None


class Venue(ABC):
    """One venue's wire protocol. Instances are stateless: per-connection state lives in their sessions."""

    name: str
    defaults: Mapping[str, Any] = {}  # SimulatorConfig fields that differ from Binance spot's
    stream_kinds: tuple[str, ...]  # the ledgers ("aggTrade", "trade") the venue streams, in emission order

    def instrument(self, spec: SymbolSpec) -> SymbolSpec:
        """The spec under the venue's own symbol spelling (Binance: BTCUSDT)."""
        return spec

    @abstractmethod
    def stream_name(self, symbol: str, kind: str) -> str:
        """The key of `symbol`'s `kind` stream (one of stream_kinds) in a session's streams."""

    # --- WebSocket ---------------------------------------------------------------------------------

    @abstractmethod
    def open_session(self, path: str, config: Any, symbols: frozenset[str]) -> Session | Refusal | None:
        """The session a handshake to `path` opens (`symbols`: the markets, in the venue's spelling); a Refusal
        to answer with HTTP; None: unknown path (404)."""

    @abstractmethod
    def on_message(self, raw: str | bytes, session: Session, config: Any) -> Reply:
        """Apply one client message to `session`."""

    def counts_frame(self, opcode: int) -> bool:
        """Whether an incoming frame of this opcode counts against max_incoming_per_sec."""
        return False

    def over_limit(self) -> Reply:
        """What a connection over max_incoming_per_sec gets (Binance: disconnected)."""
        return Reply(close=(CLOSE_POLICY, "Too many requests"))

    @abstractmethod
    def event(self, symbol: str, kind: str, row: AggTrade | Trade, event_ms: int) -> Any:
        """The payload of one event (rendered by the session)."""

    @abstractmethod
    def tape_texts(
        self, tape: Tape, agg_stream: str | None, trade_stream: str | None, event_ms: int, flavour: Hashable
    ) -> list[str]:
        """The text of every event of `tape` on the given streams, exactly as session.render(event(...))."""

    @abstractmethod
    def shutdown_text(self, session: Session, event_ms: int) -> str:
        """The notice that the server closes soon (Binance serverShutdown, OKX notice 64008)."""

    @abstractmethod
    def malformed(self, rng: random.Random, symbol: str, kind: str, event_ms: int) -> tuple[str, Any]:
        """A bad frame: ("text", str) to send verbatim, or ("json", data) to send as if it were a payload."""

    # --- REST --------------------------------------------------------------------------------------

    @abstractmethod
    def is_rest(self, path: str) -> bool:
        """Whether an HTTP request for `path` (no query) is for REST rather than a WebSocket handshake."""

    @abstractmethod
    def rest_routes(self, api: RestApi) -> Routes: ...

    @abstractmethod
    def rest_not_found(self) -> RestResponse: ...

    @abstractmethod
    def rest_fault(self, status: int) -> RestResponse:
        """The answer of an injected fault with this HTTP status (500/502/503/504/429)."""

    @abstractmethod
    def rest_limited(self, verdict: Verdict, ip: str, config: Any) -> RestResponse:
        """The answer to a request over the request-weight budget (verdict.status 429 or 418)."""

    def rest_headers(self, verdict: Verdict) -> dict[str, str]:
        """Headers every answered REST request carries."""
        return {}


def pick_malformed(
    rng: random.Random, texts: list[str], shapes: list[Any], unknown: Callable[[], Any], absurd: Callable[[], Any]
) -> tuple[str, Any]:
    """One of a venue's bad frames, at random: ("text", not JSON) or ("json", a wrong shape / an unknown message /
    the venue's own message with absurd values), for Venue.malformed."""
    sort = rng.randrange(4)
    if sort == 0:
        return "text", rng.choice(texts)
    if sort == 1:
        return "json", rng.choice(shapes)
    return "json", unknown() if sort == 2 else absurd()


def renamed(spec: SymbolSpec, symbol: str) -> SymbolSpec:
    return replace(spec, symbol=symbol)
