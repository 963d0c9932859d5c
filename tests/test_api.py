"""The management API in-process (chalice.test.Client, the real middleware and route table) against MariaDB."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pymysql
import pytest
import yaml

from tests.api_fixtures import API_DIR, REPO_ROOT, TOKEN, InProcessApi, load_api_app, reset_api_state
from tickstream import catalog, coverage, jobs
from tickstream.db import connect
from tickstream.secrets import SecretCache
from tickstream.settings import DatabaseSettings
from tickstream.tick_store import TickStore, insert_ticks_ignore
from tickstream.ticks import Tick

pytest_plugins = ["tests.api_fixtures"]

APP = load_api_app().app
from chalicelib import auth, models, openapi  # noqa: E402 - importable once load_api_app put it on sys.path

ROUTES = sorted(openapi.chalice_routes(APP.routes))
AUTHENTICATED = [route for route in ROUTES if route[0] not in auth.PUBLIC_ROUTES]
T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
INJECTIONS = ["Robert'); DROP TABLE brokers;--", "' OR '1'='1", "x\"; DELETE FROM scripts; --", "%' UNION SELECT 1--"]


def concrete(path: str, value: str = "1") -> str:
    return re.sub(r"{\w+}", value, path)


def us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def add_ticks(conn: pymysql.Connection, script_id: int, trade_ids: range, start: datetime = T0,
              price: str = "95234.56000000") -> None:
    """Ticks one second apart by trade id, from `start`."""
    ticks = [Tick(script_id, trade_id, price, "0.00100000", trade_id % 2 == 0,
                  us(start) + (trade_id - trade_ids[0]) * 1_000_000, us(start), us(start)) for trade_id in trade_ids]
    insert_ticks_ignore(conn, ticks)


def table_count(conn: pymysql.Connection, table: str) -> int:
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table}")  # table names are literals of this module
        return cursor.fetchone()[0]


def new_broker(api: InProcessApi, name: str = "Binance", **fields: Any) -> dict[str, Any]:
    reply = api.post("/brokers", {"name": name, **fields})
    assert reply.status == 201, reply.body
    return reply.json()


def new_script(api: InProcessApi, broker_id: int, symbol: str = "BTCUSDT", **fields: Any) -> dict[str, Any]:
    reply = api.post("/scripts", {"broker_id": broker_id, "name": symbol, "trading_symbol": symbol, **fields})
    assert reply.status == 201, reply.body
    return reply.json()


# --- health and auth ---------------------------------------------------------------------------------------

def test_health_needs_no_token_and_reports_the_database(api: InProcessApi) -> None:
    reply = api.get("/health", token=None)
    assert (reply.status, reply.json()) == (200, {"status": "ok", "database": "reachable"})


def test_unreachable_database_is_a_503_json_error(api: InProcessApi, monkeypatch: pytest.MonkeyPatch,
                                                  unused_tcp_port: int) -> None:
    monkeypatch.setenv("DB_PORT", str(unused_tcp_port))
    reset_api_state()
    health = api.get("/health", token=None)
    assert (health.status, health.json()["database"]) == (503, "unreachable")
    reply = api.get("/brokers")
    assert (reply.status, reply.error_code) == (503, "database_unavailable")
    assert reply.headers["content-type"] == "application/json"


@pytest.fixture
def unused_tcp_port() -> int:
    from tests.api_fixtures import free_port

    return free_port()


@pytest.mark.parametrize(("path", "method"), AUTHENTICATED)
def test_every_route_but_health_needs_the_bearer_token(api: InProcessApi, path: str, method: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer ünïcødé"}):
        reply = api.request(method, concrete(path), headers=headers, token=None, body=b"{}")
        assert reply.status == 401, (headers, reply.body)
        assert reply.error_code == "unauthorized"
        assert reply.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("path", "method"), AUTHENTICATED)
def test_no_configured_token_means_closed_not_open(api: InProcessApi, monkeypatch: pytest.MonkeyPatch,
                                                    path: str, method: str) -> None:
    monkeypatch.delenv("API_TOKEN")
    reset_api_state()
    for token in (None, TOKEN, ""):
        reply = api.request(method, concrete(path), token=token, body=b"{}")
        assert (reply.status, reply.error_code) == (503, "auth_not_configured")


def test_token_is_accepted_case_insensitively_by_scheme(api: InProcessApi) -> None:
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"  BEARER   {TOKEN} "):
        assert api.get("/brokers", headers={"Authorization": header}, token=None).status == 200


def test_token_from_secrets_manager_is_read_once_and_cached(monkeypatch: pytest.MonkeyPatch,
                                                            api_env: dict[str, str]) -> None:
    monkeypatch.delenv("API_TOKEN")
    monkeypatch.setenv("API_TOKEN_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:0:secret:api")
    reset_api_state()
    calls: list[str] = []
    outcomes = iter([RuntimeError("throttled"), '{"token": "from-secret"}'])

    def read(arn: str) -> str:
        calls.append(arn)
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    source = auth.TokenSource(SecretCache(retry_seconds=0.0, read=read))
    with pytest.raises(auth.ApiError) as failed:
        auth.authenticate({"authorization": "Bearer from-secret"}, source)
    assert failed.value.status == 503
    for _ in range(3):
        auth.authenticate({"authorization": "Bearer from-secret"}, source)
    with pytest.raises(auth.ApiError) as wrong:
        auth.authenticate({"authorization": "Bearer other"}, source)
    assert wrong.value.status == 401
    assert len(calls) == 2  # one failure, then one success cached for every later request (within its TTL)


# --- brokers ---------------------------------------------------------------------------------------------------

def test_broker_crud(api: InProcessApi) -> None:
    created = api.post("/brokers", {"name": "Binance", "api_config": {"ws_url": "wss://stream.binance.com:9443",
                                                                       "rest_url": "https://api.binance.com"}})
    assert created.status == 201
    broker = created.json()
    assert created.headers["location"] == f"/brokers/{broker['id']}"
    assert broker["type"] == "binance" and broker["is_active"] is True
    assert broker["api_config"] == {"ws_url": "wss://stream.binance.com:9443", "rest_url": "https://api.binance.com"}
    assert api.get(f"/brokers/{broker['id']}").json() == broker
    assert [b["id"] for b in api.get("/brokers").json()["brokers"]] == [broker["id"]]

    patched = api.patch(f"/brokers/{broker['id']}", {"is_active": False, "api_config": {"ws_url": "ws://127.0.0.1:1"}})
    assert patched.status == 200
    assert patched.json()["is_active"] is False
    assert patched.json()["api_config"] == {"ws_url": "ws://127.0.0.1:1"}  # replaced, not merged
    assert patched.json()["name"] == "Binance"  # untouched fields stay

    deleted = api.delete(f"/brokers/{broker['id']}")
    assert deleted.status == 200
    assert deleted.json() == {"id": broker["id"], "deleted": True, "scripts_deleted": 0, "ticks_deleted": 0}
    assert api.get(f"/brokers/{broker['id']}").status == 404


def test_duplicate_broker_name_is_a_409(api: InProcessApi) -> None:
    new_broker(api, "Binance")
    other = new_broker(api, "Other")
    reply = api.post("/brokers", {"name": "Binance"})
    assert (reply.status, reply.error_code) == (409, "duplicate")
    reply = api.patch(f"/brokers/{other['id']}", {"name": "Binance"})
    assert (reply.status, reply.error_code) == (409, "duplicate")


@pytest.mark.parametrize("path", ["/brokers/{}", "/scripts/{}", "/scripts/{}/ticks"])
@pytest.mark.parametrize("bad_id", ["999999", "0", "abc", "-1", "1.5", "99999999999999999999999", "%27%20OR%201"])
def test_unknown_or_malformed_ids_are_404(api: InProcessApi, path: str, bad_id: str) -> None:
    reply = api.get(path.format(bad_id))
    assert (reply.status, reply.error_code) == (404, "not_found")


def test_patch_and_delete_of_missing_resources_are_404(api: InProcessApi) -> None:
    assert api.patch("/brokers/4242", {"is_active": False}).status == 404
    assert api.delete("/brokers/4242").status == 404
    assert api.patch("/scripts/4242", {"is_active": False}).status == 404
    assert api.delete("/scripts/4242?purge=true").status == 404


# --- scripts ---------------------------------------------------------------------------------------------------

def test_script_crud_and_symbol_normalisation(api: InProcessApi) -> None:
    broker = new_broker(api)
    created = api.post("/scripts", {"broker_id": broker["id"], "name": "Bitcoin", "trading_symbol": "btcusdt",
                                    "additional_data": {"stream": "trade", "note": "x"}})
    assert created.status == 201
    script = created.json()
    assert script["trading_symbol"] == "BTCUSDT"
    assert script["additional_data"] == {"stream": "trade", "note": "x"}
    detail = api.get(f"/scripts/{script['id']}").json()
    assert {key: detail[key] for key in script} == script
    assert detail["ticks"]["tick_count"] == 0 and detail["status"] is None

    patched = api.patch(f"/scripts/{script['id']}", {"trading_symbol": "ethusdt", "is_active": False})
    assert (patched.json()["trading_symbol"], patched.json()["is_active"]) == ("ETHUSDT", False)
    assert api.delete(f"/scripts/{script['id']}").json()["deleted"] is True
    assert api.get(f"/scripts/{script['id']}").status == 404


def test_scripts_filter_by_broker(api: InProcessApi) -> None:
    first, second = new_broker(api, "A"), new_broker(api, "B")
    a = new_script(api, first["id"], "BTCUSDT")
    b = new_script(api, second["id"], "BTCUSDT")  # the same symbol on another broker is fine
    assert [s["id"] for s in api.get("/scripts").json()["scripts"]] == [a["id"], b["id"]]
    assert [s["id"] for s in api.get(f"/scripts?broker_id={second['id']}").json()["scripts"]] == [b["id"]]
    assert api.get("/scripts?broker_id=").status == 200  # empty means unset
    for bad in ("abc", "0", "1;DROP TABLE scripts", "99999999999999999999"):
        reply = api.get(f"/scripts?broker_id={bad}")
        assert (reply.status, reply.json()["error"]["fields"][0]["field"]) == (422, "broker_id")


def test_duplicate_symbol_per_broker_is_a_409(api: InProcessApi) -> None:
    broker = new_broker(api)
    new_script(api, broker["id"], "BTCUSDT")
    eth = new_script(api, broker["id"], "ETHUSDT")
    assert api.post("/scripts", {"broker_id": broker["id"], "name": "again", "trading_symbol": "btcusdt"}).status == 409
    assert api.patch(f"/scripts/{eth['id']}", {"trading_symbol": "BTCUSDT"}).status == 409


def test_script_of_unknown_broker_is_a_422_naming_broker_id(api: InProcessApi) -> None:
    reply = api.post("/scripts", {"broker_id": 987654, "name": "x", "trading_symbol": "BTCUSDT"})
    assert (reply.status, [f["field"] for f in reply.json()["error"]["fields"]]) == (422, ["broker_id"])
    script = new_script(api, new_broker(api)["id"])
    reply = api.patch(f"/scripts/{script['id']}", {"broker_id": 987654})
    assert (reply.status, reply.json()["error"]["fields"][0]["field"]) == (422, "broker_id")


# --- purge semantics -------------------------------------------------------------------------------------------

def test_script_with_ticks_is_kept_unless_purge(api: InProcessApi, db: pymysql.Connection) -> None:
    script = new_script(api, new_broker(api)["id"])
    add_ticks(db, script["id"], range(1, 26))
    refused = api.delete(f"/scripts/{script['id']}")
    assert (refused.status, refused.error_code) == (409, "in_use")
    assert "purge=true" in refused.json()["error"]["message"]
    assert api.delete(f"/scripts/{script['id']}?purge=false").status == 409
    assert table_count(db, "ticks") == 25 and api.get(f"/scripts/{script['id']}").status == 200

    assert api.delete(f"/scripts/{script['id']}?purge=maybe").status == 422
    active = api.delete(f"/scripts/{script['id']}?purge=true")
    assert (active.status, active.error_code) == (409, "script_active")  # the producer would keep adding ticks
    assert "deactivate" in active.json()["error"]["message"]
    api.patch(f"/scripts/{script['id']}", {"is_active": False})
    accepted = api.delete(f"/scripts/{script['id']}?purge=true")
    assert accepted.status == 202
    job = accepted.json()
    assert (job["kind"], job["state"], job["script_id"], job["rows_deleted"]) == \
        ("purge_script", "queued", script["id"], 0)
    assert accepted.headers["location"] == f"/jobs/{job['id']}"
    assert api.get(f"/jobs/{job['id']}").json() == job
    assert api.delete(f"/scripts/{script['id']}?purge=true").json()["id"] == job["id"]  # no second job
    assert table_count(db, "ticks") == 25  # nothing is deleted inside the request

    assert jobs.run_job(db, job["id"], chunk_rows=10).done  # what the maintenance function does
    done = api.get(f"/jobs/{job['id']}").json()
    assert (done["state"], done["rows_deleted"], done["finished_at"] is not None) == ("done", 25, True)
    assert table_count(db, "ticks") == 0 and table_count(db, "scripts") == 0
    assert api.get(f"/scripts/{script['id']}").status == 404
    assert api.get("/jobs/987654").status == 404


def test_purge_of_a_script_without_ticks_deletes_it_at_once(api: InProcessApi, db: pymysql.Connection) -> None:
    script = new_script(api, new_broker(api)["id"])
    purged = api.delete(f"/scripts/{script['id']}?purge=true")
    assert (purged.status, purged.json()) == (200, {"id": script["id"], "deleted": True, "scripts_deleted": 1,
                                                    "ticks_deleted": 0})
    assert table_count(db, "scripts") == 0 and table_count(db, "jobs") == 0


def test_broker_with_scripts_is_kept_unless_purge(api: InProcessApi, db: pymysql.Connection) -> None:
    broker, other = new_broker(api, "A"), new_broker(api, "B")
    scripts = [new_script(api, broker["id"], symbol) for symbol in ("BTCUSDT", "ETHUSDT")]
    kept = new_script(api, other["id"], "BTCUSDT")
    add_ticks(db, scripts[0]["id"], range(1, 31))
    add_ticks(db, kept["id"], range(1, 11))
    coverage.rebuild(db, [scripts[0]["id"], kept["id"]])
    refused = api.delete(f"/brokers/{broker['id']}")
    assert (refused.status, refused.error_code) == (409, "in_use")
    assert table_count(db, "scripts") == 3

    active = api.delete(f"/brokers/{broker['id']}?purge=true")
    assert (active.status, active.error_code) == (409, "broker_active")  # the producer would keep adding ticks
    assert "deactivate" in active.json()["error"]["message"]
    assert table_count(db, "jobs") == 0
    api.patch(f"/brokers/{broker['id']}", {"is_active": False})
    accepted = api.delete(f"/brokers/{broker['id']}?purge=true")
    assert accepted.status == 202
    job = accepted.json()
    assert (job["kind"], job["state"], job["broker_id"], job["rows_deleted"]) == \
        ("purge_broker", "queued", broker["id"], 0)
    assert accepted.headers["location"] == f"/jobs/{job['id']}"
    assert api.get(f"/jobs/{job['id']}").json() == job
    assert api.delete(f"/brokers/{broker['id']}?purge=true").json()["id"] == job["id"]  # no second job
    assert table_count(db, "ticks") == 40 and table_count(db, "scripts") == 3  # nothing deleted in the request

    assert jobs.run_job(db, job["id"], chunk_rows=7).done  # what the maintenance function does, several chunks
    done = api.get(f"/jobs/{job['id']}").json()
    assert (done["state"], done["rows_deleted"], done["finished_at"] is not None) == ("done", 30, True)
    assert api.get(f"/brokers/{broker['id']}").status == 404
    assert [s["id"] for s in api.get("/scripts").json()["scripts"]] == [kept["id"]]
    assert table_count(db, "ticks") == 10 and table_count(db, "tick_coverage") == 1  # the other broker's: untouched


def test_purge_of_a_broker_without_scripts_deletes_it_at_once(api: InProcessApi, db: pymysql.Connection) -> None:
    broker = new_broker(api)  # active: with nothing to collect, there is nothing to wait for
    purged = api.delete(f"/brokers/{broker['id']}?purge=true")
    assert (purged.status, purged.json()) == (200, {"id": broker["id"], "deleted": True, "scripts_deleted": 0,
                                                    "ticks_deleted": 0})
    assert table_count(db, "brokers") == 0 and table_count(db, "jobs") == 0
    assert api.delete(f"/brokers/{broker['id']}?purge=true").status == 404


def test_deactivating_stops_the_producer_seeing_it(api: InProcessApi, db: pymysql.Connection) -> None:
    broker = new_broker(api, "A", api_config={"ws_url": "ws://127.0.0.1:9000", "rest_url": "http://127.0.0.1:9001"})
    btc = new_script(api, broker["id"], "BTCUSDT")
    eth = new_script(api, broker["id"], "ETHUSDT", additional_data={"stream": "trade"})
    assert catalog.active_scripts(db) == [
        catalog.ActiveScript(btc["id"], broker["id"], "BTCUSDT", "aggTrade", "ws://127.0.0.1:9000",
                             "http://127.0.0.1:9001"),
        catalog.ActiveScript(eth["id"], broker["id"], "ETHUSDT", "trade", "ws://127.0.0.1:9000",
                             "http://127.0.0.1:9001"),
    ]
    api.patch(f"/scripts/{btc['id']}", {"is_active": False})
    assert [s.script_id for s in catalog.active_scripts(db)] == [eth["id"]]
    assert catalog.active_scripts(db, [broker["id"] + 1]) == []
    api.patch(f"/brokers/{broker['id']}", {"is_active": False})
    assert catalog.active_scripts(db) == []


def test_producer_sees_api_changes_without_reconnecting(api: InProcessApi, db_settings: Any) -> None:
    """active_scripts ends its read view, so a producer polling on one non-autocommit connection sees changes."""
    from tickstream.db import connect

    producer_conn = connect(db_settings)  # autocommit off, REPEATABLE READ: a snapshot until the transaction ends
    try:
        broker = new_broker(api)
        assert catalog.active_scripts(producer_conn) == []
        script = new_script(api, broker["id"], "SOLUSDT")
        assert [s.trading_symbol for s in catalog.active_scripts(producer_conn)] == ["SOLUSDT"]
        api.patch(f"/scripts/{script['id']}", {"is_active": False})
        assert catalog.active_scripts(producer_conn) == []
    finally:
        producer_conn.close()


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"name": "x",', 400, "bad_request"),
    (b"", 400, "bad_request"),
    (b"\xff\xfe\x00garbage", 400, "bad_request"),
    (b'{"name": NaN}', 400, "bad_request"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "bad_request"),
    (b'{"name": "x", "is_active": ' + b"9" * 5000 + b"}", 400, "bad_request"),
    (b"[1, 2]", 422, "invalid_fields"),
    (b'"just a string"', 422, "invalid_fields"),
    (b" " + b"x" * (2 * 1024 * 1024), 413, "payload_too_large"),
])
def test_malformed_bodies(api: InProcessApi, body: bytes, status: int, code: str) -> None:
    reply = api.request("POST", "/brokers", body=body, headers={"Content-Type": "application/json"})
    assert (reply.status, reply.error_code) == (status, code), reply.body[:300]


@pytest.mark.parametrize(("body", "fields"), [
    ({}, ["name"]),
    ({"name": "x", "colour": "red"}, ["colour"]),
    ({"name": "x", "type": "kraken"}, ["type"]),
    ({"name": ""}, ["name"]),
    ({"name": "   "}, ["name"]),
    ({"name": "x" * 101}, ["name"]),
    ({"name": "nul\x00byte"}, ["name"]),
    ({"name": "lone \ud800 surrogate"}, ["name"]),
    ({"name": 12}, ["name"]),
    ({"name": "x", "is_active": "true"}, ["is_active"]),
    ({"name": "x", "is_active": 1}, ["is_active"]),
    ({"name": "x", "api_config": {"ws_url": "https://not-a-websocket"}}, ["api_config.ws_url"]),
    ({"name": "x", "api_config": {"rest_url": "ftp://x"}}, ["api_config.rest_url"]),
    ({"name": "x", "api_config": {"ws_url": "ws://host:99999"}}, ["api_config.ws_url"]),
    ({"name": "x", "api_config": {"nested": {"deep": [1]}}}, ["api_config.nested"]),
    ({"name": "x", "api_config": {"big": 10**30}}, ["api_config.big"]),
    ({"name": "x", "api_config": "wss://x"}, ["api_config"]),
    ({"name": "x", "api_config": {f"k{i}": i for i in range(60)}}, ["api_config"]),
])
def test_invalid_broker_fields_are_422_and_named(api: InProcessApi, body: dict[str, Any], fields: list[str]) -> None:
    reply = api.post("/brokers", body)
    assert (reply.status, reply.error_code) == (422, "invalid_fields"), reply.body
    assert [f["field"] for f in reply.json()["error"]["fields"]] == fields
    for field in fields:
        assert field in reply.json()["error"]["message"]


@pytest.mark.parametrize(("body", "field"), [
    ({"broker_id": 10**30, "name": "x", "trading_symbol": "BTCUSDT"}, "broker_id"),
    ({"broker_id": -1, "name": "x", "trading_symbol": "BTCUSDT"}, "broker_id"),
    ({"broker_id": "1", "name": "x", "trading_symbol": "BTCUSDT"}, "broker_id"),
    ({"broker_id": 1, "name": "x", "trading_symbol": "B"}, "trading_symbol"),
    ({"broker_id": 1, "name": "x", "trading_symbol": "BTC/USDT"}, "trading_symbol"),  # no venue's format
    ({"broker_id": 1, "name": "x", "trading_symbol": "-BTCUSDT"}, "trading_symbol"),  # (tests/test_api_venues.py)
    ({"broker_id": 1, "name": "x", "trading_symbol": "A" * 21}, "trading_symbol"),
    ({"broker_id": 1, "name": "x", "trading_symbol": "btcusdtı"}, "trading_symbol"),  # ı.upper() == "I"
    ({"broker_id": 1, "name": "x", "trading_symbol": "BTCUSDT", "additional_data": {"stream": "depth"}},
     "additional_data.stream"),
])
def test_invalid_script_fields_are_422_and_named(api: InProcessApi, body: dict[str, Any], field: str) -> None:
    reply = api.post("/scripts", body)
    assert reply.status == 422, reply.body
    assert [f["field"] for f in reply.json()["error"]["fields"]] == [field]


def test_null_is_not_a_patch_value(api: InProcessApi) -> None:
    broker = new_broker(api)
    reply = api.patch(f"/brokers/{broker['id']}", {"name": None, "is_active": None})
    assert reply.status == 422
    assert {f["field"] for f in reply.json()["error"]["fields"]} == {"name", "is_active"}
    assert api.patch(f"/brokers/{broker['id']}", {}).json() == broker  # nothing sent, nothing changed


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type_is_415(api: InProcessApi, content_type: str) -> None:
    for method, path in (("POST", "/brokers"), ("PATCH", "/brokers/1"), ("POST", "/scripts"),
                         ("PATCH", "/scripts/1"), ("POST", "/dlq/redrive")):
        reply = api.request(method, path, body=b'{"name": "x"}', headers={"Content-Type": content_type})
        assert (reply.status, reply.error_code) == (415, "unsupported_media_type"), (method, path)


def test_missing_content_type_is_read_as_json(api: InProcessApi) -> None:
    reply = api.request("POST", "/brokers", body=b'{"name": "no header"}')
    assert (reply.status, reply.json()["name"]) == (201, "no header")


@pytest.mark.parametrize(("method", "path"), [("PUT", "/brokers"), ("DELETE", "/brokers"), ("POST", "/brokers/1"),
                                              ("PUT", "/scripts/1"), ("POST", "/stats"), ("GET", "/dlq/redrive"),
                                              ("DELETE", "/health")])
def test_unsupported_method_is_405(api: InProcessApi, method: str, path: str) -> None:
    reply = api.request(method, path)
    assert (reply.status, reply.error_code) == (405, "method_not_allowed")
    assert reply.headers["allow"]


@pytest.mark.parametrize("name", [*INJECTIONS, "比特币 🚀", "Ωμέγα", "emoji 👩‍👩‍👧‍👦", "a" * 100])
def test_names_are_stored_verbatim_and_sql_is_harmless(api: InProcessApi, db: pymysql.Connection, name: str) -> None:
    broker = new_broker(api, name, api_config={"note": name})
    script = new_script(api, broker["id"], "BTCUSDT", additional_data={"comment": name})
    assert api.get(f"/brokers/{broker['id']}").json()["name"] == name
    assert api.get(f"/brokers/{broker['id']}").json()["api_config"] == {"note": name}
    assert api.get(f"/scripts/{script['id']}").json()["additional_data"] == {"comment": name}
    patched = api.patch(f"/scripts/{script['id']}", {"name": name})
    assert patched.json()["name"] == name
    assert (table_count(db, "brokers"), table_count(db, "scripts")) == (1, 1)


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "limit=1001", "limit=99999999999999999999999",
                                   "order=sideways", "cursor=abc", "cursor=-1", "cursor=18446744073709551616",
                                   "from=yesterday", "to=2024-13-45", "from=99999999999999999",
                                   "from=2024-03-02&to=2024-03-01", "page=2", "from=' OR 1=1 --"])
def test_bad_tick_queries_are_422(api: InProcessApi, query: str) -> None:
    script = new_script(api, new_broker(api)["id"])
    reply = api.get(f"/scripts/{script['id']}/ticks?{query}")
    assert (reply.status, reply.error_code) == (422, "invalid_fields"), reply.body


# --- ticks -----------------------------------------------------------------------------------------------------

def all_pages(api: InProcessApi, path: str, page_size: int, **params: str) -> tuple[list[int], int]:
    """Every trade id across pages, following next_cursor; and how many pages it took."""
    ids: list[int] = []
    cursor, pages = None, 0
    while True:
        query = "&".join(f"{k}={v}" for k, v in {**params, "limit": str(page_size)}.items())
        reply = api.get(f"{path}?{query}" + (f"&cursor={cursor}" if cursor else ""))
        assert reply.status == 200, reply.body
        page = reply.json()
        assert len(page["ticks"]) <= page_size
        ids.extend(tick["trade_id"] for tick in page["ticks"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pagination_covers_every_tick_once(api: InProcessApi, db: pymysql.Connection, order: str) -> None:
    script = new_script(api, new_broker(api)["id"])
    other = new_script(api, new_broker(api, "other")["id"])
    add_ticks(db, script["id"], range(1000, 1050))
    add_ticks(db, other["id"], range(1000, 1100))
    ids, pages = all_pages(api, f"/scripts/{script['id']}/ticks", 7, order=order)
    expected = list(range(1000, 1050))
    assert ids == (expected if order == "asc" else expected[::-1])
    assert pages == 8  # 7 full pages and one of 1
    ids, pages = all_pages(api, f"/scripts/{script['id']}/ticks", 10, order=order)
    assert len(ids) == 50 and pages == 5  # an exact multiple ends without an empty extra page


def test_pages_do_not_shift_when_new_ticks_arrive(api: InProcessApi, db: pymysql.Connection) -> None:
    """Keyset, not OFFSET: newest-first paging while ticks keep arriving neither repeats nor skips."""
    script = new_script(api, new_broker(api)["id"])
    add_ticks(db, script["id"], range(1, 31))
    path = f"/scripts/{script['id']}/ticks?order=desc&limit=10"
    first = api.get(path).json()
    add_ticks(db, script["id"], range(31, 41), start=T0 + timedelta(hours=1))  # 10 newer ticks land meanwhile
    second = api.get(f"{path}&cursor={first['next_cursor']}").json()
    third = api.get(f"{path}&cursor={second['next_cursor']}").json()
    seen = [t["trade_id"] for page in (first, second, third) for t in page["ticks"]]
    assert seen == list(range(30, 0, -1))
    assert third["next_cursor"] is None


def test_default_page_is_newest_first_with_exact_decimal_strings(api: InProcessApi, db: pymysql.Connection) -> None:
    script = new_script(api, new_broker(api)["id"], "PEPEUSDT")
    add_ticks(db, script["id"], range(1, 4), price="0.00000712")
    page = api.get(f"/scripts/{script['id']}/ticks").json()
    assert (page["order"], page["limit"], page["next_cursor"]) == ("desc", 100, None)
    assert [t["trade_id"] for t in page["ticks"]] == [3, 2, 1]
    tick = page["ticks"][0]
    assert tick["price"] == "0.00000712" and tick["quantity"] == "0.001"
    assert isinstance(tick["price"], str)
    assert tick["traded_at"] == "2024-03-01T12:00:02Z"
    assert tick["is_buyer_maker"] is False
    assert set(tick) == {"trade_id", "price", "quantity", "is_buyer_maker", "traded_at", "event_at",
                         "received_at_producer", "stored_at"}


def test_time_range_is_inclusive_exclusive_in_iso_or_epoch_ms(api: InProcessApi, db: pymysql.Connection) -> None:
    script = new_script(api, new_broker(api)["id"])
    add_ticks(db, script["id"], range(100, 160))  # 12:00:00 .. 12:00:59, one per second
    base = f"/scripts/{script['id']}/ticks?order=asc"
    start_ms = int((T0 + timedelta(seconds=10)).timestamp() * 1000)
    end_ms = int((T0 + timedelta(seconds=20)).timestamp() * 1000)
    for query in (f"from={start_ms}&to={end_ms}", "from=2024-03-01T12:00:10Z&to=2024-03-01T12:00:20Z",
                  "from=2024-03-01T12:00:10&to=2024-03-01T12:00:20",  # no offset: UTC
                  "from=2024-03-01T13:00:10%2B01:00&to=2024-03-01T13:00:20%2B01:00"):
        ids = [t["trade_id"] for t in api.get(f"{base}&{query}").json()["ticks"]]
        assert ids == list(range(110, 120)), query
    ids, pages = all_pages(api, f"/scripts/{script['id']}/ticks", 3, order="desc", **{"from": str(start_ms)})
    assert ids == list(range(159, 109, -1)) and pages == 17
    assert api.get(f"{base}&from=&to=&cursor=&limit=").json()["limit"] == 100  # empty values mean unset


# --- stats -----------------------------------------------------------------------------------------------------

def store_with_lags(settings: DatabaseSettings, script_id: int, lags_ms: list[int], first_id: int,
                    age: timedelta = timedelta(0)) -> None:
    """Ticks traded `age` ago stored by the ingest's writer, one batch each (so each is in the lag sample),
    `lags_ms` after the producer received them."""
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    traded_us = now_us - int(age.total_seconds() * 1e6)
    store = TickStore(connect(settings, local_infile=True), clock=lambda: now_us)
    try:
        for trade_id, lag in enumerate(lags_ms, start=first_id):
            store.insert_ticks([Tick(script_id, trade_id, "1.5", "2", False, traded_us, traded_us,
                                     now_us - lag * 1000)])
    finally:
        store.close()


def test_stats_counts_times_and_lag_percentiles(api: InProcessApi, db: pymysql.Connection,
                                               db_settings: DatabaseSettings) -> None:
    broker = new_broker(api)
    busy = new_script(api, broker["id"], "BTCUSDT")
    quiet = new_script(api, broker["id"], "ETHUSDT")
    idle = new_script(api, broker["id"], "PEPEUSDT")
    old = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1e6)
    insert_ticks_ignore(db, [Tick(busy["id"], 10_000 + n, "1.5", "2", False, old, old, old) for n in range(20)])
    coverage.rebuild(db)  # written around the ingest (counted the way a deploy counts older data): no lags
    store_with_lags(db_settings, busy["id"], list(range(1, 101)), 1, age=timedelta(minutes=1))  # lags 1..100 ms
    store_with_lags(db_settings, quiet["id"], [40], 1)
    reply = api.get("/stats")
    assert reply.status == 200
    stats = reply.json()
    rows = {row["script_id"]: row for row in stats["scripts"]}
    assert set(rows) == {busy["id"], quiet["id"], idle["id"]}
    busy_row = rows[busy["id"]]
    # the 20 written around the ingest are in the totals (the rebuild), never counted as stored in a minute
    assert (busy_row["tick_count"], busy_row["ticks_last_minute"] + busy_row["ticks_this_minute"]) == (120, 100)
    assert (busy_row["lag_ms_p50"], busy_row["lag_ms_p99"]) == (50.0, 99.0)
    assert (rows[quiet["id"]]["lag_ms_p50"], rows[quiet["id"]]["lag_ms_p99"]) == (40.0, 40.0)
    assert busy_row["trading_symbol"] == "BTCUSDT"
    first, last = busy_row["first_trade_at"], busy_row["last_trade_at"]
    assert datetime.fromisoformat(last) - datetime.fromisoformat(first) >= timedelta(minutes=3, seconds=50)
    idle_row = rows[idle["id"]]
    assert (idle_row["tick_count"], idle_row["ticks_this_minute"], idle_row["first_trade_at"]) == (0, 0, None)
    assert (idle_row["lag_ms_p50"], idle_row["lag_ms_p99"]) == (None, None)
    assert stats["window_seconds"] == 120


def test_stats_reports_why_queue_depths_are_missing(api: InProcessApi) -> None:
    queues = api.get("/stats").json()["queues"]
    assert queues["queue"] == {"approximate_messages": None, "approximate_in_flight": None,
                               "approximate_delayed": None, "reason": "TICKS_QUEUE_URL is not set"}
    assert queues["dlq"]["reason"] == "TICKS_DLQ_URL is not set"


def test_stats_survives_an_unreachable_queue(api: InProcessApi, monkeypatch: pytest.MonkeyPatch,
                                             unused_tcp_port: int) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{unused_tcp_port}")
    monkeypatch.setenv("TICKS_QUEUE_URL", f"http://127.0.0.1:{unused_tcp_port}/000000000000/ticks")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    reset_api_state()
    reply = api.get("/stats")
    assert reply.status == 200
    queue = reply.json()["queues"]["queue"]
    assert queue["approximate_messages"] is None and queue["reason"].startswith("unreachable")


def test_redrive_without_queues_is_a_503(api: InProcessApi) -> None:
    reply = api.post("/dlq/redrive", {})
    assert (reply.status, reply.error_code) == (503, "queue_unavailable")
    assert api.request("POST", "/dlq/redrive").status == 503  # an empty body is allowed
    reply = api.post("/dlq/redrive", {"method": "message_move_task", "max_messages": 5})
    assert reply.status == 422
    assert api.post("/dlq/redrive", {"method": "teleport"}).json()["error"]["fields"][0]["field"] == "method"


# --- documentation ---------------------------------------------------------------------------------------------

def test_openapi_lists_exactly_the_apps_routes(api: InProcessApi) -> None:
    document = api.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, methods in document["paths"].items() for method in methods}
    assert documented == set(ROUTES)
    assert len(ROUTES) == 20
    assert document["paths"]["/health"]["get"]["security"] == []
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    ticks = {p["name"] for p in document["paths"]["/scripts/{script_id}/ticks"]["get"]["parameters"]}
    assert ticks == {"script_id", "from", "to", "limit", "cursor", "order"}


def test_openapi_refuses_a_route_it_does_not_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = {**APP.routes, "/undocumented": {"GET": object()}}
    with pytest.raises(RuntimeError, match="undocumented"):
        openapi.build(routes)
    monkeypatch.delitem(openapi.OPERATIONS, ("/stats", "GET"))
    with pytest.raises(RuntimeError, match="stats"):
        openapi.build(APP.routes)


def test_openapi_schemas_are_the_models() -> None:
    document = openapi.build(APP.routes)
    schemas = document["components"]["schemas"]
    assert schemas["BinanceBrokerCreate"]["properties"]["name"]["maxLength"] == 100  # BrokerCreate: one per venue
    assert schemas["TickOut"]["properties"]["price"]["type"] == "string"  # decimal strings, never numbers
    assert set(schemas["ScriptCreate"]["required"]) == set(models.ScriptCreate.model_json_schema()["required"])


def _cfn_loader() -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !Ref, !GetAtt, !Sub …
    return Loader


def test_every_route_has_an_api_event_in_the_template() -> None:
    template = yaml.load((REPO_ROOT / "template.yaml").read_text(), Loader=_cfn_loader())
    functions = [resource for resource in template.get("Resources", {}).values()
                 if resource.get("Type") == "AWS::Serverless::Function"
                 and str(resource.get("Properties", {}).get("CodeUri", "")).rstrip("/").endswith("functions/api")]
    if not functions:
        pytest.skip("template.yaml has no API function yet (the deployment issue adds it)")
    events = functions[0]["Properties"].get("Events", {}).values()
    declared = {(event["Properties"]["Path"], event["Properties"]["Method"].upper())
                for event in events if event.get("Type") == "Api"}
    assert set(ROUTES) <= declared, sorted(set(ROUTES) - declared)


def test_chalice_config_holds_no_secrets() -> None:
    config = json.loads((API_DIR / ".chalice" / "config.json").read_text())
    assert config["app_name"] == "tickstream-api"
    assert "API_TOKEN" not in json.dumps(config) and "environment_variables" not in json.dumps(config)


# --- behind API Gateway --------------------------------------------------------------------------------------------

def apigw_event(method: str, resource: str, path: str, *, headers: dict[str, str] | None = None,
                body: str | None = None, base64_body: bool = False,
                path_parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """A REST API (v1) Lambda proxy event, as API Gateway hands it to the function."""
    headers = headers or {}
    return {
        "resource": resource, "path": path, "httpMethod": method, "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": path_parameters, "stageVariables": None,
        "requestContext": {"resourcePath": resource, "httpMethod": method, "path": f"/api{path}", "stage": "api",
                           "requestId": "req-1", "identity": {"sourceIp": "192.0.2.1"}},
        "body": body, "isBase64Encoded": base64_body,
    }


def test_same_auth_and_errors_when_invoked_as_a_lambda_behind_api_gateway(api_env: dict[str, str],
                                                                          db: pymysql.Connection) -> None:
    import base64

    def invoke(event: dict[str, Any]) -> tuple[int, Any]:
        response = APP(event, None)
        return response["statusCode"], json.loads(response["body"])

    status, body = invoke(apigw_event("GET", "/brokers", "/brokers"))
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    auth_header = {"Authorization": f"Bearer {TOKEN}"}
    assert invoke(apigw_event("GET", "/brokers", "/brokers", headers=auth_header)) == (200, {"brokers": []})
    encoded = base64.b64encode(json.dumps({"name": "via API Gateway"}).encode()).decode()
    status, body = invoke(apigw_event("POST", "/brokers", "/brokers", body=encoded, base64_body=True,
                                      headers={**auth_header, "Content-Type": "application/json"}))
    assert (status, body["name"]) == (201, "via API Gateway")
    status, body = invoke(apigw_event("GET", "/brokers/{broker_id}", f"/brokers/{body['id']}", headers=auth_header,
                                      path_parameters={"broker_id": str(body["id"])}))
    assert (status, body["name"]) == (200, "via API Gateway")
    status, body = invoke(apigw_event("GET", "/{proxy+}", "/nowhere", headers=auth_header,
                                      path_parameters={"proxy": "nowhere"}))
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = invoke(apigw_event("PUT", "/stats", "/stats", headers=auth_header))
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
