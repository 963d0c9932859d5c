"""Secrets Manager reads, shared by the functions (DB credentials, the API token) and the producer.

boto3 is imported only when a secret is actually configured: the ingest function's cold start does not pay for it,
and the local stack (plain environment variables) never needs it.
"""

from __future__ import annotations

import json
import os
from typing import Any


def secret_string(arn: str) -> str:
    """The secret's current string. Not cached here: callers cache (settings are read once per container)."""
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
