"""The real SAM CLI, with its Lambda containers on the host network.

    .venv-sam/bin/python infra/sam_local/sam_launcher.py local invoke IngestFunction -e events/ingest.json ...

Runs under the SAM venv (it imports samcli; arguments are `sam`'s). Why it exists: SAM never sets a container's
network mode (`--docker-network host` only skips joining a network), so a Lambda container lands on Docker's
default bridge; on a daemon without any bridge (the only kind allowed here: nothing may leave 127.0.0.0/8) it has
only its own loopback, SAM cannot reach the emulator and times out after 15 s. The launcher changes docker-py's
`containers.create`, only for containers SAM labels as Lambda containers: host network mode, no port mapping, and
the emulator told to listen on 127.0.0.1 at the port SAM connects to and to serve the runtime API on another free
loopback port. Both ports come from the kernel's ephemeral range (SAM's own pick, 5000–9000, could land on a fixed
port another part of the system uses, such as 8000). Image builds (SAM's `RUN mv … aws-lambda-rie`) get no
network at all; any other container is refused; `local` commands never pull; the function's AWS SDK gets a
loopback AWS_ENDPOINT_URL (the launcher's own AWS_ENDPOINT_URL, e.g. a LocalStack on the host, else a closed
port). It depends on SAM's and docker-py's internals: both are pinned in infra/requirements-sam.txt, and
`check_internals()` fails loudly (exit 3) when an upgrade moved them.
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

LOOPBACK = "127.0.0.1"
LAMBDA_LABEL = ("sam.cli.container.type", "lambda")
EMULATOR_CONTAINER_PORT = "8080"  # samcli.local.docker.container.Container.RAPID_PORT_CONTAINER
# Where a function's AWS SDK calls go unless the caller names an endpoint (LocalStack, say): a closed loopback port
# (discard), so a stray call fails fast here instead of resolving and reaching AWS.
CLOSED_ENDPOINT = f"http://{LOOPBACK}:9"


class UnsupportedSam(RuntimeError):
    pass


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def host_network_kwargs(kwargs: dict[str, Any], runtime_api_port: int,
                        aws_endpoint: str = CLOSED_ENDPOINT) -> dict[str, Any]:
    """What docker-py's `containers.create` gets instead, for one Lambda container."""
    labels = kwargs.get("labels") or {}
    if labels.get(LAMBDA_LABEL[0]) != LAMBDA_LABEL[1]:
        raise UnsupportedSam(f"refusing a container that is not a SAM Lambda container (labels {labels}): only "
                             "Lambda containers are known to work on the host network")
    ports = dict(kwargs.get("ports") or {})
    binding = ports.pop(EMULATOR_CONTAINER_PORT, None)
    if binding is None or ports:
        raise UnsupportedSam(f"unexpected port mapping {kwargs.get('ports')} (debug ports are not supported)")
    _interface, emulator_port = binding
    entrypoint = list(kwargs.get("entrypoint") or [])
    if not entrypoint or not entrypoint[0].endswith("aws-lambda-rie"):
        raise UnsupportedSam(f"unexpected entrypoint {entrypoint}: expected SAM's runtime interface emulator")
    environment = kwargs.get("environment") or {}
    if not isinstance(environment, dict):
        raise UnsupportedSam(f"unexpected environment {type(environment).__name__}: expected a dict")
    changed = {key: value for key, value in kwargs.items() if key not in ("ports", "network", "networking_config")}
    changed.update(
        network_mode="host",
        environment={**environment, "AWS_ENDPOINT_URL": environment.get("AWS_ENDPOINT_URL") or aws_endpoint},
        entrypoint=[*entrypoint, "--runtime-interface-emulator-address", f"{LOOPBACK}:{emulator_port}",
                    "--runtime-api-address", f"{LOOPBACK}:{runtime_api_port}"],
    )
    return changed


def check_internals() -> None:
    """The calls this launcher changes must still look as they did in the pinned SAM and docker-py."""
    import docker.api.build
    import docker.models.containers
    import samcli.local.docker.container
    from samcli.local.docker.container import Container
    from samcli.local.docker.lambda_container import LambdaContainer

    problems = []
    if Container.RAPID_PORT_CONTAINER != EMULATOR_CONTAINER_PORT:
        problems.append(f"RAPID_PORT_CONTAINER is {Container.RAPID_PORT_CONTAINER!r}")
    if "network_mode" not in inspect.signature(docker.api.build.BuildApiMixin.build).parameters:
        problems.append("docker-py's build() has no network_mode")
    if "aws-lambda-rie" not in LambdaContainer._get_default_entry_point()[0]:
        problems.append("SAM's default entrypoint is no longer the emulator")
    if "find_free_port(" not in inspect.getsource(Container.__init__) or not callable(
            getattr(samcli.local.docker.container, "find_free_port", None)):
        problems.append("SAM no longer picks the emulator's port with container.find_free_port")
    if "containers.create(self._image, **kwargs)" not in inspect.getsource(Container.create):
        problems.append("SAM no longer creates containers through docker-py's containers.create")
    if problems:
        raise UnsupportedSam("; ".join(problems))


def install() -> None:
    import docker.api.build
    import docker.models.containers
    import samcli.local.docker.container

    original_create = docker.models.containers.ContainerCollection.create
    original_build = docker.api.build.BuildApiMixin.build

    @functools.wraps(original_create)
    def create(self: Any, image: str, command: Any = None, **kwargs: Any) -> Any:
        aws_endpoint = os.environ.get("AWS_ENDPOINT_URL") or CLOSED_ENDPOINT  # e.g. a LocalStack on the host
        return original_create(self, image, command, **host_network_kwargs(kwargs, free_loopback_port(), aws_endpoint))

    @functools.wraps(original_build)
    def build(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["network_mode"] = "none"
        return original_build(self, *args, **kwargs)

    docker.models.containers.ContainerCollection.create = create
    docker.api.build.BuildApiMixin.build = build
    samcli.local.docker.container.find_free_port = lambda *args, **kwargs: free_loopback_port()


def with_skip_pull(argv: list[str]) -> list[str]:
    """`local` commands never pull: the base image is the local stand-in, and a pull or SAM's "is the base image
    current" check would ask public.ecr.aws (no registry is reachable; nothing may leave 127.0.0.0/8)."""
    if argv[:1] == ["local"] and "--skip-pull-image" not in argv and not {"-h", "--help"} & set(argv):
        return [*argv, "--skip-pull-image"]
    return argv


def main() -> Callable[..., Any]:
    # No telemetry to AWS, no version check against PyPI: the launcher must not talk beyond the loopback.
    os.environ.update(SAM_CLI_TELEMETRY="0", SAM_CLI_DISABLE_UPDATE_CHECK="1")
    try:
        check_internals()
    except UnsupportedSam as error:
        print(f"sam_launcher: this SAM CLI / docker-py is not the pinned one: {error}", file=sys.stderr)
        sys.exit(3)
    install()
    import samcli.lib.utils.version_checker
    from samcli.cli.main import cli

    samcli.lib.utils.version_checker._inform_newer_version = lambda force_check=False: None
    return cli(args=with_skip_pull(sys.argv[1:]), prog_name="sam")


if __name__ == "__main__":
    main()
