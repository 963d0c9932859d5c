"""Offline checks that keep template.yaml, docker-compose.localstack.yml and the native local stack in step.

    python -m infra.template_checks                # every check; exit 1 on any finding
    python -m infra.template_checks --only compose-drift --only compose-schema
    python -m infra.template_checks --build        # also `sam build` (no container)

- sam-validate     `sam validate --lint` (the SAM venv; region only, no credentials, no network).
- translated-lint  template.yaml translated to plain CloudFormation with aws-sam-translator, then cfn-lint on that:
                   cfn-lint alone does not look inside SAM events (it passed MaximumConcurrency 1, python3.99 and
                   `ReportBatchItemFailure`), the generated AWS::Lambda::EventSourceMapping is checked properly.
- compose-schema   check-jsonschema --builtin-schema vendor.compose-spec on the compose file.
- compose-drift    the compose LocalStack's settings equal infra/localstack.py's (host-only ones excepted); every
                   .env.example setting the producer and the API read is passed to them; the deploy step gets every
                   template parameter variable of infra/stack.py; ${...} names are .env.example's; the stack outputs
                   the deploy step exports exist in template.yaml.
- iam-coverage     every AWS API a runtime's code calls (boto3 client methods, found by AST over its import
                   closure) is granted to that runtime's role (infra/iam_check.py).
- image-pins       the dependency groups the Dockerfiles install resolve, transitively, to exact pins in
                   requirements-dev.txt (they are installed with it as a constraints file).

Tools come from the SAM venv: SAM_CLI (default .venv-sam/bin/sam), with cfn-lint, check-jsonschema and its python
beside it. Each check returns a list of Findings (empty = pass); tests/test_deployment_checks.py runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from infra import stack
from infra.compose.deploy import OUTPUT_VARIABLES
from infra.localstack import localstack_environment
from infra.localstack_config import REGION, REPO_ROOT, settings_from_env
from infra.stack import PARAMETER_VARIABLES

DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
DEFAULT_COMPOSE = REPO_ROOT / "docker-compose.localstack.yml"
DEFAULT_ENV_EXAMPLE = REPO_ROOT / ".env.example"
DEV_REQUIREMENTS = REPO_ROOT / "requirements-dev.txt"
DOCKERFILES = ("producer_service/Dockerfile", "functions/api/Dockerfile", "infra/compose/Dockerfile")
TOOL_TIMEOUT_SECONDS = 300.0
MESSAGE_LIMIT = 400

LOCALSTACK_IMAGE = "localstack/localstack:4.14.0"  # later tags need LOCALSTACK_AUTH_TOKEN
DOCKER_SOCKET = "/var/run/docker.sock"
# Native LocalStack settings that describe the host process and must not be copied into the container: there
# the image's defaults are right (gateway on 0.0.0.0, its own volume and filesystem, the Docker executor).
LOCALSTACK_HOST_ONLY = {"GATEWAY_LISTEN", "OVERRIDE_IN_DOCKER", "FILESYSTEM_ROOT", "TMPDIR", "LOCALSTACK_VOLUME_DIR",
                        "LAMBDA_RUNTIME_EXECUTOR"}
# Settings both set, each to its own value (URLs must name the host as seen from the stack's own clients).
LOCALSTACK_OWN_VALUE = {"LOCALSTACK_HOST"}
# Settings only the container needs: function containers join the compose network; the token of later images.
LOCALSTACK_COMPOSE_ONLY = {"LAMBDA_DOCKER_NETWORK", "LOCALSTACK_AUTH_TOKEN"}
# ${...} names the compose file may use beyond .env.example and the template parameter variables.
COMPOSE_ONLY_VARIABLES = {"LOCALSTACK_AUTH_TOKEN"}
# boto3 reads these itself (no tickstream code names them); both services talk to SQS.
BOTO3_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
# Read by the shared load_settings() but unused by that service: keep the API's secret out of the producer.
# TICK_RETENTION_DAYS is the maintenance function's (a template parameter), JOBS_QUEUE_URL the API's.
UNUSED_SETTINGS = {"producer": {"API_TOKEN", "API_TOKEN_SECRET_ARN", "JOBS_QUEUE_URL", "TICK_RETENTION_DAYS"},
                   "api": {"TICK_RETENTION_DAYS"}}
OUTPUTS_VOLUME = "stack-outputs"
# pip freeze never lists pip itself, so requirements-dev.txt cannot pin it (chalice depends on it).
UNPINNABLE = {"pip"}


@dataclass(frozen=True)
class Finding:
    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


@dataclass(frozen=True)
class Tools:
    """The SAM venv's executables (aws-sam-cli pins click 8.1.8, so they live apart from the project venv)."""

    sam_cli: Path

    @property
    def bin_dir(self) -> Path:
        return self.sam_cli.parent

    @property
    def python(self) -> Path:
        return self.bin_dir / "python"

    @property
    def cfn_lint(self) -> Path:
        return self.bin_dir / "cfn-lint"

    @property
    def check_jsonschema(self) -> Path:
        return self.bin_dir / "check-jsonschema"


