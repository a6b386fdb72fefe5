"""The embedded local stack: ``dcmpress demo`` and ``dcmpress samples``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dcmpress.console import fail
from dcmpress.options import build_options
from dcmpress.stack.samples import write_demo_files


def samples(
    directory: Annotated[Path, typer.Argument(help="Where to write the sample files.")],
) -> None:
    """Write sample DICOM files (pydicom's bundled examples and synthetic images)."""
    count = write_demo_files(directory)
    Console(stderr=True).print(f"wrote {count} sample files to {directory}")


def demo(
    target: Annotated[str, typer.Option(help="Target(s), comma-separated.")] = "jpeg-ls",
    workers: Annotated[int, typer.Option(help="Celery worker processes.")] = 2,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the stack up (until Ctrl-C) and print its env.")
    ] = False,
    workdir: Annotated[
        Path | None, typer.Option(help="Where the servers keep data (default: a temp dir).")
    ] = None,
) -> None:
    """Run everything locally: Redis, an S3 server, workers, sample data, one batch."""
    from dcmpress.stack.demo import run_demo

    options = build_options({"target": target})
    try:
        run_demo(options, workers, keep, workdir, Console())
    except RuntimeError as exc:  # a service would not start: say which and why
        raise fail(str(exc)) from None
