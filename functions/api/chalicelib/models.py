"""Request and response models (pydantic v2, the validation Powertools' parser uses). They validate input, shape
output and are the source of the OpenAPI document's schemas, so the three cannot disagree.

Request bodies are strict (no "5" for 5, no 1 for true) and refuse unknown fields, so a typo is a 422 that names
the field, not a silently ignored change. Every string must also be storable as it is: no lone surrogates (utf8mb4
cannot hold them) and, in names, no control characters.

What a broker and its scripts may hold depends on the broker's `type`, a venue of `tickstream.venues`: each venue
gets its own models here, built from its declaration, and a body that depends on the type is pydantic's
discriminated union of them (`BrokerCreate`; `ScriptMarket`, which the service applies once it knows the broker).
Adding a venue to tickstream.venues adds its models, its OpenAPI schemas and its checks, with no edit here.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    create_model,
    model_validator,
)

from tickstream.venues import DEFAULT_TYPE, VENUES, Venue

MAX_ID = 2**32 - 1  # INT UNSIGNED
MAX_TRADE_ID = 2**64 - 1  # BIGINT UNSIGNED
MAX_EXTRA_KEYS = 50
MAX_TICKS_PAGE = 1000
_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"


def _storable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _url_check(*schemes: str) -> AfterValidator:
    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"must be a {' or '.join(schemes)} URL with a host")
        _ = parts.port  # raises ValueError for a port out of range
        return value

    return AfterValidator(check)


def _omit_default(schema: dict[str, Any]) -> None:
    # PATCH fields default to "not given", which is not a value a client may send.
    schema.pop("default", None)


def optional() -> Any:
    """A PATCH field: may be left out, but `null` is not a value (the column is NOT NULL)."""
    return Field(default=None, json_schema_extra=_omit_default)


Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=_NO_CONTROL),
                 AfterValidator(_storable), AfterValidator(_not_blank)]
ExtraKey = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=_NO_CONTROL),
                     AfterValidator(_storable)]


def _scalar(value: Any) -> Any:
    """Extra keys hold JSON scalars only: nothing nested (MySQL caps JSON depth), nothing unstorable."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str) and len(value) <= 1000:
        return _storable(value)
    raise ValueError("must be a string of at most 1000 characters, a 64-bit integer, a finite number, a boolean"
                     " or null")


ExtraValue = Annotated[Any, AfterValidator(_scalar), WithJsonSchema({"anyOf": [
    {"type": "string", "maxLength": 1000}, {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
    {"type": "number"}, {"type": "boolean"}, {"type": "null"}]})]
WsUrl = Annotated[str, StringConstraints(max_length=2048, pattern=r"^wss?://[^\s\x00-\x1f\x7f/?#]+[^\s]*$"),
                  _url_check("ws", "wss")]
HttpUrl = Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://[^\s\x00-\x1f\x7f/?#]+[^\s]*$"),
                    _url_check("http", "https")]
# Lower case is accepted and upper-cased; checked before upper-casing, since str.upper() maps some non-ASCII
# letters (ı, ſ) onto ASCII ones. This is what every venue's format has in common; the broker's venue's own format
# (ScriptMarket) is checked once the broker is known. The length is checked first, so that a symbol too long for
# the column is told so.
TRADING_SYMBOL_MAX_CHARS = 20  # scripts.trading_symbol is VARCHAR(20) (migrations/0001_initial.sql)
TradingSymbol = Annotated[
    str, StringConstraints(min_length=2, max_length=TRADING_SYMBOL_MAX_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]+$"),
    AfterValidator(str.upper),
    Field(description="in the broker's venue's format: " + "; ".join(
        f"{venue.type}: like {venue.symbol_example}" for venue in VENUES.values()) + " (422 otherwise; the"
        " formats: components.schemas.ScriptMarket)")]
VenueType = Literal[tuple(VENUES)]  # type: ignore[valid-type]
STREAMS = tuple(dict.fromkeys(stream for venue in VENUES.values() for stream in venue.streams))


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _extensible_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    schema["propertyNames"] = {"minLength": 1, "maxLength": 100, "pattern": _NO_CONTROL}
    schema["maxProperties"] = len(model.model_fields) + MAX_EXTRA_KEYS


