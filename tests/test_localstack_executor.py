"""The local Lambda executor on host-mode LocalStack, through LocalStack's own APIs (no Docker anywhere).

Functions come from tests/fixtures/executor_stack, deployed with sam build + sam package + CloudFormation like
template.yaml. Without the executor plugin LocalStack falls back to Docker and the deploy fails (functions end
Failed); without the mapping or the DLQ the SQS test times out.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from infra.localstack_config import REPO_ROOT
from tests.producer_harness import wait_for

pytestmark = pytest.mark.localstack
FIXTURE_TIMEOUT_SECONDS = 2  # Globals.Function.Timeout of the fixture template
MAX_RECEIVE_COUNT = 3  # WorkQueue's RedrivePolicy in the fixture template
EXECUTOR_PACKAGE = REPO_ROOT / "infra" / "localstack_executor" / "tickstream_localstack_executor"


def invoke(aws: Any, function: str, payload: dict[str, Any]) -> tuple[dict[str, Any], str | None, str]:
    """(decoded payload, FunctionError, tail of the logs)."""
    response = aws("lambda").invoke(FunctionName=function, Payload=json.dumps(payload), LogType="Tail")
    logs = base64.b64decode(response.get("LogResult", "")).decode()
    return json.loads(response["Payload"].read()), response.get("FunctionError"), logs


class TestDirectInvoke:
    def test_returns_the_handler_result_with_env_layer_and_context(self, aws: Any,
                                                                   executor_stack: dict[str, str]) -> None:
        name = executor_stack["EchoFunctionName"]
        result, error, _ = invoke(aws, name, {"marker": "direct"})
        assert error is None, result
        assert result["event"] == {"marker": "direct"}
        assert result["greeting"] == "hello-from-template"  # function environment from the template
        assert result["layer"] == "from-echo-layer"  # imported from the layer, not the function code
        assert result["function_name"] == name
        assert 0 < result["remaining_ms"] <= FIXTURE_TIMEOUT_SECONDS * 1000
        assert "/shims/" not in result["executable"] and result["executable"].endswith("python3.12")

    def test_runs_as_a_host_process_of_the_local_executor(self, aws: Any,
                                                          executor_stack: dict[str, str]) -> None:
        result, error, _ = invoke(aws, executor_stack["EchoFunctionName"], {})
        assert error is None, result
        cmdline = Path(f"/proc/{result['pid']}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"tickstream_localstack_executor/bootstrap.py") for part in cmdline)

    def test_warm_environment_is_reused(self, aws: Any, executor_stack: dict[str, str]) -> None:
        name = executor_stack["EchoFunctionName"]
        first, _, _ = invoke(aws, name, {"marker": "warm-1"})
        second, _, _ = invoke(aws, name, {"marker": "warm-2"})
        assert second["pid"] == first["pid"]
        assert second["invocations"] == first["invocations"] + 1  # module-level state survived

    def test_handler_error_is_a_function_error(self, aws: Any, executor_stack: dict[str, str]) -> None:
        payload = {"action": "fail", "marker": "x1"}
        result, error, logs = invoke(aws, executor_stack["EchoFunctionName"], payload)
        assert error == "Unhandled"
        assert result["errorType"] == "ValueError"
        assert result["errorMessage"] == "boom x1"
        assert "handler.py" in result["stackTrace"][0]  # starts in the handler, not in the bootstrap
        assert "[ERROR] ValueError: boom x1" in logs

    def test_timeout_is_enforced_and_the_environment_restarts(self, aws: Any,
                                                              executor_stack: dict[str, str]) -> None:
        name = executor_stack["EchoFunctionName"]
        before, _, _ = invoke(aws, name, {})
        started = time.monotonic()
        result, error, logs = invoke(aws, name, {"action": "sleep", "seconds": 30, "marker": "slow"})
        elapsed = time.monotonic() - started
        assert error == "Unhandled"
        assert result["errorType"] == "Sandbox.Timedout"
        assert f"Task timed out after {FIXTURE_TIMEOUT_SECONDS:.2f} seconds" in result["errorMessage"]
        assert FIXTURE_TIMEOUT_SECONDS <= elapsed < FIXTURE_TIMEOUT_SECONDS + 3
        assert "fixture stdout slow" in logs  # what it printed before it was killed is kept
        assert not Path(f"/proc/{before['pid']}").exists()  # the stuck process was killed
        after, error, _ = invoke(aws, name, {})
        assert error is None and after["invocations"] == 1  # a fresh environment, initialised again

    def test_process_crash_is_a_runtime_exit_error(self, aws: Any, executor_stack: dict[str, str]) -> None:
        result, error, _ = invoke(aws, executor_stack["EchoFunctionName"], {"action": "exit"})
        assert error == "Unhandled"
        assert result["errorType"] == "Runtime.ExitError"

    def test_import_error_is_an_init_error(self, aws: Any, executor_stack: dict[str, str]) -> None:
        result, error, _ = invoke(aws, executor_stack["BrokenFunctionName"], {})
        assert error == "Unhandled"
        assert result["errorType"] == "Runtime.ImportModuleError"
        assert "no_such_module" in result["errorMessage"]

    def test_logs_reach_cloudwatch_logs(self, aws: Any, executor_stack: dict[str, str]) -> None:
        name = executor_stack["EchoFunctionName"]
        marker = uuid.uuid4().hex
        result, _, _ = invoke(aws, name, {"marker": marker})
        request_id = result["request_id"]

        def messages() -> list[str]:
            events = aws("logs").filter_log_events(logGroupName=f"/aws/lambda/{name}")["events"]
            found = [e["message"] for e in events if request_id in e["message"] or marker in e["message"]]
            return found if any(m.startswith("REPORT") for m in found) else []

        found = wait_for(messages, timeout=10)
        assert any(m.startswith(f"START RequestId: {request_id}") for m in found)
        assert f"fixture stdout {marker}\n" in found and f"fixture stderr {marker}\n" in found
        assert any(m.startswith(f"END RequestId: {request_id}") for m in found)
        assert any(m.startswith(f"REPORT RequestId: {request_id}\tDuration:") for m in found)


class TestSqsEventSourceMapping:
    def test_mapping_reports_batch_item_failures(self, aws: Any, executor_stack: dict[str, str]) -> None:
        mappings = aws("lambda").list_event_source_mappings(
            FunctionName=executor_stack["BatchFunctionName"])["EventSourceMappings"]
        assert len(mappings) == 1
        assert mappings[0]["State"] == "Enabled"
        assert mappings[0]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]

    def test_good_messages_once_poison_to_dlq_after_max_receive_count(self, aws: Any,
                                                                     executor_stack: dict[str, str]) -> None:
        sqs = aws("sqs")
        run = uuid.uuid4().hex[:8]
        good = [f"good-{run}-{i}" for i in range(25)]
        poison = f"poison-{run}"
        bodies = [*good[:12], poison, *good[12:]]
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[start:start + 10])]
            sqs.send_message_batch(QueueUrl=executor_stack["WorkQueueUrl"], Entries=entries)

        dead = wait_for(lambda: sqs.receive_message(QueueUrl=executor_stack["DeadLetterQueueUrl"],
                                                    WaitTimeSeconds=1).get("Messages"), timeout=40)
        assert dead and [m["Body"] for m in dead] == [poison]

        deliveries = Counter(record["body"] for record in read_deliveries(executor_stack["RecordDir"])
                             if run in record["body"])
        assert {body: deliveries[body] for body in good} == dict.fromkeys(good, 1)  # each exactly once
        assert deliveries[poison] == MAX_RECEIVE_COUNT
        remaining = sqs.get_queue_attributes(QueueUrl=executor_stack["WorkQueueUrl"], AttributeNames=["All"])
        assert remaining["Attributes"]["ApproximateNumberOfMessages"] == "0"


def read_deliveries(record_dir: str) -> list[dict[str, str]]:
    path = Path(record_dir) / "deliveries.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class TestTickstreamTemplate:
    """template.yaml deployed unchanged: the wiring the ingest pipeline relies on."""

    def test_queue_dlq_and_mapping(self, aws: Any, tickstream_stack: dict[str, str]) -> None:
        sqs = aws("sqs")
        attributes = sqs.get_queue_attributes(QueueUrl=tickstream_stack["TicksQueueUrl"],
                                              AttributeNames=["All"])["Attributes"]
        redrive = json.loads(attributes["RedrivePolicy"])
        dlq_arn = sqs.get_queue_attributes(QueueUrl=tickstream_stack["TicksDeadLetterQueueUrl"],
                                           AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        assert redrive["deadLetterTargetArn"] == dlq_arn
        assert int(redrive["maxReceiveCount"]) == 5
        mapping = one_mapping(aws, tickstream_stack["TicksQueueArn"])
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert mapping["BatchSize"] == 20 and mapping["MaximumBatchingWindowInSeconds"] == 1
        assert mapping["ScalingConfig"] == {"MaximumConcurrency": 2}
        assert mapping["State"] == "Enabled"
        function = aws("lambda").get_function_configuration(FunctionName=mapping["FunctionArn"])
        assert int(attributes["VisibilityTimeout"]) >= function["Timeout"]  # else AWS refuses the mapping

    def test_defaults_keep_visibility_at_6x_the_ingest_timeout(self, aws: Any,
                                                              tickstream_stack: dict[str, str]) -> None:
        summary = aws("cloudformation").get_template_summary(StackName="tickstream-test")
        defaults = {p["ParameterKey"]: int(p["DefaultValue"]) for p in summary["Parameters"]
                    if p["ParameterKey"].endswith("TimeoutSeconds")}
        assert defaults["TicksQueueVisibilityTimeoutSeconds"] >= 6 * defaults["IngestTimeoutSeconds"]

    def test_ingest_function_loads_with_the_layer(self, aws: Any, tickstream_stack: dict[str, str]) -> None:
        function_arn = one_mapping(aws, tickstream_stack["TicksQueueArn"])["FunctionArn"]
        result, error, logs = invoke(aws, function_arn, {"Records": []})
        assert error is None, (result, logs)
        assert result == {"batchItemFailures": []}


def one_mapping(aws: Any, queue_arn: str) -> dict[str, Any]:
    mappings = aws("lambda").list_event_source_mappings(EventSourceArn=queue_arn)["EventSourceMappings"]
    assert len(mappings) == 1, mappings
    return mappings[0]


class TestExecutorUnits:
    """Pieces of the executor package that need no LocalStack (loaded from their files: the package is
    installed only in the LocalStack venv)."""

    @staticmethod
    def load(module: str) -> Any:
        path = EXECUTOR_PACKAGE / f"{module}.py"
        spec = importlib.util.spec_from_file_location(f"_executor_{module}", path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded

    def test_interpreter_override_and_shims(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        interpreters = self.load("interpreters")
        assert interpreters.override_variable("python3.12") == "LOCAL_EXECUTOR_PYTHON3_12"
        fake = tmp_path / "python3.12"
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
        monkeypatch.setenv("LOCAL_EXECUTOR_PYTHON3_12", str(fake))
        assert interpreters.resolve_interpreter("python3.12") == str(fake)
        shims = tmp_path / "shims"
        shims.mkdir()
        (shims / "python3.99").write_text("#!/bin/sh\n")
        (shims / "python3.99").chmod(0o755)
        monkeypatch.setenv("PATH", str(shims))
        monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
        with pytest.raises(interpreters.InterpreterNotFound):
            interpreters.resolve_interpreter("python3.99")  # a pyenv shim is not an interpreter
        with pytest.raises(interpreters.InterpreterNotFound):
            interpreters.resolve_interpreter("nodejs20.x")

    def test_drain_mark_split_across_reads(self) -> None:
        bootstrap = self.load("bootstrap")
        mark = bootstrap.DRAIN_MARK
        assert bootstrap._partial_mark_length(b"output" + mark[:5]) == 5
        assert bootstrap._partial_mark_length(b"output\n") == 0
