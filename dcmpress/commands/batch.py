"""The commands on batches already enqueued: watch them (``status``, ``batches``,
``report``) and act on them (``retry``, ``reconcile``, ``cancel``, ``resume``)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.live import Live

from dcmpress.commands.common import BatchId, connect
from dcmpress.console import fail, resolve_batch
from dcmpress.views import RateWindow, batches_table, render, rule_names, snapshot

if TYPE_CHECKING:
    from producer.enqueue import Enqueuer
    from worker.runtime.ledger import Ledger
    from worker.settings import WorkerSettings


def status(
    batch: BatchId,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until the batch is done.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
) -> None:
    """Counts, bytes saved, rate, ETA and the most common failures of a batch."""
    settings, ledger = connect()
    batch = resolve_batch(ledger, batch)
    names = rule_names(ledger, batch)  # a batch's spec does not change: read once
    current = snapshot(ledger, batch, names)
    checks = _StallCheck(ledger, batch, settings.queue, settings.reconcile_after)
    if not watch:
        Console().print(render(current, note=checks.note(current)))
        return
    window = RateWindow(60.0)
    with Live(render(current), console=Console(), auto_refresh=False) as live:
        while True:
            live.update(render(current, window.add(current), checks.note(current)), refresh=True)
            if current.complete:
                break
            time.sleep(interval)
            current = snapshot(ledger, batch, names)


class _StallCheck:
    """Run reconcile's check (read only) when a batch stalls; at most once a minute."""

    def __init__(self, ledger: Ledger, batch: str, queue: str, reconcile_after: int) -> None:
        self.ledger, self.batch, self.queue = ledger, batch, queue
        self.reconcile_after = reconcile_after
        self.checked_at = 0.0
        self.text = ""

    def note(self, current: Any) -> str:
        if not current.stalled or current.pending > 10_000:
            return ""
        if time.monotonic() - self.checked_at > 60:
            from worker import app as celery_app
            from worker.runtime.reconcile import broker_redis, find_orphans

            spec = self.ledger.get_batch(self.batch)
            assert spec is not None
            with broker_redis(celery_app) as broker:
                found = find_orphans(self.ledger, spec, self.queue, broker)
            self.checked_at = time.monotonic()
            if found.orphans:
                automatic = (
                    f"the workers send them again after {self.reconcile_after} s with no "
                    "activity, or "
                    if self.reconcile_after
                    else ""
                )
                self.text = (
                    f"{found.orphans:,} pending object(s) have no live message or worker: "
                    f"{automatic}run `dcmpress reconcile {self.batch}`"
                )
            else:
                self.text = (
                    "every pending object has a live message or worker (a long object, or "
                    "no worker consuming the queue)"
                )
        return self.text


def batches() -> None:
    """List known batches with their progress."""
    _, ledger = connect()
    rows = []
    for batch_id in ledger.batch_ids():
        spec = ledger.get_batch(batch_id)
        if spec is None:
            continue  # expired
        current = snapshot(ledger, batch_id)
        targets = "policy" if spec.policy is not None else ", ".join(spec.options.target)
        rows.append({
            "batch": batch_id, "state": current.state, "source": str(spec.source),
            "dest": str(spec.dest or "in place"), "targets": targets,
            **{state: int(current.counts.get(state, 0)) for state in ("done", "skipped", "failed")},
            "pending": current.pending,
        })  # fmt: skip
    console = Console()
    console.print(batches_table(rows, console.width))


def report(
    batch: BatchId,
    format: Annotated[str, typer.Option("--format", help="csv or ndjson.")] = "csv",
    output: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="Directory or s3://bucket/prefix for the report set: completion.csv (S3 "
            "Batch Operations shape), success.ndjson, failure.ndjson."
        ),
    ] = None,
    html: Annotated[
        bool, typer.Option("--html", help="With --out: also report.html, with charts.")
    ] = False,
) -> None:
    """One row per object of the batch, or a report set with --out."""
    from dcmpress.reports import report_rows, write_report

    if format not in ("csv", "ndjson"):
        raise fail("--format must be csv or ndjson")
    if html and not out:
        raise fail("--html writes into --out DIR or s3://...")
    settings, ledger = connect()
    batch = resolve_batch(ledger, batch)
    if out:
        written = _write_report_set(ledger, settings, batch, out, html)
        console = Console(stderr=True)
        console.print(f"report set of {batch} written to {out.rstrip('/')}/:")
        for name, lines in written.items():
            console.print(f"  {name}: {_report_contents(name, lines)}", highlight=False)
        return
    rows = report_rows(ledger, batch)
    if output is None:
        count = write_report(rows, sys.stdout, format)
    else:
        with output.open("w", newline="") as handle:
            count = write_report(rows, handle, format)
    where = f" to {output}" if output else ""
    Console(stderr=True).print(f"{count:,} object(s) of {batch} written{where} as {format}")


