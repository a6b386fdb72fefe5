"""``dcmpress policy``: check a policy file, and show the rule each sample file takes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydicom import dcmread
from rich.console import Console
from rich.table import Table

from dcmpress.console import fail
from dcmpress.local import files_under
from worker.errors import ConfigurationError
from worker.policy import Policy, load_policy

app = typer.Typer(help="Policies: which rule decides each object.", no_args_is_help=True)


@app.command("check")
def policy_check(
    policy: Annotated[Path, typer.Argument(help="The policy file (TOML).")],
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Sample files or directories to decide.")
    ] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per file.")] = False,
) -> None:
    """Check a policy file; with sample files, show the rule each would take."""
    try:
        rules = load_policy(policy)
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    console = Console()
    if not paths:
        console.print(
            f"{policy}: {len(rules.rule)} rules, valid; the default: {rules.rule[-1].name!r}",
            soft_wrap=True,
        )
        return
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise fail(f"no such file or directory: {', '.join(missing)}")
    try:
        files = [file for path in paths for file in files_under(path)]
    except ConfigurationError as exc:  # a directory that cannot be listed
        raise fail(str(exc)) from None
    table = Table(title=f"{policy}: the rule each file takes")
    for column in ("file", "rule", "action", "targets"):
        table.add_column(column)
    for file in files:
        row = _decision(rules, file)
        if jsonl:
            sys.stdout.write(json.dumps(row) + "\n")
        else:
            table.add_row(
                str(file), row["rule"] or "-", str(row.get("action", row.get("error", ""))),
                ", ".join(row.get("target", [])),
            )  # fmt: skip
    if not jsonl:
        console.print(table)


def _decision(rules: Policy, file: Path) -> dict[str, Any]:
    """The rule ``file`` takes, as a row; or why its header could not be read."""
    try:
        ds = dcmread(file, stop_before_pixels=True)
    except Exception as exc:  # not DICOM, or unreadable: said per file
        return {"path": str(file), "rule": None, "error": f"cannot read a DICOM header: {exc}"}
    rule = rules.decide(ds, str(file), file.stat().st_size)
    return {"path": str(file), "rule": rule.name, "action": rule.action,
            "target": rule.target or rule.options.get("target", [])}  # fmt: skip
