"""The project's own promises: lint, types, documentation in step with the code, CI script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests import docs
from worker.codec.options import CompressionOptions
from worker.errors import CODES
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    "command",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_code_is_lint_and_type_clean(command: tuple[str, ...]) -> None:
    proc = _run(*command)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_outcome_code_is_documented() -> None:
    table = docs.section("Outcome codes")
    documented = set(re.findall(r"^\| `([a-z_]+)` \| (?:done|skipped|failed) \|", table, re.M))
    assert documented == set(CODES)


@pytest.mark.parametrize("model", [CompressionOptions, WorkerSettings])
def test_every_setting_is_documented_in_the_configuration(model: type[BaseModel]) -> None:
    configuration = docs.section("Configuration")
    for name in model.model_fields:
        assert f"`DCMPRESS_{name.upper()}`" in configuration


def _block_after(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```sh\n(.+?)\n```", README, re.S)
    assert match, marker
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci  # .ci/run extracts the command from the README
    assert _block_after("test-command") == 'python -m pip install -e ".[test]" && python -m pytest'


def test_quick_start_runs_the_demo() -> None:
    assert _block_after("quickstart-command") == 'python -m pip install ".[demo]" && dcmpress demo'


def _layout_paths() -> set[str]:
    """The paths the layout drawing (docs, "Development") names, rebuilt from its
    indentation."""
    match = re.search(r"<!-- layout -->\s*```\n(.+?)\n```", docs.holding("<!-- layout -->"), re.S)
    assert match, "layout block"
    stack: list[str] = []
    paths = set()
    for line in match.group(1).splitlines():
        indent = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack[indent:] = [name]
        paths.add("".join(stack))
    return paths


def test_the_docs_draw_the_layout_as_it_is() -> None:
    drawn = {path for path in _layout_paths() if path.endswith(".py")}
    modules = {
        str(path.relative_to(ROOT))
        for package in ("worker", "producer", "dcmpress")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py" or path.parent == ROOT / "worker"
    }
    assert drawn == modules


def test_every_guarantee_names_tests_that_exist() -> None:
    section = docs.section("Guarantees")
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", section)
    assert len(named) >= 10
    for path, test in named:
        source = (ROOT / path).read_text()
        assert not test or f"def {test}(" in source, f"{path}::{test}"
    for bare in re.findall(r"`(test_\w+\.py)`", section):  # shorthand next to a full path
        assert list((ROOT / "tests").rglob(bare)), bare
