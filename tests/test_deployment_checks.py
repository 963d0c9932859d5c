"""The deployment checks of infra/template_checks.py as tests, plus proof that they catch what they are for.

Offline and without Docker: the SAM venv (SAM_CLI, default .venv-sam/bin/sam, with cfn-lint and check-jsonschema
beside it) validates, translates and lints template.yaml, validates docker-compose.localstack.yml against the
compose spec and runs `sam build` without a container. ~25 s in all, most of it `sam build` fetching the layer's
wheels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import template_checks as checks
from infra.compose import deploy
from infra.localstack_config import REPO_ROOT


def _messages(findings: list[checks.Finding]) -> str:
    return "\n".join(map(str, findings))


def _mutate(source: Path, target: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, f"{source.name} no longer contains {old!r}: update the mutation"
    target.write_text(text.replace(old, new))
    return target


# --- the checks on the real files ------------------------------------------------------------------------------

def test_sam_validate_lint() -> None:
    findings = checks.sam_validate()
    assert not findings, _messages(findings)


def test_translated_template_lints_clean() -> None:
    findings = checks.translated_lint()[checks.DEFAULT_TEMPLATE]
    assert not findings, _messages(findings)


def test_compose_file_matches_compose_spec() -> None:
    findings = checks.compose_schema()
    assert not findings, _messages(findings)


def test_compose_and_native_stack_do_not_drift() -> None:
    findings = checks.compose_drift()
    assert not findings, _messages(findings)


def test_image_dependencies_are_pinned() -> None:
    findings = checks.image_pins()
    assert not findings, _messages(findings)


def test_every_setting_the_code_reads_is_in_env_example() -> None:
    findings = checks.env_example_complete()
    assert not findings, _messages(findings)


def test_sam_build_without_container() -> None:
    findings = checks.sam_build()
    assert not findings, _messages(findings)


class _IntrinsicsLoader(yaml.SafeLoader):
    """Short-form intrinsics kept with their arguments ({"If": [...]}), unlike template_checks' shape-only loader."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, object]:
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    if isinstance(node, yaml.MappingNode):
        return {suffix: loader.construct_mapping(node, deep=True)}
    return {suffix: loader.construct_scalar(node)}


_IntrinsicsLoader.add_multi_constructor("!", _intrinsic)


def test_functions_are_updated_only_after_the_schema_migration() -> None:
    """Every function but MigrateFunction references SchemaMigration (an implicit dependency: CloudFormation
    updates it only once the migrations succeeded), so new code never reads a schema still being migrated, and a
    FAILED migration rolls the stack back before any of it ran."""
    resources = yaml.load((REPO_ROOT / "template.yaml").read_text(), Loader=_IntrinsicsLoader)["Resources"]
    functions = {name for name, resource in resources.items() if resource["Type"] == "AWS::Serverless::Function"}
    assert {"IngestFunction", "MaintenanceFunction", "ApiFunction", "MigrateFunction"} <= functions
    for name in functions - {"MigrateFunction"}:
        assert '{"Ref": "SchemaMigration"}' in json.dumps(resources[name]["Properties"]), name
    assert "SchemaMigration" not in json.dumps(resources["MigrateFunction"])  # it runs the migration: no cycle


# --- translated lint catches what plain cfn-lint misses --------------------------------------------------------

# name → (text in template.yaml, its bad replacement, what the translated lint must report)
TEMPLATE_MUTATIONS = {
    "max-concurrency-1": ("MaximumConcurrency: !Ref IngestMaxConcurrency", "MaximumConcurrency: 1",
                          "ScalingConfig/MaximumConcurrency: 1 is less than the minimum of 2"),
    "runtime-python3.99": ("Runtime: python3.12", "Runtime: python3.99", "Runtime: 'python3.99' is not one of"),
    "response-type-typo": ("- ReportBatchItemFailures", "- ReportBatchItemFailure",
                           "'ReportBatchItemFailure' is not one of ['ReportBatchItemFailures']"),
}


@pytest.fixture(scope="module")
def mutants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("mutants")
    # Beside template.yaml's own directory layout is irrelevant: lint never resolves CodeUri paths.
    return {name: _mutate(checks.DEFAULT_TEMPLATE, directory / f"{name}.yaml", old, new)
            for name, (old, new, _expected) in TEMPLATE_MUTATIONS.items()}


@pytest.fixture(scope="module")
def translated_findings(mutants: dict[str, Path]) -> dict[Path, list[checks.Finding]]:
    return checks.translated_lint(list(mutants.values()))  # one translator run and one cfn-lint run for all


