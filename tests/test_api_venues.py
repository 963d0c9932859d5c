"""Brokers of every venue through the API (in-process, the real middleware and route table, against MariaDB): each
broker type takes its own api_config hosts and its scripts their venue's symbol format and streams; what does not
fit is a 422 naming the field, or a 409 when it is other rows that would stop fitting."""

from __future__ import annotations

import threading
import time
from typing import Any

import pymysql
import pytest

from tests.api_fixtures import InProcessApi, load_api_app
from tests.conftest import make_broker, make_script
from tests.test_api import add_ticks
from tickstream.venues import VENUES

pytest_plugins = ["tests.api_fixtures"]

APP = load_api_app().app
from chalicelib import openapi  # noqa: E402 - importable once load_api_app put it on sys.path

# type → (symbols its venue takes, as sent → as stored; symbols it refuses; streams it takes; streams it refuses)
FORMATS: dict[str, tuple[dict[str, str], list[str], list[str], list[str]]] = {
    "binance": ({"BTCUSDT": "BTCUSDT", "ethbtc": "ETHBTC"}, ["BTC-USDT", "BTCUSDT_250627"],
                ["aggTrade", "trade"], ["trades-all", "depth"]),
    "binance_us": ({"BTCUSD": "BTCUSD"}, ["BTC-USD", "BTC_USD"], ["aggTrade", "trade"], ["trades-all"]),
    "binance_usdm": ({"BTCUSDT": "BTCUSDT", "btcusdt_250627": "BTCUSDT_250627"}, ["BTC-USDT", "BTCUSDT_2506"],
                     ["aggTrade"], ["trade", "trades-all"]),
    "okx": ({"BTC-USDT": "BTC-USDT", "btc-usdt-swap": "BTC-USDT-SWAP", "BTC-USD-250627": "BTC-USD-250627"},
            ["BTCUSDT", "BTC-USDT-PERP", "BTC--USDT", "BTC-USDT-SWAP-X"], ["trades-all"], ["aggTrade", "trade"]),
}


def test_formats_cover_every_venue() -> None:
    assert set(FORMATS) == set(VENUES)


def broker(api: InProcessApi, type_: str, name: str | None = None, **fields: Any) -> dict[str, Any]:
    reply = api.post("/brokers", {"name": name or type_, "type": type_, **fields})
    assert reply.status == 201, reply.body
    return reply.json()


def fields_of(reply: Any) -> list[str]:
    return [field["field"] for field in reply.json()["error"]["fields"]]


def assert_422(reply: Any, fields: list[str], *words: str) -> None:
    assert (reply.status, reply.error_code) == (422, "invalid_fields"), reply.body
    assert fields_of(reply) == fields
    message = " ".join(field["message"] for field in reply.json()["error"]["fields"])
    for word in words:
        assert word in message, message


# --- brokers -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_", sorted(VENUES))
def test_a_broker_of_each_type_is_201_with_its_venues_endpoints(api: InProcessApi, type_: str) -> None:
    venue = VENUES[type_]
    api_config = {"ws_url": venue.ws_url, "rest_url": venue.rest_url}
    created = broker(api, type_, api_config=api_config)
    assert (created["type"], created["api_config"]) == (type_, api_config)
    assert api.get(f"/brokers/{created['id']}").json() == created
    assert broker(api, type_, name=f"{type_} defaults")["api_config"] == {}  # empty: the venue's own endpoints


@pytest.mark.parametrize("type_", sorted(VENUES))
def test_endpoints_are_checked_against_the_brokers_own_venue(api: InProcessApi, type_: str) -> None:
    """Every other venue's official hosts are refused for this type, naming the field and this venue's hosts."""
    venue = VENUES[type_]
    for other in VENUES.values():
        if other.ws_hosts & venue.ws_hosts:
            continue
        reply = api.post("/brokers", {"name": "x", "type": type_, "api_config": {"ws_url": other.ws_url,
                                                                                 "rest_url": other.rest_url}})
        assert_422(reply, ["api_config.ws_url", "api_config.rest_url"], venue.title, min(venue.ws_hosts))
    assert api.get("/brokers").json()["brokers"] == []


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "x", "type": "kraken"}, "type"),
    ({"name": "x", "type": "BINANCE"}, "type"),
    ({"name": "x", "type": None}, "type"),
    ({"name": "x", "type": 1}, "type"),
    ({"name": "x", "type": "okx", "api_config": {"ws_url": "https://ws.okx.com"}}, "api_config.ws_url"),
    ({"name": "x", "type": "okx", "colour": "red"}, "colour"),
    ({"type": "binance_usdm"}, "name"),
])
def test_bad_broker_shapes_are_422_naming_the_field(api: InProcessApi, body: dict[str, Any], field: str) -> None:
    reply = api.post("/brokers", body)
    assert_422(reply, [field])
    assert field in reply.json()["error"]["message"]


