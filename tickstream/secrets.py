"""Secrets Manager reads, shared by the functions (DB credentials, the API token) and the producer.

boto3 is imported only when a secret is actually configured: the ingest function's cold start does not pay for it,
and the local stack (plain environment variables) never needs it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
# A rotated secret is in use everywhere within this long (the API token: README, Security).
SECRET_TTL_SECONDS = 300.0
# After a failed read, wait this long before the next one, so a broken secret is not hammered.
SECRET_RETRY_SECONDS = 5.0


class SecretUnavailable(RuntimeError):
    """The secret could not be read (recently); the details are logged, not carried."""


def secret_string(arn: str) -> str:
    """The secret's current string, read now (SecretCache keeps it for a while)."""
    import boto3  # lazily: see the module docstring
    from botocore.config import Config

    client = boto3.client("secretsmanager", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
                          config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}))
    return client.get_secret_value(SecretId=arn)["SecretString"]


def secret_json(arn: str) -> dict[str, Any]:
    """A secret whose string is a JSON object (RDS's managed credentials look like this)."""
    value = json.loads(secret_string(arn))
    if not isinstance(value, dict):
        raise ValueError(f"secret {arn} does not hold a JSON object")
    return value


class SecretCache:
    """Secret strings by ARN, read again once older than `ttl_seconds`, so a rotation takes effect within it.

    Fails closed: a secret that cannot be read is SecretUnavailable (never its older value), and is read again no
    sooner than `retry_seconds` later. Thread-safe; one read at a time.
    """

    def __init__(self, ttl_seconds: float = SECRET_TTL_SECONDS, retry_seconds: float = SECRET_RETRY_SECONDS, *,
                 read: Callable[[str], str] = secret_string, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.retry_seconds = retry_seconds
        self._read = read
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, str]] = {}  # arn → (read at, value)
        self._failed_at: dict[str, float] = {}

    def get(self, arn: str) -> str:
        with self._lock:
            now = self._clock()
            cached = self._values.get(arn)
            if cached is not None and now - cached[0] < self.ttl_seconds:
                return cached[1]
            self._values.pop(arn, None)
            if now - self._failed_at.get(arn, float("-inf")) < self.retry_seconds:
                raise SecretUnavailable(f"secret {arn} failed to read less than {self.retry_seconds:g} s ago")
            try:
                value = self._read(arn)
            except Exception as error:  # network, permissions, a deleted secret: all mean "not now"
                self._failed_at[arn] = now
                log.warning("secret %s could not be read: %s: %s", arn, type(error).__name__, error)
                raise SecretUnavailable(f"secret {arn} could not be read") from error
            self._failed_at.pop(arn, None)
            self._values[arn] = (now, value)
            return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._failed_at.clear()