def _write_report_set(
    ledger: Ledger, settings: WorkerSettings, batch: str, out: str, html: bool
) -> dict[str, int]:
    """The report set (with ``html``, report.html too) written into ``out``, a directory
    or ``s3://bucket/prefix``: the rows of each file."""
    from dcmpress.reports import upload_report_set, write_bundle

    with tempfile.TemporaryDirectory(prefix="dcmpress-report-") as scratch:
        local = Path(scratch) if out.startswith("s3://") else Path(out)
        written = write_bundle(ledger, batch, local)
        if html:
            from dcmpress.report_html import write_html  # its charts: only with --html

            write_html(ledger, batch, local / "report.html")
            written["report.html"] = 1
        if out.startswith("s3://"):
            upload_report_set(local, written, out, settings)
    return written


def _report_contents(name: str, rows: int) -> str:
    if name == "report.html":
        return "charts and tables, self-contained"
    if name == "completion.csv":
        return f"{rows:,} row(s), one per object (S3 Batch Operations shape)"
    what = "done or skipped" if name.startswith("success") else "failed"
    return f"{rows:,} {what} object(s)"


def _batch_enqueuer(batch: str, force: bool) -> Enqueuer:
    """The enqueuer of the batch ``batch`` names (a unique start of its id will do)."""
    from producer.enqueue import Enqueuer

    settings, ledger = connect()
    spec = ledger.get_batch(resolve_batch(ledger, batch))
    assert spec is not None  # resolve_batch found it
    from worker import app as celery_app  # made from the settings, once they are checked

    return Enqueuer(celery_app, ledger, spec, settings.queue, force=force)


def retry(
    batch: BatchId,
    code: Annotated[
        list[str] | None, typer.Option(help="Only objects that failed with this code.")
    ] = None,
) -> None:
    """Queue the failed objects of a batch again (all, or those with --code)."""
    from producer.enqueue import requeue

    enqueuer = _batch_enqueuer(batch, force=True)
    batch = enqueuer.spec.batch
    codes = set(code or ())
    sent = requeue(enqueuer, lambda r: r.state == "failed" and (not codes or r.code in codes))
    Console().print(f"{sent} failed object(s) of {batch} queued again")


def reconcile(
    batch: BatchId,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report; send nothing.")] = False,
) -> None:
    """Send a message for every queued or running object that no live message will finish."""
    from worker.runtime.reconcile import broker_redis, find_orphans
    from worker.runtime.reconcile import reconcile as send_orphans

    enqueuer = _batch_enqueuer(batch, force=False)
    queue = enqueuer.queue
    if dry_run:
        with broker_redis(enqueuer.publisher.app) as broker:
            found = find_orphans(enqueuer.ledger, enqueuer.spec, queue, broker)
    else:
        found = send_orphans(enqueuer, queue)
    Console().print(_reconcile_text(found, dry_run), highlight=False)
    print(json.dumps({**found.__dict__, "orphans": found.orphans}))


def _reconcile_text(found: Any, dry_run: bool) -> str:
    lines = [
        f"batch {found.batch}: {found.checked:,} objects, {found.pending:,} queued or running, "
        f"{found.with_message:,} of them with a live message or worker",
        f"  queued, with no message: {len(found.queued_orphans):,}",
        f"  running, with no message and no live worker: {len(found.running_orphans):,}",
    ]
    for key in (found.queued_orphans + found.running_orphans)[:10]:
        lines.append(f"    e.g. {key}")
    if found.orphans:
        lines.append(
            "  nothing sent (--dry-run)" if dry_run else f"  sent {found.sent:,} message(s)"
        )
    return "\n".join(lines)


def cancel(batch: BatchId) -> None:
    """Stop a batch: its queued objects are acknowledged and recorded `cancelled`."""
    enqueuer = _batch_enqueuer(batch, force=False)
    batch = enqueuer.spec.batch
    enqueuer.ledger.set_cancelled(batch, True)
    pending = snapshot(enqueuer.ledger, batch).pending
    Console().print(f"batch {batch} cancelled; {pending} queued/running object(s) will stop")


def resume(batch: BatchId) -> None:
    """Continue a cancelled batch: its cancelled objects are queued again."""
    from producer.enqueue import requeue

    enqueuer = _batch_enqueuer(batch, force=True)
    batch = enqueuer.spec.batch
    enqueuer.ledger.set_cancelled(batch, False)
    sent = requeue(enqueuer, lambda r: r.code == "cancelled")
    Console().print(f"batch {batch} resumed; {sent} cancelled object(s) queued again")
