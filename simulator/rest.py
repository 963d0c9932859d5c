"""The REST market-data endpoints, with request-weight accounting."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from simulator.config import SimulatorConfig
from simulator.market import AggTrade, Ledger, SymbolMarket, Trade
from simulator.protocol import agg_rest, trade_rest

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
SYMBOL_RE = "^[A-Z0-9-_.]{1,20}$"
SYMBOL_TEXT = re.compile(SYMBOL_RE)
NOT_SENT = "was not sent, was empty/null, or malformed."
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
MAX_TIME_RANGE_MS = 3_600_000


class ApiError(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


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


Handler = Callable[[Mapping[str, str]], Any]


class RestApi:
    """Answers GET requests for the REST paths from the simulator's trade history."""

    def __init__(self, config: SimulatorConfig, markets: Mapping[str, SymbolMarket]) -> None:
        self.config = config
        self.markets = markets
        self.limiter = WeightLimiter(config)
        self.faults_served = 0
        # (symbol, kind) → (first id, last id) of every trade page REST answered: what a backfill fetched
        self.served: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self.routes: dict[str, tuple[int, Handler]] = {
            "/api/v3/ping": (1, lambda _: {}),
            "/api/v3/time": (1, lambda _: {"serverTime": now_ms()}),
            "/api/v3/exchangeInfo": (20, self.exchange_info),
            "/api/v3/aggTrades": (4, self.agg_trades),
            "/api/v3/trades": (25, self.recent_trades),
            "/api/v3/historicalTrades": (25, self.historical_trades),
        }

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
            return RestResponse(404, {"code": -1, "msg": "Unknown endpoint."})
        weight, handler = route
        verdict = self.limiter.charge(ip, weight)
        headers = {WEIGHT_HEADER: str(verdict.used)}
        if verdict.status != 200:
            headers["Retry-After"] = str(verdict.retry_after)
            return RestResponse(verdict.status, self._limit_body(verdict, ip), headers)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            return RestResponse(200, handler(query), headers)
        except ApiError as exc:
            return RestResponse(exc.status, {"code": exc.code, "msg": exc.msg}, headers)

    def _limit_body(self, verdict: Verdict, ip: str) -> dict[str, Any]:
        if verdict.status == 418:
            until = int(verdict.banned_until * 1000)
            msg = f"Way too much request weight used; IP({ip}) banned until {until}. Please use WebSocket"
            return {"code": -1003, "msg": msg + " Streams for live updates to avoid bans."}
        msg = f"Too much request weight used; current limit is {self.config.weight_limit} request weight per"
        return {"code": -1003, "msg": msg + " 1 MINUTE. Please use WebSocket Streams for live updates."}

    # --- endpoints --------------------------------------------------------------------------------

    def exchange_info(self, query: Mapping[str, str]) -> dict[str, Any]:
        if "symbol" in query and "symbols" in query:
            raise ApiError(400, -1128, "Combination of optional parameters invalid.")
        if "symbol" in query:
            wanted = [self._market(query).symbol]
        elif "symbols" in query:
            wanted = [self._market({"symbol": s}).symbol for s in _json_list(query["symbols"], "symbols")]
        else:
            wanted = list(self.markets)
        return {
            "timezone": "UTC",
            "serverTime": now_ms(),
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                            "limit": self.config.weight_limit}],
            "exchangeFilters": [],
            "symbols": [self._symbol_info(self.markets[s]) for s in wanted],
        }  # fmt: skip

    @staticmethod
    def _symbol_info(market: SymbolMarket) -> dict[str, Any]:
        spec = market.spec
        return {
            "symbol": spec.symbol, "status": "TRADING", "baseAsset": spec.base_asset, "baseAssetPrecision": 8,
            "quoteAsset": spec.quote_asset, "quotePrecision": 8, "quoteAssetPrecision": 8,
        }  # fmt: skip

    def agg_trades(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        ledger = self._market(query).aggs
        limit = _limit(query)
        from_id, start, end = (_int(query, k) for k in ("fromId", "startTime", "endTime"))
        if start is not None and end is not None and not 0 <= end - start <= MAX_TIME_RANGE_MS:
            raise ApiError(400, -1127, "More than 1 hours between startTime and endTime.")
        stop = len(ledger) if end is None else ledger.index_of_time(end, after=True)
        lows = [ledger.index_of_id(from_id)] if from_id is not None else []
        lows += [ledger.index_of_time(start)] if start is not None else []
        first = max(lows) if lows else stop - limit
        return self._note_served(query, "aggTrade", [agg_rest(a) for a in _window(ledger, first, stop, limit)], "a")

    def recent_trades(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        ledger = self._market(query).trades
        limit = _limit(query)
        return [trade_rest(t) for t in ledger.rows(len(ledger) - limit, len(ledger))]

    def historical_trades(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        ledger = self._market(query).trades
        limit, from_id = _limit(query), _int(query, "fromId")
        first = len(ledger) - limit if from_id is None else ledger.index_of_id(from_id)
        return self._note_served(query, "trade", [trade_rest(t) for t in _window(ledger, first, len(ledger), limit)],
                                 "id")

    def _note_served(self, query: Mapping[str, str], kind: str, rows: list[dict[str, Any]],
                     id_key: str) -> list[dict[str, Any]]:
        if rows:
            key = (query["symbol"], kind)
            self.served.setdefault(key, []).append((rows[0][id_key], rows[-1][id_key]))
        return rows

    def _market(self, query: Mapping[str, str]) -> SymbolMarket:
        symbol = query.get("symbol", "")
        if not symbol:
            raise ApiError(400, -1102, f"Mandatory parameter 'symbol' {NOT_SENT}")
        if not SYMBOL_TEXT.match(symbol):
            raise _illegal("symbol", SYMBOL_RE)
        if symbol not in self.markets:
            raise ApiError(400, -1121, "Invalid symbol.")
        return self.markets[symbol]


def _window(ledger: Ledger[AggTrade] | Ledger[Trade], first: int, stop: int, limit: int) -> list[Any]:
    first = max(first, 0)
    return ledger.rows(first, min(stop, first + limit))


def _int(query: Mapping[str, str], name: str) -> int | None:
    if name not in query:
        return None
    value = query[name]
    if not value.isdigit() or len(value) > 20:
        raise _illegal(name, "^[0-9]{1,20}$")
    return int(value)


def _limit(query: Mapping[str, str]) -> int:
    limit = _int(query, "limit")
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1:
        raise _illegal("limit", f"1-{MAX_LIMIT}")
    return min(limit, MAX_LIMIT)


def _json_list(text: str, name: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _illegal(name, '["SYMBOL",...]')
    return value


def _illegal(name: str, legal: str) -> ApiError:
    return ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'.")


def now_ms() -> int:
    return int(time.time() * 1000)
