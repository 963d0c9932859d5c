"""The one-shot `deploy` service of docker-compose.localstack.yml: migrate MySQL, deploy template.yaml with samlocal
onto the compose LocalStack, and write the stack's outputs where the producer and the API read them.

    python -m infra.compose.deploy      # in the image of infra/compose/Dockerfile; settings from the environment

The same template, parameters (DB_* / INGEST_* → DbHost / IngestBatchSize ..., the mapping of infra.stack) and
stack name as the native `python -m infra.localstack deploy`; only the endpoint differs (AWS_ENDPOINT_URL, e.g.
http://localstack:4566). Writes ``$STACK_OUTPUTS_DIR/stack.env`` (TICKS_QUEUE_URL=..., shell syntax, sourced by the
other services' entrypoint) and ``stack-outputs.json`` (every output).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from infra.localstack_config import REPO_ROOT
from infra.stack import (
    ARTIFACT_BUCKET,
    CAPABILITIES,
    DEFAULT_STACK_NAME,
    LOCALSTACK_COMMUNITY_PARAMETERS,
    environment_parameters,
)

# Stack output → the .env.example variable the producer and the API read it from (as infra/up.py does natively).
OUTPUT_VARIABLES = {
    "TicksQueueUrl": "TICKS_QUEUE_URL",
    "TicksDeadLetterQueueUrl": "TICKS_DLQ_URL",
    "JobsQueueUrl": "JOBS_QUEUE_URL",
}
OUTPUTS_FILE = "stack.env"
DEFAULT_OUTPUTS_DIR = "/outputs"
HEALTH_PATH = "/_localstack/health"
WAIT_SECONDS = 300.0  # the first function start pulls the Lambda runtime image: minutes on a slow line
POLL_SECONDS = 1.0


def say(message: str) -> None:
    print(f"[deploy] {message}", file=sys.stderr, flush=True)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception as error:  # not up yet: any error means "try again" until the deadline
            last = error
        else:
            last = None
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}" + (f": {last}" if last else ""))
        time.sleep(POLL_SECONDS)


def migrate_database() -> None:
    # Imported here: the module is also imported (for OUTPUT_VARIABLES) where yoyo is not installed.
    from tickstream.migrate import migrate
    from tickstream.settings import database_settings

    db = database_settings()
    applied: list[str] = []

    def attempt() -> bool:  # retried: MySQL's healthcheck can pass a moment before it takes TCP logins
        applied[:] = migrate(db)
        return True

    wait_until(attempt, f"MySQL at {db.host}:{db.port}", timeout=120)
    say(f"MySQL {db.host}:{db.port}/{db.name}: applied {len(applied)} migration(s)")


def localstack_healthy(endpoint: str) -> bool:
    with urllib.request.urlopen(endpoint + HEALTH_PATH, timeout=2) as response:
        return response.status == 200


def samlocal(args: list[str], cwd: Path) -> None:
    say("samlocal " + " ".join(args))
    subprocess.run(["samlocal", *args], cwd=cwd, check=True)


def merge_layers_into_functions(build_dir: Path) -> list[str]:
    """Copies each local layer's ``python/`` into the build of every function that uses it; returns their names.

    LocalStack community's Docker executor creates layers but never mounts them into function containers (layers
    are a Pro feature): without this the ingest function dies on ``import tickstream``. Only the built artifacts
    change, never the template; function files win over layer files, as on Lambda (/var/task before /opt/python).
    """
    import yaml  # the SAM CLI's dependency; `sam build` writes plain YAML (no !Ref tags)

    resources = yaml.safe_load((build_dir / "template.yaml").read_text())["Resources"]
    layers = {name: build_dir / str(r["Properties"]["ContentUri"]) for name, r in resources.items()
              if r["Type"] == "AWS::Serverless::LayerVersion" and isinstance(r["Properties"].get("ContentUri"), str)}
    merged = []
    for name, resource in resources.items():
        properties = resource.get("Properties", {})
        if resource["Type"] != "AWS::Serverless::Function" or not isinstance(properties.get("CodeUri"), str):
            continue
        refs = [ref.get("Ref") for ref in properties.get("Layers", []) if isinstance(ref, dict)]
        used = [ref for ref in refs if ref in layers]
        for layer in used:
            shutil.copytree(layers[layer] / "python", build_dir / properties["CodeUri"], dirs_exist_ok=True,
                            copy_function=_copy_unless_present)
        if used:
            merged.append(name)
    return merged


def _copy_unless_present(source: str, destination: str) -> str:
    return destination if os.path.exists(destination) else shutil.copy2(source, destination)


def parameter_overrides(parameters: Mapping[str, str]) -> list[str]:
    """sam's Key='value' syntax, so a password with spaces or quotes survives its parser."""
    return ["--parameter-overrides", " ".join(f"{key}={_sam_quote(value)}" for key, value in parameters.items())]


