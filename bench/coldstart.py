"""Stage 6: cold start — importing functions/ingest/handler.py in fresh interpreters, as a new Lambda container does.

`python3.12 -B -X importtime -s` with copies of the function's directory and of the built layer (what Lambda puts
at /var/task and /opt/python) first on sys.path, no database reachable (the handler connects lazily). The figure is
the handler module's cumulative import time, median over COLD_RUNS interpreters; the heaviest direct imports are
listed too. Twice: the layer as `sam build` makes it (infra/layer/Makefile byte-compiles it, since /opt is
read-only on Lambda and every cold start would otherwise compile every module) and, for comparison, the same layer
with its .pyc files removed.
"""

from __future__ import annotations

import compileall
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.common import StageResult
from infra.localstack_config import REPO_ROOT, LocalStackSettings

NAME = "6 cold start"
COLD_RUNS = 7
GOAL_MS = 300.0
FUNCTION_DIR = REPO_ROOT / "functions" / "ingest"


def run(settings: LocalStackSettings | None) -> StageResult:
    result = StageResult(NAME)
    layer, layer_kind = layer_path(settings)
    interpreter = lambda_interpreter()
    result.data = {"interpreter": interpreter, "layer": str(layer), "layer_kind": layer_kind}
    for label, compiled in (("layer as built (byte-compiled)", True), ("same layer without .pyc", False)):
        with deployed_copy(layer, compiled) as (function_dir, layer_dir):
            runs = [import_times(interpreter, function_dir, layer_dir) for _ in range(COLD_RUNS)]
        median_ms = statistics.median(run["handler"] for run in runs) / 1000
        heaviest = sorted(runs[-1]["children"].items(), key=lambda item: -item[1])[:5]
        result.data["compiled" if compiled else "as_built"] = {
            "runs_us": [run["handler"] for run in runs], "median_ms": median_ms,
            "heaviest_direct_imports_us": dict(heaviest)}
        result.add(f"handler import, {label}, median of {COLD_RUNS}", median_ms, "ms", f"≤ {GOAL_MS:.0f} ms",
                   median_ms <= GOAL_MS)
        result.add(f"  heaviest imports, {label}", ", ".join(f"{n} {us / 1000:.0f}" for n, us in heaviest), "ms")
    return result


@contextlib.contextmanager
def deployed_copy(layer: Path, compiled: bool) -> Iterator[tuple[Path, Path]]:
    """Fresh copies of the function and the layer; the layer keeps its .pyc files only if `compiled` (and is
    byte-compiled here if the build did not do it)."""
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as scratch:
        function_dir, layer_dir = Path(scratch) / "task", Path(scratch) / "opt" / "python"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(FUNCTION_DIR, function_dir, ignore=ignore)
        shutil.copytree(layer, layer_dir, ignore=None if compiled else ignore, symlinks=True)
        if not (layer_dir / "tickstream").is_dir():  # a site-packages stand-in: add the package as the layer does
            shutil.copytree(REPO_ROOT / "tickstream", layer_dir / "tickstream", ignore=ignore)
        if compiled:
            compileall.compile_dir(layer_dir, quiet=1, workers=0)
            compileall.compile_dir(function_dir, quiet=1)
        yield function_dir, layer_dir


def layer_path(settings: LocalStackSettings | None) -> tuple[Path, str]:
    """The layer `sam build` made for stage 3 if there is one, else the project's packages (less faithful)."""
    if settings is not None:
        for stack in ("bench-tickstream", "bench-tickstream-latency"):
            built = settings.state_dir / "sam" / stack / "build" / "TickstreamLayer" / "python"
            if built.is_dir():
                return built, "sam-built layer"
    site = next(p for p in map(Path, sys.path) if p.name == "site-packages")
    return site, "project venv site-packages (no built layer found)"


def lambda_interpreter() -> str:
    """The real python3.12 binary (the runtime's version), not a venv or a pyenv shim."""
    return getattr(sys, "_base_executable", sys.executable)


def import_times(interpreter: str, function_dir: Path, layer: Path) -> dict:
    """Cumulative µs of `handler` and of each module it imports directly, from -X importtime."""
    paths = [str(function_dir), str(layer)]
    code = f"import sys; sys.path[:0] = {paths!r}; import handler"
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "AWS_REGION": "us-east-1", "DB_HOST": "127.0.0.1",
           "DB_NAME": "cold_start_probe", "POWERTOOLS_SERVICE_NAME": "ingest"}
    done = subprocess.run([interpreter, "-B", "-X", "importtime", "-s", "-c", code], cwd=function_dir, env=env,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        raise RuntimeError("importing the handler failed:\n" + "\n".join(errors[-20:]))
    return parse_importtime(done.stderr)


def parse_importtime(stderr: str) -> dict:
    """`import time: self | cumulative | name` lines (children before parents, nesting by indent)."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        entries.append((len(name) - len(name.lstrip()), name.strip(), int(cumulative)))
    handler_index = max(i for i, (_, name, _) in enumerate(entries) if name == "handler")
    depth = entries[handler_index][0]
    children: dict[str, int] = {}
    for indent, name, cumulative in reversed(entries[:handler_index]):
        if indent <= depth:
            break
        if indent == depth + 2:
            children[name] = cumulative
    return {"handler": entries[handler_index][2], "children": children}
