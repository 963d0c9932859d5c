"""The bench's own host-mode LocalStack (its own port and state dir, so it never meets `make up`'s or the tests'),
stacks deployed onto it with infra.stack, and the few AWS reads the stages need."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from infra.localstack import is_healthy, start_localstack, stop_localstack
from infra.localstack_config import REPO_ROOT, LocalStackSettings, aws_client, settings_from_env
from infra.stack import deploy_stack

DEFAULT_PORT = "4610"
DEFAULT_STATE_DIR = REPO_ROOT / ".localstack" / "bench"
NOOP_TEMPLATE = Path(__file__).resolve().parent / "fixtures" / "noop_stack" / "template.yaml"
TICKSTREAM_TEMPLATE = REPO_ROOT / "template.yaml"


def bench_settings() -> LocalStackSettings:
    """BENCH_LOCALSTACK_PORT / BENCH_LOCALSTACK_DIR if set, else port 4610 and .localstack/bench: never the
    LocalStack of `make up` (4566) or of the tests. LOCALSTACK_PYTHON and SAM_CLI as everywhere."""
    env = dict(os.environ)
    env["LOCALSTACK_PORT"] = env.get("BENCH_LOCALSTACK_PORT") or DEFAULT_PORT
    env["TICKSTREAM_LOCALSTACK_DIR"] = env.get("BENCH_LOCALSTACK_DIR") or str(DEFAULT_STATE_DIR)
    return settings_from_env(env)


@contextlib.contextmanager
def running_localstack(settings: LocalStackSettings) -> Iterator[LocalStackSettings]:
    """Starts LocalStack unless one already answers on the port; stops it afterwards only if started here."""
    started = not is_healthy(settings)
    if started:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        start_localstack(settings)
    try:
        yield settings
    finally:
        if started:
            stop_localstack(settings)


def deploy(settings: LocalStackSettings, template: Path, stack_name: str,
           parameters: Mapping[str, str]) -> dict[str, str]:
    """Outputs of the deployed stack, plus the physical names of its functions (logical id → name)."""
    outputs = deploy_stack(parameters, settings=settings, template=template, stack_name=stack_name,
                           use_environment=False)
    resources = aws_client("cloudformation", settings).describe_stack_resources(StackName=stack_name)
    functions = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources["StackResources"]
                 if r["ResourceType"] == "AWS::Lambda::Function"}
    return {**outputs, **functions}


def queue_depth(sqs: Any, queue_url: str) -> int:
    """Visible + in-flight messages."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return sum(int(value) for value in attributes.values())


def purge(sqs: Any, queue_url: str) -> None:
    """Leftovers of an interrupted earlier run on a reused stack must not reach this run's database."""
    sqs.purge_queue(QueueUrl=queue_url)


def mapping_uuid(lam: Any, function_name: str) -> str:
    (mapping,) = lam.list_event_source_mappings(FunctionName=function_name)["EventSourceMappings"]
    return mapping["UUID"]


def set_mapping_enabled(lam: Any, uuid: str, enabled: bool, timeout: float = 30.0) -> None:
    lam.update_event_source_mapping(UUID=uuid, Enabled=enabled)
    wanted = "Enabled" if enabled else "Disabled"
    deadline = time.monotonic() + timeout
    while lam.get_event_source_mapping(UUID=uuid)["State"] != wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"event source mapping {uuid} not {wanted} after {timeout:.0f} s")
        time.sleep(0.1)


def send_bodies(sqs: Any, queue_url: str, bodies: list[str]) -> None:
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(n), "MessageBody": body} for n, body in enumerate(bodies[start:start + 10])]
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(f"SQS refused {len(response['Failed'])} messages: {response['Failed'][:2]}")


def function_log_messages(settings: LocalStackSettings, function_name: str, since_ms: int) -> list[str]:
    """Every CloudWatch Logs message of the function since `since_ms` (the executor forwards stdout/stderr and
    the START/END/REPORT lines)."""
    logs = aws_client("logs", settings)
    group = f"/aws/lambda/{function_name}"
    messages: list[str] = []
    request: dict[str, Any] = {"logGroupName": group, "startTime": since_ms}
    with contextlib.suppress(logs.exceptions.ResourceNotFoundException):
        while True:
            page = logs.filter_log_events(**request)
            messages.extend(event["message"] for event in page.get("events", []))
            if not page.get("nextToken"):
                break
            request["nextToken"] = page["nextToken"]
    return messages
