"""OKX v5 (`brokers.type` "okx"): the `trades-all` channel on the business WebSocket path, REST backfill from
`GET /api/v5/market/history-trades` by trade id. Protocol reference: docs/venues/okx.md.

WebSocket (`<ws_url>/ws/v5/business`; trades-all is refused with 60018 on /public):
- `{"id":"7","op":"subscribe","args":[{"channel":"trades-all","instId":"BTC-USDT"}, ...]}`, answered per arg by
  `{"event":"subscribe","arg":{...}}`, or `{"event":"error","code":"60018","msg":"... instId:BTC-XYZ doesn't exist
  ..."}` (the refused stream is read from the message: producer_status shows it as unknown_symbol).
- Pushes `{"arg":{"channel","instId"},"data":[{"tradeId","px","sz","side","ts",...}]}`, one trade each; `side` is
  the taker's, so "sell" means the buyer was the maker; `ts` is ms.
- Keepalive is the client's: the text `ping` after 20 s without a message, answered `pong`; OKX closes a connection
  nothing was pushed to for 30 s (4004). A ping waits at most one pace interval (below) behind other messages.
- `{"event":"notice","code":"64008"}` (service upgrade, ~60 s ahead) is the shutdown event: the feed rotates the
  connection make-before-break. (OKX documents it for /public and /private; a /business connection may simply be
  closed, which the reconnect and its backfill cover.)
- Limits: 480 subscribe/unsubscribe requests per connection per hour (past it: 60014, close 4002): the
  connection's `requests_per_hour` budget (a share of it) lets live changes go at once until it is spent, then
  makes them wait, while pings still go. OKX documents no per-second rate for what a client sends on a public
  connection; everything is paced at 3 messages/s anyway (as its 3 connection requests per second per IP).
  Up to 100 args per request (the channels of one request may not exceed 64 KB).

REST: `history-trades` answers newest first, `after`/`before` bound ids (exclusive), 100 per page, 20 requests per
2 s per IP; every answer is `{"code":"0","data":[...]}`, a refusal has its code in `code` (51001, unknown instId,
comes with HTTP 200). Symbols: `/api/v5/public/instruments` for SPOT, SWAP and FUTURES (state "live").

Trade ids and the guarantee OKX gets: OKX documents `tradeId` as increasing per instrument, never as contiguous
(`Venue.contiguous_ids` False). So an id jump on a live connection is not a gap: what is guaranteed is that a
connection pushes every trade of its subscriptions, in order. What the producer does with that:
- duplicates (a resend, the overlap of a rotation's two connections) are dropped by id: live ids only increase;
- at every boundary where trades may have been missed (a reconnect, a rotation, a restart), the first new id opens
  the window (last stored id, that id), bounded by ids, not by time or a guess; the backfill fills it with every
  trade REST has in it, and the window is done when REST has none left in it (an empty window is no loss);
- not detected: a trade OKX itself leaves out of a live connection that stays up (nothing in OKX's protocol
  would reveal it; the window check above is as strong as its documented guarantees allow).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from orjson import loads

from producer_service.exchanges.base import (
    ControlEvent,
    ControlKind,
    Decoded,
    Keepalive,
    Limits,
    MalformedPayload,
    Page,
    RestLimits,
    ScriptTarget,
)
from producer_service.exchanges.okx.parsing import trade_to_tick
from producer_service.rest import RestError
from tickstream.ticks import Tick
from tickstream.venues import OKX, Venue

if TYPE_CHECKING:
    from producer_service.rest import RestClient

CHANNEL = "trades-all"
BUSINESS_PATH = "/ws/v5/business"
REQUESTS_PER_HOUR = 480
OKX_LIMITS = Limits(
    streams_per_connection=200, messages_per_second=3.0, streams_per_message=100,
    connection_lifetime_seconds=None, connection_attempts=3, connection_attempts_seconds=1.0,
    keepalive=Keepalive(server_ping_seconds=None, idle_timeout_seconds=30.0, client_ping_seconds=20.0,
                        client_ping="ping"),
    requests_per_hour=REQUESTS_PER_HOUR,
)
PAGE_SIZE = 100
OKX_REST = RestLimits(weight_per_window=20, window_seconds=2.0, page_size=PAGE_SIZE)
HISTORY_TRADES, INSTRUMENTS = "/api/v5/market/history-trades", "/api/v5/public/instruments"
INSTRUMENT_TYPES = ("SPOT", "SWAP", "FUTURES")  # options do not fit scripts.trading_symbol (tickstream.venues)
SHUTDOWN_NOTICE = "64008"
RATE_LIMITED = "50011"  # also sent with HTTP 200
PONG = b"pong"
REJECTED_SAMPLE_CHARS = 200
# A backfill page searches for the earliest trades from an id in windows of ids; each step halves the window or
# moves past an empty one, so a page takes at most about 2 × 64 requests (1 when ids are contiguous).
MAX_SEARCH_REQUESTS = 130
_REFUSED_INST_ID = re.compile(r"instId:([A-Za-z0-9-]+)")


@dataclass(frozen=True, slots=True)
class OkxAdapter:
    venue: Venue = OKX
    limits: Limits = OKX_LIMITS
    rest_limits: RestLimits = OKX_REST

    def connect_url(self, base_url: str) -> str:
        return base_url.rstrip("/") + BUSINESS_PATH

    def stream_key(self, symbol: str, stream_type: str) -> str:
        return f"{stream_type}:{symbol}"

    def subscribe_message(self, keys: Sequence[str], request_id: int) -> str:
        return _request("subscribe", keys, request_id)

    def unsubscribe_message(self, keys: Sequence[str], request_id: int) -> str:
        return _request("unsubscribe", keys, request_id)

    # -- frames ------------------------------------------------------------------------------------------
    def decode(self, raws: list[bytes], received_us: int, by_key: Mapping[str, ScriptTarget]) -> Decoded:
        """A subscribed channel's push of one well-formed trade (nearly every frame) takes the straight line;
        anything else (a pong, an event, a malformed frame) raises on the way and is classified carefully."""
        decoded = Decoded()
        ticks, targets, loads_, to_tick = decoded.ticks, decoded.targets, loads, trade_to_tick
        for raw in raws:
            try:
                frame = loads_(raw)
                arg = frame["arg"]
                target = by_key[f"{arg['channel']}:{arg['instId']}"]
                (item,) = frame["data"]
                tick = to_tick(item, target.script_id, received_us)
            except (ValueError, KeyError, TypeError):  # ValueError: MalformedPayload, not JSON, not one trade
                _decode_unusual(raw, received_us, by_key, decoded)
                continue
            ticks.append(tick)
            targets.append(target)
        return decoded

    # -- REST --------------------------------------------------------------------------------------------
    def trading_symbols(self, rest: RestClient) -> set[str]:
        symbols: set[str] = set()
        for inst_type in INSTRUMENT_TYPES:
            items = _data(rest.get(INSTRUMENTS, {"instType": inst_type}))
            symbols.update(item["instId"] for item in items if isinstance(item, dict)
                           and item.get("state") == "live" and isinstance(item.get("instId"), str))
        return symbols

    def backfill_page(self, rest: RestClient, script_id: int, symbol: str, stream_type: str, from_id: int,
                      limit: int, received_us: int) -> Page:
        """The earliest trades with id >= from_id, ascending, at most `limit` (≤ 100).

        history-trades gives the *newest* trades of an id window (`before` < id < `after`), so the earliest are
        found by windows: a window at most `limit` ids wide holds at most `limit` trades, so its answer is all
        of them; a wider one that comes back full is halved towards its oldest id; an empty one is passed, and
        past it the newest trades above tell whether any are left at all. With contiguous ids this is one request
        of ids [from_id, from_id + limit); with holes in the ids it still never skips a trade."""
        limit = min(limit, PAGE_SIZE)
        low, high = from_id, None  # the earliest trade >= from_id is >= low, and < high (None: not known yet)
        for _ in range(MAX_SEARCH_REQUESTS):
            upper = low + (limit if high is None else max(limit, (high - low) // 2))
            page, count = self._history(rest, script_id, symbol, low, upper, limit, received_us)
            if page.ticks and (count < limit or upper - low <= limit):
                return page  # the whole window: the earliest trades from `low` on
            if page.ticks:  # the newest `limit` of a wider window: the earliest lie below their oldest
                high = page.ticks[0].trade_id + 1
                continue
            if page.rejected:  # nothing usable, but something there: the backfill logs it and retries
                return page
            low = upper  # nothing in [low, upper)
            if high is None:
                newest, count = self._history(rest, script_id, symbol, low, None, limit, received_us)
                if not newest.ticks or count < limit:
                    return newest  # none from `low` on, or all of them
                high = newest.ticks[0].trade_id + 1
        raise RestError(200, None, f"no page of {symbol} from id {from_id} after {MAX_SEARCH_REQUESTS} requests")

    def _history(self, rest: RestClient, script_id: int, symbol: str, low: int, upper: int | None, limit: int,
                 received_us: int) -> tuple[Page, int]:
        """Trades with low <= id < upper (upper None: no bound), at most the newest `limit` of them, as a page in
        ascending order, and how many items OKX answered."""
        params: dict[str, Any] = {"instId": symbol, "type": "1", "limit": limit}
        if low > 0:
            params["before"] = low - 1
        if upper is not None:
            params["after"] = upper
        items = _data(rest.get(HISTORY_TRADES, params))
        page = Page([])
        for item in reversed(items):
            try:
                page.ticks.append(trade_to_tick(item, script_id, received_us))
            except MalformedPayload as error:
                page.rejected.append((str(item)[:REJECTED_SAMPLE_CHARS], str(error)))
        page.ticks.sort(key=_trade_id)
        return page, len(items)


def _trade_id(tick: Tick) -> int:
    return tick.trade_id


def _request(op: str, keys: Sequence[str], request_id: int) -> str:
    args = [{"channel": channel, "instId": inst_id} for channel, _, inst_id in (key.partition(":") for key in keys)]
    return orjson.dumps({"id": str(request_id), "op": op, "args": args}).decode()


def _data(answer: Any) -> list[Any]:
    """The `data` of an OKX REST envelope; a refusal (its `code` is not "0", even with HTTP 200) raises: a rate
    limit as a 429 (retried), anything else as a 400 (the exchange's final word, e.g. 51001 unknown instId)."""
    if not isinstance(answer, dict):
        raise RestError(200, None, f"not an OKX envelope: {str(answer)[:REJECTED_SAMPLE_CHARS]}")
    code, data = answer.get("code"), answer.get("data")
    if code != "0":
        raise RestError(429 if code == RATE_LIMITED else 400, code, str(answer.get("msg"))[:REJECTED_SAMPLE_CHARS])
    if not isinstance(data, list):
        raise RestError(200, code, "the envelope's data is not a list")
    return data


def _decode_unusual(raw: bytes, received_us: int, by_key: Mapping[str, ScriptTarget], decoded: Decoded) -> None:
    if raw == PONG:
        decoded.events.append(ControlEvent(ControlKind.PONG))
        return
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        decoded.malformed.append((raw, f"frame is not JSON: {error}"))
        return
    if not isinstance(frame, dict):
        decoded.malformed.append((raw, "frame is not a JSON object"))
    elif "event" in frame:
        decoded.events.append(_event(frame))
    elif "arg" in frame and "data" in frame:
        _decode_push(raw, frame, received_us, by_key, decoded)
    else:
        decoded.malformed.append((raw, "neither a push (arg, data) nor an event"))


def _decode_push(raw: bytes, frame: dict[str, Any], received_us: int, by_key: Mapping[str, ScriptTarget],
                 decoded: Decoded) -> None:
    arg, data = frame["arg"], frame["data"]
    if not isinstance(arg, dict) or not isinstance(data, list):
        decoded.malformed.append((raw, "a push's arg is not an object or its data not a list"))
        return
    target = by_key.get(f"{arg.get('channel')}:{arg.get('instId')}")
    if target is None:
        decoded.events.append(ControlEvent(ControlKind.IGNORED))  # a late push of a channel just unsubscribed
        return
    for item in data:  # trades-all pushes one trade; more are taken, in order, never dropped
        try:
            decoded.ticks.append(trade_to_tick(item, target.script_id, received_us))
        except MalformedPayload as error:
            decoded.malformed.append((raw, str(error)))
            continue
        decoded.targets.append(target)


def _event(frame: dict[str, Any]) -> ControlEvent:
    event, arg = frame.get("event"), frame.get("arg")
    stream = f"{arg.get('channel')}:{arg.get('instId')}" if isinstance(arg, dict) else None
    if event in ("subscribe", "unsubscribe"):
        return ControlEvent(ControlKind.ACK, str(event), stream)
    code, msg = frame.get("code"), str(frame.get("msg", ""))
    if event == "error":
        refused = _REFUSED_INST_ID.search(msg)
        return ControlEvent(ControlKind.ERROR, f"{code}: {msg}"[:REJECTED_SAMPLE_CHARS * 2],
                            stream or (f"{CHANNEL}:{refused.group(1)}" if refused else None))
    if event == "notice" and code == SHUTDOWN_NOTICE:
        return ControlEvent(ControlKind.SHUTDOWN, f"{code}: {msg}")
    return ControlEvent(ControlKind.IGNORED, f"event {str(event)[:50]!r}")  # e.g. channel-conn-count
