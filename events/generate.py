"""Writes the sample events for `sam local invoke` (and the example --env-vars file) from tickstream's own code.

    make events                      # or: .venv/bin/python -m events.generate [--check]

The SQS bodies are packed by tickstream.codec exactly as the producer packs them, so the events never drift from
the message format; tests/test_sam_local.py fails when a committed file differs from what this writes. Everything
is deterministic (fixed ids and times). The API token in the events and in env-vars.example.json is a local-only
example, not a secret: `sam local` runs the API with whatever API_TOKEN the --env-vars file gives it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tickstream.codec import V2_PREFIX, pack_ticks
from tickstream.ticks import Tick

EVENTS_DIR = Path(__file__).resolve().parent
EXAMPLE_API_TOKEN = "local-example-token-not-a-secret"
QUEUE_ARN = "arn:aws:sqs:us-east-1:000000000000:tickstream-ticks"
T0_US = 1_700_000_000_123_000  # 2023-11-14 22:13:20.123 UTC
# A migration's result goes to this URL (a pre-signed S3 URL on AWS). Locally, nothing answers unless you listen.
STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/tickstream/00000000-0000-4000-8000-0000000000aa"
LOCAL_RESPONSE_URL = "http://127.0.0.1:8099/cloudformation-response"
# Exact decimals that floats would not survive (95234.56000001 and 0.00000712 have no binary representation).
BTC = 1
PEPE = 2


def _ticks(script_id: int, first_trade_id: int, price: str, quantity: str, count: int) -> list[Tick]:
    return [Tick(script_id, first_trade_id + n, price, quantity, n % 2 == 0, T0_US + n * 1000,
                 T0_US + 2000 + n * 1000, T0_US + 9000 + n * 1000) for n in range(count)]


def _one_body(ticks: list[Tick]) -> str:
    (body,) = pack_ticks(ticks)
    return body


def sqs_record(message_number: int, body: str) -> dict[str, Any]:
    return {
        "messageId": f"00000000-0000-4000-8000-{message_number:012d}",
        "receiptHandle": f"AQEBexample{message_number:04d}",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": str(T0_US // 1000),
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": str(T0_US // 1000 + 1),
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "us-east-1",
    }


def ingest_event() -> dict[str, Any]:
    """Two messages as the producer sends them: BTCUSDT (script 1) and PEPEUSDT (script 2)."""
    return {"Records": [
        sqs_record(1, _one_body(_ticks(BTC, 100, "95234.56000001", "0.00100000", 3))),
        sqs_record(2, _one_body(_ticks(PEPE, 500, "0.00000712", "1500000.00000000", 2))),
    ]}


# Poison as a whole: the version 2 prefix and base64, but not zlib data, so no row of it can be read. Such a
# record fails alone (SQS retries it, then moves it to the DLQ as it is).
POISON_BODY = V2_PREFIX + base64.b64encode(b"these bytes are not zlib data").decode()


def ingest_poison_event() -> dict[str, Any]:
    """A valid message and a poison one: only the poison is reported in batchItemFailures; the valid is stored."""
    return {"Records": [
        sqs_record(3, _one_body(_ticks(BTC, 200, "95234.56000001", "0.00100000", 2))),
        sqs_record(4, POISON_BODY),
    ]}


def api_gateway_event(method: str, path: str, body: dict[str, Any] | None = None,
                      token: str | None = None) -> dict[str, Any]:
    """A REST API (v1) proxy event as API Gateway sends it to ApiFunction (stage `api`)."""
    headers = {"Accept": "application/json", "Host": "abcdef1234.execute-api.us-east-1.amazonaws.com",
               "User-Agent": "curl/8.5.0", "X-Forwarded-For": "203.0.113.10", "X-Forwarded-Port": "443",
               "X-Forwarded-Proto": "https"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "a1b2c3",
            "resourcePath": path,
            "httpMethod": method,
            "extendedRequestId": "Yx1AbCdEIAMFbZw=",
            "requestTime": "14/Nov/2023:22:13:20 +0000",
            "path": f"/api{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": "api",
            "domainPrefix": "abcdef1234",
            "requestTimeEpoch": T0_US // 1000,
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "203.0.113.10", "userAgent": "curl/8.5.0"},
            "domainName": "abcdef1234.execute-api.us-east-1.amazonaws.com",
            "apiId": "abcdef1234",
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


def api_health_event() -> dict[str, Any]:
    return api_gateway_event("GET", "/health")


def api_create_broker_event() -> dict[str, Any]:
    return api_gateway_event("POST", "/brokers", {"type": "binance", "name": "Binance (sam local)", "api_config": {}},
                             token=EXAMPLE_API_TOKEN)


def migrate_create_event(response_url: str = LOCAL_RESPONSE_URL) -> dict[str, Any]:
    """What CloudFormation sends the SchemaMigration custom resource (MigrateFunction) on stack creation."""
    return {
        "RequestType": "Create",
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:tickstream-MigrateFunction",
        "ResponseURL": response_url,
        "StackId": STACK_ID,
        "RequestId": "00000000-0000-4000-8000-0000000000bb",
        "LogicalResourceId": "SchemaMigration",
        "ResourceType": "AWS::CloudFormation::CustomResource",
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:tickstream-MigrateFunction",
            "LayerVersion": "arn:aws:lambda:us-east-1:123456789012:layer:tickstream-tickstream:1",
        },
    }


def env_vars_example() -> dict[str, Any]:
    """`sam local invoke --env-vars events/env-vars.example.json --docker-network tickstream`: the docker compose
    stack's MySQL by its service name, with the compose file's default password (DB_PASSWORD, if you set one)."""
    return {
        "Parameters": {"DB_HOST": "mysql", "DB_PORT": "3306", "DB_USER": "root", "DB_PASSWORD": "tickstream",
                       "DB_NAME": "market_ticks_db"},
        "ApiFunction": {"API_TOKEN": EXAMPLE_API_TOKEN},
    }


GENERATORS: dict[str, Callable[[], dict[str, Any]]] = {
    "ingest.json": ingest_event,
    "ingest-poison.json": ingest_poison_event,
    "api-health.json": api_health_event,
    "api-create-broker.json": api_create_broker_event,
    "migrate-create.json": migrate_create_event,
    "env-vars.example.json": env_vars_example,
}


def render(event: dict[str, Any]) -> str:
    return json.dumps(event, indent=2) + "\n"


def expected_files() -> dict[str, str]:
    return {name: render(generate()) for name, generate in GENERATORS.items()}


def stale_files(directory: Path = EVENTS_DIR) -> list[str]:
    """Names whose committed text differs from what the generator writes (missing files included)."""
    return [name for name, text in expected_files().items()
            if not (directory / name).is_file() or (directory / name).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report files that differ; exit 1 if any")
    if parser.parse_args(argv).check:
        stale = stale_files()
        for name in stale:
            print(f"events/{name} differs from what `make events` writes", file=sys.stderr)
        return 1 if stale else 0
    for name, text in expected_files().items():
        (EVENTS_DIR / name).write_text(text)
        print(f"wrote events/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
