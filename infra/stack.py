"""Deploy a SAM template to the local stack as users deploy to AWS: sam build, sam package, CloudFormation.

No resource is created outside the template (only the artifact bucket ``sam package`` uploads to), so what
runs locally cannot drift from what ``sam deploy`` creates on AWS. CloudFormation is driven through boto3 and
polled every 0.25 s: ``aws cloudformation deploy`` / ``samlocal deploy`` take 24-31 s here, mostly polling.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from infra.localstack_config import (
    DUMMY_CREDENTIALS,
    REGION,
    REPO_ROOT,
    LocalStackSettings,
    aws_client,
    settings_from_env,
)

DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
DEFAULT_STACK_NAME = "tickstream"
ARTIFACT_BUCKET = "tickstream-sam-artifacts"
POLL_SECONDS = 0.25
# Builds by the digest of their inputs (see sam_build), shared by every deploy on this machine; one unused for
# BUILD_KEPT_SECONDS is removed (by age, not count: another session may be packaging from an older one right now).
BUILD_CACHE = Path(tempfile.gettempdir()) / "tickstream-sam-builds"
BUILD_KEPT_SECONDS = 3600
STACK_TIMEOUT_SECONDS = 180.0
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
# Template parameter <- environment variable, for `deploy` without -p (names as in .env.example).
PARAMETER_VARIABLES = {
    "DbHost": "DB_HOST",
    "DbPort": "DB_PORT",
    "DbUser": "DB_USER",
    "DbPassword": "DB_PASSWORD",
    "DbName": "DB_NAME",
    "IngestBatchSize": "INGEST_BATCH_SIZE",
    "IngestBatchingWindowSeconds": "INGEST_BATCHING_WINDOW_SECONDS",
    "IngestMaxConcurrency": "INGEST_MAX_CONCURRENCY",
    "IngestTimeoutSeconds": "INGEST_TIMEOUT_SECONDS",
    "TicksQueueVisibilityTimeoutSeconds": "TICKS_QUEUE_VISIBILITY_TIMEOUT_SECONDS",
    "ApiToken": "API_TOKEN",
    "ExchangeHostAllowlist": "EXCHANGE_HOST_ALLOWLIST",
    "TickRetentionDays": "TICK_RETENTION_DAYS",
}
# LocalStack community has no AWS::CloudFormation::CustomResource (it deploys it as a no-op), so the schema is
# migrated by the caller (`make up`, the tests) instead of by the SchemaMigration resource. README says so.
# Nor EventBridge (not among infra/localstack.py's SERVICES): no maintenance schedule; jobs run from the jobs queue.
# The template turns MySQL TLS on for AWS (the RDS CA in the layer); a local MariaDB has no certificate to verify.
LOCALSTACK_COMMUNITY_PARAMETERS = {"MigrateOnDeploy": "false", "DbTls": "off", "MaintenanceSchedule": "off"}


class DeployError(RuntimeError):
    pass


def environment_parameters(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Template parameters taken from set environment variables (DB_HOST → DbHost, ...)."""
    env = os.environ if environ is None else environ
    return {name: env[variable] for name, variable in PARAMETER_VARIABLES.items() if env.get(variable)}


def deploy_stack(parameters: Mapping[str, str] | None = None, *, settings: LocalStackSettings | None = None,
                 template: Path = DEFAULT_TEMPLATE, stack_name: str = DEFAULT_STACK_NAME,
                 use_environment: bool = True) -> dict[str, str]:
    """Builds, packages and deploys ``template`` as ``stack_name``; waits until its functions are Active and
    its event source mappings Enabled; returns the stack outputs. ``parameters`` override the environment's
    (DB_*, INGEST_*; ignored with ``use_environment=False``); names the template does not declare are dropped,
    since CloudFormation rejects them."""
    settings = settings or settings_from_env()
    work_dir = settings.state_dir / "sam" / stack_name
    timings: dict[str, float] = {}
    with _timed(timings, "build"):
        built = sam_build(settings, Path(template), work_dir)
    with _timed(timings, "package"):
        packaged = sam_package(settings, built, work_dir, stack_name)
    merged = {**LOCALSTACK_COMMUNITY_PARAMETERS, **(environment_parameters() if use_environment else {}),
              **(parameters or {})}
    with _timed(timings, "deploy"):
        outputs = create_or_update(settings, stack_name, packaged.read_text(), merged)
        wait_for_functions(settings, stack_name)
    _log(f"stack {stack_name}: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items()))
    return outputs


def sam_build(settings: LocalStackSettings, template: Path, work_dir: Path) -> Path:
    """``sam build`` without a container; returns the built template. Uses the SAM venv's python3.12.

    A build is kept in BUILD_CACHE under the digest of what it is made from (the template's source tree, see
    `build_digest`), so the same template deployed again (another stack, another LocalStack: a test session does
    it five times) reuses it: a build takes 30-150 s here, the digest milliseconds. `work_dir`/build links to it,
    where a build always was. Outside a git work tree the inputs are not known, and every deploy builds afresh."""
    digest = build_digest(settings, template)
    if digest is None:
        return _build_into(settings, template, work_dir / "build")
    cached = BUILD_CACHE / digest
    with _build_lock(digest):
        if (cached / "template.yaml").is_file():
            cached.touch()  # in use: not removed for another BUILD_KEPT_SECONDS
        else:
            staging = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=BUILD_CACHE))
            _build_into(settings, template, staging)
            if build_digest(settings, template) != digest:  # a file changed while sam read them: not cached
                return _relink(work_dir, staging)
            try:
                staging.rename(cached)
            except OSError:  # built meanwhile by a deploy that did not wait for the lock: keep that one
                shutil.rmtree(staging, ignore_errors=True)
            _forget_old_builds()
    return _relink(work_dir, cached)


