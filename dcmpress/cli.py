"""The ``dcmpress`` command line: the root app over the commands of
:mod:`dcmpress.commands`, one concern a module."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from dcmpress.commands import batch, enqueue, estimate, listen, local, policy, stack
from dcmpress.console import EXIT_FAILED, explain, fail

app = typer.Typer(
    help="Compress DICOM archives losslessly (or lossily, if you choose), verified.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
)
_debug = False


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of any failure.")
    ] = False,
) -> None:
    global _debug
    _debug = debug or os.environ.get("DCMPRESS_DEBUG", "") not in ("", "0")


def main() -> None:
    """Console-script entry point: expected failures are one line, not a traceback."""
    try:
        app()
    except Exception as exc:
        line = None if _debug else explain(exc)
        if line is None:
            raise
        raise SystemExit(fail(line, EXIT_FAILED).exit_code) from None


# in the order `dcmpress --help` lists them
for command in (
    local.compress,
    stack.samples,
    local.doctor,
    enqueue.enqueue,
    batch.status,
    batch.batches,
    batch.report,
    stack.demo,
    listen.listen,
    batch.retry,
    batch.reconcile,
    batch.cancel,
    batch.resume,
    estimate.estimate,
):
    app.command()(command)
app.add_typer(policy.app, name="policy")
