"""Print the requirements of pyproject dependency groups, one per line (PEP 735, `include-group` followed).

The images install these with requirements-dev.txt as a pip constraints file, so each gets exactly the versions the
tests ran with and no second, hand-kept requirements file can drift:

    python infra/compose/requirements.py producer > /tmp/requirements.txt
    pip install -c requirements-dev.txt -r /tmp/requirements.txt

Stdlib only (runs in a bare python image before anything is installed).
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

DEFAULT_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def group_requirements(groups: list[str], pyproject: Path = DEFAULT_PYPROJECT) -> list[str]:
    table = tomllib.loads(pyproject.read_text())["dependency-groups"]
    requirements: list[str] = []
    pending = list(groups)
    seen: set[str] = set()
    while pending:
        name = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        for entry in table[name]:  # KeyError on an unknown group: better than an image missing a dependency
            if isinstance(entry, dict):
                pending.append(entry["include-group"])
            elif entry not in requirements:
                requirements.append(entry)
    return requirements


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("groups", nargs="+", help="dependency group names, e.g. producer api migrate")
    parser.add_argument("--pyproject", type=Path, default=DEFAULT_PYPROJECT)
    args = parser.parse_args(argv)
    print("\n".join(group_requirements(args.groups, args.pyproject)))


if __name__ == "__main__":
    main()
