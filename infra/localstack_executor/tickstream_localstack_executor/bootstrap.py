"""One Lambda execution environment on the host: what aws-lambda-rie + LocalStack's Go init do in Docker.

Runs under the *function's* interpreter (e.g. python3.12), never LocalStack's, so it may use the standard
library only. It speaks LocalStack's internal runtime protocol (``localstack.services.lambda_.invocation
.executor_endpoint``):

1. init: import the handler (module-level code runs once, like a cold start), then POST
   ``{LOCALSTACK_RUNTIME_ENDPOINT}/status/{LOCALSTACK_RUNTIME_ID}/ready`` with the port of a tiny HTTP server
   on 127.0.0.1 (or ``.../error`` with an AWS-style error if the import failed, then exit);
2. LocalStack POSTs each invocation to ``http://127.0.0.1:<port>/invoke``; it is answered at once and queued;
3. the main thread runs the handler, then POSTs the captured output to ``.../invocations/<id>/logs`` and the
   result to ``.../invocations/<id>/response`` (or ``/error``).

The process stays up between invocations (a warm environment), so module-level state such as a database
connection is reused exactly like on AWS. The executor, which owns the process, handles timeouts and crashes.
"""

from __future__ import annotations

import contextlib
import decimal
import http.client
import importlib
import json
import logging
import os
import queue
import resource
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

# Delimits one invocation's output inside the captured stdout/stderr pipe (see OutputCapture).
DRAIN_MARK = b"\x00\x1e--local-executor-drain--\x1e\x00"
PARENT_CHECK_SECONDS = 0.5
LOG_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n"


class OutputCapture:
    """Captures fds 1 and 2 (print, logging, C extensions, child processes) through one pipe.

    Everything read is also copied to ``tee_fd`` (the executor's per-environment log file), so the executor
    can still report what a function printed before it was killed for a timeout.
    """

    def __init__(self, tee_fd: int) -> None:
        self._tee_fd = tee_fd
        self._carry = b""
        self._current = bytearray()
        self._segments: list[bytes] = []
        self._cond = threading.Condition()
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._read_fd = read_fd
        threading.Thread(target=self._pump, name="output-capture", daemon=True).start()

    def drain(self) -> str:
        """Everything written since the previous drain."""
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(1, DRAIN_MARK)
        with self._cond:
            self._cond.wait_for(lambda: bool(self._segments), timeout=5)
            data = self._segments.pop(0) if self._segments else b""
        return data.decode("utf-8", errors="replace")

    def _pump(self) -> None:
        while chunk := os.read(self._read_fd, 65536):
            self._feed(self._carry + chunk)

    def _feed(self, data: bytes) -> None:
        while (index := data.find(DRAIN_MARK)) >= 0:
            self._emit(data[:index])
            with self._cond:
                self._segments.append(bytes(self._current))
                self._current.clear()
                self._cond.notify_all()
            data = data[index + len(DRAIN_MARK):]
        keep = _partial_mark_length(data)
        self._emit(data[: len(data) - keep])
        self._carry = data[len(data) - keep:]

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        with contextlib.suppress(OSError):  # the log file is a convenience: never break a function for it
            os.write(self._tee_fd, data)
        with self._cond:
            self._current += data


def _partial_mark_length(data: bytes) -> int:
    """Length of the longest tail of ``data`` that could be the start of a DRAIN_MARK split across reads."""
    for length in range(min(len(data), len(DRAIN_MARK) - 1), 0, -1):
        if data.endswith(DRAIN_MARK[:length]):
            return length
    return 0


class RuntimeClient:
    """POSTs to LocalStack's executor endpoint over one kept-alive loopback connection."""

    def __init__(self, endpoint: str) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self._prefix = parsed.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> None:
        for attempt in (1, 2):
            try:
                self._post_once(path, body)
                return
            except (OSError, http.client.HTTPException):
                self._close()  # a stale kept-alive connection: retry once on a fresh one
                if attempt == 2:
                    raise

    def _post_once(self, path: str, body: bytes) -> None:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
        self._conn.request("POST", self._prefix + path, body=body,
                           headers={"Content-Type": "application/json"})
        response = self._conn.getresponse()
        response.read()
        if response.status >= 300:
            raise http.client.HTTPException(f"POST {path} answered {response.status}")

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class LambdaContext:
    """The ``context`` argument of a Python Lambda handler (same attribute names as awslambdaric's)."""

    def __init__(self, request_id: str, invoked_arn: str, deadline: float) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


