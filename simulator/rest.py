"""The REST side every venue shares: request-weight accounting, injected faults and routing to the venue's handlers."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from simulator.config import SimulatorConfig
from simulator.market import SymbolMarket

if TYPE_CHECKING:
    from simulator.venues.base import Venue


class ApiError(Exception):
    """A request the venue refuses: its HTTP status and its body, in the venue's error format."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(str(body))
        self.status, self.body = status, body


@dataclass
class RestResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


@dataclass
class _IpState:
    window: int = -1
    used: int = 0
    throttled: bool = False
    strikes: int = 0
    banned_until: float = 0.0


@dataclass
class Verdict:
    status: int  # 200, 429 or 418
    used: int
    retry_after: int = 0
    banned_until: float = 0.0


class WeightLimiter:
    """Per-IP request weight in fixed windows; 429 when over, 418 (ban) for ignoring 429s."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.ips: dict[str, _IpState] = {}

    def charge(self, ip: str, weight: int) -> Verdict:
        now, cfg = self.clock(), self.config
        state = self.ips.setdefault(ip, _IpState())
        window = math.floor(now / cfg.weight_window)
        if window != state.window:
            state.window, state.used, state.throttled, state.strikes = window, 0, False, 0
        state.used += weight
        if state.banned_until > now:
            return Verdict(418, state.used, math.ceil(state.banned_until - now), state.banned_until)
        retry_after = max(1, math.ceil((window + 1) * cfg.weight_window - now))
        if state.throttled:
            state.strikes += 1
            if cfg.ban_after_429 is not None and state.strikes >= cfg.ban_after_429:
                state.banned_until = now + cfg.ban_seconds
                return Verdict(418, state.used, math.ceil(cfg.ban_seconds), state.banned_until)
            return Verdict(429, state.used, retry_after)
        if state.used > cfg.weight_limit:
            state.throttled = True
            return Verdict(429, state.used, retry_after)
        return Verdict(200, state.used)


class RestApi:
    """Answers GET requests for the venue's REST paths from the simulator's trade history."""

    def __init__(self, config: SimulatorConfig, markets: Mapping[str, SymbolMarket], venue: Venue) -> None:
        self.config = config
        self.markets = markets
        self.venue = venue
        self.limiter = WeightLimiter(config)
        self.faults_served = 0
        # (symbol, kind) → (first id, last id) of every trade page REST answered: what a backfill fetched
        self.served: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self.routes = venue.rest_routes(self)

    def next_fault(self) -> str | None:
        """The fault the next request gets (config.rest_faults, in turn), or None to answer it."""
        faults, every = self.config.rest_faults, self.config.rest_fault_every
        if not faults:
            return None
        self.faults_served += 1
        if every and self.faults_served % every == 0:
            return None
        return faults[self.faults_served % len(faults)]

    def handle(self, target: str, ip: str) -> RestResponse:
        parts = urlsplit(target)
        route = self.routes.get(parts.path)
        if route is None:
            return self.venue.rest_not_found()
        weight, handler = route
        verdict = self.limiter.charge(ip, weight)
        headers = self.venue.rest_headers(verdict)
        if verdict.status != 200:
            limited = self.venue.rest_limited(verdict, ip, self.config)
            return RestResponse(limited.status, limited.body, {**headers, **limited.headers})
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            return RestResponse(200, handler(query), headers)
        except ApiError as exc:
            return RestResponse(exc.status, exc.body, headers)

    def note_served(self, symbol: str, kind: str, first_id: int, last_id: int) -> None:
        """Record that a page of `kind` trades of `symbol` from first_id to last_id (either order) was answered."""
        self.served.setdefault((symbol, kind), []).append((first_id, last_id))


Refuse = Callable[[str, str], ApiError]  # (parameter, "digits" or "range") → the venue's error for it


def query_int(query: Mapping[str, str], name: str, refuse: Refuse) -> int | None:
    """An optional non-negative integer parameter (at most 20 digits), or the venue's refusal."""
    if name not in query:
        return None
    value = query[name]
    if not value.isdigit() or len(value) > 20:
        raise refuse(name, "digits")
    return int(value)


def query_limit(query: Mapping[str, str], default: int, maximum: int, refuse: Refuse) -> int:
    """The page size: `default` when absent, at most `maximum` (larger asks are clamped), at least 1."""
    limit = query_int(query, "limit", refuse)
    if limit is None:
        return default
    if limit < 1:
        raise refuse("limit", "range")
    return min(limit, maximum)


def now_ms() -> int:
    return int(time.time() * 1000)
