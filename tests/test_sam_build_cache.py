"""infra.stack keeps `sam build` results by the digest of their inputs: a template deployed again (another stack,
another LocalStack) reuses its build, and any change to a file a developer can edit makes a new one. Offline: the
build itself is replaced by a stand-in that counts its calls."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from infra import stack
from infra.localstack_config import LocalStackSettings


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "repo"
    (tree / "functions").mkdir(parents=True)
    (tree / "template.yaml").write_text("Resources: {}\n")
    (tree / "functions" / "handler.py").write_text("def handler(event, context): ...\n")
    (tree / ".gitignore").write_text("*.pyc\n.venv/\n")
    for command in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *command], cwd=tree, check=True)
    return tree


@pytest.fixture
def settings(tmp_path: Path) -> LocalStackSettings:
    return LocalStackSettings(port=1, state_dir=tmp_path / "state", localstack_python=Path("/bin/true"),
                              sam_cli=Path("/bin/true"))


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    made: list[Path] = []

    def fake_build(settings: LocalStackSettings, template: Path, build_dir: Path) -> Path:
        build_dir.mkdir(parents=True, exist_ok=True)
        (build_dir / "template.yaml").write_text(template.read_text())
        made.append(build_dir)
        return build_dir / "template.yaml"

    monkeypatch.setattr(stack, "BUILD_CACHE", tmp_path / "cache")
    monkeypatch.setattr(stack, "_build_into", fake_build)
    return made


def test_the_same_inputs_build_once_and_every_work_dir_links_to_it(
        source_tree: Path, settings: LocalStackSettings, builds: list[Path], tmp_path: Path) -> None:
    template = source_tree / "template.yaml"
    first = stack.sam_build(settings, template, tmp_path / "stack-a")
    second = stack.sam_build(settings, template, tmp_path / "stack-b")
    assert len(builds) == 1
    assert first.read_text() == second.read_text() == "Resources: {}\n"
    assert first.parent.resolve() == second.parent.resolve() == (tmp_path / "cache" / stack.build_digest(
        settings, template)).resolve()
    assert (tmp_path / "stack-a" / "build").is_symlink()


def test_any_edit_a_developer_can_make_is_a_new_build(source_tree: Path, settings: LocalStackSettings,
                                                       builds: list[Path], tmp_path: Path) -> None:
    template = source_tree / "template.yaml"
    digests = [stack.build_digest(settings, template)]
    (source_tree / "functions" / "handler.py").write_text("def handler(event, context): return 1\n")  # tracked
    digests.append(stack.build_digest(settings, template))
    (source_tree / "functions" / "new.py").write_text("X = 1\n")  # untracked, not ignored
    digests.append(stack.build_digest(settings, template))
    assert len(set(digests)) == 3
    (source_tree / "functions" / "handler.cpython-312.pyc").write_bytes(b"\0")  # ignored: not an input
    assert stack.build_digest(settings, template) == digests[-1]

    stack.sam_build(settings, template, tmp_path / "stack")
    (source_tree / "functions" / "new.py").write_text("X = 2\n")
    stack.sam_build(settings, template, tmp_path / "stack")
    assert len(builds) == 2 and (tmp_path / "stack" / "build" / "template.yaml").is_file()


def test_outside_a_work_tree_every_deploy_builds(settings: LocalStackSettings, builds: list[Path],
                                                 tmp_path: Path) -> None:
    template = tmp_path / "loose" / "template.yaml"
    template.parent.mkdir()
    template.write_text("Resources: {}\n")
    assert stack.build_digest(settings, template) is None
    for _ in range(2):
        stack.sam_build(settings, template, tmp_path / "stack")
    assert len(builds) == 2


def test_a_file_edited_during_the_build_keeps_that_build_out_of_the_cache(
        source_tree: Path, settings: LocalStackSettings, builds: list[Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    built_by_stand_in = stack._build_into

    def build_while_editing(settings: LocalStackSettings, template: Path, build_dir: Path) -> Path:
        (source_tree / "functions" / "handler.py").write_text(f"# edited during build {len(builds)}\n")
        return built_by_stand_in(settings, template, build_dir)

    monkeypatch.setattr(stack, "_build_into", build_while_editing)
    template = source_tree / "template.yaml"
    assert stack.sam_build(settings, template, tmp_path / "stack").is_file()
    assert not (tmp_path / "cache" / stack.build_digest(settings, template)).exists()
    assert not [entry for entry in (tmp_path / "cache").iterdir() if not entry.name.startswith(".")]


def test_two_deploys_at_once_build_once(source_tree: Path, settings: LocalStackSettings, builds: list[Path],
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test`'s two processes deploy template.yaml at the same moment: the second waits for the first build
    and links to it instead of building the same inputs again."""
    built_by_stand_in = stack._build_into
    building = threading.Event()

    def slow_build(settings: LocalStackSettings, template: Path, build_dir: Path) -> Path:
        building.set()
        time.sleep(0.5)  # long enough for the second deploy to arrive while this one builds
        return built_by_stand_in(settings, template, build_dir)

    monkeypatch.setattr(stack, "_build_into", slow_build)
    template = source_tree / "template.yaml"
    first = threading.Thread(target=stack.sam_build, args=(settings, template, tmp_path / "stack-a"))
    first.start()
    assert building.wait(timeout=10)
    second = stack.sam_build(settings, template, tmp_path / "stack-b")
    first.join(timeout=10)
    assert len(builds) == 1
    assert (tmp_path / "stack-a" / "build").resolve() == second.parent.resolve()