def _sam_quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"  # sam unescapes \' inside single quotes


def deploy(template: Path, build_dir: Path, stack_name: str, region: str) -> None:
    shutil.rmtree(build_dir, ignore_errors=True)  # a restarted container keeps /tmp: no stale merged layer files
    samlocal(["build", "--template-file", str(template), "--build-dir", str(build_dir)], cwd=template.parent)
    # Unconditionally, so a LOCALSTACK_AUTH_TOKEN or another image changes nothing: harmless where layers work.
    say(f"layers copied into {', '.join(merge_layers_into_functions(build_dir)) or 'no function'} "
        "(LocalStack community does not mount layers)")
    _ensure_bucket(region)
    # As the native deploy (infra/stack.py): what community lacks is switched off (migrations ran above instead).
    parameters = {**LOCALSTACK_COMMUNITY_PARAMETERS, **environment_parameters()}
    samlocal(["deploy", "--template-file", str(build_dir / "template.yaml"), "--stack-name", stack_name,
              "--s3-bucket", ARTIFACT_BUCKET, "--s3-prefix", stack_name, "--region", region,
              "--capabilities", *CAPABILITIES, "--no-confirm-changeset", "--no-fail-on-empty-changeset",
              "--no-progressbar", *(parameter_overrides(parameters) if parameters else [])], cwd=build_dir)


def _client(service: str, region: str) -> Any:
    import boto3  # reads AWS_ENDPOINT_URL and the dummy credentials from the environment

    return boto3.client(service, region_name=region)


def _ensure_bucket(region: str) -> None:
    s3 = _client("s3", region)
    if ARTIFACT_BUCKET not in {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)


def wait_for_functions(stack_name: str, region: str) -> None:
    """Until the stack's functions are Active and its SQS mappings Enabled, so the producer's first messages are
    not sent to a mapping that has not started."""
    resources = _client("cloudformation", region).describe_stack_resources(StackName=stack_name)["StackResources"]
    lam = _client("lambda", region)
    for resource in resources:
        physical = resource["PhysicalResourceId"]
        if resource["ResourceType"] == "AWS::Lambda::Function":
            wait_until(lambda p=physical: _function_active(lam, p), f"function {physical} Active")
        elif resource["ResourceType"] == "AWS::Lambda::EventSourceMapping":
            wait_until(lambda p=physical: lam.get_event_source_mapping(UUID=p)["State"] == "Enabled",
                       f"event source mapping {physical} Enabled")


def _function_active(lam: Any, name: str) -> bool:
    config = lam.get_function_configuration(FunctionName=name)
    if config.get("State") == "Failed":
        raise SystemExit(f"function {name} failed: {config.get('StateReason')}")
    return config.get("State") == "Active"


def stack_outputs(stack_name: str, region: str) -> dict[str, str]:
    stack = _client("cloudformation", region).describe_stacks(StackName=stack_name)["Stacks"][0]
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def write_outputs(outputs: Mapping[str, str], directory: Path) -> Path:
    """stack.env for the other services (written last and atomically: its presence means "deployed")."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stack-outputs.json").write_text(json.dumps(dict(outputs), indent=2) + "\n")
    lines = [f"{variable}={shlex.quote(outputs[key])}" for key, variable in OUTPUT_VARIABLES.items() if key in outputs]
    missing = [key for key in OUTPUT_VARIABLES if key not in outputs]
    if missing:
        raise SystemExit(f"the stack has no output {', '.join(missing)}: template.yaml and OUTPUT_VARIABLES differ")
    scratch = directory / f".{OUTPUTS_FILE}.tmp"
    scratch.write_text("\n".join(lines) + "\n")
    scratch.replace(directory / OUTPUTS_FILE)
    return directory / OUTPUTS_FILE


def main() -> None:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "http://localstack:4566"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    stack_name = os.environ.get("STACK_NAME") or DEFAULT_STACK_NAME
    outputs_dir = Path(os.environ.get("STACK_OUTPUTS_DIR") or DEFAULT_OUTPUTS_DIR)
    (outputs_dir / OUTPUTS_FILE).unlink(missing_ok=True)  # a stale file would point the services at an old stack
    started = time.monotonic()
    migrate_database()
    wait_until(lambda: localstack_healthy(endpoint), f"LocalStack at {endpoint}", timeout=120)
    deploy(REPO_ROOT / "template.yaml", Path(os.environ.get("SAM_BUILD_DIR") or "/tmp/sam-build"), stack_name,
           region)
    wait_for_functions(stack_name, region)
    written = write_outputs(stack_outputs(stack_name, region), outputs_dir)
    say(f"stack {stack_name} deployed in {time.monotonic() - started:.0f} s; outputs in {written}:")
    print(written.read_text(), end="", flush=True)


if __name__ == "__main__":
    main()