@pytest.fixture(scope="module")
def plain_findings(mutants: dict[str, Path]) -> dict[Path, list[checks.Finding]]:
    return checks.plain_cfn_lint(list(mutants.values()))


@pytest.mark.parametrize("mutation", TEMPLATE_MUTATIONS)
def test_translated_lint_catches(mutation: str, mutants: dict[str, Path],
                                 translated_findings: dict[Path, list[checks.Finding]]) -> None:
    expected = TEMPLATE_MUTATIONS[mutation][2]
    assert expected in _messages(translated_findings[mutants[mutation]])


@pytest.mark.parametrize("mutation", TEMPLATE_MUTATIONS)
def test_plain_cfn_lint_misses(mutation: str, mutants: dict[str, Path],
                               plain_findings: dict[Path, list[checks.Finding]]) -> None:
    # Why the translated pass exists. If a cfn-lint upgrade starts catching this, the translated pass is still
    # harmless; update this expectation.
    bad_value = TEMPLATE_MUTATIONS[mutation][1].split(":")[-1].strip(" -")
    assert bad_value not in _messages(plain_findings[mutants[mutation]])


# --- drift is caught -------------------------------------------------------------------------------------------

# name → (text in docker-compose.localstack.yml, its replacement, what compose-drift must report)
COMPOSE_MUTATIONS = {
    "services-differ": ("SERVICES: sqs,", "SERVICES: dynamodb,sqs,", "localstack SERVICES="),
    "host-only-setting": ("      SQS_ENDPOINT_STRATEGY: path\n",
                          "      SQS_ENDPOINT_STRATEGY: path\n      LAMBDA_RUNTIME_EXECUTOR: local\n",
                          "localstack sets LAMBDA_RUNTIME_EXECUTOR, a host-mode setting"),
    "setting-not-passed": ("      BROKER_ID: ${BROKER_ID:-}\n", "", "producer reads BROKER_ID"),
    "parameter-not-passed": ("      INGEST_BATCH_SIZE: ${INGEST_BATCH_SIZE:-}\n", "",
                             "deploy does not pass INGEST_BATCH_SIZE"),
    "unknown-variable": ("API_TOKEN: ${API_TOKEN:-}", "API_TOKEN: ${TICKSTREAM_TOKEN:-}",
                         "${TICKSTREAM_TOKEN} is not a setting of .env.example"),
    "two-defaults": ("DB_NAME: ${DB_NAME:-market_ticks_db}", "DB_NAME: ${DB_NAME:-ticks}\n  X_DB: ${DB_NAME:-t2}",
                     "${DB_NAME} has different defaults"),
    "unpinned-image": ("localstack/localstack:4.14.0", "localstack/localstack:latest", "localstack image is"),
    "network-mismatch": ("LAMBDA_DOCKER_NETWORK: tickstream", "LAMBDA_DOCKER_NETWORK: bridge",
                         "LAMBDA_DOCKER_NETWORK='bridge' is not the compose network"),
}


@pytest.mark.parametrize("mutation", COMPOSE_MUTATIONS)
def test_compose_drift_catches(mutation: str, tmp_path: Path) -> None:
    old, new, expected = COMPOSE_MUTATIONS[mutation]
    compose = _mutate(checks.DEFAULT_COMPOSE, tmp_path / "docker-compose.localstack.yml", old, new)
    assert expected in _messages(checks.compose_drift(compose))


# --- the deploy step's helpers (its container cannot run here) -------------------------------------------------

def test_layers_are_copied_into_functions_without_overwriting(tmp_path: Path) -> None:
    (tmp_path / "Layer" / "python" / "shared").mkdir(parents=True)
    (tmp_path / "Layer" / "python" / "shared" / "__init__.py").write_text("LAYER = True\n")
    (tmp_path / "Layer" / "python" / "handler.py").write_text("from the layer\n")
    (tmp_path / "Fn").mkdir()
    (tmp_path / "Fn" / "handler.py").write_text("from the function\n")
    (tmp_path / "Other").mkdir()
    (tmp_path / "template.yaml").write_text(yaml.safe_dump({"Resources": {
        "Shared": {"Type": "AWS::Serverless::LayerVersion", "Properties": {"ContentUri": "Layer"}},
        "Fn": {"Type": "AWS::Serverless::Function", "Properties": {"CodeUri": "Fn", "Layers": [{"Ref": "Shared"}]}},
        "Other": {"Type": "AWS::Serverless::Function", "Properties": {"CodeUri": "Other"}},
    }}))
    assert deploy.merge_layers_into_functions(tmp_path) == ["Fn"]
    assert (tmp_path / "Fn" / "shared" / "__init__.py").read_text() == "LAYER = True\n"
    assert (tmp_path / "Fn" / "handler.py").read_text() == "from the function\n"
    assert not any((tmp_path / "Other").iterdir())