def test_patching_api_config_alone_checks_it_against_the_stored_type(api: InProcessApi) -> None:
    okx = broker(api, "okx")
    reply = api.patch(f"/brokers/{okx['id']}", {"api_config": {"ws_url": "wss://stream.binance.com:9443"}})
    assert_422(reply, ["api_config.ws_url"], "OKX")
    assert api.patch(f"/brokers/{okx['id']}", {"api_config": {"ws_url": "wss://wsaws.okx.com:8443"}}).status == 200


def test_changing_the_type_checks_the_stored_endpoints_against_the_new_venue(api: InProcessApi) -> None:
    spot = broker(api, "binance", api_config={"ws_url": "wss://stream.binance.com:9443"})
    reply = api.patch(f"/brokers/{spot['id']}", {"type": "okx"})
    assert_422(reply, ["api_config.ws_url"], "OKX")
    assert api.get(f"/brokers/{spot['id']}").json()["type"] == "binance"
    moved = api.patch(f"/brokers/{spot['id']}", {"type": "okx", "api_config": {"ws_url": "wss://ws.okx.com:8443"}})
    assert (moved.status, moved.json()["type"]) == (200, "okx")


def test_changing_the_type_is_refused_while_scripts_would_not_fit(api: InProcessApi) -> None:
    spot = broker(api, "binance")
    script = api.post("/scripts", {"broker_id": spot["id"], "name": "BTC", "trading_symbol": "BTCUSDT",
                                   "additional_data": {"stream": "trade"}}).json()
    reply = api.patch(f"/brokers/{spot['id']}", {"type": "okx"})
    assert (reply.status, reply.error_code) == (409, "scripts_do_not_fit")
    assert f"script {script['id']} (BTCUSDT)" in reply.json()["error"]["message"]
    reply = api.patch(f"/brokers/{spot['id']}", {"type": "binance_usdm"})  # BTCUSDT fits, the trade stream not
    assert (reply.status, reply.error_code) == (409, "scripts_do_not_fit")
    assert "additional_data.stream" in reply.json()["error"]["message"]
    assert api.get(f"/brokers/{spot['id']}").json()["type"] == "binance"
    same_protocol = api.patch(f"/brokers/{spot['id']}", {"type": "binance_us"})  # it fits, and it has no ticks
    assert (same_protocol.status, same_protocol.json()["type"]) == (200, "binance_us")


def test_changing_the_type_of_a_broker_whose_scripts_have_ticks_is_a_409(api: InProcessApi,
                                                                         db: pymysql.Connection) -> None:
    spot = broker(api, "binance")
    script = api.post("/scripts", {"broker_id": spot["id"], "name": "BTC", "trading_symbol": "BTCUSDT"}).json()
    add_ticks(db, script["id"], range(1, 3))
    reply = api.patch(f"/brokers/{spot['id']}", {"type": "binance_us"})  # the symbol fits; the trade ids do not
    assert (reply.status, reply.error_code) == (409, "script_has_ticks")
    assert api.patch(f"/brokers/{spot['id']}", {"name": "renamed", "type": "binance"}).status == 200  # unchanged


def test_brokers_stored_before_the_venues_keep_working(api: InProcessApi, db: pymysql.Connection) -> None:
    """Rows as the seed and earlier versions wrote them: the column default, Binance endpoints, old scripts."""
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO brokers (name, api_config) VALUES ('legacy', %s)",
                       ('{"ws_url": "wss://stream.binance.com:9443", "rest_url": "https://api.binance.com"}',))
        legacy = cursor.lastrowid
    make_script(db, legacy, "BTCUSDT", stream="trade")
    make_script(db, legacy, "BTC-USDT")  # written by hand, in no Binance format: it blocks no other change
    other = make_broker(db, "legacy 2")
    assert api.get(f"/brokers/{legacy}").json()["type"] == "binance"
    assert api.patch(f"/brokers/{legacy}", {"name": "renamed", "is_active": False}).status == 200
    assert api.patch(f"/brokers/{legacy}", {"api_config": {"ws_url": "wss://data-stream.binance.vision"}}).status == 200
    assert api.post("/scripts", {"broker_id": other, "name": "ETH", "trading_symbol": "ethusdt"}).status == 201
    assert api.patch(f"/brokers/{other}", {"type": "okx"}).status == 409  # ETHUSDT is no OKX symbol


