"""SQS → ingest Lambda → MariaDB through the unchanged template.yaml deployed on host-mode LocalStack.

The queue, DLQ, event source mapping and function are LocalStack's own (run by the local executor); nothing here
calls the handler directly. Without the executor, the mapping or the DLQ these tests fail.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pymysql
import pytest
import requests

from infra.localstack_config import REPO_ROOT
from tests.conftest import make_broker, make_script, stored_ticks
from tests.localstack_fixtures import TEST_API_TOKEN
from tests.mariadb_control import MariaDBServer, mariadb_stopped
from tests.producer_harness import wait_for
from tickstream.codec import pack_ticks
from tickstream.migrate import migration_ids
from tickstream.settings import DatabaseSettings
from tickstream.ticks import Tick

pytestmark = pytest.mark.localstack
T0 = 1_760_000_000_000_000


def ticks(script_id: int, ids: range) -> list[Tick]:
    return [Tick(script_id, i, f"{i}.5", "0.00000712", i % 2 == 0, T0 + i, T0 + i, T0 + i) for i in ids]


def send(aws: Any, queue_url: str, bodies: list[str]) -> None:
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(n), "MessageBody": body} for n, body in enumerate(bodies[start:start + 10])]
        response = aws("sqs").send_message_batch(QueueUrl=queue_url, Entries=entries)
        assert not response.get("Failed"), response["Failed"]


def count(db: pymysql.Connection, script_id: int) -> int:
    with db.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM ticks WHERE script_id = %s", (script_id,))
        return cursor.fetchone()[0]


def queue_depth(aws: Any, queue_url: str) -> int:
    attributes = aws("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(value) for value in attributes["Attributes"].values())


def test_packed_messages_land_exactly_once(aws: Any, tickstream_stack: dict[str, str],
                                           db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    bodies = list(pack_ticks(ticks(script, range(1, 20_001)), max_bytes=16 * 1024))
    send(aws, tickstream_stack["TicksQueueUrl"], bodies + bodies[:5])  # five redelivered messages
    assert wait_for(lambda: count(db, script) == 20_000, timeout=60)
    assert wait_for(lambda: queue_depth(aws, tickstream_stack["TicksQueueUrl"]) == 0, timeout=30)
    assert [row[0] for row in stored_ticks(db, script)] == list(range(1, 20_001))


def test_poison_message_reaches_the_dlq_and_its_batch_is_stored(aws: Any, tickstream_stack: dict[str, str],
                                                                db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "ETHUSDT")
    # Poison as a whole (its JSON is cut short): a body with a few bad rows would store its valid rows and
    # dead-letter only those at once (tests/test_ingest_handler.py); a whole-body failure goes round
    # maxReceiveCount times.
    poison = orjson.dumps({"v": 1, "ticks": [[script, 1, "1.5", "1", 0, T0, T0, T0]]}).decode()[:-3]
    good = list(pack_ticks(ticks(script, range(100, 400)), max_bytes=4 * 1024))
    send(aws, tickstream_stack["TicksQueueUrl"], [*good[:3], poison, *good[3:]])
    assert wait_for(lambda: count(db, script) == 300, timeout=30)
    dlq = tickstream_stack["TicksDeadLetterQueueUrl"]
    assert wait_for(lambda: queue_depth(aws, dlq) >= 1, timeout=90), "poison message moved after maxReceiveCount"
    (message,) = aws("sqs").receive_message(QueueUrl=dlq, AttributeNames=["All"], MaxNumberOfMessages=10)["Messages"]
    assert message["Body"] == poison
    assert int(message["Attributes"]["ApproximateReceiveCount"]) >= 5
    aws("sqs").delete_message(QueueUrl=dlq, ReceiptHandle=message["ReceiptHandle"])


def test_messages_wait_while_mariadb_is_down(aws: Any, own_db_stack: dict[str, str], own_db: pymysql.Connection,
                                             own_mariadb: MariaDBServer, own_db_settings: DatabaseSettings) -> None:
    """On a stack wired to the process's own MariaDB: the test stops that server (the shared one stays up for the
    tests running beside it)."""
    script = make_script(own_db, make_broker(own_db), "PEPEUSDT")
    own_db.close()
    bodies = list(pack_ticks(ticks(script, range(1, 5001)), max_bytes=8 * 1024))
    with mariadb_stopped(own_mariadb):
        send(aws, own_db_stack["TicksQueueUrl"], bodies)
        time.sleep(8)  # several failed invocations: the batch goes back to the queue each time
        assert queue_depth(aws, own_db_stack["TicksQueueUrl"]) > 0
    from tickstream.db import connect

    conn = connect(own_db_settings, autocommit=True)
    try:
        assert wait_for(lambda: count(conn, script) == 5000, timeout=120), "stored once MariaDB was back"
    finally:
        conn.close()


def test_deployed_api_answers_through_api_gateway(localstack: Any, tickstream_stack: dict[str, str],
                                                  db: pymysql.Connection) -> None:
    api = f"{localstack.endpoint_url}/_aws/execute-api/{tickstream_stack['ApiId']}/api"
    assert requests.get(f"{api}/health", timeout=30).status_code == 200
    assert requests.get(f"{api}/brokers", timeout=30).status_code == 401
    auth = {"Authorization": f"Bearer {TEST_API_TOKEN}"}
    created = requests.post(f"{api}/brokers", json={"type": "binance", "name": "via API Gateway"}, headers=auth,
                            timeout=30)
    assert created.status_code == 201, created.text
    broker_id = created.json()["id"]
    fetched = requests.get(f"{api}/brokers/{broker_id}", headers=auth, timeout=30)
    assert fetched.json()["name"] == "via API Gateway"
    queues = requests.get(f"{api}/stats", headers=auth, timeout=30).json()["queues"]
    assert isinstance(queues["dlq"]["approximate_messages"], int), "boto3 from the runtime, as on AWS"


def test_migrate_function_creates_and_migrates_the_database(deploy: Any, aws: Any, db_env: dict[str, str],
                                                           db: pymysql.Connection) -> None:
    """MigrateFunction, as CloudFormation's SchemaMigration custom resource calls it on AWS (LocalStack community
    cannot run custom resources, so the test sends the custom-resource event itself and plays CloudFormation's
    pre-signed ResponseURL)."""
    fresh = f"tickstream_deploy_{uuid.uuid4().hex[:8]}"
    outputs = deploy(REPO_ROOT / "template.yaml", "tickstream-migrate-test",
                     {"DbHost": db_env["DB_HOST"], "DbPort": db_env["DB_PORT"], "DbUser": db_env["DB_USER"],
                      "DbPassword": db_env["DB_PASSWORD"], "DbName": fresh})
    try:
        with cloudformation_response_url() as (url, responses):
            event = {"RequestType": "Create", "ResponseURL": url, "StackId": "arn:aws:cloudformation:test",
                     "RequestId": str(uuid.uuid4()), "LogicalResourceId": "SchemaMigration",
                     "ResourceType": "AWS::CloudFormation::CustomResource", "ResourceProperties": {}}
            aws("lambda").invoke(FunctionName=outputs["MigrateFunctionName"], Payload=orjson.dumps(event))
        assert responses[0]["Status"] == "SUCCESS", responses
        every_migration = sorted(migration_ids())
        assert responses[0]["Data"]["Applied"] == ",".join(every_migration)
        with db.cursor() as cursor:
            cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (fresh,))
            assert {"brokers", "scripts", "ticks", "tick_coverage", "gaps"} <= {row[0] for row in cursor.fetchall()}
    finally:
        with db.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{fresh}`")


@contextlib.contextmanager
def cloudformation_response_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    responses: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            responses.append(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/cfn-response", responses
    finally:
        server.shutdown()
