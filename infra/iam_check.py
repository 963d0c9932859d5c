"""Every AWS API a runtime's code calls is granted to that runtime's IAM role in template.yaml.

    python -m infra.iam_check [template.yaml]      # exit 1 on any finding (also a check of infra.template_checks)

Found statically, so a missing grant fails `make test` instead of crash-looping a task on AWS:

- Runtimes: every AWS::Lambda::Function of the translated template (its code: the SAM function's CodeUri, entry:
  its Handler's module) and the ECS task definitions named in ECS_ENTRY_MODULES (the producer); each with the
  packages its deployment ships (the layer's `tickstream`).
- Code: the entry module and every module of this repository it imports, at any depth, imports inside functions
  included (tickstream imports boto3 lazily).
- Calls: `boto3.client("sqs")` (or any `<x>.client("...")` in a module that imports boto3) names a service the code
  uses; every call `<x>.<name>(...)` whose name is an operation of such a service in botocore's service model
  (snake_case, e.g. send_message_batch) is a call of that operation, and so is `<x>.get_paginator("<name>")`. A
  client whose service is not a literal cannot be checked and is a finding itself.
- Actions: "<IAM prefix>:<OperationName>", except where IAM authorises an operation with another action
  (IAM_ACTION_OF: SQS's batch operations are authorised by the single one, e.g. sqs:SendMessage).
- Grants: the template translated by SAM's translator (policy templates such as SQSSendMessagePolicy expanded to
  their statements), every Allow statement in the role's inline policies and in AWS::IAM::Policy resources attached
  to it; both branches of an Fn::If count (a grant under a condition, like the secret's, matches code that makes
  the call only under the same setting); wildcards match (sqs:SendMessage*). Managed policies are not expanded
  (their documents are not in the template), so they grant nothing here.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from infra.localstack_config import REPO_ROOT
from infra.template_checks import DEFAULT_TEMPLATE, Finding, Tools, _translate, load_template, tools_from_env

CHECK = "iam-coverage"
# ECS task definition → the module its container runs (producer_service/Dockerfile: python -m producer_service),
# and the top-level packages of this repository the image ships.
ECS_ENTRY_MODULES = {"ProducerTaskDefinition": ("producer_service.__main__", ("producer_service", "tickstream"))}
# What the layer (TickstreamLayer, ContentUri tickstream/) adds to every function's code.
LAYER_PACKAGES = ("tickstream",)
# boto3 client name → IAM action prefix, where they differ.
IAM_PREFIX = {"stepfunctions": "states", "elbv2": "elasticloadbalancing", "sesv2": "ses"}
# Operations IAM authorises with another action (SQS developer guide: the batch actions need the permission of
# the single action).
IAM_ACTION_OF = {"sqs:SendMessageBatch": "sqs:SendMessage", "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
                 "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility"}
SITES_SHOWN = 3


@dataclass(frozen=True)
class Runtime:
    name: str  # the template resource that runs the code
    role: str | None  # logical id of its role in the translated template
    entry: str  # dotted module name
    roots: tuple[tuple[Path, tuple[str, ...] | None], ...]  # (directory, top-level names it may provide: None = any)


@dataclass(frozen=True)
class AwsCall:
    action: str  # sqs:SendMessage
    operation: str  # send_message_batch
    site: str  # path:line


# --- the code: import closure, client services, operation calls ------------------------------------------------

def _module_file(name: str, roots: Iterable[tuple[Path, tuple[str, ...] | None]]) -> Path | None:
    parts = name.split(".")
    for root, provides in roots:
        if provides is not None and parts[0] not in provides:
            continue
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _imported_names(tree: ast.AST, package: list[str]) -> Iterator[str]:
    """Dotted names a module may load: every `import a.b`, `from a.b import c` (a.b and a.b.c), relative too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if module:
                yield module
            yield from (f"{module}.{alias.name}" if module else alias.name for alias in node.names)