class _Extensible(BaseModel):
    """A JSON object with known keys and a bounded number of extra scalar keys, stored as given."""

    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra=_extensible_schema)
    __pydantic_extra__: dict[ExtraKey, ExtraValue] = Field(init=False)

    @model_validator(mode="after")
    def _few_extras(self) -> _Extensible:
        if len(self.__pydantic_extra__ or {}) > MAX_EXTRA_KEYS:
            raise ValueError(f"at most {MAX_EXTRA_KEYS} extra keys")
        return self


class ApiConfig(_Extensible):
    # The allowlist itself is a setting (EXCHANGE_HOST_ALLOWLIST), so the service applies it, not the schema.
    ws_url: WsUrl | None = Field(default=None, description="WebSocket base URL; the venue's by default. wss:// to"
                                 " an official host of the broker's venue or one in EXCHANGE_HOST_ALLOWLIST, else"
                                 " 422 (README: Security)")
    rest_url: HttpUrl | None = Field(default=None, description="REST base URL; the venue's by default. https:// to"
                                     " an official host of the broker's venue or one in EXCHANGE_HOST_ALLOWLIST,"
                                     " else 422 (README: Security)")


class AdditionalData(_Extensible):
    stream: Literal[STREAMS] | None = Field(  # type: ignore[valid-type]
        default=None, description="the venue's stream, its first if unset: " + "; ".join(
            f"{venue.type}: {' | '.join(venue.streams)}" for venue in VENUES.values()))


# --- per venue: the discriminated unions ---------------------------------------------------------------------------

def _model_name(venue: Venue, suffix: str) -> str:
    return "".join(part.capitalize() for part in venue.type.split("_")) + suffix


def _hosts(hosts: frozenset[str]) -> str:
    return ", ".join(sorted(hosts))


def _venue_api_config(venue: Venue) -> type[ApiConfig]:
    return create_model(
        _model_name(venue, "ApiConfig"), __base__=ApiConfig, __doc__=f"api_config of a broker on {venue.title}",
        ws_url=(WsUrl | None, Field(default=None, examples=[venue.ws_url], description=(
            f"WebSocket base URL, {venue.ws_url} if unset: wss:// to {_hosts(venue.ws_hosts)} or a host in"
            " EXCHANGE_HOST_ALLOWLIST, else 422"))),
        rest_url=(HttpUrl | None, Field(default=None, examples=[venue.rest_url], description=(
            f"REST base URL, {venue.rest_url} if unset: https:// to {_hosts(venue.rest_hosts)} or a host in"
            " EXCHANGE_HOST_ALLOWLIST, else 422"))))


def _venue_additional_data(venue: Venue) -> type[_Extensible]:
    return create_model(
        _model_name(venue, "AdditionalData"), __base__=_Extensible,
        __doc__=f"additional_data of a script on {venue.title}",
        stream=(Literal[venue.streams] | None,  # type: ignore[valid-type]
                Field(default=None, description=f"{venue.streams[0]} if unset")))


def _venue_symbol(venue: Venue) -> AfterValidator:
    def check(symbol: str) -> str:
        problem = venue.symbol_problem(symbol)
        if problem is not None:
            raise ValueError(f"{symbol!r} {problem}")
        return symbol

    return AfterValidator(check)


def _venue_broker_create(venue: Venue) -> type[Body]:
    api_config = _venue_api_config(venue)
    return create_model(
        _model_name(venue, "BrokerCreate"), __base__=Body, __doc__=f"A broker on {venue.title}",
        name=(Name, ...),
        type=(Literal[venue.type], venue.type if venue.type == DEFAULT_TYPE else ...),
        api_config=(api_config, Field(default_factory=api_config)),
        is_active=(StrictBool, True))


def _venue_market(venue: Venue) -> type[Body]:
    additional_data = _venue_additional_data(venue)
    return create_model(
        _model_name(venue, "Market"), __base__=Body,
        __doc__=f"What a script on {venue.title} names: its symbol and stream",
        type=(Literal[venue.type], ...),
        trading_symbol=(Annotated[str, _venue_symbol(venue), Field(
            examples=[venue.symbol_example], json_schema_extra={"pattern": f"^(?:{venue.symbol_pattern})$"},
            description="upper case (the API upper-cases what it is sent)")], ...),
        additional_data=(additional_data, Field(default_factory=additional_data)))


class _Tagged:
    """A body that is one of several models told apart by `type` (pydantic's discriminated union). Pydantic names
    the chosen model in an error's location; `field_errors` drops it, so a field is named as the client sent it."""

    DISCRIMINATOR: ClassVar[str] = "type"