# --- scripts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_", sorted(VENUES))
def test_scripts_take_their_venues_symbol_format_and_streams(api: InProcessApi, type_: str) -> None:
    symbols, bad_symbols, streams, bad_streams = FORMATS[type_]
    broker_id = broker(api, type_)["id"]
    for sent, stored in symbols.items():
        reply = api.post("/scripts", {"broker_id": broker_id, "name": sent, "trading_symbol": sent})
        assert (reply.status, reply.json()["trading_symbol"]) == (201, stored), reply.body
    for number, stream in enumerate(streams):
        symbol = f"S{number}-USDT" if type_ == "okx" else f"S{number}USDT"
        reply = api.post("/scripts", {"broker_id": broker_id, "name": stream, "trading_symbol": symbol,
                                      "additional_data": {"stream": stream}})
        assert (reply.status, reply.json()["additional_data"]) == (201, {"stream": stream}), reply.body
    before = api.get("/scripts").json()
    for symbol in bad_symbols:
        reply = api.post("/scripts", {"broker_id": broker_id, "name": "bad", "trading_symbol": symbol})
        assert_422(reply, ["trading_symbol"], f"broker {broker_id} is {type_}", VENUES[type_].symbol_example)
    example = VENUES[type_].symbol_example
    for stream in bad_streams:
        reply = api.post("/scripts", {"broker_id": broker_id, "name": "bad", "trading_symbol": example,
                                      "additional_data": {"stream": stream}})
        assert reply.status == 422, reply.body
        assert "additional_data.stream" in fields_of(reply), reply.body
    assert api.get("/scripts").json() == before, "nothing refused was stored"


def test_okx_options_do_not_fit_the_symbol_column(api: InProcessApi) -> None:
    okx = broker(api, "okx")
    reply = api.post("/scripts", {"broker_id": okx["id"], "name": "option", "trading_symbol": "BTC-USD-250627-5000-C"})
    assert_422(reply, ["trading_symbol"], "at most 20 characters")


# type → (the longest symbol of each instrument kind its venue takes: 20 characters, all scripts.trading_symbol
# holds; the same one character longer)
LONGEST: dict[str, list[tuple[str, str]]] = {
    "binance": [("ABCDEFGHIJKLMNOPUSDT", "ABCDEFGHIJKLMNOPQUSDT")],
    "binance_us": [("ABCDEFGHIJKLMNOPUSDT", "ABCDEFGHIJKLMNOPQUSDT")],
    "binance_usdm": [("ABCDEFGHIJKLMNOPUSDT", "ABCDEFGHIJKLMNOPQUSDT"),
                     ("ABCDEFGHIUSDT_250627", "ABCDEFGHIJUSDT_250627")],
    "okx": [("ABCDEFGHIJKL-USDTUSD", "ABCDEFGHIJKL-USDTUSDT"), ("ABCDEFGHIJ-USDT-SWAP", "ABCDEFGHIJK-USDT-SWAP"),
            ("ABCDEFGHI-USD-261225", "ABCDEFGHIJ-USD-261225")],
}


@pytest.mark.parametrize("type_", sorted(VENUES))
def test_every_symbol_the_api_takes_fits_the_column_whole(api: InProcessApi, db: pymysql.Connection,
                                                          type_: str) -> None:
    """VARCHAR(20): a symbol of 20 characters is stored and read back whole, one of 21 is a 422 naming
    trading_symbol (never a 500 from the database, nor a symbol cut short), on create and on patch."""
    assert set(LONGEST) == set(VENUES)
    broker_id = broker(api, type_)["id"]
    for longest, too_long in LONGEST[type_]:
        assert (len(longest), len(too_long)) == (20, 21)
        created = api.post("/scripts", {"broker_id": broker_id, "name": longest, "trading_symbol": longest.lower()})
        assert created.status == 201, created.body
        with db.cursor() as cursor:
            cursor.execute("SELECT trading_symbol FROM scripts WHERE id = %s", (created.json()["id"],))
            assert cursor.fetchone()[0] == longest
        assert_422(api.post("/scripts", {"broker_id": broker_id, "name": "long", "trading_symbol": too_long}),
                   ["trading_symbol"], "at most 20 characters")
        assert_422(api.patch(f"/scripts/{created.json()['id']}", {"trading_symbol": too_long}), ["trading_symbol"],
                   "at most 20 characters")


