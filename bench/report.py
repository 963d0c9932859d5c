"""The printed table and the JSON file: results plus the machine and the commit they were measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.common import Row, StageResult
from tickstream.db import connect
from tickstream.settings import database_settings

REPO_ROOT = Path(__file__).resolve().parent.parent


def machine_info() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "mariadb_version": _mariadb_version(),
        "load_average": os.getloadavg(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mariadb_version() -> str:
    conn = connect(database_settings(), database=False)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            return cursor.fetchone()[0]
    finally:
        conn.close()


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}


def format_value(value: float | str | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, str)):
        return str(value)
    if unit == "$/M ticks":
        return f"{value:,.4f}"
    if unit == "×" or abs(value) < 10:
        return f"{value:,.2f}"
    if abs(value) < 1000:
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    header = ("stage", "metric", "value", "unit", "goal", "met")
    lines = [(r.stage, r.metric, format_value(r.value, r.unit), r.unit, r.goal,
              "" if r.met is None else ("yes" if r.met else "NO")) for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    out = [" | ".join(str(cell).ljust(width) for cell, width in zip(header, widths, strict=True)),
           "-|-".join("-" * width for width in widths)]
    for line in lines:
        out.append(" | ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))
    return "\n".join(out)


def write_json(results: list[StageResult], started: datetime, options: dict[str, Any], machine: dict[str, Any],
               out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    finished = datetime.now(UTC)
    document = {
        "started_at": started.isoformat(), "finished_at": finished.isoformat(),
        "git": git_commit(), "machine": machine, "options": options,
        "stages": {r.name: {"seconds": r.seconds, "error": r.error, "rows": [row.as_dict() for row in r.rows],
                            "data": r.data} for r in results},
        "table": [row.as_dict() for r in results for row in r.rows],
    }
    path = out_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return path