_BROKER_CREATES = tuple(_venue_broker_create(venue) for venue in VENUES.values())
_MARKETS = tuple(_venue_market(venue) for venue in VENUES.values())


class BrokerCreate(_Tagged, RootModel[Annotated[Union[_BROKER_CREATES], Field(discriminator="type")]]):  # noqa: UP007
    """A broker of one venue: `type` picks the venue (binance if left out), which decides api_config's hosts."""

    @model_validator(mode="before")
    @classmethod
    def _default_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data:
            return {**data, "type": DEFAULT_TYPE}
        return data


class ScriptMarket(_Tagged, RootModel[Annotated[Union[_MARKETS], Field(discriminator="type")]]):  # noqa: UP007
    """A script's symbol and stream in the format of its broker's venue (the service adds the broker's type)."""


class BrokerPatch(Body):
    name: Name = optional()
    type: VenueType = optional()
    api_config: ApiConfig = Field(default=None, json_schema_extra=_omit_default,
                                  description="replaces the whole object; checked against the broker's type (the one"
                                              " sent, else the stored one)")
    is_active: StrictBool = optional()


class ScriptCreate(Body):
    broker_id: Id
    name: Name
    trading_symbol: TradingSymbol
    additional_data: AdditionalData = Field(default_factory=AdditionalData)
    is_active: StrictBool = True


class ScriptPatch(Body):
    broker_id: Id = optional()
    name: Name = optional()
    trading_symbol: TradingSymbol = optional()
    additional_data: AdditionalData = Field(default=None, json_schema_extra=_omit_default,
                                            description="replaces the whole object")
    is_active: StrictBool = optional()


class RedriveRequest(Body):
    method: Literal["auto", "message_move_task", "receive_send_delete"] = "auto"
    max_messages: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="bound the move (receive_send_delete only; auto then uses it)")

    @model_validator(mode="after")
    def _bounded_only_by_loop(self) -> RedriveRequest:
        if self.method == "message_move_task" and self.max_messages is not None:
            raise ValueError("max_messages needs method auto or receive_send_delete (a move task moves all)")
        return self


# --- query strings (strings in, so not strict) -----------------------------------------------------------------

def parse_time(value: Any) -> datetime:
    """ISO-8601 (no zone means UTC) or epoch milliseconds → an aware UTC datetime."""
    if isinstance(value, datetime):
        return value
    text = str(value).strip()
    try:
        if text.isascii() and text.isdigit():
            moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(text))
        else:
            moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise ValueError("must be an ISO-8601 time or epoch milliseconds") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


TimeParam = Annotated[
    datetime,
    BeforeValidator(parse_time),
    WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"},
                              {"type": "string", "pattern": "^[0-9]{1,15}$"}],
                    "description": "ISO-8601 (UTC if no offset) or epoch milliseconds"}),
]


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class ScriptsQuery(Query):
    broker_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None = None


class DeleteQuery(Query):
    purge: bool = Field(default=False, description="also delete the scripts and ticks that would be lost")


class TicksQuery(Query):
    from_: TimeParam | None = Field(default=None, alias="from",
                                         description="inclusive; ISO-8601 (UTC if no offset) or epoch ms")
    to: TimeParam | None = Field(default=None, description="exclusive; ISO-8601 (UTC if no offset) or epoch ms")
    limit: Annotated[int, Field(ge=1, le=MAX_TICKS_PAGE)] = 100
    cursor: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")] | None = Field(
        default=None, description="next_cursor of the previous page")
    order: Literal["asc", "desc"] = Field(default="desc", description="by trade id: desc is newest first")

    @model_validator(mode="after")
    def _sane(self) -> TicksQuery:
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError("from must not be after to")
        if self.cursor is not None and int(self.cursor) > MAX_TRADE_ID:
            raise ValueError("cursor is not a trade id")
        return self


def parse_day(value: Any) -> date:
    """A UTC day as YYYY-MM-DD (nothing else: no epoch numbers, no times)."""
    if isinstance(value, date):
        return value
    text = str(value).strip()
    try:
        if text.isascii() and len(text) == 10:
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise ValueError("must be a day as YYYY-MM-DD")


DayParam = Annotated[date, BeforeValidator(parse_day), WithJsonSchema({"type": "string", "format": "date"})]
MAX_COVERAGE_DAYS = 366
DEFAULT_COVERAGE_DAYS = 31
GapState = Literal["pending", "filling", "filled", "unrecoverable"]
MAX_GAPS_PAGE = 1000


