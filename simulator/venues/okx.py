"""OKX v5: the `trades-all` channel on /ws/v5/business, REST /api/v5 (docs/venues/okx.md).

Subscriptions are `{"op":"subscribe","args":[{"channel":"trades-all","instId":"BTC-USDT"}]}`, answered per arg
with an `event` (subscribe / unsubscribe / error, with the connection's connId); each push carries one trade.
The client keeps the connection alive with the text `ping` (answered `pong`); the core closes a connection
nothing was pushed to for config.idle_timeout (30 s) with 4004. Prices and sizes are decimal strings without
trailing zeros, ids and times are strings.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from simulator.config import SimulatorConfig, SymbolSpec
from simulator.market import TRADE, AggTrade, SymbolMarket, Tape, Trade, fmt_units
from simulator.protocol import dumps
from simulator.rest import ApiError, RestApi, RestResponse, Verdict, now_ms, query_int, query_limit
from simulator.venues.base import Reply, Routes, Venue, pick_malformed, renamed

CHANNEL = "trades-all"
PUBLIC_PATH, BUSINESS_PATH = "/ws/v5/public", "/ws/v5/business"
CLOSE_IDLE = (4004, "No data received in 30s")
CLOSE_INVALID = (4002, "Invalid Request")
OPS = ("subscribe", "unsubscribe")
PAGE_LIMIT = 100
NOTICE_MSG = "The connection will soon be closed for a service upgrade. Please reconnect."
_conn_ids = itertools.count(0xA4D3AE55)


def decimal(units: int) -> str:
    """1e-8 units as OKX writes numbers: no trailing zeros (`42219.9`, `0.0001`, `3`)."""
    text = fmt_units(units).rstrip("0")
    return text[:-1] if text.endswith(".") else text


def envelope(data: Any, code: str = "0", msg: str = "") -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data}


def error(status: int, code: str, msg: str) -> ApiError:
    return ApiError(status, envelope([], code, msg))


@dataclass
class OkxSession:
    business: bool  # connected to /ws/v5/business (trades-all lives there)
    conn_id: str
    instruments: frozenset[str]  # the instIds that exist
    streams: dict[str, None] = field(default_factory=dict)  # "trades-all:BTC-USDT"
    requests: deque[float] = field(default_factory=deque)  # times of subscribe/unsubscribe requests
    flavour: Hashable = None  # every OKX connection gets the same bytes

    def render(self, stream: str, payload: Any) -> str:
        channel, inst_id = stream.split(":", 1)
        return f'{{"arg":{dumps({"channel": channel, "instId": inst_id})},"data":[{dumps(payload)}]}}'

    def event(self, **fields: Any) -> str:
        return dumps({**fields, "connId": self.conn_id})


class Okx(Venue):
    name = "okx"
    stream_kinds = (TRADE,)
    defaults: Mapping[str, Any] = {
        "ping_interval": None,  # the client pings (text), the server does not
        "idle_timeout": 30.0,
        "max_incoming_per_sec": None,
        "max_requests_per_hour": 480,
        "weight_limit": 20,  # history-trades: 20 requests per 2 s per IP
        "weight_window": 2.0,
        "ban_after_429": None,
    }

    def instrument(self, spec: SymbolSpec) -> SymbolSpec:
        return renamed(spec, f"{spec.base_asset}-{spec.quote_asset}")

    def stream_name(self, symbol: str, kind: str) -> str:
        return f"{CHANNEL}:{symbol}"  # its only kind: TRADE

    # --- WebSocket ---------------------------------------------------------------------------------

    def open_session(self, path: str, config: SimulatorConfig, symbols: frozenset[str]) -> OkxSession | None:
        route = urlsplit(path).path.rstrip("/")
        if route not in (PUBLIC_PATH, BUSINESS_PATH):
            return None
        return OkxSession(route == BUSINESS_PATH, f"{next(_conn_ids) & 0xFFFFFFFF:08x}", symbols)

    def on_message(self, raw: str | bytes, session: Any, config: SimulatorConfig) -> Reply:
        if raw == "ping":
            return Reply(["pong"])
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            message = None
        text = raw if isinstance(raw, str) else raw.decode(errors="replace")
        op = message.get("op") if isinstance(message, dict) else None
        if not isinstance(op, str):
            return Reply([session.event(event="error", code="60012", msg=f"Invalid request: {text}")])
        if op not in OPS:  # login included: no private channels here
            return Reply([session.event(event="error", code="60019", msg=f"Invalid op: {op}")])
        assert isinstance(message, dict)
        extra = {"id": message["id"]} if isinstance(message.get("id"), str) else {}
        if self._over_budget(session, config):
            return Reply([session.event(**extra, event="error", code="60014", msg="Requests too frequent")],
                         close=CLOSE_INVALID)  # fmt: skip
        args = message.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, dict) for a in args):
            return Reply([session.event(**extra, event="error", code="60012", msg=f"Invalid request: {text}")])
        return Reply([self._apply(op, arg, session, extra) for arg in args])

    @staticmethod
    def _over_budget(session: OkxSession, config: SimulatorConfig) -> bool:
        limit, now, recent = config.max_requests_per_hour, time.monotonic(), session.requests
        recent.append(now)
        while now - recent[0] >= 3600.0:
            recent.popleft()
        return limit is not None and len(recent) > limit

    @staticmethod
    def _apply(op: str, arg: dict[str, Any], session: OkxSession, extra: dict[str, Any]) -> str:
        channel, inst_id = arg.get("channel"), arg.get("instId")
        exists = isinstance(inst_id, str) and inst_id in session.instruments
        if channel != CHANNEL or not exists or not session.business:
            msg = (f"{op.capitalize()} failed, wrong URL or channel:{channel},instId:{inst_id} doesn't exist. "
                   "Please use the correct URL, channel and parameters referring to API document.")  # fmt: skip
            return session.event(**extra, event="error", code="60018", msg=msg)
        stream = f"{CHANNEL}:{inst_id}"
        if op == "subscribe":
            session.streams[stream] = None
        else:
            session.streams.pop(stream, None)
        return session.event(**extra, event=op, arg={"channel": CHANNEL, "instId": inst_id})

    def event(self, symbol: str, kind: str, row: AggTrade | Trade, event_ms: int) -> dict[str, Any]:
        return trade_row(symbol, row)

    def tape_texts(
        self, tape: Tape, agg_stream: str | None, trade_stream: str | None, event_ms: int, flavour: Hashable
    ) -> list[str]:
        if trade_stream is None:
            return []
        session = OkxSession(True, "", frozenset())
        return [session.render(trade_stream, trade_row(tape.symbol, t)) for _, trades in tape.aggregates()
                for t in trades]  # fmt: skip

    def shutdown_text(self, session: Any, event_ms: int) -> str:
        return session.event(event="notice", code="64008", msg=NOTICE_MSG)

    def malformed(self, rng: random.Random, symbol: str, kind: str, event_ms: int) -> tuple[str, Any]:
        return pick_malformed(
            rng,
            ['{"arg":{"channel":"trades-all"', "<<garbage>>", "", '{"data":['],
            [[1, 2, 3], "trades-all", 42, None, {"unexpected": True}],
            lambda: {"instId": symbol, "mystery": rng.random()},
            lambda: {"instId": symbol, "tradeId": str(-rng.randint(1, 10**6)), "px": "-42", "sz": "1e999",
                     "side": "maybe", "source": "0", "ts": str(2**70)},
        )  # fmt: skip

    # --- REST --------------------------------------------------------------------------------------

    def is_rest(self, path: str) -> bool:
        return path.startswith("/api/")

    def rest_routes(self, api: RestApi) -> Routes:
        return {
            "/api/v5/public/time": (1, lambda _: envelope([{"ts": str(now_ms())}])),
            "/api/v5/public/instruments": (1, partial(self.instruments, api)),
            "/api/v5/market/history-trades": (1, partial(self.history_trades, api)),
        }

    def rest_not_found(self) -> RestResponse:
        return RestResponse(404, envelope([], "50005", "API endpoint is inactive or unavailable."))

    def rest_fault(self, status: int) -> RestResponse:
        if status == 429:
            return RestResponse(429, envelope([], "50011", "Too Many Requests"))
        return RestResponse(status, envelope([], "50001", "Service temporarily unavailable. Please try again later."))

    def rest_limited(self, verdict: Verdict, ip: str, config: SimulatorConfig) -> RestResponse:
        return self.rest_fault(429)

    # --- endpoints ---------------------------------------------------------------------------------

    def instruments(self, api: RestApi, query: Mapping[str, str]) -> dict[str, Any]:
        inst_type = query.get("instType", "")
        if not inst_type:
            raise error(400, "50014", "Parameter instType can not be empty.")
        if inst_type not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
            raise error(400, "51000", "Parameter instType error")
        markets = list(api.markets.values()) if inst_type == "SPOT" else []
        if "instId" in query:
            markets = [m for m in markets if m.symbol == query["instId"]]
        return envelope([_instrument(m) for m in markets])

    def history_trades(self, api: RestApi, query: Mapping[str, str]) -> dict[str, Any]:
        """Trades newest first: `after` → ids below it, `before` → ids above it, both → between, none → newest."""
        market = _market(api, query)
        if query.get("type", "1") != "1":
            raise error(400, "51000", "Parameter type error")  # pagination by time: not simulated
        after, before = query_int(query, "after", _refuse), query_int(query, "before", _refuse)
        limit = query_limit(query, PAGE_LIMIT, PAGE_LIMIT, _refuse)
        ledger = market.trades
        stop = len(ledger) if after is None else ledger.index_of_id(after)
        start = 0 if before is None else ledger.index_of_id(before + 1)
        # the newest `limit` in range; so `before` alone gives the latest data, as OKX documents
        rows = ledger.rows(max(start, stop - limit), stop)[::-1]
        if rows:
            api.note_served(market.symbol, TRADE, rows[-1].id, rows[0].id)
        return envelope([trade_row(market.symbol, t) for t in rows])


def trade_row(symbol: str, trade: Trade) -> dict[str, Any]:
    """One trade as both trades-all and history-trades carry it (side is the taker's)."""
    return {
        "instId": symbol, "tradeId": str(trade.id), "px": decimal(trade.price), "sz": decimal(trade.qty),
        "side": "sell" if trade.maker else "buy", "source": "0", "ts": str(trade.time),
    }  # fmt: skip


def _instrument(market: SymbolMarket) -> dict[str, Any]:
    spec = market.spec
    return {
        "instType": "SPOT", "instId": spec.symbol, "baseCcy": spec.base_asset, "quoteCcy": spec.quote_asset,
        "state": "live", "tickSz": decimal(spec.tick), "lotSz": decimal(spec.lot), "minSz": decimal(spec.lot),
        "ctVal": "", "ctMult": "", "ctValCcy": "", "settleCcy": "", "uly": "", "instFamily": "", "listTime": "",
        "expTime": "",
    }  # fmt: skip


def _market(api: RestApi, query: Mapping[str, str]) -> SymbolMarket:
    inst_id = query.get("instId", "")
    if not inst_id:
        raise error(400, "50014", "Parameter instId can not be empty.")
    if inst_id not in api.markets:
        raise error(200, "51001", "Instrument ID, Instrument ID code or Spread ID doesn't exist.")
    return api.markets[inst_id]


def _refuse(name: str, why: str) -> ApiError:
    return error(400, "51000", f"Parameter {name} error")
