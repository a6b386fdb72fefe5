"""Where the documentation's text lives, for the tests that hold it to the code.

The README is the front page (quick start, Guarantees); everything else is a page of
``docs/`` (the mkdocs site). A test asks for a section by its heading, wherever it
lives, so moving a page moves no test.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"
_HEADING = re.compile(r"^(#{1,6}) (.+)$")


def sources() -> list[Path]:
    """The README and every page of ``docs/`` (the linked benchmark pages included)."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def everything() -> str:
    """Every documentation text as one string."""
    return "\n".join(path.read_text() for path in sources())


def _sections(path: Path) -> dict[str, str]:
    """Each heading of a file and its text, up to the next heading of its level or a
    higher one (headings inside fenced code are no headings)."""
    lines = path.read_text().split("\n")
    headings: list[tuple[int, int, str]] = []  # line, level, title
    fenced = False
    for number, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match:
            headings.append((number, len(match.group(1)), match.group(2).strip()))
    found = {}
    for index, (start, level, title) in enumerate(headings):
        end = next((n for n, lv, _ in headings[index + 1 :] if lv <= level), len(lines))
        found[title] = "\n".join(lines[start + 1 : end])
    return found


def where(title: str) -> Path:
    """The one file that has a heading ``title``."""
    holding = [path for path in sources() if title in _sections(path)]
    assert len(holding) == 1, f"heading {title!r} in {holding or 'no file'}"
    return holding[0]


def section(title: str) -> str:
    """The text under the heading ``title``, wherever it lives."""
    return _sections(where(title))[title]


def holding(text: str) -> str:
    """The whole text of the one file that contains ``text`` (a marker)."""
    files = [path.read_text() for path in sources() if text in path.read_text()]
    assert len(files) == 1, f"{text!r} in {len(files)} files"
    return files[0]


class _ConfigLoader(yaml.SafeLoader):
    """mkdocs.yml as data: its ``!relative`` paths read as plain strings."""


_ConfigLoader.add_constructor("!relative", lambda loader, node: loader.construct_scalar(node))


def nav_titles() -> list[str]:
    """The titles of the site's top-level navigation, in order."""
    config = yaml.load(MKDOCS.read_text(), Loader=_ConfigLoader)
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in config["nav"]]
