"""Settings read once from the environment into a typed object.

Names follow the Django seed where it had one (DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME, BROKER_ID) so its
users feel at home. Every variable is listed, with its default, in `.env.example`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    host: str
    port: int
    user: str
    password: str
    name: str


@dataclass(frozen=True, slots=True)
class Settings:
    db: DatabaseSettings
    aws_endpoint_url: str | None
    aws_region: str
    ticks_queue_url: str | None
    ticks_dlq_url: str | None
    api_token: str | None
    api_token_secret_arn: str | None
    jobs_queue_url: str | None = None  # background jobs (a script's purge) are handed to the maintenance function here
    tick_retention_days: int | None = None  # None: keep ticks for ever


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def database_settings() -> DatabaseSettings:
    """DB_* variables; with DB_SECRET_ARN (AWS), the secret's username/password (and host/port/dbname if present)
    take precedence, so no password is ever a plain environment variable there."""
    settings = {
        "host": _env("DB_HOST", "127.0.0.1"),
        "port": _env("DB_PORT", "3306"),
        "user": _env("DB_USER", "root"),
        "password": _env("DB_PASSWORD", ""),
        "name": _env("DB_NAME", "market_ticks_db"),
    }
    if secret_arn := _env("DB_SECRET_ARN"):
        from tickstream.secrets import secret_json  # boto3 only when a secret is configured

        secret = secret_json(secret_arn)
        renamed = {"username": "user", "password": "password", "host": "host", "port": "port", "dbname": "name"}
        settings.update({ours: str(secret[theirs]) for theirs, ours in renamed.items() if secret.get(theirs)})
    return DatabaseSettings(settings["host"], int(settings["port"]), settings["user"], settings["password"],
                            settings["name"])


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    """The process's settings. Cached: Lambda containers and the producer read the environment once."""
    return Settings(
        db=database_settings(),
        aws_endpoint_url=_env("AWS_ENDPOINT_URL"),
        aws_region=_env("AWS_REGION", _env("AWS_DEFAULT_REGION", "us-east-1")),
        ticks_queue_url=_env("TICKS_QUEUE_URL"),
        ticks_dlq_url=_env("TICKS_DLQ_URL"),
        api_token=_env("API_TOKEN"),
        api_token_secret_arn=_env("API_TOKEN_SECRET_ARN"),
        jobs_queue_url=_env("JOBS_QUEUE_URL"),
        tick_retention_days=_retention_days(_env("TICK_RETENTION_DAYS")),
    )


def _retention_days(value: str | None) -> int | None:
    """Empty or 0: off. Anything else must be a whole number of days ≥ 1 (a typo must not delete data)."""
    if value is None or value.strip() == "0":
        return None
    if not value.strip().isdigit():
        raise ValueError(f"TICK_RETENTION_DAYS must be a whole number of days (0 or empty: off), not {value!r}")
    return int(value)