class _RequestIdFilter(logging.Filter):
    request_id = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        return True


REQUEST_ID_FILTER = _RequestIdFilter()


def install_root_log_handler() -> None:
    """Like the AWS Python runtime: the root logger prints to stdout in Lambda's tab-separated format."""
    handler = logging.StreamHandler(sys.stdout)
    formatter = logging.Formatter(LOG_FORMAT.rstrip("\n"), "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(REQUEST_ID_FILTER)
    logging.getLogger().addHandler(handler)


def setup_sys_path(task_root: str, layers: list[str], runtime: str, runtime_sdk: str | None = None) -> None:
    """Function code first, then each layer's python/lib/<runtime>/site-packages and python/ (/opt on AWS), then
    the runtime's bundled SDK (boto3; /var/runtime on AWS)."""
    script_dir = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != script_dir]
    layer_paths = [os.path.join(layer, "python", "lib", runtime, "site-packages") for layer in layers]
    layer_paths += [os.path.join(layer, "python") for layer in layers]
    sys.path[0:0] = [task_root, *layer_paths]
    if runtime_sdk:
        sys.path.append(runtime_sdk)


def load_handler(spec: str) -> Callable[[Any, LambdaContext], Any]:
    module_path, _, function_name = spec.rpartition(".")
    if not module_path:
        raise HandlerError("Runtime.MalformedHandlerName",
                           f"Bad handler '{spec}': not enough values to unpack")
    try:
        module = importlib.import_module(module_path.replace("/", "."))
    except ImportError as error:
        raise HandlerError("Runtime.ImportModuleError",
                           f"Unable to import module '{module_path}': {error}") from error
    handler = getattr(module, function_name, None)
    if handler is None:
        raise HandlerError("Runtime.HandlerNotFound",
                           f"Handler '{function_name}' missing on module '{module_path}'")
    return handler


class HandlerError(Exception):
    """An init failure with the errorType AWS reports for it."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def user_traceback(error: BaseException) -> Any:
    """The traceback without the bootstrap's own frames, like AWS shows it (it starts in the handler)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def error_payload(error: BaseException, request_id: str | None = None) -> dict[str, Any]:
    frames = traceback.extract_tb(user_traceback(error))
    payload: dict[str, Any] = {
        "errorMessage": str(error),
        "errorType": getattr(error, "error_type", type(error).__name__),
        "stackTrace": traceback.format_list(frames),
    }
    if request_id:
        payload["requestId"] = request_id
    return payload


