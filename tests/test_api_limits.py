"""The API's limits (issue 12, item 11): a statement timeout on its MySQL sessions, reserved concurrency, the
token secret cached with a TTL, no AWS error text in responses, the queues' encryption and TLS-only policy, and the
alarms on queue age and producer liveness."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from infra.template_checks import load_template
from tests.api_fixtures import TOKEN, InProcessApi, load_api_app, reset_api_state
from tickstream import queues
from tickstream.secrets import SECRET_TTL_SECONDS, SecretCache
from tickstream.settings import load_settings

pytest_plugins = ["tests.api_fixtures"]
load_api_app()
from chalicelib import auth, database, http  # noqa: E402 - importable once load_api_app put it on sys.path

# What AWS answers an unauthorised call with: account id, role, ARNs (LocalStack enforces no IAM, so it is stubbed).
ACCOUNT = "123456789012"
ACCESS_DENIED = (f"User: arn:aws:sts::{ACCOUNT}:assumed-role/tickstream-ApiFunctionRole-1AB/tickstream-Api is not "
                 f"authorized to perform: sqs:StartMessageMoveTask on resource: arn:aws:sqs:us-east-1:{ACCOUNT}:dlq")


@pytest.fixture
def resources() -> dict[str, Any]:
    return load_template()["Resources"]


# --- statement timeout -------------------------------------------------------------------------------------------

def _sleep_query(seconds: int) -> tuple[str, str]:
    """A SLEEP that names itself, so the shared server's other sessions never count."""
    marker = f"statement-timeout-test-{uuid.uuid4().hex}"
    return f"SELECT SLEEP({seconds}), '{marker}'", marker


def _running(db_settings: Any, marker: str) -> int:
    conn = pymysql.connect(host=db_settings.host, port=db_settings.port, user=db_settings.user,
                           password=db_settings.password)
    with conn, conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE %s AND id <> "
                       "CONNECTION_ID()", (f"%{marker}%",))
        return int(cursor.fetchone()[0])


def test_a_query_past_the_statement_timeout_is_stopped_by_the_server(api_env: dict[str, str],
                                                                    db_settings: Any) -> None:
    db = database.Database(statement_timeout_seconds=1)
    query, marker = _sleep_query(20)
    started = time.monotonic()
    with pytest.raises(auth.ApiError) as stopped, db.connection() as conn, conn.cursor() as cursor:
        cursor.execute(query)
    elapsed = time.monotonic() - started
    assert (stopped.value.status, stopped.value.code) == (504, "query_timeout")
    assert elapsed < 10  # the server stopped it after ~1 s; SLEEP(20) would take 20
    assert _running(db_settings, marker) == 0
    with db.connection() as conn, conn.cursor() as cursor:  # the session is kept and still limited
        cursor.execute("SELECT @@max_statement_time")
        assert float(cursor.fetchone()[0]) == 1.0


