"""The market-data wire protocol: URLs, control messages and payload shapes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from simulator.market import AGG_TRADE, TRADE, AggTrade, Tape, Trade, fmt_units

SHUTDOWN_STREAM = "!serverShutdown"
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
ID_TEXT = re.compile(r"^[A-Za-z0-9_-]{0,36}$")
BAD_ID = "Invalid request: request ID must be an int64, an alphanumeric string (max 36 characters) or null"
INT64 = (-(2**63), 2**63 - 1)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def stream_name(symbol: str, kind: str) -> str:
    return f"{symbol.lower()}@{kind}"


@dataclass
class StreamRequest:
    """What a WebSocket URL asks for."""

    combined: bool
    streams: list[str]
    microseconds: bool = False


def parse_ws_path(path: str) -> StreamRequest | None:
    """`/ws`, `/ws/<a>/<b>` (raw) or `/stream?streams=a/b` (combined); None for anything else."""
    parts = urlsplit(path)
    query = parse_qs(parts.query)
    unit = query.get("timeUnit", ["MILLISECOND"])[-1].upper()
    if unit not in ("MILLISECOND", "MICROSECOND"):
        return None
    micro = unit == "MICROSECOND"
    segments = [s for s in parts.path.split("/") if s]
    if segments[:1] == ["ws"]:
        return StreamRequest(False, segments[1:], micro)
    if segments == ["stream"]:
        streams = [s for value in query.get("streams", []) for s in value.split("/") if s]
        return StreamRequest(True, streams, micro)
    return None


@dataclass
class Session:
    """Per-connection protocol state.

    Every venue's session has `streams` (what the core publishes to it), `flavour` (a key: sessions with equal
    flavours get byte-identical frames, so a message is rendered once per flavour) and render().
    """

    combined: bool
    streams: dict[str, None] = field(default_factory=dict)  # ordered set
    microseconds: bool = False

    @property
    def flavour(self) -> tuple[bool, bool]:
        return self.combined, self.microseconds

    def render(self, stream: str, payload: Any) -> str:
        if self.microseconds and isinstance(payload, dict):
            payload = to_microseconds(payload)
        return dumps({"stream": stream, "data": payload} if self.combined else payload)


class ControlError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def error_reply(code: int, msg: str, req_id: Any) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": req_id}


def handle_control(raw: str | bytes, session: Session, max_streams: int) -> dict[str, Any]:
    """Apply one client text frame to `session` and return the reply object."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        return error_reply(3, f"Invalid JSON: {getattr(exc, 'msg', 'invalid UTF-8')}{where}", None)
    req_id = message.get("id") if isinstance(message, dict) else None
    try:
        if not isinstance(message, dict):
            raise ControlError(2, "Invalid request: expected a JSON object")
        req_id = _check_id(message)
        return {"result": _dispatch(message, session, max_streams), "id": req_id}
    except ControlError as exc:
        return error_reply(exc.code, exc.msg, req_id if _valid_id(req_id) else None)


def _valid_id(value: Any) -> bool:
    if value is None or (isinstance(value, str) and ID_TEXT.match(value)):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and INT64[0] <= value <= INT64[1]


def _check_id(message: dict[str, Any]) -> Any:
    if "id" not in message or not _valid_id(message["id"]):
        raise ControlError(2, BAD_ID)
    return message["id"]


def _dispatch(message: dict[str, Any], session: Session, max_streams: int) -> Any:
    method = message.get("method")
    if method is None:
        raise ControlError(2, "Invalid request: missing field `method`")
    if method not in METHODS:
        expected = ", ".join(f"`{m}`" for m in METHODS)
        raise ControlError(2, f"Invalid request: unknown variant `{method}`, expected one of {expected}")
    params = message.get("params", [])
    if not isinstance(params, list):
        raise ControlError(2, "Invalid request: `params` must be an array")
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        return _change_streams(method, params, session, max_streams)
    if method == "LIST_SUBSCRIPTIONS":
        if params:
            raise ControlError(2, "Invalid request: too many parameters")
        return list(session.streams)
    return _property(method, params, session)


def _change_streams(method: str, params: list[Any], session: Session, max_streams: int) -> None:
    if not all(isinstance(p, str) for p in params):
        raise ControlError(2, "Invalid request: stream names must be strings")
    if method == "UNSUBSCRIBE":
        for name in params:
            session.streams.pop(name, None)
        return None
    new = [p for p in dict.fromkeys(params) if p not in session.streams]
    if len(session.streams) + len(new) > max_streams:
        raise ControlError(2, f"Invalid request: too many streams; at most {max_streams} per connection")
    session.streams.update(dict.fromkeys(new))
    return None


def _property(method: str, params: list[Any], session: Session) -> Any:
    expected = 2 if method == "SET_PROPERTY" else 1
    if len(params) > expected:
        raise ControlError(2, "Invalid request: too many parameters")
    if not params or not isinstance(params[0], str):
        raise ControlError(2, "Invalid request: property name must be a string")
    if params[0] != "combined":
        raise ControlError(0, "Unknown property")
    if method == "GET_PROPERTY":
        return session.combined
    if len(params) < 2 or not isinstance(params[1], bool):
        raise ControlError(1, "Invalid value type: expected Boolean")
    session.combined = params[1]
    return None


# --- payloads -------------------------------------------------------------------------------------


