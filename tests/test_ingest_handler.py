"""The ingest Lambda handler, invoked in-process with real SQS-shaped events against the real MariaDB."""

from __future__ import annotations

import base64
import importlib.util
import sys
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType

import orjson
import pymysql
import pytest

from tests.conftest import make_broker, make_script, stored_ticks, tick_count
from tests.sqs_events import FakeLambdaContext, sqs_event, sqs_record
from tickstream.codec import V2_PREFIX, decode_message, pack_ticks
from tickstream.settings import load_settings
from tickstream.ticks import Tick

HANDLER_PATH = Path(__file__).resolve().parent.parent / "functions" / "ingest" / "handler.py"
T0 = 1_700_000_000_123_456  # µs


def load_handler(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> ModuleType:
    """Import the handler module fresh, as a cold Lambda container would, with `env` as its environment."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "tickstream-test")
    load_settings.cache_clear()
    spec = importlib.util.spec_from_file_location("ingest_handler_under_test", HANDLER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch, db_env: dict[str, str]) -> Iterator[ModuleType]:
    module = load_handler(monkeypatch, db_env)
    yield module
    module.ingestor.close()
    load_settings.cache_clear()


def ticks_for(script_id: int, first_id: int, count: int, price: str = "95234.56000000") -> list[Tick]:
    return [
        Tick(script_id, trade_id, price, "0.00100000", trade_id % 2 == 0, T0 + trade_id, T0 + trade_id + 3_000,
             T0 + trade_id + 9_000)
        for trade_id in range(first_id, first_id + count)
    ]


def body(ticks: list[Tick]) -> str:
    (message,) = pack_ticks(ticks)
    return message


def invoke(handler: ModuleType, *records: dict) -> dict:
    return handler.handler(sqs_event(*records), FakeLambdaContext())


def failed_ids(response: dict) -> set[str]:
    return {item["itemIdentifier"] for item in response["batchItemFailures"]}


def test_batch_is_stored_with_exact_decimals_and_microsecond_times(handler: ModuleType, db: pymysql.Connection) -> None:
    broker = make_broker(db)
    btc, pepe = make_script(db, broker, "BTCUSDT"), make_script(db, broker, "PEPEUSDT")
    response = invoke(handler, sqs_record(body(ticks_for(btc, 1, 500))),
                      sqs_record(body(ticks_for(pepe, 7, 3, price="0.00000712"))))
    assert response == {"batchItemFailures": []}
    assert len(stored_ticks(db, btc)) == 500
    first_pepe = stored_ticks(db, pepe)[0]
    assert first_pepe[:4] == (7, "0.000007120000000000", "0.001000000000000000", 0)
    assert first_pepe[4] == datetime(2023, 11, 14, 22, 13, 20, 123463)
    assert first_pepe[5] == datetime(2023, 11, 14, 22, 13, 20, 126463)
    assert first_pepe[6] == datetime(2023, 11, 14, 22, 13, 20, 132463)


def test_redelivered_message_stores_nothing_twice(handler: ModuleType, db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    record = sqs_record(body(ticks_for(script, 1, 200)))
    assert invoke(handler, record) == {"batchItemFailures": []}
    # SQS redelivers the same message (e.g. the function timed out after committing), and an overlapping one.
    overlapping = sqs_record(body(ticks_for(script, 150, 100)))
    assert invoke(handler, record, overlapping) == {"batchItemFailures": []}
    ids = [row[0] for row in stored_ticks(db, script)]
    assert ids == list(range(1, 250))


def v2_body(rows: bytes) -> str:
    return V2_PREFIX + base64.b64encode(zlib.compress(rows)).decode()


POISON_BODIES = {
    "not json": "this is not json",
    "wrong version": orjson.dumps({"v": 99, "ticks": []}).decode(),
    "missing ticks": orjson.dumps({"v": 1}).decode(),
    "negative id": orjson.dumps({"v": 1, "ticks": [[1, -5, "1.0", "1.0", 0, T0, T0, T0]]}).decode(),
    "float price": orjson.dumps({"v": 1, "ticks": [[1, 5, 1.5, "1.0", 0, T0, T0, T0]]}).decode(),
    "text price": orjson.dumps({"v": 1, "ticks": [[1, 5, "1e5", "1.0", 0, T0, T0, T0]]}).decode(),
    "short row": orjson.dumps({"v": 1, "ticks": [[1, 5, "1.0"]]}).decode(),
    "absurd time": orjson.dumps({"v": 1, "ticks": [[1, 5, "1.0", "1.0", 0, 10**18, T0, T0]]}).decode(),
    "huge integer": '{"v": 1, "ticks": [[1, 100000000000000000000000, "1.0", "1.0", 0, 1, 1, 1]]}',
    "v2 text price": v2_body(b"1\t5\t1e5\t1.0\t0\t%d\t%d\t%d\n" % (T0, T0, T0)),
    "v2 trade id beyond 64 bits": v2_body(b"1\t%d\t1.0\t1.0\t0\t%d\t%d\t%d\n" % (2**64, T0, T0, T0)),
    "v2 not compressed": V2_PREFIX + base64.b64encode(b"1\t5").decode(),
}


def test_poison_records_fail_alone_and_the_rest_is_stored(handler: ModuleType, db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    good = [sqs_record(body(ticks_for(script, 1, 10))), sqs_record(body(ticks_for(script, 11, 10)))]
    poison = [sqs_record(text, message_id=f"poison-{name}") for name, text in POISON_BODIES.items()]
    response = invoke(handler, good[0], *poison, good[1])
    assert failed_ids(response) == {record["messageId"] for record in poison}
    assert [row[0] for row in stored_ticks(db, script)] == list(range(1, 21))


def test_a_batch_of_only_poison_reports_every_record(handler: ModuleType, db: pymysql.Connection) -> None:
    records = [sqs_record("{", message_id="a"), sqs_record("[]", message_id="b")]
    assert failed_ids(invoke(handler, *records)) == {"a", "b"}


def test_ticks_of_unknown_scripts_are_dropped_not_retried(handler: ModuleType, db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    mixed = ticks_for(script, 1, 5) + ticks_for(script + 1000, 1, 7)
    assert invoke(handler, sqs_record(body(mixed))) == {"batchItemFailures": []}
    assert tick_count(db) == 5


def test_a_script_created_right_after_a_batch_is_seen(handler: ModuleType, db: pymysql.Connection) -> None:
    """The warm container's script cache must not drop ticks of a script created a moment ago."""
    broker = make_broker(db)
    first = make_script(db, broker, "BTCUSDT")
    invoke(handler, sqs_record(body(ticks_for(first, 1, 3))))
    later = make_script(db, broker, "ETHUSDT")
    assert invoke(handler, sqs_record(body(ticks_for(later, 1, 4)))) == {"batchItemFailures": []}
    assert len(stored_ticks(db, later)) == 4


def test_mysql_unreachable_fails_the_whole_batch(monkeypatch: pytest.MonkeyPatch, db_env: dict[str, str],
                                                 db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    down = load_handler(monkeypatch, {**db_env, "DB_PORT": "1"})  # nothing listens on port 1
    with pytest.raises(pymysql.err.OperationalError):
        invoke(down, sqs_record(body(ticks_for(script, 1, 10))))
    assert tick_count(db) == 0
    load_settings.cache_clear()


def test_a_dropped_connection_is_reopened(handler: ModuleType, db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    invoke(handler, sqs_record(body(ticks_for(script, 1, 3))))
    with db.cursor() as cursor:  # what a MySQL restart or wait_timeout does to a warm container's connection
        cursor.execute("KILL CONNECTION %s", (handler.ingestor._store.conn.thread_id(),))
    assert invoke(handler, sqs_record(body(ticks_for(script, 4, 3)))) == {"batchItemFailures": []}
    assert len(stored_ticks(db, script)) == 6


def test_sample_event_fixture_is_a_valid_batch(handler: ModuleType, db: pymysql.Connection) -> None:
    """events/ingest.json (for `sam local invoke`) must stay in the current message format."""
    event = orjson.loads((HANDLER_PATH.parents[2] / "events" / "ingest.json").read_bytes())
    script_ids = {tick.script_id for record in event["Records"] for tick in decode_message(record["body"])}
    broker = make_broker(db)
    with db.cursor() as cursor:
        for script_id in script_ids:
            cursor.execute(
                "INSERT INTO scripts (id, broker_id, name, trading_symbol, additional_data)"
                " VALUES (%s, %s, %s, %s, '{}')", (script_id, broker, f"s{script_id}", f"SYM{script_id}"))
    assert handler.handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
    assert tick_count(db) > 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
