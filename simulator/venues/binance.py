"""Binance spot (and Binance.US, the same protocol on other hosts): docs/venues/ and
../shared/reference/binance-spot-market-data.md. The WebSocket wire format itself is simulator.protocol."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Hashable, Mapping
from functools import partial
from typing import Any

from simulator.config import SimulatorConfig
from simulator.connection import COUNTED_OPCODES
from simulator.market import AGG_TRADE, TRADE, AggTrade, Ledger, SymbolMarket, Trade
from simulator.protocol import (
    SHUTDOWN_STREAM,
    Session,
    agg_event,
    agg_rest,
    dumps,
    handle_control,
    parse_ws_path,
    shutdown_event,
    stream_name,
    tape_texts,
    trade_event,
    trade_rest,
)
from simulator.rest import ApiError, RestApi, RestResponse, Verdict, now_ms, query_int, query_limit
from simulator.venues.base import Refusal, Reply, Routes, Venue, pick_malformed

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
SYMBOL_RE = "^[A-Z0-9-_.]{1,20}$"
SYMBOL_TEXT = re.compile(SYMBOL_RE)
NOT_SENT = "was not sent, was empty/null, or malformed."
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
MAX_TIME_RANGE_MS = 3_600_000
INTERNAL_ERROR = {"code": -1001, "msg": "Internal error; unable to process."}


def error(status: int, code: int, msg: str) -> ApiError:
    return ApiError(status, {"code": code, "msg": msg})


class BinanceSpot(Venue):
    """Combined and raw streams with SUBSCRIBE/UNSUBSCRIBE, server pings, serverShutdown; REST /api/v3."""

    stream_kinds = (AGG_TRADE, TRADE)
    rest_root = "/api/"
    best_match = True  # events and REST rows carry "M" (spot does, futures does not)

    def __init__(self, name: str) -> None:
        self.name = name

    def stream_name(self, symbol: str, kind: str) -> str:
        return stream_name(symbol, kind)

    # --- WebSocket ---------------------------------------------------------------------------------

    def open_session(self, path: str, config: SimulatorConfig, symbols: frozenset[str]) -> Session | Refusal | None:
        wanted = parse_ws_path(path)
        if wanted is None:
            return None
        max_streams = config.max_streams
        if len(set(wanted.streams)) > max_streams:
            return Refusal(400, {"code": -1, "msg": f"Too many streams; at most {max_streams} per connection."})
        return Session(wanted.combined, dict.fromkeys(wanted.streams), wanted.microseconds)

    def on_message(self, raw: str | bytes, session: Any, config: SimulatorConfig) -> Reply:
        return Reply([dumps(handle_control(raw, session, config.max_streams))])

    def counts_frame(self, opcode: int) -> bool:
        return opcode in COUNTED_OPCODES

    def event(self, symbol: str, kind: str, row: AggTrade | Trade, event_ms: int) -> dict[str, Any]:
        payload = agg_event(symbol, row, event_ms) if kind == AGG_TRADE else trade_event(symbol, row, event_ms)
        if not self.best_match:
            del payload["M"]
        return payload

    def tape_texts(
        self, tape: Any, agg_stream: str | None, trade_stream: str | None, event_ms: int, flavour: Hashable
    ) -> list[str]:
        combined, micro = flavour  # type: ignore[misc]
        return tape_texts(tape, agg_stream, trade_stream, event_ms, combined, micro, self.best_match)

    def shutdown_text(self, session: Any, event_ms: int) -> str:
        return session.render(SHUTDOWN_STREAM, shutdown_event(event_ms))

    def malformed(self, rng: random.Random, symbol: str, kind: str, event_ms: int) -> tuple[str, Any]:
        id_key = "a" if kind == AGG_TRADE else "t"
        return pick_malformed(
            rng,
            ['{"e":"aggTrade","E":', "<<garbage>>", "", '{"stream":"x","data":{'],
            [[1, 2, 3], "aggTrade", 42, None, {"unexpected": True}],
            lambda: {"e": "mysteryEvent", "E": event_ms, "s": symbol, "x": rng.random()},
            lambda: {"e": kind, "E": -1, "s": symbol, id_key: -rng.randint(1, 10**6), "p": "-42.00000000",
                     "q": "1e999", "f": 10**30, "l": -1, "T": 2**70, "m": "maybe", "M": True},
        )  # fmt: skip

    # --- REST --------------------------------------------------------------------------------------

    def is_rest(self, path: str) -> bool:
        return path.startswith(self.rest_root)

    def rest_routes(self, api: RestApi) -> Routes:
        return {
            "/api/v3/ping": (1, lambda _: {}),
            "/api/v3/time": (1, lambda _: {"serverTime": now_ms()}),
            "/api/v3/exchangeInfo": (20, partial(self.exchange_info, api)),
            "/api/v3/aggTrades": (4, partial(self.agg_trades, api)),
            "/api/v3/trades": (25, partial(self.recent_trades, api)),
            "/api/v3/historicalTrades": (25, partial(self.historical_trades, api)),
        }

    def rest_not_found(self) -> RestResponse:
        return RestResponse(404, {"code": -1, "msg": "Unknown endpoint."})

    def rest_fault(self, status: int) -> RestResponse:
        if status == 429:
            return RestResponse(429, {"code": -1003, "msg": "Too many requests."}, {"Retry-After": "1"})
        return RestResponse(status, INTERNAL_ERROR)

    def rest_headers(self, verdict: Verdict) -> dict[str, str]:
        return {WEIGHT_HEADER: str(verdict.used)}

    def rest_limited(self, verdict: Verdict, ip: str, config: SimulatorConfig) -> RestResponse:
        headers = {"Retry-After": str(verdict.retry_after)}
        if verdict.status == 418:
            until = int(verdict.banned_until * 1000)
            msg = f"Way too much request weight used; IP({ip}) banned until {until}. Please use WebSocket"
            return RestResponse(418, {"code": -1003, "msg": msg + " Streams for live updates to avoid bans."}, headers)
        msg = f"Too much request weight used; current limit is {config.weight_limit} request weight per"
        body = {"code": -1003, "msg": msg + " 1 MINUTE. Please use WebSocket Streams for live updates."}
        return RestResponse(429, body, headers)

    # --- endpoints ---------------------------------------------------------------------------------

    def exchange_info(self, api: RestApi, query: Mapping[str, str]) -> dict[str, Any]:
        if "symbol" in query and "symbols" in query:
            raise error(400, -1128, "Combination of optional parameters invalid.")
        if "symbol" in query:
            wanted = [_market(api, query).symbol]
        elif "symbols" in query:
            wanted = [_market(api, {"symbol": s}).symbol for s in _json_list(query["symbols"], "symbols")]
        else:
            wanted = list(api.markets)
        return {
            "timezone": "UTC",
            "serverTime": now_ms(),
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                            "limit": api.config.weight_limit}],
            "exchangeFilters": [],
            "symbols": [self.symbol_info(api.markets[s]) for s in wanted],
        }  # fmt: skip

    def symbol_info(self, market: SymbolMarket) -> dict[str, Any]:
        spec = market.spec
        return {
            "symbol": spec.symbol, "status": "TRADING", "baseAsset": spec.base_asset, "baseAssetPrecision": 8,
            "quoteAsset": spec.quote_asset, "quotePrecision": 8, "quoteAssetPrecision": 8,
        }  # fmt: skip

    def agg_trades(self, api: RestApi, query: Mapping[str, str]) -> list[dict[str, Any]]:
        ledger = _market(api, query).aggs
        limit = _limit(query)
        from_id, start, end = (_int(query, k) for k in ("fromId", "startTime", "endTime"))
        if start is not None and end is not None and not 0 <= end - start <= MAX_TIME_RANGE_MS:
            raise error(400, -1127, "More than 1 hours between startTime and endTime.")
        stop = len(ledger) if end is None else ledger.index_of_time(end, after=True)
        lows = [ledger.index_of_id(from_id)] if from_id is not None else []
        lows += [ledger.index_of_time(start)] if start is not None else []
        first = max(lows) if lows else stop - limit
        rows = [agg_rest(a) for a in _window(ledger, first, stop, limit)]
        if not self.best_match:
            for row in rows:
                del row["M"]
        return _note_served(api, query, AGG_TRADE, rows, "a")

    def recent_trades(self, api: RestApi, query: Mapping[str, str]) -> list[dict[str, Any]]:
        ledger = _market(api, query).trades
        limit = _limit(query)
        return [trade_rest(t) for t in ledger.rows(len(ledger) - limit, len(ledger))]

    def historical_trades(self, api: RestApi, query: Mapping[str, str]) -> list[dict[str, Any]]:
        ledger = _market(api, query).trades
        limit, from_id = _limit(query), _int(query, "fromId")
        first = len(ledger) - limit if from_id is None else ledger.index_of_id(from_id)
        rows = [trade_rest(t) for t in _window(ledger, first, len(ledger), limit)]
        return _note_served(api, query, TRADE, rows, "id")


def _note_served(
    api: RestApi, query: Mapping[str, str], kind: str, rows: list[dict[str, Any]], id_key: str
) -> list[dict[str, Any]]:
    if rows:
        api.note_served(query["symbol"], kind, rows[0][id_key], rows[-1][id_key])
    return rows


def _market(api: RestApi, query: Mapping[str, str]) -> SymbolMarket:
    symbol = query.get("symbol", "")
    if not symbol:
        raise error(400, -1102, f"Mandatory parameter 'symbol' {NOT_SENT}")
    if not SYMBOL_TEXT.match(symbol):
        raise _illegal("symbol", SYMBOL_RE)
    if symbol not in api.markets:
        raise error(400, -1121, "Invalid symbol.")
    return api.markets[symbol]


def _window(ledger: Ledger[AggTrade] | Ledger[Trade], first: int, stop: int, limit: int) -> list[Any]:
    first = max(first, 0)
    return ledger.rows(first, min(stop, first + limit))


def _refuse(name: str, why: str) -> ApiError:
    return _illegal(name, "^[0-9]{1,20}$" if why == "digits" else f"1-{MAX_LIMIT}")


def _int(query: Mapping[str, str], name: str) -> int | None:
    return query_int(query, name, _refuse)


def _limit(query: Mapping[str, str]) -> int:
    return query_limit(query, DEFAULT_LIMIT, MAX_LIMIT, _refuse)


def _json_list(text: str, name: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _illegal(name, '["SYMBOL",...]')
    return value


def _illegal(name: str, legal: str) -> ApiError:
    return error(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'.")