def import_closure(runtime: Runtime) -> dict[Path, ast.Module]:
    """Every module of this repository the runtime's entry module loads, parsed."""
    parsed: dict[Path, ast.Module] = {}
    pending = [runtime.entry]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run on import
        path = _module_file(name, runtime.roots)
        if path is None or path in parsed:
            continue
        parsed[path] = tree = ast.parse(path.read_text(), filename=str(path))
        package = parts if path.name == "__init__.py" else parts[:-1]
        pending += list(_imported_names(tree, package))
    return parsed


def _imports_boto3(tree: ast.AST) -> bool:
    return any((isinstance(node, ast.Import) and any(a.name.split(".")[0] == "boto3" for a in node.names))
               or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "boto3")
               for node in ast.walk(tree))


def _literal_argument(call: ast.Call, keyword: str) -> str | None:
    value = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == keyword), None)
    return value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else None


def _site(path: Path, node: ast.AST) -> str:
    where = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return f"{where}:{getattr(node, 'lineno', 0)}"


def client_services(modules: Mapping[Path, ast.Module]) -> tuple[set[str], list[str]]:
    """The boto3 services the code makes clients of, and the creations that cannot be read (not a literal)."""
    services: set[str] = set()
    unreadable: list[str] = []
    for path, tree in modules.items():
        if not _imports_boto3(tree):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Attribute, ast.Name)):
                continue
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if callee in ("client", "resource"):
                service = _literal_argument(node, "service_name")
                if service is None or callee == "resource":
                    unreadable.append(f"{_site(path, node)}: boto3 {callee} of a service this check cannot read "
                                      "(use boto3.client with a literal service name)")
                else:
                    services.add(service)
    return services, unreadable


@cache
def _operations(service: str) -> dict[str, str]:
    """snake_case method name → OperationName, from botocore's service model (offline: shipped with botocore)."""
    import botocore.session
    from botocore import xform_name

    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(operation): operation for operation in model.operation_names}


def iam_action(service: str, operation: str) -> str:
    action = f"{IAM_PREFIX.get(service, service)}:{operation}"
    return IAM_ACTION_OF.get(action, action)


def aws_calls(modules: Mapping[Path, ast.Module], services: Iterable[str]) -> list[AwsCall]:
    by_method: dict[str, list[tuple[str, str]]] = {}
    for service in sorted(services):
        for method, operation in _operations(service).items():
            by_method.setdefault(method, []).append((service, operation))
    calls = []
    for path, tree in modules.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            method = node.func.attr
            if method == "get_paginator":
                method = _literal_argument(node, "operation_name") or ""
            for service, operation in by_method.get(method, []):
                calls.append(AwsCall(iam_action(service, operation), method, _site(path, node)))
    return calls


# --- the template: runtimes and their grants -----------------------------------------------------------------

def _role_id(value: Any) -> str | None:
    """The logical id in {"Fn::GetAtt": ["XRole", "Arn"]} (or "XRole.Arn"); None for anything else."""
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        target = target.split(".") if isinstance(target, str) else target
        if len(target) == 2 and target[1] == "Arn":
            return str(target[0])
    return None


def runtimes(sam_template: Mapping[str, Any], translated: Mapping[str, Any]) -> tuple[list[Runtime], list[str]]:
    sam_resources = sam_template.get("Resources") or {}
    found: list[Runtime] = []
    problems: list[str] = []
    for name, resource in (translated.get("Resources") or {}).items():
        properties = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Lambda::Function":
            source = (sam_resources.get(name) or {}).get("Properties") or {}
            code_uri, handler = source.get("CodeUri"), source.get("Handler")
            if not isinstance(code_uri, str) or not isinstance(handler, str):
                problems.append(f"{name}: no local CodeUri and Handler to read its code from")
                continue
            found.append(Runtime(name, _role_id(properties.get("Role")), handler.rsplit(".", 1)[0],
                                 ((REPO_ROOT / code_uri, None), (REPO_ROOT, LAYER_PACKAGES))))
        elif resource.get("Type") == "AWS::ECS::TaskDefinition":
            if name not in ECS_ENTRY_MODULES:
                problems.append(f"{name}: which code runs in this task definition? Add it to ECS_ENTRY_MODULES")
                continue
            entry, packages = ECS_ENTRY_MODULES[name]
            found.append(Runtime(name, _role_id(properties.get("TaskRoleArn")), entry, ((REPO_ROOT, packages),)))
    for runtime in found:
        if runtime.role is None:
            problems.append(f"{runtime.name}: its role is not a role of this template (Fn::GetAtt <Role>.Arn)")
    return found, problems