def test_patching_a_symbol_or_stream_checks_the_brokers_venue(api: InProcessApi) -> None:
    okx = broker(api, "okx")
    script = api.post("/scripts", {"broker_id": okx["id"], "name": "BTC", "trading_symbol": "BTC-USDT"}).json()
    assert_422(api.patch(f"/scripts/{script['id']}", {"trading_symbol": "BTCUSDT"}), ["trading_symbol"], "okx")
    assert_422(api.patch(f"/scripts/{script['id']}", {"additional_data": {"stream": "aggTrade"}}),
               ["additional_data.stream"], "okx")
    stream = api.patch(f"/scripts/{script['id']}", {"additional_data": {"stream": "trades-all", "note": "x"}})
    assert stream.status == 200
    swap = api.patch(f"/scripts/{script['id']}", {"trading_symbol": "eth-usdt-swap"})
    assert swap.json()["trading_symbol"] == "ETH-USDT-SWAP"


def test_moving_a_script_to_a_broker_whose_venue_it_does_not_fit_is_a_422(api: InProcessApi) -> None:
    spot, us, okx = broker(api, "binance"), broker(api, "binance_us"), broker(api, "okx")
    script = api.post("/scripts", {"broker_id": spot["id"], "name": "BTC", "trading_symbol": "BTCUSDT",
                                   "additional_data": {"stream": "trade"}}).json()
    assert_422(api.patch(f"/scripts/{script['id']}", {"broker_id": okx["id"]}),
               ["trading_symbol", "additional_data.stream"], f"broker {okx['id']} is okx")
    assert api.get(f"/scripts/{script['id']}").json()["broker_id"] == spot["id"]
    moved = api.patch(f"/scripts/{script['id']}", {"broker_id": us["id"]})
    assert (moved.status, moved.json()["broker_id"]) == (200, us["id"])
    both = api.patch(f"/scripts/{script['id']}", {"broker_id": okx["id"], "trading_symbol": "BTC-USDT",
                                                  "additional_data": {}})
    assert (both.status, both.json()["trading_symbol"]) == (200, "BTC-USDT")


def test_a_script_is_checked_against_the_brokers_type_as_committed(api: InProcessApi, db_settings: Any) -> None:
    """A POST /scripts racing a change of its broker's type: the check reads the broker under a share lock, so it
    waits for the change and judges the symbol by the new type. (A plain read would judge it by the old type and
    store a Binance symbol on what is by then an OKX broker.)"""
    from tickstream.db import connect

    spot = broker(api, "binance")
    other = connect(db_settings)
    replies: list[Any] = []
    try:
        with other.cursor() as cursor:
            other.begin()
            cursor.execute("SELECT id FROM brokers WHERE id = %s FOR UPDATE", (spot["id"],))
            poster = threading.Thread(target=lambda: replies.append(api.post(
                "/scripts", {"broker_id": spot["id"], "name": "BTC", "trading_symbol": "BTCUSDT"})))
            poster.start()
            time.sleep(0.5)
            assert replies == [], "the script waited for the broker's lock"
            cursor.execute("UPDATE brokers SET type = 'okx' WHERE id = %s", (spot["id"],))
            other.commit()
        poster.join(15)
    finally:
        other.close()
    assert_422(replies[0], ["trading_symbol"], "is okx")
    assert api.get("/scripts").json()["scripts"] == []


# --- the document ----------------------------------------------------------------------------------------------

def test_openapi_shows_the_union_with_its_discriminator(api: InProcessApi) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    for union, suffix in (("BrokerCreate", "BrokerCreate"), ("ScriptMarket", "Market")):
        mapping = schemas[union]["discriminator"]["mapping"]
        assert schemas[union]["discriminator"]["propertyName"] == "type"
        assert set(mapping) == set(VENUES)
        assert [option["$ref"] for option in schemas[union]["oneOf"]] == list(mapping.values())
        for type_, ref in mapping.items():
            variant = schemas[ref.rsplit("/", 1)[1]]
            assert ref.endswith(suffix) and variant["properties"]["type"]["const"] == type_
    assert "type" not in schemas["BinanceBrokerCreate"]["required"]  # binance is the default
    assert "type" in schemas["OkxBrokerCreate"]["required"]
    okx_config = schemas[schemas["OkxBrokerCreate"]["properties"]["api_config"]["$ref"].rsplit("/", 1)[1]]
    assert "ws.okx.com" in okx_config["properties"]["ws_url"]["description"]
    assert schemas["OkxMarket"]["properties"]["trading_symbol"]["examples"] == ["BTC-USDT"]
    assert schemas["BrokerPatch"]["properties"]["type"]["enum"] == list(VENUES)
    create = openapi.build(APP.routes)["paths"]["/brokers"]["post"]["requestBody"]["content"]["application/json"]
    assert create["schema"] == {"$ref": "#/components/schemas/BrokerCreate"}
