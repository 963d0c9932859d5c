"""Supervise a host-mode LocalStack (no Docker) and deploy template.yaml onto it.

    python -m infra.localstack up       # start LocalStack on 127.0.0.1:4566 and wait until it is healthy
    python -m infra.localstack deploy   # sam build, sam package, CloudFormation create/update; prints outputs
    python -m infra.localstack status
    python -m infra.localstack down     # SIGTERM, then wait

Runs with the project's venv (boto3); LocalStack itself runs from its own venv (.venv-localstack, Python 3.13,
with the local Lambda executor from infra/localstack_executor installed) and SAM from .venv-sam, because their
pins clash (click). State, pid file and log live in .localstack/ (git-ignored). Python API for test fixtures:
``start_localstack()``, ``deploy_stack(parameters) -> outputs``, ``stop_localstack()``, ``is_healthy()``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from infra.localstack_config import LOOPBACK, REGION, LocalStackSettings, aws_client, settings_from_env
from infra.stack import DEFAULT_STACK_NAME, DEFAULT_TEMPLATE, delete_stack, deploy_stack

__all__ = ["aws_client", "delete_stack", "deploy_stack", "is_healthy", "localstack_environment",
           "settings_from_env", "start_localstack", "status", "stop_localstack"]

SERVICES = "sqs,lambda,cloudformation,s3,iam,sts,logs,apigateway,cloudwatch,secretsmanager"
HEALTH_PATH = "/_localstack/health"
EXECUTOR_DISTRIBUTION = "tickstream-localstack-executor"
POLL_SECONDS = 0.1
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
# Inherited variables that would point LocalStack's own AWS clients or Python somewhere else.
SCRUBBED_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                      "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


class LocalStackError(RuntimeError):
    pass


def localstack_environment(settings: LocalStackSettings) -> dict[str, str]:
    """LocalStack's configuration: loopback only, no persistence, no telemetry, Lambda on the host."""
    state = settings.state_dir
    env = {key: value for key, value in os.environ.items()
           if key not in SCRUBBED_VARIABLES and not key.startswith("AWS_ENDPOINT_URL_")}
    env.update({
        "SERVICES": SERVICES,
        "GATEWAY_LISTEN": f"{LOOPBACK}:{settings.port}",
        # URLs LocalStack hands out (queue URLs, stack outputs) must work offline:
        # *.localhost.localstack.cloud does not resolve without the internet, 127.0.0.1 always does.
        "LOCALSTACK_HOST": f"{LOOPBACK}:{settings.port}",
        "SQS_ENDPOINT_STRATEGY": "path",
        "PERSISTENCE": "0",
        "LOCALSTACK_VOLUME_DIR": str(state / "volume"),
        # LocalStack thinks it is in a container when the machine is one; force host mode and keep its files
        # (and the unpacked function code, via TMPDIR) inside the state dir instead of /var/lib/localstack.
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(state / "filesystem"),
        "TMPDIR": str(state / "tmp"),
        "DISABLE_EVENTS": "1",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DNS_ADDRESS": "0",
        "AWS_DEFAULT_REGION": REGION,
        "LAMBDA_RUNTIME_EXECUTOR": "local",
        # The SQS poller sleeps this long after every non-empty poll (default 1 s: ~BatchSize messages/s).
        "LAMBDA_EVENT_SOURCE_MAPPING_POLL_INTERVAL_SEC": "0",
        # Default 10 s of idle backoff delays the first message after a quiet spell.
        "LAMBDA_EVENT_SOURCE_MAPPING_MAX_BACKOFF_ON_EMPTY_POLL_SEC": "1",
    })
    return env


def is_healthy(settings: LocalStackSettings | None = None, timeout: float = 1.0) -> bool:
    return _health(settings or settings_from_env(), timeout) is not None


