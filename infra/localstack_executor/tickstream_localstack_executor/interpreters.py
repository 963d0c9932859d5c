"""Which host interpreter runs a function of a given Lambda runtime (python3.12 → a real python3.12)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class InterpreterNotFound(RuntimeError):
    pass


def override_variable(runtime: str) -> str:
    """``python3.12`` → ``LOCAL_EXECUTOR_PYTHON3_12``."""
    return "LOCAL_EXECUTOR_" + runtime.upper().replace(".", "_")


def resolve_interpreter(runtime: str) -> str:
    """The interpreter binary for a ``pythonX.Y`` runtime.

    Order: ``LOCAL_EXECUTOR_PYTHONX_Y``; pyenv's real binaries (``~/.pyenv/versions/X.Y*/bin/pythonX.Y``);
    then ``pythonX.Y`` on PATH unless it is a pyenv shim: shims re-resolve the version from the environment
    and the working directory, which fails in the clean environment a function runs in.
    """
    if not runtime.startswith("python"):
        raise InterpreterNotFound(f"runtime {runtime!r} is not supported by the local executor (python only)")
    override = os.environ.get(override_variable(runtime))
    if override:
        if not os.access(override, os.X_OK):
            raise InterpreterNotFound(f"{override_variable(runtime)}={override} is not executable")
        return override
    candidate = _pyenv_binary(runtime) or _path_binary(runtime)
    if candidate is None:
        raise InterpreterNotFound(
            f"no interpreter for runtime {runtime}: install {runtime} or set {override_variable(runtime)}"
        )
    return candidate


def _pyenv_binary(runtime: str) -> str | None:
    version = runtime.removeprefix("python")
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    if not root.is_dir():
        return None
    # Prefer the newest patch release: sort "3.12.10" after "3.12.9".
    matches = [path for path in root.glob(f"{version}.*/bin/{runtime}") if os.access(path, os.X_OK)]
    matches.sort(key=lambda path: [int(part) for part in path.parts[-3].split(".") if part.isdigit()])
    return str(matches[-1]) if matches else None


def _path_binary(runtime: str) -> str | None:
    found = shutil.which(runtime)
    if found is None or "/shims/" in found:
        return None
    return found