def tools_from_env() -> Tools:
    return Tools(sam_cli=settings_from_env().sam_cli)  # SAM_CLI, else .venv-sam/bin/sam: same rule as deploys


def tool_environment(extra_path: Sequence[Path] = ()) -> dict[str, str]:
    """Offline and credential-free: a region, no metadata probe, no telemetry or update check, no endpoint or
    profile of the developer's shell."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))}
    env.update({"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
                "SAM_CLI_TELEMETRY": "0", "SAM_CLI_DISABLE_UPDATE_CHECK": "1"})
    env["PATH"] = os.pathsep.join([*map(str, extra_path), env.get("PATH", "")])
    return env


def _run(args: Sequence[str | Path], cwd: Path = REPO_ROOT, env: Mapping[str, str] | None = None,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in args], cwd=cwd, env=dict(env or tool_environment()), input=stdin,
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS)


def _missing_tool(check: str, tool: Path) -> list[Finding]:
    if tool.exists():
        return []
    return [Finding(check, f"{tool} not found: create the SAM venv (make .venv-sam/.installed, "
                           "infra/requirements-sam.txt) or point SAM_CLI at its bin/sam")]


def _output_tail(result: subprocess.CompletedProcess[str], lines: int = 30) -> str:
    text = (result.stdout + result.stderr).strip().splitlines()
    return "\n".join(text[-lines:])


# --- (a) sam validate --lint -----------------------------------------------------------------------------------

def sam_validate(template: Path = DEFAULT_TEMPLATE, tools: Tools | None = None) -> list[Finding]:
    tools = tools or tools_from_env()
    if missing := _missing_tool("sam-validate", tools.sam_cli):
        return missing
    result = _run([tools.sam_cli, "validate", "--lint", "--template", template, "--region", REGION],
                  cwd=template.resolve().parent)
    if result.returncode == 0:
        return []
    return [Finding("sam-validate", f"{template.name}: sam validate --lint failed ({result.returncode}):\n"
                                    f"{_output_tail(result)}")]


# --- (b) translate to plain CloudFormation, then cfn-lint -------------------------------------------------------

# Runs in the SAM venv. The translator wants S3 code locations (local paths are what `sam package` replaces) and a
# managed-policy lookup: give it dummies, as `sam validate` does, so nothing calls AWS.
_TRANSLATE_SCRIPT = r"""
import json, sys
import boto3
from samcli.yamlhelper import yaml_parse
from samtranslator.parser.parser import Parser
from samtranslator.public.exceptions import InvalidDocumentException
from samtranslator.translator.translator import Translator

LOCAL_URI_KEYS = ("CodeUri", "ContentUri", "DefinitionUri")

class OfflinePolicyMap(dict):
    def get(self, name, default=None):  # names outside the translator's bundled map
        return "arn:aws:iam::aws:policy/" + name

def fake_s3_uris(template):
    sections = [r.get("Properties") for r in template.get("Resources", {}).values() if isinstance(r, dict)]
    sections += list(template.get("Globals", {}).values())
    for properties in filter(lambda p: isinstance(p, dict), sections):
        for key in LOCAL_URI_KEYS:
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                properties[key] = "s3://bucket/key"

session = boto3.session.Session(region_name=sys.argv[1])
for source, target in json.load(sys.stdin):
    with open(source) as stream:
        template = yaml_parse(stream.read())
    fake_s3_uris(template)
    translator = Translator(managed_policy_map=None, sam_parser=Parser(), plugins=[], boto_session=session)
    try:
        translated = translator.translate(template, parameter_values={}, get_managed_policy_map=OfflinePolicyMap)
    except InvalidDocumentException as error:
        print(json.dumps({"source": source, "errors": [str(cause) for cause in error.causes] or [str(error)]}))
        continue
    with open(target, "w") as stream:
        json.dump(translated, stream, indent=1)
    print(json.dumps({"source": source, "errors": []}))