def test_an_abandoned_query_does_not_run_on(api_env: dict[str, str], db_settings: Any) -> None:
    """The caller gives up (the function times out) while the query runs: the server still ends it."""
    db = database.Database(statement_timeout_seconds=1)
    query, marker = _sleep_query(30)
    thread = threading.Thread(target=_run_quietly, args=(db, query), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    seen = 0
    while not seen and time.monotonic() < deadline:
        seen = _running(db_settings, marker)
        time.sleep(0.02)
    assert seen == 1, "the query never ran"
    deadline = time.monotonic() + 8  # far below the 30 s the query asked for
    while _running(db_settings, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running(db_settings, marker) == 0


def _run_quietly(db: database.Database, query: str) -> None:
    try:
        with db.connection() as conn, conn.cursor() as cursor:
            cursor.execute(query)
    except auth.ApiError:
        pass


def test_the_apis_connections_carry_the_default_timeout(api: InProcessApi) -> None:
    from chalicelib import service

    assert api.get("/brokers").status == 200
    with service.database.connection() as conn, conn.cursor() as cursor:
        cursor.execute("SELECT @@max_statement_time")
        assert float(cursor.fetchone()[0]) == database.STATEMENT_TIMEOUT_SECONDS


def test_statement_timeout_ends_before_the_function_does(resources: dict[str, Any]) -> None:
    assert resources["ApiFunction"]["Properties"]["Timeout"] > database.STATEMENT_TIMEOUT_SECONDS


class _RecordingMySql8:
    """MySQL 8 cannot run here: what matters is which variable is set, and in which unit."""

    def __init__(self) -> None:
        self.executed: list[tuple[str, tuple[Any, ...]]] = []

    def get_server_info(self) -> str:
        return "8.0.36"

    def cursor(self) -> _RecordingMySql8:
        return self

    def __enter__(self) -> _RecordingMySql8:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def execute(self, sql: str, args: tuple[Any, ...]) -> None:
        self.executed.append((sql, args))


def test_mysql_gets_max_execution_time_in_milliseconds() -> None:
    conn = _RecordingMySql8()
    database.limit_statement_time(conn, 25)  # type: ignore[arg-type]
    assert conn.executed == [("SET SESSION max_execution_time = %s", (25000,))]


# --- reserved concurrency ----------------------------------------------------------------------------------------

def test_api_concurrency_is_reserved_and_capped(resources: dict[str, Any]) -> None:
    template = load_template()
    reserved = resources["ApiFunction"]["Properties"].get("ReservedConcurrentExecutions")
    assert reserved == "ApiReservedConcurrency"  # !Ref
    parameter = template["Parameters"]["ApiReservedConcurrency"]
    assert 1 <= parameter["MinValue"] <= parameter["Default"] <= 50


# --- the token secret: a TTL, against LocalStack's Secrets Manager --------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def token_secret(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                 api_env: dict[str, str]) -> Iterator[tuple[Any, str]]:
    localstack = request.getfixturevalue("localstack")
    secrets = request.getfixturevalue("aws")("secretsmanager")
    arn = secrets.create_secret(Name=f"api-token-{uuid.uuid4().hex[:8]}", SecretString="token-one")["ARN"]
    for name, value in {"AWS_ENDPOINT_URL": localstack.endpoint_url, "AWS_REGION": "us-east-1",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "API_TOKEN_SECRET_ARN": arn}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("API_TOKEN")
    reset_api_state()
    yield secrets, arn
    secrets.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)


@pytest.mark.localstack
def test_a_rotated_token_takes_effect_within_five_minutes(api: InProcessApi, token_secret: tuple[Any, str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    secrets, arn = token_secret
    clock = FakeClock()
    monkeypatch.setattr(http, "tokens", auth.TokenSource(SecretCache(clock=clock)))
    assert api.get("/brokers", token="token-one").status == 200
    secrets.put_secret_value(SecretId=arn, SecretString='{"token": "token-two"}')  # rotation
    clock.now += 60
    assert api.get("/brokers", token="token-one").status == 200  # cached: no Secrets Manager call per request
    clock.now += 5 * 60 - 60
    assert api.get("/brokers", token="token-one").status == 401
    assert api.get("/brokers", token="token-two").status == 200


@pytest.mark.localstack
def test_the_apis_token_cache_expires_within_five_minutes(token_secret: tuple[Any, str]) -> None:
    assert http.tokens.secrets.ttl_seconds <= 300 and SECRET_TTL_SECONDS <= 300
    _secrets, arn = token_secret
    assert http.tokens.secrets.get(arn) == "token-one"  # and it reads the real secret


def test_an_unreadable_secret_fails_closed_and_is_not_hammered(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    reads: list[str] = []

    def read(arn: str) -> str:
        reads.append(arn)
        if len(reads) == 2:
            raise PermissionError(ACCESS_DENIED)
        return "value"

    cache = SecretCache(ttl_seconds=300, retry_seconds=5, read=read, clock=clock)
    assert cache.get("arn:x") == "value"
    clock.now += 301
    with caplog.at_level(logging.WARNING), pytest.raises(Exception, match="could not be read") as failed:
        cache.get("arn:x")
    assert ACCOUNT not in str(failed.value) and ACCOUNT in caplog.text  # logged, not carried
    with pytest.raises(Exception, match="less than 5 s ago"):
        cache.get("arn:x")
    clock.now += 5
    assert cache.get("arn:x") == "value" and len(reads) == 3


# --- no AWS error text in responses --------------------------------------------------------------------------------

@pytest.fixture
def stubbed_sqs(monkeypatch: pytest.MonkeyPatch, api_env: dict[str, str]) -> Iterator[Any]:
    """The API's own SQS client with AWS's answers stubbed (botocore's Stubber: nothing is sent)."""
    from botocore.stub import Stubber

    for name, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "us-east-1",
                        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "TICKS_QUEUE_URL": f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/ticks",
                        "TICKS_DLQ_URL": f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/dlq"}.items():
        monkeypatch.setenv(name, value)
    reset_api_state()
    client = queues.sqs_client(load_settings())  # the cached client the routes use
    with Stubber(client) as stubber:
        yield stubber


def _assert_no_aws_text(body: bytes) -> None:
    text = body.decode()
    assert ACCOUNT not in text and "arn:" not in text and "assumed-role" not in text, text


def test_redrive_refused_by_aws_answers_generically_and_logs_the_detail(
        api: InProcessApi, stubbed_sqs: Any, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("dlq", "ticks"):
        stubbed_sqs.add_response("get_queue_attributes",
                                 {"Attributes": {"QueueArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:{name}"}})
    stubbed_sqs.add_client_error("start_message_move_task", service_error_code="AccessDenied",
                                 service_message=ACCESS_DENIED, http_status_code=403)
    with caplog.at_level(logging.WARNING):
        reply = api.post("/dlq/redrive", {"method": "message_move_task"})
    assert (reply.status, reply.error_code) == (503, "queue_unavailable")
    assert "AccessDenied" in reply.json()["error"]["message"]  # the code helps; the text is for the log
    _assert_no_aws_text(reply.body)
    assert ACCESS_DENIED in caplog.text


def test_redrive_failing_inside_the_loop_answers_generically(api: InProcessApi, stubbed_sqs: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    stubbed_sqs.add_client_error("receive_message", service_error_code="AccessDenied",
                                 service_message=ACCESS_DENIED, http_status_code=403)
    with caplog.at_level(logging.WARNING):
        reply = api.post("/dlq/redrive", {"method": "receive_send_delete"})
    assert (reply.status, reply.error_code) == (503, "queue_unavailable")
    _assert_no_aws_text(reply.body)
    assert ACCESS_DENIED in caplog.text


def test_stats_with_queues_refused_by_aws_name_no_account(api: InProcessApi, stubbed_sqs: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    for _queue in ("ticks", "dlq"):
        stubbed_sqs.add_client_error("get_queue_attributes", service_error_code="AccessDenied",
                                     service_message=ACCESS_DENIED, http_status_code=403)
    with caplog.at_level(logging.WARNING):
        reply = api.get("/stats")
    assert reply.status == 200
    assert reply.json()["queues"]["dlq"]["reason"] == "unreachable: AccessDenied"
    _assert_no_aws_text(reply.body)
    assert ACCESS_DENIED in caplog.text


def test_an_unreadable_token_secret_answers_generically(api: InProcessApi, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    def denied(arn: str) -> str:
        raise PermissionError(ACCESS_DENIED)

    monkeypatch.delenv("API_TOKEN")
    monkeypatch.setenv("API_TOKEN_SECRET_ARN", f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:api")
    reset_api_state()
    monkeypatch.setattr(http, "tokens", auth.TokenSource(SecretCache(read=denied)))
    with caplog.at_level(logging.WARNING):
        reply = api.get("/brokers", token=TOKEN)
    assert (reply.status, reply.error_code) == (503, "auth_unavailable")
    _assert_no_aws_text(reply.body)
    assert ACCESS_DENIED in caplog.text


# --- queues: encryption, TLS only; alarms --------------------------------------------------------------------------

def test_every_queue_is_encrypted_and_refuses_plain_http(resources: dict[str, Any]) -> None:
    queues = sorted(name for name, r in resources.items() if r["Type"] == "AWS::SQS::Queue")
    assert queues == ["JobsDeadLetterQueue", "JobsQueue", "TicksDeadLetterQueue", "TicksQueue"]
    for queue in queues:
        assert resources[queue]["Properties"].get("SqsManagedSseEnabled") is True, queue
    policies = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::SQS::QueuePolicy"]
    denies = [(policy, statement) for policy in policies for statement in policy["PolicyDocument"]["Statement"]
              if statement["Effect"] == "Deny"
              and statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}]
    assert len(denies) == 1
    policy, statement = denies[0]
    assert sorted(policy["Queues"]) == queues
    assert statement["Principal"] == "*" and statement["Action"] == "sqs:*"


def _alarms(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}


def test_alarm_on_the_age_of_the_oldest_tick(resources: dict[str, Any]) -> None:
    alarm = next(a["Properties"] for a in _alarms(resources).values()
                 if a["Properties"]["MetricName"] == "ApproximateAgeOfOldestMessage")
    assert alarm["Namespace"] == "AWS/SQS"
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": "TicksQueue.QueueName"}]
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == "QueueAgeAlarmSeconds"


def test_alarm_on_producer_liveness_watches_the_metric_the_producer_sends(resources: dict[str, Any]) -> None:
    from producer_service.heartbeat import METRIC, NAMESPACE

    alarm = next(a for a in _alarms(resources).values() if a["Properties"]["MetricName"] == METRIC)
    properties = alarm["Properties"]
    assert alarm["Condition"] == "HasProducer" and properties["Namespace"] == NAMESPACE
    assert properties["Dimensions"] == [{"Name": "Stack", "Value": "AWS::StackName"}]
    assert (properties["ComparisonOperator"], properties["TreatMissingData"]) == ("LessThanThreshold", "breaching")
    container = resources["ProducerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert {"Name": "STACK_NAME", "Value": "AWS::StackName"} in container["Environment"]




@pytest.mark.localstack
def test_the_deployed_queues_carry_encryption_and_the_tls_only_policy(aws: Any,
                                                                     tickstream_stack: dict[str, str]) -> None:
    import json

    sqs = aws("sqs")
    for url in (tickstream_stack["TicksQueueUrl"], tickstream_stack["TicksDeadLetterQueueUrl"]):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes.get("SqsManagedSseEnabled") == "true", attributes
        statements = json.loads(attributes["Policy"])["Statement"]
        assert [s["Effect"] for s in statements if s.get("Condition") == {
            "Bool": {"aws:SecureTransport": "false"}}] == ["Deny"], statements
