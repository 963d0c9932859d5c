"""A LocalStack Lambda runtime executor that runs each execution environment as a host subprocess.

LocalStack's only shipped executor starts a Docker container per environment with aws-lambda-rie and a Go
init. This one starts ``bootstrap.py`` under the interpreter matching the function's runtime and lets it speak
the same internal runtime protocol, so everything above the executor (invoke API, event source mappings,
retries, DLQs, CloudWatch logs) is LocalStack's own code, unchanged.

One executor = one execution environment = one warm process, reused until LocalStack retires the environment
(LAMBDA_KEEPALIVE_MS) or the function changes. The executor, not the bootstrap, enforces the function
timeout: it kills the process (a handler stuck in C code cannot be interrupted from inside) and answers the
invoke with AWS's ``Sandbox.Timedout`` error; the next invoke starts a fresh process, like AWS
re-initialising a sandbox.

Uses LocalStack internals (``RuntimeExecutor``, ``ExecutorEndpoint``, ``FunctionVersion``): pinned to
localstack-core==2026.3.0 in pyproject.toml; re-run tests/test_localstack_executor.py before changing the pin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path

from localstack import config
from localstack.aws.api.lambda_ import PackageType
from localstack.services.lambda_.invocation.executor_endpoint import ExecutorEndpoint, StatusErrorException
from localstack.services.lambda_.invocation.lambda_models import FunctionVersion, InvocationResult
from localstack.services.lambda_.invocation.runtime_executor import LambdaRuntimeException, RuntimeExecutor
from werkzeug import Request

from tickstream_localstack_executor.interpreters import InterpreterNotFound, resolve_interpreter

# The AWS SDK that Lambda's python runtimes bundle (in /var/runtime, after the function code and layers).
RUNTIME_SDK_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")


def runtime_sdk_dir() -> Path:
    """A directory holding only the runtime's bundled SDK (links into LocalStack's own, pure-Python copies), so
    functions can `import boto3` as on AWS without seeing anything else LocalStack has installed."""
    target = Path(config.dirs.tmp) / "lambda-runtime-sdk"
    target.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_SDK_MODULES:
        module = __import__(name)
        source = Path(module.__file__)
        source = source.parent if source.name == "__init__.py" else source
        link = target / source.name
        if not link.exists():
            with contextlib.suppress(FileExistsError):  # another executor made it meanwhile
                link.symlink_to(source)
    return target

LOG = logging.getLogger(__name__)
BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
STOP_GRACE_SECONDS = 2.0
LOG_TAIL_BYTES = 64 * 1024
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


class _Endpoint(ExecutorEndpoint):
    """LocalStack's endpoint, learning the bootstrap's invoke port from its ready call: no port is guessed."""

    def status_ready(self, request: Request, executor_id: str):
        body = request.get_json(silent=True) or {}
        if isinstance(body, dict) and body.get("port"):
            self.container_port = int(body["port"])
        return super().status_ready(request, executor_id)


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    log_path: Path
    retired: bool = False  # stopped on purpose (timeout, shutdown): its exit is expected


class LocalRuntimeExecutor(RuntimeExecutor):
    executor_endpoint: _Endpoint

    def __init__(self, id: str, function_version: FunctionVersion) -> None:
        super().__init__(id=id, function_version=function_version)
        self.executor_endpoint = _Endpoint(self.id, container_address="127.0.0.1", container_port=None)
        name = function_version.id.function_name
        self._scratch = Path(tempfile.mkdtemp(prefix=f"lambda-{name}-{self.id[:8]}-"))
        self._log_path = self._scratch / "output.log"
        self._env: dict[str, str] = {}
        self._interpreter = ""
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self._request_id: str | None = None
        self._log_offset = 0

    # Lifecycle (called by LocalStack's ExecutionEnvironment)

    def start(self, env_vars: dict[str, str]) -> None:
        runtime = self.function_version.config.runtime
        self._interpreter = resolve_interpreter(runtime)
        self._env = self._process_environment(env_vars, runtime)
        self._spawn()

    def stop(self) -> None:
        with self._lock:
            worker = self._retire_worker()
        if worker is not None:
            _terminate(worker.process)
        try:
            self.executor_endpoint.shutdown()
        except Exception as error:
            LOG.debug("executor endpoint %s: shutdown: %s", self.id, error)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def invoke(self, payload: dict[str, str]) -> InvocationResult:
        if self._worker is None:
            # The previous process was killed (timeout) or died: re-initialise, like a fresh sandbox on AWS.
            self._spawn()
        request_id = payload["invoke-id"]
        self._request_id = request_id
        self._log_offset = _file_size(self._log_path)
        timer = threading.Timer(self.function_version.config.timeout, self._on_timeout, args=(request_id,))
        timer.daemon = True
        timer.start()
        try:
            return self.executor_endpoint.invoke(payload)
        finally:
            timer.cancel()
            self._request_id = None

    def get_address(self) -> str:
        return "127.0.0.1"

    def get_endpoint_from_executor(self) -> str:
        host = config.GATEWAY_LISTEN[0].host
        return "127.0.0.1" if host in WILDCARD_HOSTS else host

    def get_runtime_endpoint(self) -> str:
        port = config.GATEWAY_LISTEN[0].port
        prefix = self.executor_endpoint.get_endpoint_prefix()
        return f"http://{self.get_endpoint_from_executor()}:{port}{prefix}"

    def get_logs(self) -> str:
        return _read_from(self._log_path, max(0, _file_size(self._log_path) - LOG_TAIL_BYTES))

    @classmethod
    def prepare_version(cls, function_version: FunctionVersion) -> None:
        """Unpacks code and layers; fails the function (State=Failed, with a reason) if it cannot run here."""
        fn_config = function_version.config
        if fn_config.package_type != PackageType.Zip or not fn_config.runtime:
            raise LambdaRuntimeException("the local executor runs zip-packaged functions only, not images")
        try:
            resolve_interpreter(fn_config.runtime)
        except InterpreterNotFound as error:
            raise LambdaRuntimeException(str(error)) from error
        fn_config.code.prepare_for_execution()
        for layer in fn_config.layers:
            if layer.code is not None:
                layer.code.prepare_for_execution()

    @classmethod
    def cleanup_version(cls, function_version: FunctionVersion) -> None:
        pass  # LocalStack removes unpacked code itself; there is no image to clean up

    @classmethod
    def validate_environment(cls) -> bool:
        try:
            resolve_interpreter("python3.12")
        except InterpreterNotFound as error:
            LOG.warning("local Lambda executor: %s", error)
        return True

    # Process management

    def _process_environment(self, env_vars: dict[str, str], runtime: str) -> dict[str, str]:
        """A clean environment: LocalStack's variables (SERVICES, venv paths) must not leak into functions."""
        code_dir = self.function_version.config.code.get_unzipped_code_location()
        layers = [str(layer.code.get_unzipped_code_location())
                  for layer in self.function_version.config.layers if layer.code is not None]
        tmp_dir = self._scratch / "tmp"  # the function's private /tmp
        tmp_dir.mkdir(exist_ok=True)
        env = {"PATH": f"{Path(self._interpreter).parent}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        env.update({key: str(value) for key, value in env_vars.items() if value is not None})
        env.update({
            "LAMBDA_TASK_ROOT": str(code_dir),
            "LAMBDA_RUNTIME_DIR": str(BOOTSTRAP.parent),
            "TMPDIR": str(tmp_dir),
            "_LOCAL_EXECUTOR_RUNTIME": runtime,
            "_LOCAL_EXECUTOR_LAYERS": os.pathsep.join(layers),
            "_LOCAL_EXECUTOR_RUNTIME_SDK": str(runtime_sdk_dir()),
        })
        return env

    def _spawn(self) -> None:
        self.executor_endpoint.start()  # registers the callback routes and a fresh startup future
        with self._log_path.open("ab") as log:
            process = subprocess.Popen(
                # -u: output reaches the log file as it happens (timeouts still show it); -B: no .pyc files in
                # LocalStack's code cache; -s: no user site-packages, only what the function ships.
                [self._interpreter, "-u", "-B", "-s", str(BOOTSTRAP)],
                cwd=self._env["LAMBDA_TASK_ROOT"],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: a timeout kills the handler's children too
            )
        worker = _Worker(process, self._log_path)
        self._worker = worker
        name = f"lambda-{self.id[:8]}"
        threading.Thread(target=self._watch, args=(worker,), name=name, daemon=True).start()
        LOG.debug("executor %s: pid %s for %s", self.id, process.pid, self.function_version.qualified_arn)
        self.executor_endpoint.wait_for_startup()

    def _retire_worker(self) -> _Worker | None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.retired = True
        return worker

    def _watch(self, worker: _Worker) -> None:
        """Turns an unexpected exit (crash, os._exit, init failure) into an error instead of a hung invoke."""
        code = worker.process.wait()
        with self._lock:
            if worker.retired or worker is not self._worker:
                return
            self._retire_worker()
        message = f"Runtime exited with error: exit status {code}"
        startup = self.executor_endpoint.startup_future
        if startup is not None and not startup.done():
            error = {"errorType": "Runtime.ExitError", "errorMessage": message}
            _set_exception(startup, StatusErrorException(message, payload=json.dumps(error).encode()))
            return
        request_id = self._request_id
        if request_id:
            error = {"errorType": "Runtime.ExitError",
                     "errorMessage": f"RequestId: {request_id} Error: {message}"}
            self._fail_invocation(request_id, error, f"{message}\n")

    def _on_timeout(self, request_id: str) -> None:
        with self._lock:
            future = self.executor_endpoint.invocation_future
            if future is None or future.done() or self._request_id != request_id:
                return  # answered just in time
            worker = self._retire_worker()
        if worker is not None:
            _kill(worker.process)
        seconds = float(self.function_version.config.timeout)
        error = {"errorType": "Sandbox.Timedout",
                 "errorMessage": f"RequestId: {request_id} Error: Task timed out after {seconds:.2f} seconds"}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        last_line = f"{stamp}Z {request_id} Task timed out after {seconds:.2f} seconds\n"
        self._fail_invocation(request_id, error, last_line)

    def _fail_invocation(self, request_id: str, error: dict[str, str], last_line: str) -> None:
        """Answers the pending invoke with ``error`` and the logs the process wrote before it went away."""
        logs = _read_from(self._log_path, self._log_offset)
        if logs and not logs.endswith("\n"):
            logs += "\n"
        logs += f"{last_line}END RequestId: {request_id}\nREPORT RequestId: {request_id}\tStatus: error\n"
        result = InvocationResult(request_id, json.dumps(error).encode(), is_error=True, logs=logs)
        future = self.executor_endpoint.invocation_future
        if future is not None:
            with contextlib.suppress(InvalidStateError):  # the real answer won the race
                future.set_result(result)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        _kill(process)


def _kill(process: subprocess.Popen[bytes]) -> None:
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(process.pid, sig)


def _set_exception(future: Future[bool], error: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        future.set_exception(error)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