@contextlib.contextmanager
def _build_lock(digest: str) -> Iterator[None]:
    """One build of the same inputs at a time on this machine: a deploy beside it (`make test` runs two test
    processes, both deploying template.yaml at the start) waits and reuses that build instead of making its own."""
    BUILD_CACHE.mkdir(parents=True, exist_ok=True)
    path = BUILD_CACHE / f".{digest}.lock"
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path.touch()  # in use: not removed for another BUILD_KEPT_SECONDS
        yield


def _relink(work_dir: Path, build: Path) -> Path:
    """`work_dir`/build → `build`; returns the built template by its real path: the built template names what sam
    did not copy (a layer's ContentUri) relative to the directory it was built in, and a path through the link
    would resolve those against `work_dir` instead."""
    link = work_dir / "build"
    if link.is_symlink():
        link.unlink()
    elif link.exists():  # a build made before builds were kept
        shutil.rmtree(link)
    work_dir.mkdir(parents=True, exist_ok=True)
    link.symlink_to(build, target_is_directory=True)
    return build / "template.yaml"


def _build_into(settings: LocalStackSettings, template: Path, build_dir: Path) -> Path:
    _run_sam(settings, ["build", "--template-file", str(template.resolve()), "--build-dir", str(build_dir),
                        "--parallel"], cwd=template.resolve().parent)
    return build_dir / "template.yaml"


