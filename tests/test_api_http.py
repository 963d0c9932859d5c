"""The management API over real HTTP: `chalice local` in a subprocess against MariaDB. Schemathesis fuzzes it from its
own /openapi.json in tests/test_bad_input.py (every operation, 200 examples each, and with a wrong token)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pymysql
import pytest

from tests.api_fixtures import HttpApi, LocalServer, load_api_app
from tickstream import jobs
from tickstream.tick_store import insert_ticks_ignore
from tickstream.ticks import Tick

pytest_plugins = ["tests.api_fixtures"]

APP = load_api_app().app
from chalicelib import auth, openapi  # noqa: E402 - importable once load_api_app put it on sys.path

ROUTES = sorted(openapi.chalice_routes(APP.routes))
T0_US = 1_709_294_400_000_000  # 2024-03-01T12:00:00Z


def test_health_is_public_and_openapi_is_served_true(http_api: HttpApi) -> None:
    health = http_api.get("/health", token=None)
    assert (health.status_code, health.json()) == (200, {"status": "ok", "database": "reachable"})
    assert health.headers["Content-Type"] == "application/json"
    assert http_api.get("/openapi.json", token=None).status_code == 401
    served = http_api.get("/openapi.json").json()
    assert served == openapi.build(APP.routes)
    documented = {(path, method.upper()) for path, methods in served["paths"].items() for method in methods}
    assert documented == set(ROUTES)


@pytest.mark.parametrize(("path", "method"), [r for r in ROUTES if r[0] not in auth.PUBLIC_ROUTES])
def test_every_route_needs_the_token_over_http(chalice_local: LocalServer, path: str, method: str) -> None:
    http_api = HttpApi(chalice_local.url)
    for token in (None, "nope"):
        reply = http_api.request(method, re.sub(r"{\w+}", "1", path), token=token, json={})
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "unauthorized"


def test_crud_conflicts_and_purge_over_http(http_api: HttpApi, db: pymysql.Connection) -> None:
    broker = http_api.post("/brokers", json={"name": "Binance",
                                             "api_config": {"ws_url": "wss://data-stream.binance.vision"}})
    assert broker.status_code == 201
    broker_id = broker.json()["id"]
    assert http_api.post("/brokers", json={"name": "Binance"}).status_code == 409
    script = http_api.post("/scripts", json={"broker_id": broker_id, "name": "BTC", "trading_symbol": "btcusdt"})
    assert (script.status_code, script.json()["trading_symbol"]) == (201, "BTCUSDT")
    script_id = script.json()["id"]
    dup = http_api.post("/scripts", json={"broker_id": broker_id, "name": "again", "trading_symbol": "BTCUSDT"})
    assert (dup.status_code, dup.json()["error"]["code"]) == (409, "duplicate")
    assert http_api.request("PATCH", f"/scripts/{script_id}", json={"is_active": False}).json()["is_active"] is False
    assert [s["id"] for s in http_api.get(f"/scripts?broker_id={broker_id}").json()["scripts"]] == [script_id]

    insert_ticks_ignore(db, [Tick(script_id, i, "1.5", "2", False, T0_US + i, T0_US, T0_US) for i in range(1, 6)])
    assert http_api.request("DELETE", f"/brokers/{broker_id}").status_code == 409
    assert http_api.request("DELETE", f"/scripts/{script_id}").status_code == 409
    assert http_api.request("DELETE", f"/brokers/{broker_id}?purge=true").status_code == 409  # still active
    assert http_api.request("PATCH", f"/brokers/{broker_id}", json={"is_active": False}).status_code == 200
    accepted = http_api.request("DELETE", f"/brokers/{broker_id}?purge=true")
    assert (accepted.status_code, accepted.headers["Location"]) == (202, f"/jobs/{accepted.json()['id']}")
    assert jobs.run_job(db, accepted.json()["id"]).done  # the maintenance function's work
    assert http_api.get(f"/jobs/{accepted.json()['id']}").json()["rows_deleted"] == 5
    assert http_api.get(f"/scripts/{script_id}").status_code == 404
    assert http_api.get("/brokers").json() == {"brokers": []}


def test_every_venue_over_http(http_api: HttpApi) -> None:
    """A broker and a script of each type (201), and over the wire the 422s name the field: a symbol in another
    venue's format, a stream the venue does not have, an endpoint on another venue's host, an unknown type."""
    from tickstream.venues import VENUES

    okx_host = {"ws_url": VENUES["okx"].ws_url}
    for number, venue in enumerate(VENUES.values()):
        broker = http_api.post("/brokers", json={"name": venue.title, "type": venue.type,
                                                 "api_config": {"rest_url": venue.rest_url}})
        assert (broker.status_code, broker.json()["type"]) == (201, venue.type), broker.text
        body = {"broker_id": broker.json()["id"], "name": venue.symbol_example,
                "trading_symbol": venue.symbol_example.lower(), "additional_data": {"stream": venue.streams[0]}}
        script = http_api.post("/scripts", json=body)
        assert (script.status_code, script.json()["trading_symbol"]) == (201, venue.symbol_example), script.text
        other = "BTC-USDT" if venue.type != "okx" else "BTCUSDT"
        cases = [("/scripts", {**body, "trading_symbol": other}, "trading_symbol"),
                 ("/scripts", {**body, "trading_symbol": f"X{number}", "additional_data": {"stream": "depth"}},
                  "additional_data.stream")]
        if venue.type != "okx":
            cases.append(("/brokers", {"name": f"bad {number}", "type": venue.type, "api_config": okx_host},
                          "api_config.ws_url"))
        for path, bad, field in cases:
            reply = http_api.post(path, json=bad)
            assert reply.status_code == 422, reply.text
            assert [f["field"] for f in reply.json()["error"]["fields"]] == [field], reply.text
    reply = http_api.post("/brokers", json={"name": "kraken", "type": "kraken"})
    assert (reply.status_code, [f["field"] for f in reply.json()["error"]["fields"]]) == (422, ["type"])
    assert sorted(b["type"] for b in http_api.get("/brokers").json()["brokers"]) == sorted(VENUES)
    schemas = http_api.get("/openapi.json").json()["components"]["schemas"]
    assert set(schemas["BrokerCreate"]["discriminator"]["mapping"]) == set(VENUES)


def test_error_codes_over_http(http_api: HttpApi) -> None:
    def status_and_code(method: str, path: str, **kwargs: object) -> tuple[int, str]:
        reply = http_api.request(method, path, **kwargs)
        assert reply.headers["Content-Type"] == "application/json"
        return reply.status_code, reply.json()["error"]["code"]

    json_type = {"Content-Type": "application/json"}
    assert status_and_code("POST", "/brokers", data=b"{oops", headers=json_type) == (400, "bad_request")
    assert status_and_code("POST", "/brokers", data=b"name=x", headers={"Content-Type": "text/plain"}) \
        == (415, "unsupported_media_type")
    assert status_and_code("PUT", "/brokers", json={}) == (405, "method_not_allowed")
    assert status_and_code("POST", "/brokers", json={"name": ""}) == (422, "invalid_fields")
    assert status_and_code("GET", "/brokers/77777") == (404, "not_found")
    assert status_and_code("GET", "/scripts/77777/ticks") == (404, "not_found")
    assert status_and_code("GET", "/scripts/77777/ticks?limit=5000") == (422, "invalid_fields")
    big = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    assert status_and_code("POST", "/brokers", data=big, headers=json_type) == (413, "payload_too_large")
    assert status_and_code("GET", "/brokers", token=None) == (401, "unauthorized")


def test_tick_pages_over_http_lose_and_repeat_nothing(http_api: HttpApi, db: pymysql.Connection) -> None:
    broker = http_api.post("/brokers", json={"name": "B"}).json()
    script = http_api.post("/scripts", json={"broker_id": broker["id"], "name": "P", "trading_symbol": "PEPEUSDT"})
    script_id = script.json()["id"]
    insert_ticks_ignore(db, [Tick(script_id, i, "0.00000712", "1", True, T0_US + i * 1000, T0_US, T0_US)
                             for i in range(1, 96)])
    seen: list[int] = []
    params = {"order": "asc", "limit": "10", "from": "2024-03-01T12:00:00Z", "to": str(T0_US // 1000 + 1000)}
    for _ in range(20):
        page = http_api.get(f"/scripts/{script_id}/ticks", params=params).json()
        seen.extend(t["trade_id"] for t in page["ticks"])
        assert all(t["price"] == "0.00000712" for t in page["ticks"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == list(range(1, 96))


def test_concurrent_requests_share_one_connection_safely(http_api: HttpApi) -> None:
    """chalice local serves each request on a thread; the API's one DB connection must be used by one at a time."""
    def create_and_read(index: int) -> tuple[int, int]:
        created = http_api.post("/brokers", json={"name": f"broker {index}"})
        return created.status_code, http_api.get("/stats").status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(create_and_read, range(60)))
    assert statuses == [(201, 200)] * 60
    names = {b["name"] for b in http_api.get("/brokers").json()["brokers"]}
    assert names == {f"broker {i}" for i in range(60)}
