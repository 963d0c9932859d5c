"""A script's market (broker, trading symbol, stream) is fixed once it has ticks (issue 12, item 3).

Its stored trade ids are that market's; another market's ids would land under the same script_id, and the ingest's
IGNORE would drop every one that collides. So PATCH refuses the change with 409 while the script has ticks, and the
check is one primary-key probe, never a COUNT.
"""

from __future__ import annotations

import threading

import pymysql
import pytest

from tests.api_fixtures import InProcessApi, load_api_app
from tests.test_api import add_ticks, new_broker, new_script, table_count
from tickstream.db import connect
from tickstream.settings import DatabaseSettings

pytest_plugins = ["tests.api_fixtures"]

load_api_app()
from chalicelib import service  # noqa: E402 - importable once load_api_app put it on sys.path

IDENTITY_CHANGES = [
    pytest.param({"trading_symbol": "ETHUSDT"}, "trading_symbol", id="symbol"),
    pytest.param({"additional_data": {"stream": "trade"}}, "stream", id="stream"),
    pytest.param({"additional_data": {"note": "stream left out means aggTrade"}}, None, id="same-stream-implied"),
    pytest.param({"broker_id": "other"}, "broker_id", id="broker"),
]


def _resolve(changes: dict, other_broker: int) -> dict:
    return {key: other_broker if value == "other" else value for key, value in changes.items()}


@pytest.mark.parametrize(("changes", "locked_field"), IDENTITY_CHANGES)
def test_market_of_a_script_with_ticks_cannot_change(api: InProcessApi, db: pymysql.Connection, changes: dict,
                                                     locked_field: str | None) -> None:
    broker, other = new_broker(api, "A"), new_broker(api, "B")
    script = new_script(api, broker["id"], "BTCUSDT", additional_data={"stream": "aggTrade"})
    add_ticks(db, script["id"], range(1, 11))

    reply = api.patch(f"/scripts/{script['id']}", _resolve(changes, other["id"]))

    if locked_field is None:  # aggTrade spelled out or implied is the same stream: not a change of market
        assert reply.status == 200, reply.body
        return
    assert (reply.status, reply.error_code) == (409, "script_has_ticks")
    message = reply.json()["error"]["message"]
    assert locked_field in message and "new script" in message
    after = api.get(f"/scripts/{script['id']}").json()
    assert {key: after[key] for key in script} == script  # nothing changed
    assert table_count(db, "ticks") == 10


def test_market_may_change_while_the_script_has_no_ticks(api: InProcessApi, db: pymysql.Connection) -> None:
    broker, other = new_broker(api, "A"), new_broker(api, "B")
    script = new_script(api, broker["id"], "BTCUSDT")
    add_ticks(db, new_script(api, broker["id"], "SOLUSDT")["id"], range(1, 5))  # another script's ticks don't count

    reply = api.patch(f"/scripts/{script['id']}", {"trading_symbol": "ethusdt", "broker_id": other["id"],
                                                    "additional_data": {"stream": "trade"}})

    assert reply.status == 200, reply.body
    assert (reply.json()["trading_symbol"], reply.json()["broker_id"]) == ("ETHUSDT", other["id"])


def test_other_fields_and_unchanged_identity_stay_patchable_with_ticks(api: InProcessApi,
                                                                       db: pymysql.Connection) -> None:
    broker = new_broker(api)
    script = new_script(api, broker["id"], "BTCUSDT", additional_data={"stream": "trade"})
    add_ticks(db, script["id"], range(1, 4))

    reply = api.patch(f"/scripts/{script['id']}", {"name": "Bitcoin", "is_active": False, "trading_symbol": "btcusdt",
                                                    "broker_id": broker["id"],
                                                    "additional_data": {"stream": "trade", "note": "x"}})

    assert reply.status == 200, reply.body
    assert (reply.json()["name"], reply.json()["is_active"]) == ("Bitcoin", False)


def test_a_tick_stored_during_the_patch_is_not_missed(api: InProcessApi, db: pymysql.Connection,
                                                      db_settings: DatabaseSettings) -> None:
    """The probe is a locking read: a tick inserted by a transaction still open when the PATCH looks makes the
    PATCH wait for it, then refuse; a plain (snapshot) read would not see it and let the symbol change."""
    script = new_script(api, new_broker(api)["id"], "BTCUSDT")
    ingest = connect(db_settings)  # autocommit off: the insert stays uncommitted until we say so
    try:
        add_ticks(ingest, script["id"], range(1, 3))
        replies = []
        patcher = threading.Thread(target=lambda: replies.append(
            api.patch(f"/scripts/{script['id']}", {"trading_symbol": "ETHUSDT"})))
        patcher.start()
        patcher.join(timeout=1.0)  # it waits on the open insert (or, on a slow machine, has not started yet)
        ingest.commit()
        patcher.join(timeout=30)
    finally:
        ingest.close()
    assert [(reply.status, reply.error_code) for reply in replies] == [(409, "script_has_ticks")]


def test_the_has_ticks_check_reads_one_row_however_many_ticks(api: InProcessApi, db: pymysql.Connection) -> None:
    script = new_script(api, new_broker(api)["id"], "BTCUSDT")
    add_ticks(db, script["id"], range(1, 20_001))

    def rows_read() -> int:
        with service.database.connection() as conn, conn.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
            return sum(int(value) for _, value in cursor.fetchall())

    before = rows_read()
    assert api.patch(f"/scripts/{script['id']}", {"trading_symbol": "ETHUSDT"}).status == 409
    read = rows_read() - before
    assert read < 100, f"the PATCH read {read} index entries for a script with 20,000 ticks (a COUNT or a scan?)"