def _health(settings: LocalStackSettings, timeout: float = 1.0) -> dict | None:
    try:
        with urllib.request.urlopen(settings.endpoint_url + HEALTH_PATH, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def start_localstack(settings: LocalStackSettings | None = None, *,
                     timeout: float = START_TIMEOUT_SECONDS) -> int | None:
    """Starts LocalStack in the background and waits until it is healthy; returns its pid.

    Idempotent: if one already answers on the port, returns the pid from the pid file (None if it was not
    started by us). Raises LocalStackError with the log's tail if it dies or does not become healthy in time.
    """
    settings = settings or settings_from_env()
    if is_healthy(settings):
        return _read_pid(settings)
    if not settings.localstack_python.exists():
        raise LocalStackError(f"{settings.localstack_python} not found: create the LocalStack venv first "
                              "(make .venv-localstack) or set LOCALSTACK_PYTHON")
    _check_executor_installed(settings)
    for directory in ("filesystem", "tmp"):
        # PERSISTENCE=0: nothing in them is meant to survive a restart, but a killed run leaves unpacked code.
        shutil.rmtree(settings.state_dir / directory, ignore_errors=True)
    for directory in ("volume", "filesystem", "tmp"):
        (settings.state_dir / directory).mkdir(parents=True, exist_ok=True)
    process = _launch(settings)
    settings.pid_file.write_text(f"{process.pid}\n")
    _wait_until_healthy(settings, process, timeout)
    return process.pid


def _check_executor_installed(settings: LocalStackSettings) -> None:
    """Without the plugin LocalStack falls back to Docker and every function ends Failed: say so up front."""
    probe = [str(settings.localstack_python), "-c",
             f"import importlib.metadata as m; m.distribution({EXECUTOR_DISTRIBUTION!r})"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        raise LocalStackError(f"the local Lambda executor is not installed in {settings.localstack_python}: "
                              "pip install -e infra/localstack_executor into the LocalStack venv")


def _launch(settings: LocalStackSettings) -> subprocess.Popen[bytes]:
    with settings.log_file.open("ab") as log:
        return subprocess.Popen(
            [str(settings.localstack_python), "-m", "localstack.runtime.main"],
            cwd=settings.state_dir,
            env=localstack_environment(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for the caller must not kill it; `down` does
        )


def _wait_until_healthy(settings: LocalStackSettings, process: subprocess.Popen[bytes],
                        timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            settings.pid_file.unlink(missing_ok=True)
            raise LocalStackError(f"LocalStack exited with {process.returncode}:\n{_log_tail(settings)}")
        if is_healthy(settings, timeout=0.5):
            return
        time.sleep(POLL_SECONDS)
    _signal(process.pid, signal.SIGTERM)
    raise LocalStackError(f"LocalStack not healthy after {timeout:.0f} s:\n{_log_tail(settings)}")


def stop_localstack(settings: LocalStackSettings | None = None, *,
                    timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """SIGTERM to the LocalStack we started (it stops its function processes), then waits; SIGKILL after
    ``timeout``. Returns False if none of ours was running."""
    settings = settings or settings_from_env()
    pid = _read_pid(settings)
    if pid is None:
        return False
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_ours(pid) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    if _is_ours(pid):
        _signal(-pid, signal.SIGKILL)  # its whole process group, function processes included
    settings.pid_file.unlink(missing_ok=True)
    return True


def status(settings: LocalStackSettings | None = None) -> dict[str, object]:
    settings = settings or settings_from_env()
    health = _health(settings)
    return {
        "endpoint": settings.endpoint_url,
        "pid": _read_pid(settings),
        "healthy": health is not None,
        "version": (health or {}).get("version"),
        "services": (health or {}).get("services", {}),
        "log": str(settings.log_file),
    }


def _read_pid(settings: LocalStackSettings) -> int | None:
    """The pid in the pid file if that process is still our LocalStack (pids get reused)."""
    try:
        pid = int(settings.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if _is_ours(pid):
        return pid
    settings.pid_file.unlink(missing_ok=True)
    return None


def _is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"localstack.runtime.main" in cmdline


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        if pid < 0:
            os.killpg(-pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _log_tail(settings: LocalStackSettings, lines: int = 40) -> str:
    try:
        return "\n".join(settings.log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _parse_parameters(pairs: list[str]) -> dict[str, str]:
    parameters = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator:
            raise SystemExit(f"--parameter expects Key=Value, got {pair!r}")
        parameters[key] = value
    return parameters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.localstack", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start LocalStack and wait until healthy")
    commands.add_parser("down", help="stop the LocalStack started by `up`")
    commands.add_parser("status", help="print pid, health and services as JSON")
    deploy = commands.add_parser("deploy", help="build and deploy a SAM template (starts LocalStack first)")
    deploy.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    deploy.add_argument("--stack-name", default=DEFAULT_STACK_NAME)
    deploy.add_argument("--parameter", "-p", action="append", default=[], metavar="Key=Value",
                        help="template parameter (overrides the DB_* / INGEST_* environment variables)")
    args = parser.parse_args(argv)
    settings = settings_from_env()
    started = time.monotonic()
    if args.command == "up":
        pid = start_localstack(settings)
        elapsed = time.monotonic() - started
        print(f"LocalStack healthy at {settings.endpoint_url} (pid {pid}) in {elapsed:.1f} s; "
              f"log {settings.log_file}")
    elif args.command == "down":
        stopped = stop_localstack(settings)
        print("LocalStack stopped" if stopped else "no LocalStack of ours was running")
    elif args.command == "status":
        print(json.dumps(status(settings), indent=2))
        return 0 if is_healthy(settings) else 3
    else:
        start_localstack(settings)
        outputs = deploy_stack(_parse_parameters(args.parameter), settings=settings, template=args.template,
                               stack_name=args.stack_name)
        for key, value in outputs.items():
            print(f"{key}={value}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LocalStackError as error:
        sys.exit(f"error: {error}")