"""


def translated_lint(templates: Sequence[Path] = (DEFAULT_TEMPLATE,),
                    tools: Tools | None = None) -> dict[Path, list[Finding]]:
    """Findings per template: translation errors, then cfn-lint errors and warnings on the translated output
    (located by their path in the translated template, e.g. Resources/IngestFunctionTicks/Properties/...)."""
    tools = tools or tools_from_env()
    missing = _missing_tool("translated-lint", tools.python) + _missing_tool("translated-lint", tools.cfn_lint)
    if missing:
        return {Path(template): missing for template in templates}
    with tempfile.TemporaryDirectory(prefix="tickstream-translated-") as scratch:
        targets = {Path(t): Path(scratch) / f"{i}-{Path(t).stem}.json" for i, t in enumerate(templates)}
        findings = _translate(targets, tools)
        linted = {template: target for template, target in targets.items() if not findings[template]}
        for template, lint_findings in _cfn_lint(linted, tools, "translated-lint").items():
            findings[template].extend(lint_findings)
    return findings


def _translate(targets: Mapping[Path, Path], tools: Tools) -> dict[Path, list[Finding]]:
    pairs = [[str(template.resolve()), str(target)] for template, target in targets.items()]
    result = _run([tools.python, "-c", _TRANSLATE_SCRIPT, REGION], stdin=json.dumps(pairs))
    by_source = {str(template.resolve()): template for template in targets}
    findings: dict[Path, list[Finding]] = {template: [] for template in targets}
    reported = set()
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            reported.add(record["source"])
            findings[by_source[record["source"]]] += [
                Finding("translated-lint", f"{by_source[record['source']].name}: SAM translation: {error}")
                for error in record["errors"]]
    for source, template in by_source.items():
        if source not in reported:  # the script died before this one
            findings[template].append(Finding("translated-lint", f"{template.name}: translation failed "
                                                                 f"({result.returncode}):\n{_output_tail(result)}"))
    return findings


def _cfn_lint(targets: Mapping[Path, Path], tools: Tools, check: str) -> dict[Path, list[Finding]]:
    """cfn-lint errors and warnings per template, one run for all of them (its start-up dominates)."""
    findings: dict[Path, list[Finding]] = {template: [] for template in targets}
    if not targets:
        return findings
    result = _run([tools.cfn_lint, "--format", "json", *targets.values()])
    try:
        matches = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        matches = None
    if not isinstance(matches, list) or result.returncode & 1:  # bit 1: cfn-lint itself failed
        for template in targets:
            findings[template].append(Finding(check, f"cfn-lint failed ({result.returncode}):\n{_output_tail(result)}"))
        return findings
    by_target = {str(target): template for template, target in targets.items()}
    for match in matches:
        if match.get("Level") in ("Error", "Warning"):
            template = by_target[match["Filename"]]
            findings[template].append(Finding(check, _describe_match(template, match)))
    return findings


def _describe_match(template: Path, match: Mapping[str, Any]) -> str:
    path = "/".join(str(part) for part in match.get("Location", {}).get("Path", []))
    message = match.get("Message", "")
    if len(message) > MESSAGE_LIMIT:
        message = message[:MESSAGE_LIMIT] + " …"
    return f"{template.name}: {match['Rule']['Id']} {path}: {message}"


def plain_cfn_lint(templates: Sequence[Path], tools: Tools | None = None) -> dict[Path, list[Finding]]:
    """cfn-lint on the SAM templates themselves (what `sam validate --lint` does), for comparison in tests."""
    tools = tools or tools_from_env()
    if missing := _missing_tool("plain-cfn-lint", tools.cfn_lint):
        return {Path(template): missing for template in templates}
    return _cfn_lint({Path(t): Path(t).resolve() for t in templates}, tools, "plain-cfn-lint")


# --- (c) the compose file against the compose specification --------------------------------------------------------

def compose_schema(compose_file: Path = DEFAULT_COMPOSE, tools: Tools | None = None) -> list[Finding]:
    tools = tools or tools_from_env()
    if not tools.check_jsonschema.exists():
        return [Finding("compose-schema", f"{tools.check_jsonschema} not found: install check-jsonschema into the "
                                          "SAM venv (pinned in infra/requirements-sam.txt)")]
    result = _run([tools.check_jsonschema, "--builtin-schema", "vendor.compose-spec", compose_file])
    if result.returncode == 0:
        return []
    return [Finding("compose-schema", f"{compose_file.name} does not match the compose specification:\n"
                                      f"{_output_tail(result)}")]


# --- (d) drift between compose, the native stack, .env.example and the template ------------------------------------

def compose_drift(compose_file: Path = DEFAULT_COMPOSE, env_example: Path = DEFAULT_ENV_EXAMPLE,
                  template: Path = DEFAULT_TEMPLATE) -> list[Finding]:
    compose = load_compose(compose_file)
    settings = env_example_variables(env_example)
    return [
        *_localstack_drift(compose),
        *_settings_passthrough(compose, settings),
        *_deploy_parameters(compose),
        *_interpolation(compose_file.read_text(), settings),
        *_stack_outputs(template, settings),
    ]


def load_compose(compose_file: Path) -> dict[str, Any]:
    return yaml.safe_load(compose_file.read_text())  # SafeLoader resolves the `<<` merge keys the file uses


def env_example_variables(env_example: Path = DEFAULT_ENV_EXAMPLE) -> set[str]:
    names = set()
    for line in env_example.read_text().splitlines():
        name, separator, _value = line.strip().partition("=")
        if separator and not name.startswith("#"):
            names.add(name.removeprefix("export ").strip())
    return names


def service_environment(compose: Mapping[str, Any], service: str) -> dict[str, str]:
    environment = compose["services"][service].get("environment") or {}
    if isinstance(environment, list):  # the KEY=VALUE list form
        environment = dict(item.partition("=")[::2] for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def native_localstack_environment() -> dict[str, str]:
    """What infra/localstack.py gives the host LocalStack, without the inherited environment."""
    with mock.patch.dict(os.environ, clear=True):
        return localstack_environment(settings_from_env({}))


def _localstack_drift(compose: Mapping[str, Any]) -> list[Finding]:
    check = "compose-drift"
    service = compose["services"]["localstack"]
    theirs = service_environment(compose, "localstack")
    findings = []
    for key, native in native_localstack_environment().items():
        if key in LOCALSTACK_HOST_ONLY:
            if key in theirs:
                findings.append(Finding(check, f"localstack sets {key}, a host-mode setting of infra/localstack.py "
                                               "that is wrong in the container"))
        elif key not in theirs:
            findings.append(Finding(check, f"localstack lacks {key} (infra/localstack.py sets {native!r})"))
        elif key not in LOCALSTACK_OWN_VALUE and theirs[key] != native:
            findings.append(Finding(check, f"localstack {key}={theirs[key]!r} but infra/localstack.py uses "
                                           f"{native!r}"))
    native_keys = set(native_localstack_environment())
    for key in sorted(set(theirs) - native_keys - LOCALSTACK_COMPOSE_ONLY):
        findings.append(Finding(check, f"localstack sets {key}, which the native stack does not: add it to "
                                       "infra/localstack.py or to LOCALSTACK_COMPOSE_ONLY with a reason"))
    if service.get("image") != LOCALSTACK_IMAGE:
        findings.append(Finding(check, f"localstack image is {service.get('image')!r}, not {LOCALSTACK_IMAGE!r}"))
    if not any(str(volume).startswith(f"{DOCKER_SOCKET}:") for volume in service.get("volumes", [])):
        findings.append(Finding(check, f"localstack does not mount {DOCKER_SOCKET} (its Lambda executor needs it)"))
    network = (compose.get("networks") or {}).get("default", {}).get("name")
    if theirs.get("LAMBDA_DOCKER_NETWORK") != network:
        findings.append(Finding(check, f"LAMBDA_DOCKER_NETWORK={theirs.get('LAMBDA_DOCKER_NETWORK')!r} is not the "
                                       f"compose network {network!r}: functions could not reach MySQL"))
    return findings


def settings_read_by(readers: Iterable[Callable[[], object]]) -> set[str]:
    """The environment variables ``readers`` look up, recorded by running them against an empty environment."""
    recording = _RecordingEnviron()
    with mock.patch.object(os, "environ", recording):
        for reader in readers:
            reader()
    return recording.read


class _RecordingEnviron(dict[str, str]):
    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def service_settings() -> dict[str, set[str]]:
    """Per compose service, the settings its process reads (imported here: the settings code is the truth)."""
    from producer_service.config import ProducerSettings, broker_ids_from_env
    from tickstream.settings import load_settings

    shared = load_settings.__wrapped__  # past the lru_cache, so it really reads
    return {
        "producer": settings_read_by([shared, ProducerSettings.from_env, broker_ids_from_env]) | BOTO3_VARIABLES,
        "api": settings_read_by([shared]) | BOTO3_VARIABLES,
    }


def _settings_passthrough(compose: Mapping[str, Any], settings: set[str]) -> list[Finding]:
    findings = []
    for service, read in service_settings().items():
        given = set(service_environment(compose, service))
        if _uses_stack_outputs(compose["services"][service]):
            given |= set(OUTPUT_VARIABLES.values())
        needed = (read & settings) - UNUSED_SETTINGS[service]
        findings += [Finding("compose-drift", f"{service} reads {name} (listed in .env.example) but the compose "
                                              "file does not pass it (environment:)")
                     for name in sorted(needed - given)]
    return findings


def _uses_stack_outputs(service: Mapping[str, Any]) -> bool:
    mounted = any(str(volume).split(":")[0] == OUTPUTS_VOLUME for volume in service.get("volumes", []))
    return mounted and "stack.env" in " ".join(map(str, service.get("entrypoint") or []))


def _deploy_parameters(compose: Mapping[str, Any]) -> list[Finding]:
    given = service_environment(compose, "deploy")
    findings = [Finding("compose-drift", f"deploy does not pass {variable} (template parameter {parameter}, "
                                         "infra/stack.py PARAMETER_VARIABLES)")
                for parameter, variable in PARAMETER_VARIABLES.items() if variable not in given]
    if not given.get("AWS_ENDPOINT_URL"):
        findings.append(Finding("compose-drift", "deploy has no AWS_ENDPOINT_URL: samlocal would deploy elsewhere"))
    return findings


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def _interpolation(text: str, settings: set[str]) -> list[Finding]:
    """${NAME} must be a setting of .env.example (or a template parameter variable); one default per name."""
    allowed = settings | set(PARAMETER_VARIABLES.values()) | COMPOSE_ONLY_VARIABLES
    defaults: dict[str, set[str]] = {}
    for match in _INTERPOLATION.finditer(text.replace("$$", "")):
        name, operator, default = match.groups()
        defaults.setdefault(name, set()).add(f"{operator or ''}{default or ''}")
    findings = [Finding("compose-drift", f"${{{name}}} is not a setting of .env.example")
                for name in sorted(set(defaults) - allowed)]
    findings += [Finding("compose-drift", f"${{{name}}} has different defaults: {sorted(variants)}")
                 for name, variants in sorted(defaults.items()) if len(variants) > 1]
    return findings


class _TemplateLoader(yaml.SafeLoader):
    """CloudFormation's short-form tags (!Ref, !GetAtt, ...) read as plain values: only the shape matters here."""


