"""Fixtures for the API tests: the Chalice app in-process (chalice.test.Client) and as a real `chalice local`.

Loaded by the API test modules through `pytest_plugins`. Both point at the session's test database (`db_env`)
with a known API_TOKEN and no queues configured (queue tests configure their own LocalStack queues).

PYTEST_DONT_REWRITE: the test modules import helpers from here before `pytest_plugins` registers it, and it has
no asserts to rewrite.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from tickstream.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
API_DIR = REPO_ROOT / "functions" / "api"
TOKEN = f"test-token-{uuid.uuid4().hex}"
# Variables of the developer's shell that would point the API somewhere else.
_FOREIGN_ENV = ("API_TOKEN", "API_TOKEN_SECRET_ARN", "TICKS_QUEUE_URL", "TICKS_DLQ_URL")


def load_api_app() -> ModuleType:
    """functions/api/app.py, imported once per process under a name no other test module uses."""
    name = "tickstream_api_app"
    if name in sys.modules:
        return sys.modules[name]
    if str(API_DIR) not in sys.path:
        sys.path.insert(0, str(API_DIR))  # for `chalicelib`, as Lambda and `chalice local` put it on the path
    spec = importlib.util.spec_from_file_location(name, API_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def reset_api_state() -> None:
    """Forget cached settings, the DB connection and secret tokens, as a cold container would."""
    load_settings.cache_clear()
    load_api_app()
    from chalicelib import http, service

    service.database.reset()
    http.tokens.clear()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        return self.json()["error"]["code"]


class InProcessApi:
    """chalice.test.Client with JSON and auth conveniences; the token is sent unless `token=None`."""

    def __init__(self, http_client: Any) -> None:
        self._http = http_client

    def request(self, method: str, path: str, *, json_body: Any = None, body: bytes | str | None = None,
                headers: Mapping[str, str] | None = None, token: str | None = TOKEN) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        if json_body is not None:
            body = json.dumps(json_body)
            sent.setdefault("Content-Type", "application/json")
        data = body.encode() if isinstance(body, str) else (body or b"")
        response = self._http.request(method, path, headers=sent, body=data)
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.body)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Reply:
        return self.request("POST", path, json_body=json_body, **kwargs)

    def patch(self, path: str, json_body: Any = None, **kwargs: Any) -> Reply:
        return self.request("PATCH", path, json_body=json_body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Reply:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch, db_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The API's environment for one test: the test database, TOKEN, no queues."""
    for name in _FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    env = {**db_env, "API_TOKEN": TOKEN}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_api_state()
    yield env
    monkeypatch.undo()
    reset_api_state()


@pytest.fixture
def api(api_env: dict[str, str], db: Any) -> InProcessApi:
    """The app in-process over an empty schema."""
    from chalice.test import Client

    client = Client(load_api_app().app, project_dir=str(API_DIR))
    return InProcessApi(client.http)


# --- chalice local -----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LocalServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def chalice_local_command(port: int) -> list[str]:
    chalice = Path(sys.executable).with_name("chalice")
    return [str(chalice), "--project-dir", str(API_DIR), "local", "--host", "127.0.0.1", "--port", str(port),
            "--no-autoreload"]


def start_chalice_local(env: Mapping[str, str], log_path: Path, timeout: float = 30) -> LocalServer:
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
    log_file = log_path.open("wb")
    process = subprocess.Popen(chalice_local_command(port), env=full_env, stdout=log_file,
                               stderr=subprocess.STDOUT, cwd=API_DIR)
    server = LocalServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chalice local exited with {process.returncode}:\n{server.log()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    stop_chalice_local(server)
    raise RuntimeError(f"chalice local did not become healthy in {timeout} s:\n{server.log()}")


def stop_chalice_local(server: LocalServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def chalice_local(db_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A real `chalice local` on a free port, against the test database, with API_TOKEN=TOKEN."""
    log_path = tmp_path_factory.mktemp("chalice-local") / "chalice-local.log"
    server = start_chalice_local({**db_env, "API_TOKEN": TOKEN}, log_path)
    yield server
    stop_chalice_local(server)


class HttpApi:
    """Requests to `chalice local`, each on a fresh connection with the token unless `token=None`.

    No keep-alive: chalice local answers a second request on a kept-alive connection only after a ~40 ms delayed
    ACK (it writes headers and body separately), and it closes `Connection: close` connections without saying so
    in the response, so a pooled connection can be found dead on reuse.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def request(self, method: str, path: str, *, token: str | None = TOKEN,
                headers: Mapping[str, str] | None = None, **kwargs: Any) -> requests.Response:
        sent = {"Connection": "close", **(headers or {})}
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        return requests.request(method, self.base_url + path, headers=sent, timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)


@pytest.fixture
def http_api(chalice_local: LocalServer, db: Any) -> HttpApi:
    """`chalice local` over an empty schema."""
    return HttpApi(chalice_local.url)