def _shifted(day: date, days: int) -> date:
    """`day` moved by `days`, stopping at the calendar's ends (year 1, year 9999) instead of overflowing."""
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.max if days > 0 else date.min


class CoverageQuery(Query):
    from_: DayParam | None = Field(default=None, alias="from",
                                   description="first UTC day, inclusive (YYYY-MM-DD); default: 30 days before to")
    to: DayParam | None = Field(default=None, description="last UTC day, inclusive (YYYY-MM-DD); default: today")

    @model_validator(mode="after")
    def _bounded(self) -> CoverageQuery:
        if self.to is None:
            self.to = datetime.now(UTC).date() if self.from_ is None else \
                _shifted(self.from_, DEFAULT_COVERAGE_DAYS - 1)
        if self.from_ is None:
            self.from_ = _shifted(self.to, 1 - DEFAULT_COVERAGE_DAYS)
        if self.from_ > self.to:
            raise ValueError("from must not be after to")
        if (self.to - self.from_).days >= MAX_COVERAGE_DAYS:
            raise ValueError(f"at most {MAX_COVERAGE_DAYS} days per request")
        return self


class GapsQuery(Query):
    script_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None = Field(default=None, description="only this script")
    state: GapState | None = Field(default=None, description="only gaps in this state")
    limit: Annotated[int, Field(ge=1, le=MAX_GAPS_PAGE)] = 100
    cursor: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")] | None = Field(
        default=None, description="next_cursor of the previous page")
    order: Literal["asc", "desc"] = Field(default="desc", description="by gap id: desc is newest first")

    @model_validator(mode="after")
    def _sane(self) -> GapsQuery:
        if self.cursor is not None and int(self.cursor) > MAX_TRADE_ID:
            raise ValueError("cursor is not a gap id")
        return self


# --- responses ---------------------------------------------------------------------------------------------------

class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerOut(Out):
    id: int
    type: str = Field(description="the venue: " + ", ".join(VENUES))
    name: str
    api_config: dict[str, Any]
    is_active: bool
    created_at: datetime
    updated_at: datetime


class BrokerList(Out):
    brokers: list[BrokerOut]


class ScriptOut(Out):
    id: int
    broker_id: int
    name: str
    trading_symbol: str
    additional_data: dict[str, Any]
    is_active: bool
    created_at: datetime
    updated_at: datetime


class ScriptList(Out):
    scripts: list[ScriptOut]


class ProducerStatusOut(Out):
    """What the producer last reported for the script (producer_status, upserted every few seconds)."""

    broker_id: int
    state: str = Field(description="subscribed | unknown_symbol | unknown_type (no adapter for the broker's type)"
                       " | backfilling | lagging | connecting")
    detail: str | None
    connection: str | None
    last_trade_id: int | None
    last_traded_at: datetime | None
    backfill_done: int | None = Field(description="trades fetched of the running backfill")
    backfill_total: int | None
    lag_ms_p50: int | None = Field(description="trade time to the producer's receive time, bounded sample")
    lag_ms_p99: int | None
    reported_at: datetime


class ScriptTicksOut(Out):
    """The script's stored ticks, from its totals (tick_totals, kept by every writer) and its per-day coverage
    (no tick is counted)."""

    tick_count: int
    first_trade_id: int | None
    last_trade_id: int | None
    first_trade_at: datetime | None
    last_trade_at: datetime | None
    days: int = Field(description="UTC days with stored ticks")
    incomplete_days: int = Field(description="days whose ids between first and last are not all stored")
    missing_trades: int = Field(description="over all days: expected (last − first + 1) − stored")
    stored_last_minute: int = Field(description="ticks stored during the last complete UTC minute (database clock)")
    stored_this_minute: int = Field(description="ticks stored so far in the current UTC minute (database clock)")


class ScriptDetailOut(ScriptOut):
    ticks: ScriptTicksOut
    status: ProducerStatusOut | None = Field(description="null until the producer reports this script")


class Deleted(Out):
    id: int
    deleted: Literal[True] = True
    scripts_deleted: int
    ticks_deleted: int


DecimalText = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?$", description="exact decimal, never a float")]


class TickOut(Out):
    trade_id: int
    price: DecimalText
    quantity: DecimalText
    is_buyer_maker: bool
    traded_at: datetime
    event_at: datetime
    received_at_producer: datetime
    stored_at: datetime


