"""pytest plugin: one host-mode LocalStack per test session, and stacks deployed onto it from SAM templates.

Loaded by tests/conftest.py. LocalStack starts on first use (about 1.5 s) and stops at the end of the session.
With TICKSTREAM_REUSE_LOCALSTACK=1 a LocalStack already healthy on the port (say from
``python -m infra.localstack up``) is used and left running: the fast loop while developing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from infra.localstack import is_healthy, start_localstack, stop_localstack
from infra.localstack_config import REPO_ROOT, LocalStackSettings, aws_client, settings_from_env
from infra.stack import DEFAULT_STACK_NAME, DEFAULT_TEMPLATE, deploy_stack
from tests.conftest import database_env
from tests.producer_harness import fresh_queue
from tickstream.settings import DatabaseSettings

EXECUTOR_FIXTURE_TEMPLATE = Path(__file__).parent / "fixtures" / "executor_stack" / "template.yaml"
# template.yaml's defaults (30 s timeout, 180 s visibility) take 5 x 180 s to dead-letter a poison message;
# the test stack shortens both so redelivery and the DLQ are observable within seconds.
TEST_INGEST_TIMEOUT_SECONDS = 5
TEST_VISIBILITY_TIMEOUT_SECONDS = 5
Deployer = Callable[..., dict[str, str]]
TEST_API_TOKEN = "deployed-stack-test-token"  # a throw-away stack on loopback LocalStack


@pytest.fixture(scope="session")
def localstack() -> Iterator[LocalStackSettings]:
    settings = settings_from_env()
    if is_healthy(settings):
        if os.environ.get("TICKSTREAM_REUSE_LOCALSTACK") != "1":
            pytest.fail(f"something already answers on {settings.endpoint_url}: stop it "
                        "(python -m infra.localstack down) or set TICKSTREAM_REUSE_LOCALSTACK=1 to reuse it")
        yield settings
        return
    start_localstack(settings)
    try:
        yield settings
    finally:
        stop_localstack(settings)


@pytest.fixture(scope="session")
def deploy(localstack: LocalStackSettings) -> Deployer:
    """``deploy(template, stack_name, parameters) -> outputs``; each distinct request deploys once a session.

    Does not read DB_* / INGEST_* from the environment: tests pass what they mean."""
    deployed: dict[tuple[str, str, tuple[tuple[str, str], ...]], dict[str, str]] = {}

    def _deploy(template: Path = DEFAULT_TEMPLATE, stack_name: str = DEFAULT_STACK_NAME,
                parameters: Mapping[str, str] | None = None) -> dict[str, str]:
        key = (str(template), stack_name, tuple(sorted((parameters or {}).items())))
        if key not in deployed:
            deployed[key] = deploy_stack(parameters, settings=localstack, template=template,
                                         stack_name=stack_name, use_environment=False)
        return deployed[key]

    return _deploy


@pytest.fixture(scope="session")
def executor_stack(deploy: Deployer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """tests/fixtures/executor_stack: echo/fail/sleep functions with a layer, an SQS queue → function → DLQ.
    Outputs plus RecordDir, where the SQS consumer appends one JSON line per delivery."""
    record_dir = tmp_path_factory.mktemp("deliveries")
    outputs = deploy(EXECUTOR_FIXTURE_TEMPLATE, "executor-fixture", {"RecordDir": str(record_dir)})
    return {**outputs, "RecordDir": str(record_dir)}


def tickstream_stack_parameters(db_env: Mapping[str, str]) -> dict[str, str]:
    """template.yaml's parameters for a test stack wired to the database of `db_env`, with short timeouts
    (TEST_*_SECONDS above)."""
    return {
        "DbHost": db_env["DB_HOST"],
        "DbPort": db_env["DB_PORT"],
        "DbUser": db_env["DB_USER"],
        "DbPassword": db_env["DB_PASSWORD"],
        "DbName": db_env["DB_NAME"],
        "ExchangeHostAllowlist": os.environ["EXCHANGE_HOST_ALLOWLIST"],  # the simulator (tests/conftest.py)
        "IngestTimeoutSeconds": str(TEST_INGEST_TIMEOUT_SECONDS),
        "TicksQueueVisibilityTimeoutSeconds": str(TEST_VISIBILITY_TIMEOUT_SECONDS),
        "ApiToken": TEST_API_TOKEN,
    }


@pytest.fixture(scope="session")
def tickstream_stack(deploy: Deployer, db_env: dict[str, str]) -> dict[str, str]:
    """The real template.yaml, deployed unchanged, wired to the session's test database (db_env)."""
    return deploy(REPO_ROOT / "template.yaml", "tickstream-test", tickstream_stack_parameters(db_env))


@pytest.fixture(scope="session")
def own_db_stack(deploy: Deployer, own_db_settings: DatabaseSettings) -> dict[str, str]:
    """As `tickstream_stack`, wired to the database on the process's own MariaDB (`own_mariadb`), for the tests
    that stop that server."""
    return deploy(REPO_ROOT / "template.yaml", "tickstream-own-db",
                  tickstream_stack_parameters(database_env(own_db_settings)))


@pytest.fixture(scope="session")
def aws(localstack: LocalStackSettings) -> Callable[[str], Any]:
    """``aws("sqs")`` → a boto3 client for the session's LocalStack."""
    return lambda service: aws_client(service, localstack)


@pytest.fixture
def queue(aws: Callable[[str], Any]) -> Iterator[str]:
    """A fresh SQS queue of the session's LocalStack for one test (what a producer under test sends to), deleted
    afterwards."""
    client = aws("sqs")
    url = fresh_queue(client)
    yield url
    client.delete_queue(QueueUrl=url)