def build_digest(settings: LocalStackSettings, template: Path) -> str | None:
    """SHA-256 over the SAM CLI used and every file of the git work tree that holds the template (tracked, or
    untracked and not ignored: exactly what a developer edits), paths and contents; None outside a work tree.
    Wider than what the build reads (a changed test also makes a new build), never narrower."""
    root = template.resolve().parent
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--full-name"],
                            cwd=root, capture_output=True)
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0 or top.returncode != 0:
        return None
    digest = hashlib.sha256(f"{settings.sam_cli.resolve()}\0{template.resolve()}\0".encode())
    repo = Path(top.stdout.strip())
    for name in sorted(set(listed.stdout.split(b"\0")) - {b""}):
        path = repo / os.fsdecode(name)
        if path.is_file():
            digest.update(name + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def _forget_old_builds() -> None:
    """Builds (and the staging directories of builds that crashed, and lock files) unused for BUILD_KEPT_SECONDS."""
    cutoff = time.time() - BUILD_KEPT_SECONDS
    for entry in BUILD_CACHE.iterdir():
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:  # a build's lock file, touched whenever it is taken
                    entry.unlink()


def sam_package(settings: LocalStackSettings, built_template: Path, work_dir: Path, stack_name: str) -> Path:
    """Uploads code and layers to the local artifact bucket; returns the packaged template."""
    s3 = aws_client("s3", settings)
    try:
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    packaged = work_dir / "packaged.yaml"
    _run_sam(settings, ["package", "--template-file", str(built_template), "--s3-bucket", ARTIFACT_BUCKET,
                        "--s3-prefix", stack_name, "--output-template-file", str(packaged),
                        "--region", REGION, "--no-progressbar"], cwd=work_dir)
    return packaged


def _run_sam(settings: LocalStackSettings, args: list[str], cwd: Path) -> None:
    if not settings.sam_cli.exists():
        raise DeployError(f"{settings.sam_cli} not found: create the SAM venv (.venv-sam) or set SAM_CLI")
    env = {
        **os.environ,
        # The SAM venv first: its python3.12 builds the functions (no container), its pip fills the layer.
        "PATH": f"{settings.sam_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AWS_ENDPOINT_URL": settings.endpoint_url,
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAM_CLI_TELEMETRY": "0",
        "SAM_CLI_DISABLE_UPDATE_CHECK": "1",  # both would call out to the internet
    }
    env.pop("AWS_PROFILE", None)
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run([str(settings.sam_cli), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployError(f"sam {args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def create_or_update(settings: LocalStackSettings, stack_name: str, template_body: str,
                     parameters: Mapping[str, str]) -> dict[str, str]:
    cfn = aws_client("cloudformation", settings)
    declared = {p["ParameterKey"] for p in cfn.get_template_summary(TemplateBody=template_body)["Parameters"]}
    request = {
        "StackName": stack_name,
        "TemplateBody": template_body,
        "Parameters": [{"ParameterKey": key, "ParameterValue": str(value)}
                       for key, value in parameters.items() if key in declared],
        "Capabilities": CAPABILITIES,
    }
    stack = _describe(cfn, stack_name)
    if stack is not None and stack["StackStatus"] in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED",
                                                       "DELETE_FAILED"):
        _delete_and_wait(cfn, stack_name)  # a stack that never got created cannot be updated
        stack = None
    if stack is None:
        cfn.create_stack(**request)
    else:
        try:
            cfn.update_stack(**request)
        except ClientError as error:
            if "No updates are to be performed" not in str(error):
                raise
    return _outputs(_wait_for_stack(cfn, stack_name))


def delete_stack(stack_name: str = DEFAULT_STACK_NAME, settings: LocalStackSettings | None = None) -> None:
    cfn = aws_client("cloudformation", settings or settings_from_env())
    if _describe(cfn, stack_name) is not None:
        _delete_and_wait(cfn, stack_name)


def _delete_and_wait(cfn: Any, stack_name: str) -> None:
    cfn.delete_stack(StackName=stack_name)
    deadline = time.monotonic() + STACK_TIMEOUT_SECONDS
    while (stack := _describe(cfn, stack_name)) is not None and stack["StackStatus"] != "DELETE_COMPLETE":
        if time.monotonic() > deadline:
            raise DeployError(f"stack {stack_name} not deleted after {STACK_TIMEOUT_SECONDS:.0f} s")
        time.sleep(POLL_SECONDS)


def _describe(cfn: Any, stack_name: str) -> dict[str, Any] | None:
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return stacks[0] if stacks else None


def _wait_for_stack(cfn: Any, stack_name: str) -> dict[str, Any]:
    deadline = time.monotonic() + STACK_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        stack = _describe(cfn, stack_name)
        state = stack["StackStatus"] if stack else "MISSING"
        if state.endswith("_COMPLETE") and "ROLLBACK" not in state:
            return stack
        if state.endswith(("_FAILED", "ROLLBACK_COMPLETE")) or state == "MISSING":
            raise DeployError(f"stack {stack_name}: {state}\n{_failure_reasons(cfn, stack_name)}")
        time.sleep(POLL_SECONDS)
    raise DeployError(f"stack {stack_name} not deployed after {STACK_TIMEOUT_SECONDS:.0f} s")


def _failure_reasons(cfn: Any, stack_name: str) -> str:
    try:
        events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
    except ClientError:
        return "(no stack events)"
    failed = [e for e in events if e.get("ResourceStatus", "").endswith("FAILED")]
    return "\n".join(f"  {e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}" for e in failed[:10])


def _outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def wait_for_functions(settings: LocalStackSettings, stack_name: str, timeout: float = 60.0) -> None:
    """Until every function of the stack is Active and every event source mapping Enabled: a message sent
    right after deploy must not race the mapping's start."""
    cfn = aws_client("cloudformation", settings)
    lam = aws_client("lambda", settings)
    resources = cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
    by_type = [(r["ResourceType"], r["PhysicalResourceId"]) for r in resources]
    functions = [physical for kind, physical in by_type if kind == "AWS::Lambda::Function"]
    mappings = [physical for kind, physical in by_type if kind == "AWS::Lambda::EventSourceMapping"]
    deadline = time.monotonic() + timeout
    for name in functions:
        _wait_for(lambda n=name: _function_ready(lam, n), deadline, f"function {name} Active")
    for uuid in mappings:
        _wait_for(lambda u=uuid: lam.get_event_source_mapping(UUID=u)["State"] == "Enabled", deadline,
                  f"event source mapping {uuid} Enabled")


def _function_ready(lam: Any, name: str) -> bool:
    config = lam.get_function_configuration(FunctionName=name)
    if config.get("State") == "Failed" or config.get("LastUpdateStatus") == "Failed":
        reason = config.get("StateReason") or config.get("LastUpdateStatusReason")
        raise DeployError(f"function {name} failed: {reason}")
    return config.get("State") == "Active" and config.get("LastUpdateStatus") in (None, "Successful")


def _wait_for(condition: Any, deadline: float, what: str) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise DeployError(f"timed out waiting for {what}")
        time.sleep(POLL_SECONDS)


class _timed:  # noqa: N801 (used like a function: `with _timed(...)`)
    def __init__(self, timings: dict[str, float], step: str) -> None:
        self.timings, self.step = timings, step

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.step] = time.monotonic() - self.started


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
