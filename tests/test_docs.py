"""The documentation site: it builds strictly, loads nothing from the network, and its
CLI reference is what the typer app says of itself.

``DCMPRESS_WRITE_DOCS=1`` rewrites docs/reference/cli.md from the app (as it rewrites
docs/compatibility.md in tests/integration/test_readers.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.docs import DOCS, MKDOCS, ROOT

CLI_REFERENCE = DOCS / "reference" / "cli.md"
CLI_INTRO = """\
Generated from the `dcmpress` app by typer's own `typer dcmpress.cli utils docs`;
`tests/test_docs.py` fails while this page differs from what the app says, and
`DCMPRESS_WRITE_DOCS=1 python -m pytest tests/test_docs.py` rewrites it. Every
compression flag is also a `DCMPRESS_*` variable: see
[Configuration](configuration.md).
"""


TYPER_DOCS = ["typer", "dcmpress.cli", "utils", "docs", "--name", "dcmpress"]


def cli_reference() -> str:
    """The CLI reference page: typer's Markdown for the ``dcmpress`` app, this page's
    title and a line on where it comes from."""
    proc = subprocess.run(
        [sys.executable, "-m", *TYPER_DOCS, "--title", "CLI reference"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    title, body = proc.stdout.split("\n", 1)
    assert title == "# CLI reference", title
    return f"{title}\n\n{CLI_INTRO}{body}"


def test_the_cli_reference_is_the_apps_own() -> None:
    generated = cli_reference()
    if os.environ.get("DCMPRESS_WRITE_DOCS"):
        CLI_REFERENCE.write_text(generated)
    assert CLI_REFERENCE.read_text() == generated, (
        "docs/reference/cli.md differs from what the dcmpress app says: run this test with "
        "DCMPRESS_WRITE_DOCS=1 to rewrite it"
    )
    for command in ("compress", "enqueue", "listen", "estimate", "policy check"):
        assert f"## `dcmpress {command}`" in generated


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # the theme's banner, not a warning
    )


def test_the_site_builds_strictly_and_loads_nothing_from_the_network(tmp_path: Path) -> None:
    proc = _build(MKDOCS, tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pages = list((tmp_path / "site").rglob("*.html"))
    assert (tmp_path / "site" / "reference" / "cli" / "index.html") in pages
    for page in pages:
        html = page.read_text()
        remote = re.findall(r"<(?:link|script|img)\b[^>]*\b(?:href|src)=\"(https?:[^\"]+)", html)
        assert not remote, f"{page.relative_to(tmp_path)} loads {remote}"


def test_a_broken_link_or_a_page_left_out_of_the_nav_fails_the_build(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(DOCS, project / "docs")  # the linked pages copied as files
    shutil.copy(MKDOCS, project / "mkdocs.yml")
    shutil.copy(ROOT / "README.md", project / "README.md")  # docs/guarantees.md includes it
    (project / "docs" / "left-out.md").write_text("# Left out\n")
    with (project / "docs" / "concepts" / "index.md").open("a") as page:
        page.write("\n[gone](no-such-page.md) and [nowhere](dicom.md#no-such-heading)\n")
    proc = _build(project / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "left-out.md" in log and "no-such-page.md" in log and "no-such-heading" in log, log
