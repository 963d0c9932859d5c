"""The ingest Lambda handler, invoked in-process with real SQS-shaped events against the real MariaDB."""

from __future__ import annotations

import base64
import importlib.util
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pymysql
import pytest

from tests.conftest import make_broker, make_script, stored_ticks, tick_count
from tests.sqs_events import FakeLambdaContext, sqs_event, sqs_record
from tickstream.codec import V2_PREFIX, TickBatch, decode_message, pack_ticks, split_message
from tickstream.dead_letters import INVALID_ROWS, REASON, SOURCE_MESSAGE_ID
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


POISON_BODIES = {  # invalid as a whole: the record fails alone (and, after maxReceiveCount, lands in the DLQ)
    "not json": "this is not json",
    "wrong version": orjson.dumps({"v": 99, "ticks": []}).decode(),
    "missing ticks": orjson.dumps({"v": 1}).decode(),
    "v2 not compressed": V2_PREFIX + base64.b64encode(b"1\t5").decode(),
    "v2 no rows": v2_body(b""),
}
BAD_ROW_BODIES = {  # valid bodies with invalid rows: each costs only its rows
    "negative id": orjson.dumps({"v": 1, "ticks": [[1, -5, "1.0", "1.0", 0, T0, T0, T0]]}).decode(),
    "float price": orjson.dumps({"v": 1, "ticks": [[1, 5, 1.5, "1.0", 0, T0, T0, T0]]}).decode(),
    "text price": orjson.dumps({"v": 1, "ticks": [[1, 5, "1e5", "1.0", 0, T0, T0, T0]]}).decode(),
    "short row": orjson.dumps({"v": 1, "ticks": [[1, 5, "1.0"]]}).decode(),
    "absurd time": orjson.dumps({"v": 1, "ticks": [[1, 5, "1.0", "1.0", 0, 10**18, T0, T0]]}).decode(),
    "huge integer": '{"v": 1, "ticks": [[1, 100000000000000000000000, "1.0", "1.0", 0, 1, 1, 1]]}',
    "v2 text price": v2_body(b"1\t5\t1e5\t1.0\t0\t%d\t%d\t%d\n" % (T0, T0, T0)),
    "v2 trade id beyond 64 bits": v2_body(b"1\t%d\t1.0\t1.0\t0\t%d\t%d\t%d\n" % (2**64, T0, T0, T0)),
    "v2 Arabic-Indic digits": v2_body("1\t5\t١٢٣.٤\t1.0\t0\t%d\t%d\t%d\n".encode() % (T0, T0, T0)),
}


