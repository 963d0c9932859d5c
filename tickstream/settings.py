"""Settings read once from the environment into a typed object.

Names follow the Django seed where it had one (DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME, BROKER_ID) so its
users feel at home. Every variable is listed, with its default, in `.env.example`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from tickstream.exchange_endpoints import parse_host_allowlist


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    host: str
    port: int
    user: str
    password: str
    name: str
    # TLS to MySQL (README: Security). A CA file makes TLS required and the server's certificate checked against it.
    ssl_ca: str | None = None
    ssl_verify_identity: bool = False  # also check that the certificate names DB_HOST (needs ssl_ca)


@dataclass(frozen=True, slots=True)
class Settings:
    db: DatabaseSettings
    aws_endpoint_url: str | None
    aws_region: str
    ticks_queue_url: str | None
    ticks_dlq_url: str | None
    api_token: str | None
    api_token_secret_arn: str | None
    exchange_host_allowlist: frozenset[str] = frozenset()  # beyond the venues' official hosts (exchange_endpoints)
    jobs_queue_url: str | None = None  # background jobs (a script's purge) are handed to the maintenance function here
    tick_retention_days: int | None = None  # None: keep ticks for ever


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _flag(name: str) -> bool:
    value = (_env(name, "false") or "").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{name} must be true or false, not {value!r}")
    return value in ("true", "1", "yes")


def _existing_file(name: str) -> str | None:
    """A path setting that must name a readable file: a CA bundle missing from the layer fails here, loudly."""
    path = _env(name)
    if path is not None and not os.path.isfile(path):
        raise ValueError(f"{name}={path} is not a file (README: Security, TLS to MySQL)")
    return path


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
    ssl_ca, verify_identity = _existing_file("DB_SSL_CA"), _flag("DB_SSL_VERIFY_IDENTITY")
    if verify_identity and ssl_ca is None:
        raise ValueError("DB_SSL_VERIFY_IDENTITY needs DB_SSL_CA (for a publicly trusted server certificate, the"
                         " system's bundle, e.g. /etc/ssl/certs/ca-certificates.crt)")
    return DatabaseSettings(settings["host"], int(settings["port"]), settings["user"], settings["password"],
                            settings["name"], ssl_ca=ssl_ca, ssl_verify_identity=verify_identity)


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
        exchange_host_allowlist=parse_host_allowlist(_env("EXCHANGE_HOST_ALLOWLIST")),
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
