"""Binance's market-data protocol: combined streams, SUBSCRIBE/UNSUBSCRIBE, `{"stream","data"}` envelopes, REST
backfill by `fromId`. Spot uses it as is; Binance.US (`exchanges/binance_us`) on its own hosts; USD-M futures
(`exchanges/binance_usdm`) with its own limits and REST paths (`BinanceRest`).

Protocol reference: ../shared/reference/binance-spot-market-data.md (limits: 5 incoming messages per second per
connection, pings and pongs included; 1024 streams per connection; a connection lives 24 h; the server pings every
20 s and drops a client whose pong is a minute late; 300 connection attempts per 5 minutes per IP; REST: 6000
request weight per minute per IP, reported in X-MBX-USED-WEIGHT-1M).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
from producer_service.exchanges.binance.parsing import (
    SERVER_SHUTDOWN,
    event_to_tick,
    parse_frame,
    rest_aggtrade_to_tick,
    rest_trade_to_tick,
    stream_name,
)
from tickstream.venues import Venue

if TYPE_CHECKING:
    from producer_service.rest import RestClient

SPOT_LIMITS = Limits(
    streams_per_connection=1024, messages_per_second=5.0, streams_per_message=200,
    connection_lifetime_seconds=24 * 3600.0, connection_attempts=300, connection_attempts_seconds=300.0,
    keepalive=Keepalive(server_ping_seconds=20.0, idle_timeout_seconds=60.0),
)
SPOT_REST = RestLimits(weight_per_window=6000, window_seconds=60.0, page_size=1000,
                       used_weight_header="X-MBX-USED-WEIGHT-1M")
REJECTED_SAMPLE_CHARS = 200


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    weight: int  # request weight the venue charges for one call


@dataclass(frozen=True, slots=True)
class BinanceRest:
    """Where a Binance venue's REST API keeps what the producer reads, and what each call costs."""

    exchange_info: Endpoint
    agg_trades: Endpoint  # aggregate trades by `fromId` (the `aggTrade` stream's `a`)
    historical_trades: Endpoint | None  # trades by `fromId` (the `trade` stream's `t`); None: no `trade` stream


SPOT_API = BinanceRest(Endpoint("/api/v3/exchangeInfo", 20), Endpoint("/api/v3/aggTrades", 4),
                       Endpoint("/api/v3/historicalTrades", 25))


@dataclass(frozen=True, slots=True)
class BinanceAdapter:
    venue: Venue
    limits: Limits = SPOT_LIMITS
    rest_limits: RestLimits = SPOT_REST
    api: BinanceRest = SPOT_API

    def connect_url(self, base_url: str) -> str:
        return base_url.rstrip("/") + "/stream"

    def stream_key(self, symbol: str, stream_type: str) -> str:
        return stream_name(symbol, stream_type)

    def subscribe_message(self, keys: Sequence[str], request_id: int) -> str:
        return _control_message("SUBSCRIBE", keys, request_id)

    def unsubscribe_message(self, keys: Sequence[str], request_id: int) -> str:
        return _control_message("UNSUBSCRIBE", keys, request_id)

    # -- frames ------------------------------------------------------------------------------------------
    def decode(self, raws: list[bytes], received_us: int, by_key: Mapping[str, ScriptTarget]) -> Decoded:
        """A subscribed stream's well-formed event (nearly every frame) takes the straight line; anything else (a
        control reply, a malformed frame, serverShutdown) raises on the way and is classified again, carefully."""
        decoded = Decoded()
        ticks, targets, loads_, to_tick = decoded.ticks, decoded.targets, loads, event_to_tick
        for raw in raws:
            try:
                frame = loads_(raw)
                target = by_key[frame["stream"]]
                tick = to_tick(frame["data"], target.script_id, received_us)
            except (ValueError, KeyError, TypeError):  # ValueError: MalformedPayload or not JSON
                _decode_unusual(raw, received_us, by_key, decoded)
                continue
            ticks.append(tick)
            targets.append(target)
        return decoded

    # -- REST --------------------------------------------------------------------------------------------
    def trading_symbols(self, rest: RestClient) -> set[str]:
        """Every symbol whose status is TRADING (futures: of any contractType, perpetual or delivery)."""
        info = rest.get(self.api.exchange_info.path, {}, self.api.exchange_info.weight)
        return {item["symbol"] for item in info.get("symbols", []) if item.get("status") == "TRADING"}

    def backfill_page(self, rest: RestClient, script_id: int, symbol: str, stream_type: str, from_id: int,
                      limit: int, received_us: int) -> Page:
        """`trade` ids come from historicalTrades, `aggTrade` ids (`a`, never `f`/`l`) from aggTrades, both by
        `fromId`."""
        endpoint, convert = ((self.api.historical_trades, rest_trade_to_tick) if stream_type == "trade"
                             else (self.api.agg_trades, rest_aggtrade_to_tick))
        if endpoint is None:
            raise ValueError(f"{self.venue.title} has no {stream_type!r} trades to backfill")
        items = rest.get(endpoint.path, {"symbol": symbol, "fromId": from_id, "limit": limit}, endpoint.weight)
        try:  # a page of well-formed items (nearly always): one comprehension
            return Page([convert(item, script_id, received_us) for item in items])
        except MalformedPayload:
            pass
        page = Page([])
        for item in items:
            try:
                page.ticks.append(convert(item, script_id, received_us))
            except MalformedPayload as error:
                page.rejected.append((str(item)[:REJECTED_SAMPLE_CHARS], str(error)))
        return page


def _control_message(method: str, keys: Sequence[str], request_id: int) -> str:
    return orjson.dumps({"method": method, "params": list(keys), "id": request_id}).decode()


def _decode_unusual(raw: bytes, received_us: int, by_key: Mapping[str, ScriptTarget], decoded: Decoded) -> None:
    try:
        frame = parse_frame(raw)
    except MalformedPayload as error:
        decoded.malformed.append((raw, str(error)))
        return
    data, stream = frame.get("data"), frame.get("stream")
    target = by_key.get(stream) if isinstance(stream, str) else None
    if target is not None and not isinstance(data, dict):  # a subscribed stream's payload must be an event
        decoded.malformed.append((raw, "stream data is not a JSON object"))
        return
    if target is None or not isinstance(data, dict):
        _decode_control(raw, frame, decoded)
        return
    try:
        tick = event_to_tick(data, target.script_id, received_us)
    except MalformedPayload as error:
        if data.get("e") == SERVER_SHUTDOWN:
            _decode_control(raw, frame, decoded)
        else:
            decoded.malformed.append((raw, str(error)))
        return
    decoded.ticks.append(tick)  # not expected (the straight line takes such frames), but never dropped
    decoded.targets.append(target)


def _decode_control(raw: bytes, frame: dict, decoded: Decoded) -> None:
    data = frame.get("data") if isinstance(frame.get("data"), dict) else frame
    if data.get("e") == SERVER_SHUTDOWN:
        decoded.events.append(ControlEvent(ControlKind.SHUTDOWN, SERVER_SHUTDOWN))
    elif "error" in frame:
        decoded.events.append(ControlEvent(ControlKind.ERROR, str(frame["error"])))
    elif "result" in frame:
        decoded.events.append(ControlEvent(ControlKind.ACK))
    elif frame.get("stream") is not None:
        decoded.events.append(ControlEvent(ControlKind.IGNORED))  # a late frame of a stream just unsubscribed
    else:
        decoded.malformed.append((raw, "not a stream envelope, a control reply or an event"))