_TemplateLoader.add_multi_constructor("!", lambda loader, _suffix, node: loader.construct_yaml_str(node)
                                      if isinstance(node, yaml.ScalarNode) else None)


def load_template(template: Path = DEFAULT_TEMPLATE) -> dict[str, Any]:
    return yaml.load(template.read_text(), Loader=_TemplateLoader)  # a SafeLoader subclass


def _stack_outputs(template: Path, settings: set[str]) -> list[Finding]:
    outputs = load_template(template).get("Outputs") or {}
    findings = [Finding("compose-drift", f"the deploy step exports output {key}, which {template.name} lacks")
                for key in OUTPUT_VARIABLES if key not in outputs]
    findings += [Finding("compose-drift", f"the deploy step exports {variable}, which .env.example lacks")
                 for variable in OUTPUT_VARIABLES.values() if variable not in settings]
    return findings


# --- .env.example lists every setting the code reads ---------------------------------------------------------------

# Read as a fallback alias only (tickstream.settings: AWS_REGION, else AWS_DEFAULT_REGION).
ENV_EXAMPLE_EXEMPT = {"AWS_DEFAULT_REGION"}


def env_example_complete(env_example: Path = DEFAULT_ENV_EXAMPLE) -> list[Finding]:
    """Settings the producer or the API read that .env.example does not list (it promises all of them)."""
    read = set().union(*service_settings().values()) - BOTO3_VARIABLES - ENV_EXAMPLE_EXEMPT
    return [Finding("env-example", f"{name} is read but not listed in {env_example.name}")
            for name in sorted(read - env_example_variables(env_example))]


