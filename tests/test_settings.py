"""Settings from the environment, and DB credentials from a Secrets Manager secret (LocalStack's)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tickstream.settings import database_settings, load_settings


def test_seed_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"DB_HOST": "db.internal", "DB_PORT": "3307", "DB_USER": "ticks", "DB_PASSWORD": "pw",
                        "DB_NAME": "market"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DB_SECRET_ARN", raising=False)
    db = database_settings()
    assert (db.host, db.port, db.user, db.password, db.name) == ("db.internal", 3307, "ticks", "pw", "market")


@pytest.mark.localstack
def test_db_secret_overrides_plain_credentials(localstack: Any, aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = {"username": "ticks_writer", "password": f"pw-{uuid.uuid4().hex}", "host": "rds.internal",
              "port": 3306, "engine": "mysql"}
    arn = aws("secretsmanager").create_secret(Name=f"tickstream-db-{uuid.uuid4().hex[:6]}",
                                              SecretString=json.dumps(secret))["ARN"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", localstack.endpoint_url)
    monkeypatch.setenv("DB_SECRET_ARN", arn)
    monkeypatch.setenv("DB_PASSWORD", "plain-should-lose")
    monkeypatch.setenv("DB_NAME", "market")
    load_settings.cache_clear()
    db = load_settings().db
    assert (db.user, db.password, db.host, db.port, db.name) == ("ticks_writer", secret["password"], "rds.internal",
                                                                3306, "market")
    load_settings.cache_clear()
