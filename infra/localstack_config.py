"""Where the host-mode LocalStack lives (port, state dir, the venvs of LocalStack and SAM); AWS clients."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
DEFAULT_PORT = 4566
LOOPBACK = "127.0.0.1"
# LocalStack accepts any credentials; fixed dummies keep a developer's real AWS profile out of the way.
DUMMY_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@dataclass(frozen=True)
class LocalStackSettings:
    port: int
    state_dir: Path
    localstack_python: Path
    sam_cli: Path

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "localstack.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "localstack.log"


def settings_from_env(environ: dict[str, str] | None = None) -> LocalStackSettings:
    """Settings from the environment, all optional: LOCALSTACK_PORT (else the port of a loopback
    AWS_ENDPOINT_URL, else 4566); TICKSTREAM_LOCALSTACK_DIR (state, default .localstack/); LOCALSTACK_PYTHON
    and SAM_CLI (default: the venvs the Makefile creates, .venv-localstack and .venv-sam)."""
    env = os.environ if environ is None else environ
    return LocalStackSettings(
        port=_port(env),
        state_dir=Path(env.get("TICKSTREAM_LOCALSTACK_DIR") or REPO_ROOT / ".localstack").resolve(),
        localstack_python=Path(env.get("LOCALSTACK_PYTHON") or REPO_ROOT / ".venv-localstack/bin/python"),
        sam_cli=Path(env.get("SAM_CLI") or REPO_ROOT / ".venv-sam/bin/sam"),
    )


def _port(env: dict[str, str] | os._Environ[str]) -> int:
    if env.get("LOCALSTACK_PORT"):
        return int(env["LOCALSTACK_PORT"])
    endpoint = urlsplit(env.get("AWS_ENDPOINT_URL") or "")
    if endpoint.hostname in (LOOPBACK, "localhost") and endpoint.port:
        return endpoint.port
    return DEFAULT_PORT


def aws_client(service: str, settings: LocalStackSettings | None = None, **kwargs: Any) -> Any:
    """A boto3 client for the local stack (imported lazily: the CLI's `up`/`down` do not need boto3)."""
    import boto3
    from botocore.config import Config

    settings = settings or settings_from_env()
    config = Config(retries={"max_attempts": 2, "mode": "standard"}, s3={"addressing_style": "path"})
    return boto3.client(service, endpoint_url=settings.endpoint_url, region_name=REGION, config=config,
                        **DUMMY_CREDENTIALS, **kwargs)