# --- image pins --------------------------------------------------------------------------------------------------

_GROUPS_IN_DOCKERFILE = re.compile(r"requirements\.py(?:\s+--pyproject\s+\S+)?((?:\s+[a-z][\w-]*)+)\s*>")


def dockerfile_groups(dockerfiles: Iterable[str] = DOCKERFILES) -> dict[str, list[str]]:
    return {dockerfile: [group for match in _GROUPS_IN_DOCKERFILE.finditer((REPO_ROOT / dockerfile).read_text())
                         for group in match.group(1).split()]
            for dockerfile in dockerfiles}


def image_pins(dockerfiles: Iterable[str] = DOCKERFILES, requirements: Path = DEV_REQUIREMENTS) -> list[Finding]:
    """Every distribution an image installs from a dependency group, direct or transitive (as resolved in this,
    the project venv), has an exact pin in requirements-dev.txt; otherwise the constraints file lets it float."""
    from infra.compose.requirements import group_requirements

    pins = _exact_pins(requirements)
    findings = []
    for dockerfile, groups in dockerfile_groups(dockerfiles).items():
        if not groups:
            findings.append(Finding("image-pins", f"{dockerfile} installs no dependency group "
                                                  "(infra/compose/requirements.py GROUP)"))
            continue
        closure, unknown = _dependency_closure(group_requirements(groups))
        findings += [Finding("image-pins", f"{dockerfile}: {name} is not installed here, cannot check its pins")
                     for name in sorted(unknown)]
        findings += [Finding("image-pins", f"{dockerfile}: {name} has no exact pin in {requirements.name}")
                     for name in sorted(closure - pins - UNPINNABLE)]
    return findings


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _exact_pins(requirements: Path) -> set[str]:
    pins = set()
    for line in requirements.read_text().splitlines():
        name, separator, _version = line.split("#")[0].strip().partition("==")
        if separator:
            pins.add(_canonical(name))
    return pins


