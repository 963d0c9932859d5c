"""boto3 clients for the settings' endpoint (AWS_ENDPOINT_URL: LocalStack) and region, with short timeouts.

A module of its own, apart from what calls them: a runtime's import closure then holds only the AWS calls it
really makes, which is what infra/iam_check.py compares with the IAM grants of the runtime's role. boto3 is
imported on first use (see the package docstring). Clients are thread-safe, so they are cached.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tickstream.settings import Settings, load_settings


def _config(connect_timeout: float, read_timeout: float) -> Any:
    from botocore.config import Config

    return Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                  retries={"max_attempts": 2, "mode": "standard"})


@lru_cache(maxsize=4)
def _cached_sqs(endpoint_url: str | None, region: str, connect_timeout: float, read_timeout: float) -> Any:
    import boto3

    return boto3.client("sqs", region_name=region, endpoint_url=endpoint_url,
                        config=_config(connect_timeout, read_timeout))


def sqs_client(settings: Settings | None = None, *, connect_timeout: float = 2, read_timeout: float = 10) -> Any:
    """An SQS client; short timeouts, so a status page stays fast when the queue is unreachable."""
    settings = settings or load_settings()
    return _cached_sqs(settings.aws_endpoint_url, settings.aws_region, connect_timeout, read_timeout)


def cloudwatch_client(settings: Settings | None = None, *, connect_timeout: float = 2, read_timeout: float = 5) -> Any:
    import boto3

    settings = settings or load_settings()
    return boto3.client("cloudwatch", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url,
                        config=_config(connect_timeout, read_timeout))


def client_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError


def error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", type(error).__name__))


def describe_error(error: Exception) -> str:
    """The whole error, for the log only."""
    response = getattr(error, "response", None) or {}
    message = response.get("Error", {}).get("Message") or str(error)
    return f"{error_code(error)}: {message}"[:1000]


def sqs_message_bytes(message: dict[str, Any]) -> int:
    """What SQS counts against its size limits: the body and every attribute's name, type and value."""
    size = len(message["Body"].encode())
    for name, value in message.get("MessageAttributes", {}).items():
        size += len(name.encode()) + len(value.get("DataType", "").encode())
        size += len(value.get("StringValue", "").encode()) + len(value.get("BinaryValue", b""))
    return size