class TickPage(Out):
    script_id: int
    order: Literal["asc", "desc"]
    limit: int
    ticks: list[TickOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


class ScriptStatsOut(Out):
    script_id: int
    broker_id: int
    name: str
    trading_symbol: str
    is_active: bool
    tick_count: int = Field(description="stored ticks, from the script's totals (no tick is counted)")
    first_trade_at: datetime | None
    last_trade_at: datetime | None
    incomplete_days: int
    missing_trades: int
    ticks_last_minute: int = Field(description="ticks stored during the last complete UTC minute (database clock;"
                                               " counted by the ingest as it stores them, no tick is counted)")
    ticks_this_minute: int = Field(description="ticks stored so far in the current UTC minute (database clock)")
    lag_ms_p50: float | None = Field(description="the ingest's clock at storing − received_at_producer, over a"
                                                 " sample (every 31st row of a batch, each script's first) of the"
                                                 " ticks stored in this and the previous UTC minute (database clock),"
                                                 " rounded down to two significant digits; null: none stored")
    lag_ms_p99: float | None
    status: ProducerStatusOut | None = Field(description="null until the producer reports this script")


class GapOut(Out):
    """One entry of the gap ledger: trade ids the producer knows it has not delivered (yet)."""

    id: int
    script_id: int
    first_trade_id: int
    last_trade_id: int
    next_trade_id: int = Field(description="where filling resumes")
    cause: str = Field(description="stream_jump | reconnect | restart | audit")
    state: str = Field(description="pending | filling | filled | unrecoverable")
    attempts: int
    last_error: str | None
    trades_filled: int
    detected_at: datetime
    filled_at: datetime | None
    updated_at: datetime


class GapPage(Out):
    gaps: list[GapOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


class CoverageDayOut(Out):
    day: date
    first_trade_id: int
    last_trade_id: int
    first_traded_at: datetime
    last_traded_at: datetime
    stored: int
    expected: int = Field(description="last_trade_id − first_trade_id + 1 (trade ids are contiguous)")
    missing: int
    complete: bool
    audited_at: datetime | None
    gaps: list[GapOut] = Field(description="ledger entries in this day's ids (up to the next day's first id)")


class CoverageOut(Out):
    script_id: int
    first_day: date = Field(description="the asked range (from), inclusive")
    last_day: date = Field(description="the asked range (to), inclusive")
    days: list[CoverageDayOut] = Field(description="UTC days with stored ticks, oldest first")
    gaps_truncated: bool = Field(description="true: more gaps than one answer holds; list them with GET /gaps")


class QueueDepthOut(Out):
    approximate_messages: int | None
    approximate_in_flight: int | None
    approximate_delayed: int | None
    reason: str | None = Field(description="why the numbers are null: not configured or not reachable")


class QueuesOut(Out):
    queue: QueueDepthOut
    dlq: QueueDepthOut


class StatsOut(Out):
    generated_at: datetime
    window_seconds: int = Field(description="the longest the lag percentiles look back (two UTC minutes)")
    scripts: list[ScriptStatsOut]
    queues: QueuesOut


class RedriveOut(Out):
    method: Literal["message_move_task", "receive_send_delete"]
    moved: int
    failed: int = Field(description="messages left in the DLQ because sending them failed")
    complete: bool = Field(description="false: stopped early (time budget, max_messages, failures); call again")
    task_handle: str | None


class HealthOut(Out):
    status: Literal["ok", "unavailable"]
    database: Literal["reachable", "unreachable"]


class FieldError(Out):
    field: str
    message: str


class ErrorBody(Out):
    code: str
    message: str
    fields: list[FieldError] | None = None


class ErrorOut(Out):
    error: ErrorBody


class JobOut(Out):
    """Background work (a script's or a broker's purge, retention): poll GET /jobs/{id} until state is done."""

    id: int
    kind: Literal["purge_script", "purge_broker", "retention"]
    broker_id: int | None = Field(description="a broker's purge: the broker")
    script_id: int | None = Field(description="a script's purge: the script; a broker's: the script it is on")
    state: Literal["queued", "running", "done", "failed"]
    rows_deleted: int = Field(description="ticks deleted so far")
    cursor_trade_id: int | None = Field(description="the next trade id to delete (a purge: all below are gone)")
    error: str | None = Field(description="the last failure; the job is retried from its cursor")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