def test_stack_outputs_file_is_sourceable_by_sh(tmp_path: Path) -> None:
    outputs = {"TicksQueueUrl": "http://localstack:4566/queue/us-east-1/000000000000/tickstream-TicksQueue-x",
               "TicksDeadLetterQueueUrl": "http://localstack:4566/queue/us-east-1/000000000000/dlq",
               "JobsQueueUrl": "http://localstack:4566/queue/us-east-1/000000000000/jobs",
               "ApiUrl": "ignored"}
    written = deploy.write_outputs(outputs, tmp_path)
    script = f'set -a && . "{written}" && set +a && exec "$@"'  # the compose services' entrypoint
    result = subprocess.run(["sh", "-c", script, "with-stack-outputs", sys.executable, "-c",
                             "import os; print(os.environ['TICKS_QUEUE_URL'], os.environ['TICKS_DLQ_URL'])"],
                            capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]})
    assert result.stdout.split() == [outputs["TicksQueueUrl"], outputs["TicksDeadLetterQueueUrl"]]
    assert json.loads((tmp_path / "stack-outputs.json").read_text()) == outputs


def test_parameter_overrides_survive_sams_parser() -> None:
    tools = checks.tools_from_env()
    parameters = {"DbHost": "mysql", "DbPassword": "p a'ss\"w rd", "IngestBatchSize": "100"}
    value = deploy.parameter_overrides(parameters)[1]
    parse = ("import json, sys; from samcli.cli.types import CfnParameterOverridesType as T; "
             "print(json.dumps(T().convert((sys.argv[1],), None, None)))")
    result = subprocess.run([str(tools.python), "-c", parse, value], capture_output=True, text=True, check=True,
                            env=checks.tool_environment())
    assert json.loads(result.stdout) == parameters


# --- sample events ---------------------------------------------------------------------------------------------

def test_api_health_event_reaches_the_health_route() -> None:
    """events/api-health.json (for `sam local invoke ApiFunction`) is routed by Chalice to /health. The database
    is pointed at a closed port, so the route answers 503 without depending on MySQL."""
    script = ("import json, sys; from types import SimpleNamespace; import app; "
              "context = SimpleNamespace(aws_request_id='test', function_name='ApiFunction', memory_limit_in_mb=256,"
              " invoked_function_arn='arn', get_remaining_time_in_millis=lambda: 3000); "
              "print(json.dumps(app.app(json.load(open(sys.argv[1])), context)))")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DB_HOST": "127.0.0.1", "DB_PORT": "9",
           "API_TOKEN": "unused"}
    result = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT / "events" / "api-health.json")],
                            cwd=REPO_ROOT / "functions" / "api", env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout.strip().splitlines()[-1])
    assert response["statusCode"] in (200, 503), response  # not 404/405: the route matched
    assert "status" in json.loads(response["body"])


# --- IAM grants cover the AWS calls of each runtime's code ---------------------------------------------------------

def test_every_aws_call_is_granted_to_its_runtimes_role() -> None:
    findings = checks.iam_coverage()[checks.DEFAULT_TEMPLATE]
    assert not findings, _messages(findings)