def _dependency_closure(roots: Iterable[str]) -> tuple[set[str], set[str]]:
    from packaging.requirements import Requirement

    seen: set[str] = set()
    unknown: set[str] = set()
    pending = [(Requirement(root), "") for root in roots]
    while pending:
        requirement, extra = pending.pop()
        name = _canonical(requirement.name)
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        if name in seen or name in unknown:
            continue
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            unknown.add(name)
            continue
        seen.add(name)
        extras = requirement.extras or {""}
        pending += [(Requirement(spec), wanted) for spec in requires for wanted in extras]
    return seen, unknown


# --- IAM grants cover the code's AWS calls ------------------------------------------------------------------------

def iam_coverage(templates: Sequence[Path] = (DEFAULT_TEMPLATE,)) -> dict[Path, list[Finding]]:
    from infra.iam_check import iam_coverage as check  # it imports this module (the translator)

    return check(templates)


# --- sam build (slower: fetches the layer's wheels) --------------------------------------------------------------

def sam_build(template: Path = DEFAULT_TEMPLATE) -> list[Finding]:
    """`sam build` without a container, through the deploys' one build path (infra.stack.sam_build): a build of
    the same work tree is reused from its cache, not made again."""
    settings = settings_from_env()
    if missing := _missing_tool("sam-build", settings.sam_cli):
        return missing
    with tempfile.TemporaryDirectory(prefix="tickstream-sam-build-") as scratch:
        try:
            stack.sam_build(settings, template, Path(scratch))
        except stack.DeployError as exc:
            return [Finding("sam-build", str(exc)[-4000:])]
    return []


# --- CLI ---------------------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[], list[Finding]]] = {
    "sam-validate": sam_validate,
    "translated-lint": lambda: translated_lint()[DEFAULT_TEMPLATE],
    "compose-schema": compose_schema,
    "compose-drift": compose_drift,
    "image-pins": image_pins,
    "env-example": env_example_complete,
    "iam-coverage": lambda: iam_coverage()[DEFAULT_TEMPLATE],
}


# Run only when asked (--only NAME, or --build): slower.
EXTRA_CHECKS: dict[str, Callable[[], list[Finding]]] = {
    "sam-build": sam_build,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.template_checks", description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=[*CHECKS, *EXTRA_CHECKS], help="run only these checks")
    parser.add_argument("--build", action="store_true", help="also run `sam build` (no container)")
    args = parser.parse_args(argv)
    selected = args.only or [*CHECKS, *(["sam-build"] if args.build else [])]
    failed = 0
    for name in selected:
        findings = {**CHECKS, **EXTRA_CHECKS}[name]()
        print(f"{'FAIL' if findings else 'ok  '} {name}", flush=True)
        for finding in findings:
            print("     " + str(finding).replace("\n", "\n     "), flush=True)
        failed += bool(findings)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