def test_poison_records_fail_alone_and_the_rest_is_stored(handler: ModuleType, db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    good = [sqs_record(body(ticks_for(script, 1, 10))), sqs_record(body(ticks_for(script, 11, 10)))]
    poison = [sqs_record(text, message_id=f"poison-{name}") for name, text in POISON_BODIES.items()]
    response = invoke(handler, good[0], *poison, good[1])
    assert failed_ids(response) == {record["messageId"] for record in poison}
    assert [row[0] for row in stored_ticks(db, script)] == list(range(1, 21))


def test_without_a_dlq_a_record_with_invalid_rows_fails_rather_than_lose_them(
        handler: ModuleType, db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    bad = [sqs_record(text, message_id=name) for name, text in BAD_ROW_BODIES.items()]
    good = sqs_record(body(ticks_for(script, 1, 10)))
    assert failed_ids(invoke(handler, good, *bad)) == set(BAD_ROW_BODIES)
    assert len(stored_ticks(db, script)) == 10


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


# --- a bad row costs that row: its dead letter, on LocalStack's real SQS -----------------------------------------

@pytest.fixture
def dlq(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """(SQS client, URL) of a fresh queue on the session's LocalStack, standing in for the ticks DLQ."""
    sqs = request.getfixturevalue("aws")("sqs")
    url = sqs.create_queue(QueueName=f"ingest-dlq-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    yield sqs, url
    sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def dlq_handler(monkeypatch: pytest.MonkeyPatch, db_env: dict[str, str], dlq: tuple[Any, str],
                request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    endpoint = request.getfixturevalue("localstack").endpoint_url
    module = load_handler(monkeypatch, {**db_env, "AWS_ENDPOINT_URL": endpoint, "TICKS_DLQ_URL": dlq[1]})
    yield module
    module.ingestor.close()
    load_settings.cache_clear()


def dead_letters(sqs: Any, url: str, expected: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(messages) < expected and time.monotonic() < deadline:
        messages += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                        MessageAttributeNames=["All"]).get("Messages", [])
    messages += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                    MessageAttributeNames=["All"]).get("Messages", [])  # nothing more, we hope
    return messages


def attribute(message: dict[str, Any], name: str) -> str:
    return message["MessageAttributes"][name]["StringValue"]


@pytest.mark.localstack
def test_a_bad_row_costs_that_row_never_its_neighbours(dlq_handler: ModuleType, dlq: tuple[Any, str],
                                                       db: pymysql.Connection) -> None:
    """A body of 3,000 valid rows and three bad ones: the record succeeds, its 3,000 valid rows are stored, and the
    DLQ receives one message of its own holding only the bad rows, as they were, with (row, field) attributes."""
    script = make_script(db, make_broker(db), "BTCUSDT")
    rows = [TickBatch.from_ticks([tick]).rows for tick in ticks_for(script, 1, 3000)]
    bad = {1000: rows[999].replace(b"95234.56000000", "９５２３４.５６".encode()),
           2000: rows[1999].replace(b"\t0.00100000\t", b"\t-1\t"), 3002: rows[0][:-1] + b"\t7\n"}
    for index in sorted(bad):
        rows.insert(index, bad[index])
    record = sqs_record(v2_body(b"".join(rows)), message_id="mixed")
    neighbour = sqs_record(body(ticks_for(script, 5000, 10)), message_id="neighbour")
    assert invoke(dlq_handler, record, neighbour) == {"batchItemFailures": []}
    assert [row[0] for row in stored_ticks(db, script)] == [*range(1, 3001), *range(5000, 5010)]
    sqs, url = dlq
    (letter,) = dead_letters(sqs, url, 1)
    dead = split_message(letter["Body"])
    assert (dead.valid.count, [row.line for row in dead.invalid]) == (0, [bad[index] for index in sorted(bad)])
    assert orjson.loads(attribute(letter, INVALID_ROWS)) == [[1000, "price"], [2000, "quantity"],
                                                                    [3002, "row"]]
    assert attribute(letter, SOURCE_MESSAGE_ID) == "mixed"
    assert attribute(letter, REASON).startswith("tick 1000: price '９５２３４.５６'")


@pytest.mark.localstack
def test_bodies_of_only_bad_rows_succeed_and_each_is_dead_lettered(dlq_handler: ModuleType, dlq: tuple[Any, str],
                                                                   db: pymysql.Connection) -> None:
    records = [sqs_record(text, message_id=name) for name, text in BAD_ROW_BODIES.items()]
    assert invoke(dlq_handler, *records) == {"batchItemFailures": []}
    letters = dead_letters(*dlq, len(records))
    by_source = {attribute(letter, SOURCE_MESSAGE_ID): letter for letter in letters}
    assert len(letters) == len(by_source) == len(BAD_ROW_BODIES)
    for name, text in BAD_ROW_BODIES.items():
        original = split_message(text)
        assert by_source[name]["Body"] == original.body_of(original.invalid), name
        assert orjson.loads(attribute(by_source[name], INVALID_ROWS)) == [[0, original.invalid[0].field]]
    assert tick_count(db) == 0


@pytest.mark.localstack
def test_a_record_whose_dead_letter_cannot_be_sent_fails(dlq_handler: ModuleType, dlq: tuple[Any, str],
                                                         db: pymysql.Connection) -> None:
    """The DLQ refuses (here: it no longer exists): the record with bad rows is reported failed, so SQS delivers
    it again (nothing lost); its neighbours are stored."""
    script = make_script(db, make_broker(db), "BTCUSDT")
    sqs, url = dlq
    sqs.delete_queue(QueueUrl=url)
    rows = TickBatch.from_ticks(ticks_for(script, 1, 5)).rows + b"1\t6\t1e5\t1\t0\t%d\t%d\t%d\n" % (T0, T0, T0)
    mixed = sqs_record(v2_body(rows), message_id="mixed")
    good = sqs_record(body(ticks_for(script, 100, 5)), message_id="good")
    assert failed_ids(invoke(dlq_handler, mixed, good)) == {"mixed"}
    assert [row[0] for row in stored_ticks(db, script)] == list(range(100, 105))
    sqs.create_queue(QueueName=url.rsplit("/", 1)[1])  # for the fixture's clean-up


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