def peak_rss_mb() -> int:
    """Peak RSS of this process. Not ru_maxrss: Linux carries that over from the parent we were forked from
    (LocalStack, ~600 MB), while VmHWM starts afresh at exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _json_default(value: Any) -> Any:
    # awslambdaric serialises Decimal as a number too (DynamoDB results are full of them).
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def start_invoke_server(invocations: queue.Queue[dict[str, Any]]) -> int:
    """Listens for LocalStack's invoke POSTs on a free loopback port; returns the port."""

    class InvokeHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/invoke":
                self.send_error(404)
                return
            invocations.put(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per invoke on stderr would end up in the function's logs

    server = HTTPServer(("127.0.0.1", 0), InvokeHandler)
    threading.Thread(target=server.serve_forever, name="invoke-server", daemon=True).start()
    return server.server_address[1]


def exit_with_parent() -> None:
    """LocalStack killed hard (SIGKILL) cannot stop us: leave when we are re-parented."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Runtime:
    def __init__(self, client: RuntimeClient, capture: OutputCapture,
                 handler: Callable[[Any, LambdaContext], Any], init_ms: float, init_logs: str) -> None:
        self.client = client
        self.capture = capture
        self.handler = handler
        self.timeout = float(os.environ.get("AWS_LAMBDA_FUNCTION_TIMEOUT", "3"))
        self.memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.init_ms: float | None = init_ms
        self.init_logs = init_logs

    def run(self, invocation: dict[str, Any]) -> None:
        request_id = invocation["invoke-id"]
        started = time.time()
        os.environ["_X_AMZN_TRACE_ID"] = invocation.get("trace-id") or ""
        REQUEST_ID_FILTER.request_id = request_id
        os.write(1, f"START RequestId: {request_id} Version: {self.version}\n".encode())
        invoked_arn = invocation.get("invoked-function-arn", "")
        context = LambdaContext(request_id, invoked_arn, started + self.timeout)
        body, is_error = self._call(invocation.get("payload") or "{}", context)
        self._report(request_id, started)
        logs = self.init_logs + self.capture.drain()
        self.init_logs = ""
        self.client.post(f"/invocations/{request_id}/logs", json.dumps({"logs": logs}).encode())
        outcome = "error" if is_error else "response"
        self.client.post(f"/invocations/{request_id}/{outcome}", body)

    def _call(self, payload: str, context: LambdaContext) -> tuple[bytes, bool]:
        try:
            result = self.handler(json.loads(payload), context)
        except Exception as error:
            lines = traceback.format_exception(type(error), error, user_traceback(error))
            print(f"[ERROR] {type(error).__name__}: {error}\n{''.join(lines[:-1])}", end="", flush=True)
            return json.dumps(error_payload(error, context.aws_request_id)).encode(), True
        try:
            return json.dumps(result, default=_json_default).encode(), False
        except (TypeError, ValueError) as error:
            marshal = HandlerError("Runtime.MarshalError", f"Unable to marshal response: {error}")
            return json.dumps(error_payload(marshal, context.aws_request_id)).encode(), True

    def _report(self, request_id: str, started: float) -> None:
        duration_ms = (time.time() - started) * 1000
        max_memory_mb = peak_rss_mb()
        report = (f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
                  f"Billed Duration: {int(duration_ms) + 1} ms\tMemory Size: {self.memory} MB\t"
                  f"Max Memory Used: {max_memory_mb} MB\t")
        if self.init_ms is not None:
            report += f"Init Duration: {self.init_ms:.2f} ms\t"
            self.init_ms = None
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(1, f"END RequestId: {request_id}\n{report}\n".encode())


def init_runtime(client: RuntimeClient, capture: OutputCapture) -> Runtime:
    """Cold start: import the handler; on failure tell LocalStack (it fails the pending invoke) and exit."""
    runtime_id = os.environ["LOCALSTACK_RUNTIME_ID"]
    started = time.time()
    try:
        handler = load_handler(os.environ["_HANDLER"])
    except Exception as error:
        if not isinstance(error, HandlerError):
            error = HandlerError(f"Runtime.{type(error).__name__}", f"Init error: {error}")
        print(f"[ERROR] {error.error_type}: {error}\n{traceback.format_exc()}", end="", flush=True)
        capture.drain()
        client.post(f"/status/{runtime_id}/error", json.dumps(error_payload(error)).encode())
        sys.exit(1)
    return Runtime(client, capture, handler, (time.time() - started) * 1000, capture.drain())


def main() -> None:
    exit_with_parent()
    tee_fd = os.dup(2)  # the executor's per-environment log file
    capture = OutputCapture(tee_fd)
    own_version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    runtime_name = os.environ.get("_LOCAL_EXECUTOR_RUNTIME", own_version)
    layers = [path for path in os.environ.pop("_LOCAL_EXECUTOR_LAYERS", "").split(os.pathsep) if path]
    runtime_sdk = os.environ.pop("_LOCAL_EXECUTOR_RUNTIME_SDK", None)
    setup_sys_path(os.environ["LAMBDA_TASK_ROOT"], layers, runtime_name, runtime_sdk)
    install_root_log_handler()
    client = RuntimeClient(os.environ["LOCALSTACK_RUNTIME_ENDPOINT"])
    runtime = init_runtime(client, capture)
    invocations: queue.Queue[dict[str, Any]] = queue.Queue()
    port = start_invoke_server(invocations)
    client.post(f"/status/{os.environ['LOCALSTACK_RUNTIME_ID']}/ready", json.dumps({"port": port}).encode())
    while True:
        runtime.run(invocations.get())


if __name__ == "__main__":
    main()