def _allowed_actions(node: Any) -> Iterator[str]:
    """Actions of every Allow statement below `node`; both branches of each Fn::If."""
    if isinstance(node, list):
        for item in node:
            yield from _allowed_actions(item)
    elif isinstance(node, dict):
        if "Fn::If" in node and isinstance(node["Fn::If"], list) and len(node["Fn::If"]) == 3:
            yield from _allowed_actions(node["Fn::If"][1:])
        elif node.get("Effect") == "Allow" and "Action" in node:
            actions = node["Action"]
            yield from ([actions] if isinstance(actions, str) else [a for a in actions if isinstance(a, str)])
        else:
            for value in node.values():
                yield from _allowed_actions(value)


def granted_actions(translated: Mapping[str, Any], role: str) -> set[str]:
    resources = translated.get("Resources") or {}
    granted = set(_allowed_actions((resources.get(role) or {}).get("Properties", {}).get("Policies", [])))
    for resource in resources.values():
        if resource.get("Type") in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            properties = resource.get("Properties") or {}
            if {"Ref": role} in (properties.get("Roles") or []):
                granted |= set(_allowed_actions(properties.get("PolicyDocument")))
    return granted


def is_granted(action: str, granted: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in granted)


# --- the check ---------------------------------------------------------------------------------------------------

def check_translated(sam_template: Mapping[str, Any], translated: Mapping[str, Any],
                     label: str = "template.yaml") -> list[Finding]:
    found, problems = runtimes(sam_template, translated)
    findings = [Finding(CHECK, f"{label}: {problem}") for problem in problems]
    for runtime in found:
        modules = import_closure(runtime)
        if not modules:
            findings.append(Finding(CHECK, f"{label}: {runtime.name}: entry module {runtime.entry} not found"))
            continue
        services, unreadable = client_services(modules)
        findings += [Finding(CHECK, f"{label}: {runtime.name}: {text}") for text in unreadable]
        if runtime.role is None:
            continue
        granted = granted_actions(translated, runtime.role)
        missing: dict[str, list[AwsCall]] = {}
        for call in aws_calls(modules, services):
            if not is_granted(call.action, granted):
                missing.setdefault(call.action, []).append(call)
        for action, calls in sorted(missing.items()):
            sites = ", ".join(f"{c.operation} at {c.site}" for c in calls[:SITES_SHOWN])
            findings.append(Finding(CHECK, f"{label}: {runtime.name}'s code calls {action} ({sites}) but its role "
                                           f"{runtime.role} is not granted it"))
    return findings


def iam_coverage(templates: Sequence[Path] = (DEFAULT_TEMPLATE,),
                 tools: Tools | None = None) -> dict[Path, list[Finding]]:
    """Per template: translate it (SAM venv; one translator run for all) and compare each runtime's AWS calls with
    its role's grants."""
    tools = tools or tools_from_env()
    if not tools.python.exists():
        missing = Finding(CHECK, f"{tools.python} not found: create the SAM venv (make .venv-sam/.installed)")
        return {Path(template): [missing] for template in templates}
    findings: dict[Path, list[Finding]] = {}
    with tempfile.TemporaryDirectory(prefix="tickstream-iam-") as scratch:
        targets = {Path(t): Path(scratch) / f"{i}-{Path(t).stem}.json" for i, t in enumerate(templates)}
        for template, translation in _translate(targets, tools).items():
            if translation:
                findings[template] = [Finding(CHECK, finding.message) for finding in translation]
            else:
                findings[template] = check_translated(load_template(template),
                                                      json.loads(targets[template].read_text()), template.name)
    return findings


if __name__ == "__main__":
    template = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TEMPLATE
    findings = iam_coverage([template])[template]
    for finding in findings:
        print(finding)
    sys.exit(1 if findings else 0)