# name → (text in template.yaml, its replacement, what iam-coverage must report; None: nothing)
IAM_MUTATIONS = {
    # Today's bug: the producer's secret grant sat on the execution role, which the code never runs as.
    "producer-cannot-read-its-secret": (
        "                  Action: secretsmanager:GetSecretValue\n                  Resource: !Ref DbSecretArn\n"
        "          - !Ref AWS::NoValue\n\n  ProducerTaskDefinition:",
        "                  Action: secretsmanager:DescribeSecret\n                  Resource: !Ref DbSecretArn\n"
        "          - !Ref AWS::NoValue\n\n  ProducerTaskDefinition:",
        "ProducerTaskDefinition's code calls secretsmanager:GetSecretValue (get_secret_value at tickstream/secrets.py"),
    "producer-cannot-send": (
        "Action: sqs:SendMessage  # also authorises SendMessageBatch", "Action: sqs:GetQueueAttributes  #",
        "ProducerTaskDefinition's code calls sqs:SendMessage (send_message_batch at producer_service/sink.py"),
    "heartbeat-not-granted": (
        "Action: cloudwatch:PutMetricData", "Action: cloudwatch:GetMetricData",
        "ProducerTaskDefinition's code calls cloudwatch:PutMetricData (put_metric_data at producer_service/"),
    # A SAM policy template is expanded: without it the ingest cannot read DB_SECRET_ARN.
    "ingest-policy-template-removed": (
        "              Resource: !GetAtt TicksDeadLetterQueue.Arn\n"
        "        - !If\n          - HasDbSecret\n          - AWSSecretsManagerGetSecretValuePolicy:\n"
        "              SecretArn: !Ref DbSecretArn\n",
        "              Resource: !GetAtt TicksDeadLetterQueue.Arn\n"
        "        - !If\n          - HasDbSecret\n          - CloudWatchPutMetricPolicy: {}\n",
        "IngestFunction's code calls secretsmanager:GetSecretValue"),
    # The ingest dead-letters a body's invalid rows itself.
    "ingest-cannot-dead-letter": (
        "              Action: sqs:SendMessage\n              Resource: !GetAtt TicksDeadLetterQueue.Arn\n",
        "              Action: sqs:GetQueueUrl\n              Resource: !GetAtt TicksDeadLetterQueue.Arn\n",
        "IngestFunction's code calls sqs:SendMessage"),
    # ... and its wildcard (sqs:SendMessage*) grants the API's redrive sends: no finding.
    "api-send-as-policy-template": (
        "            - Effect: Allow\n              Action: sqs:SendMessage\n"
        "              Resource: !GetAtt TicksQueue.Arn\n",
        "        - SQSSendMessagePolicy:\n            QueueName: !GetAtt TicksQueue.QueueName\n", None),
    # The maintenance function wakes its own next run when a job outlasts one invocation.
    "maintenance-cannot-wake": (
        "            - Effect: Allow\n              Action: sqs:SendMessage\n"
        "              Resource: !GetAtt JobsQueue.Arn\n",
        "            - Effect: Allow\n              Action: sqs:GetQueueUrl\n"
        "              Resource: !GetAtt JobsQueue.Arn\n",
        "MaintenanceFunction's code calls sqs:SendMessage (send_message at tickstream/job_queue.py"),
    "api-cannot-redrive": (
        "Action: [sqs:StartMessageMoveTask, sqs:ListMessageMoveTasks,", "Action: [sqs:ListMessageMoveTasks,",
        "ApiFunction's code calls sqs:StartMessageMoveTask (start_message_move_task at tickstream/queues.py"),
}


@pytest.fixture(scope="module")
def iam_findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("iam-mutants")
    mutants = {name: _mutate(checks.DEFAULT_TEMPLATE, directory / f"{name}.yaml", old, new)
               for name, (old, new, _expected) in IAM_MUTATIONS.items()}
    findings = checks.iam_coverage(list(mutants.values()))  # one translator run for all
    return {name: _messages(findings[path]) for name, path in mutants.items()}


@pytest.mark.parametrize("mutation", IAM_MUTATIONS)
def test_iam_coverage_catches_a_missing_grant(mutation: str, iam_findings: dict[str, str]) -> None:
    expected = IAM_MUTATIONS[mutation][2]
    if expected is None:
        assert iam_findings[mutation] == ""
    else:
        assert expected in iam_findings[mutation], iam_findings[mutation]
        assert iam_findings[mutation].count("[iam-coverage]") == 1, iam_findings[mutation]


def test_iam_calls_are_found_through_lazy_imports_only_where_imported(tmp_path: Path) -> None:
    from infra import iam_check

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "entry.py").write_text("def main():\n    from pkg import sender\n    sender.send()\n")
    (package / "sender.py").write_text(
        "import boto3\n\ndef send():\n    client = boto3.client('sqs')\n"
        "    client.send_message_batch(QueueUrl='q', Entries=[])\n"
        "    client.get_paginator('list_queues')\n    client.close()\n")
    (package / "unused.py").write_text("import boto3\nboto3.client('sqs').purge_queue(QueueUrl='q')\n")
    (package / "dynamic.py").write_text("import boto3\n\ndef make(name):\n    return boto3.client(name)\n")
    runtime = iam_check.Runtime("Fn", "FnRole", "pkg.entry", ((tmp_path, ("pkg",)),))
    modules = iam_check.import_closure(runtime)
    assert {path.name for path in modules} == {"__init__.py", "entry.py", "sender.py"}
    services, unreadable = iam_check.client_services(modules)
    assert (services, unreadable) == ({"sqs"}, [])
    calls = iam_check.aws_calls(modules, services)
    assert sorted((c.action, c.operation) for c in calls) == [("sqs:ListQueues", "list_queues"),
                                                             ("sqs:SendMessage", "send_message_batch")]
    dynamic = iam_check.Runtime("Fn", "FnRole", "pkg.dynamic", ((tmp_path, ("pkg",)),))
    assert "cannot read" in iam_check.client_services(iam_check.import_closure(dynamic))[1][0]