def agg_event(symbol: str, agg: AggTrade, event_ms: int) -> dict[str, Any]:
    return {
        "e": AGG_TRADE, "E": event_ms, "s": symbol, "a": agg.id, "p": fmt_units(agg.price),
        "q": fmt_units(agg.qty), "f": agg.first, "l": agg.last, "T": agg.time, "m": bool(agg.maker),
        "M": True,
    }  # fmt: skip


def trade_event(symbol: str, trade: Trade, event_ms: int) -> dict[str, Any]:
    return {
        "e": TRADE, "E": event_ms, "s": symbol, "t": trade.id, "p": fmt_units(trade.price),
        "q": fmt_units(trade.qty), "T": trade.time, "m": bool(trade.maker), "M": True,
    }  # fmt: skip


def shutdown_event(event_ms: int) -> dict[str, Any]:
    return {"e": "serverShutdown", "E": event_ms}


def agg_rest(agg: AggTrade) -> dict[str, Any]:
    return {
        "a": agg.id, "p": fmt_units(agg.price), "q": fmt_units(agg.qty), "f": agg.first, "l": agg.last,
        "T": agg.time, "m": bool(agg.maker), "M": True,
    }  # fmt: skip


def trade_rest(trade: Trade) -> dict[str, Any]:
    return {
        "id": trade.id, "price": fmt_units(trade.price), "qty": fmt_units(trade.qty),
        "quoteQty": fmt_units(trade.price * trade.qty // 10**8), "time": trade.time,
        "isBuyerMaker": bool(trade.maker), "isBestMatch": True,
    }  # fmt: skip


# --- payloads rendered straight to text (the streaming hot path) ----------------------------------


def _event_head(kind: str, stream: str | None, event_time: int, symbol: str, id_key: str) -> str:
    """An event's text up to its id: `{"stream":..,"data":{"e":..,"E":..,"s":..,"a":` (no envelope if no stream)."""
    envelope = "" if stream is None else f'{{"stream":{dumps(stream)},"data":'
    return f'{envelope}{{"e":{dumps(kind)},"E":{event_time},"s":{dumps(symbol)},"{id_key}":'


def _event_tails(combined: bool, trade_time: int, best_match: bool) -> tuple[str, str]:
    """An event's text from its trade time on, for maker false and true (the same for both kinds)."""
    close = ',"M":true}' if best_match else "}"
    close += "}" if combined else ""
    return f',"T":{trade_time},"m":false{close}', f',"T":{trade_time},"m":true{close}'


def tape_texts(
    tape: Tape, agg_stream: str | None, trade_stream: str | None, event_ms: int, combined: bool, micro: bool,
    best_match: bool = True,
) -> list[str]:  # fmt: skip
    """The JSON text of every event of `tape` on the given streams (None: not wanted), in emission order.

    Emission order is each aggregate followed by its trades. Each text is exactly what dumps() makes of
    agg_event() / trade_event() (in a {"stream","data"} envelope when `combined`, times in µs when `micro`,
    without the "M" field unless `best_match`), made from templates instead of dicts and json because this runs
    for every streamed trade. Like dumps(), the texts are pure ASCII. Trades no aggregate covers (tape.gaps)
    are not sent.
    """
    if tape.gaps:
        return _gapped_tape_texts(tape, agg_stream, trade_stream, event_ms, combined, micro, best_match)
    scale, symbol = 1000 if micro else 1, tape.symbol
    tails = _event_tails(combined, tape.time * scale, best_match)
    if agg_stream is not None:
        agg_head = _event_head(AGG_TRADE, agg_stream if combined else None, event_ms * scale, symbol, "a")
    if trade_stream is not None:
        trade_head = _event_head(TRADE, trade_stream if combined else None, event_ms * scale, symbol, "t")
    out: list[str] = []
    qtys, offset, agg_id, first = tape.qtys, tape.trade_start, tape.agg_start, tape.trade_start
    for price, size, maker, agg_qty in zip(tape.prices, tape.sizes, tape.makers, tape.agg_qtys, strict=True):
        p, tail, stop = fmt_units(price), tails[maker], first + size
        if agg_stream is not None:
            out.append(f'{agg_head}{agg_id},"p":"{p}","q":"{fmt_units(agg_qty)}","f":{first},"l":{stop - 1}{tail}')
        if trade_stream is not None:
            for trade_id in range(first, stop):
                out.append(f'{trade_head}{trade_id},"p":"{p}","q":"{fmt_units(qtys[trade_id - offset])}"{tail}')
        agg_id, first = agg_id + 1, stop
    return out


def _gapped_tape_texts(
    tape: Tape, agg_stream: str | None, trade_stream: str | None, event_ms: int, combined: bool, micro: bool,
    best_match: bool,
) -> list[str]:  # fmt: skip
    """tape_texts() of a tape with unaggregated trades, from the row objects (rare: no need for templates)."""
    out: list[str] = []
    session = Session(combined, {}, micro)
    for agg, trades in tape.aggregates():
        events = [(agg_stream, agg_event(tape.symbol, agg, event_ms))] if agg_stream is not None else []
        if trade_stream is not None:
            events += [(trade_stream, trade_event(tape.symbol, trade, event_ms)) for trade in trades]
        for stream, payload in events:
            if not best_match:
                del payload["M"]
            out.append(session.render(stream, payload))
    return out


def to_microseconds(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v * 1000 if k in ("E", "T") and isinstance(v, int) else v for k, v in payload.items()}
