"""What the operator sees: batch progress, rates and ETA, read from the ledger."""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from worker.codec.targets import PluginStatus
from worker.errors import CODES, TERMINAL, ConfigurationError

if TYPE_CHECKING:
    from worker.runtime.ledger import Ledger

STALL_SECONDS = 300  # pending objects, none finished for this long: the batch is stalled


@dataclass
class BatchStatus:
    """A snapshot of one batch."""

    batch: str
    counts: dict[str, float]
    info: dict[str, str]
    taken_at: float
    rule_names: tuple[str, ...] = ()  # of the batch's policy, in order; () without one
    paused: str = ""  # why the workers pause (storage failing, worker/runtime/breaker.py)

    @property
    def finished(self) -> int:
        """Objects in a terminal state."""
        return int(sum(self.counts.get(state, 0) for state in TERMINAL))

    @property
    def pending(self) -> int:
        """Objects queued or running."""
        return int(self.counts.get("queued", 0) + self.counts.get("running", 0))

    @property
    def total(self) -> int:
        """Objects known to the batch."""
        return self.finished + self.pending

    @property
    def state(self) -> str:
        """cancelled, complete, running (objects pending) or listing (being enqueued)."""
        if "cancelled" in self.info:
            return "cancelled"
        if self.complete:
            return "complete"
        return "running" if self.pending else "listing"

    @property
    def complete(self) -> bool:
        """Listing finished and nothing left to do."""
        return "listing_done" in self.info and self.pending == 0

    def rates(self, previous: BatchStatus | None = None) -> tuple[float, float]:
        """(objects/s, source MB/s): since ``previous``, else over the batch's life."""
        if previous is not None and self.taken_at > previous.taken_at:
            seconds = self.taken_at - previous.taken_at
            objects = self.finished - previous.finished
            megabytes = (self.counts.get("bytes_in", 0) - previous.counts.get("bytes_in", 0)) / 1e6
            return objects / seconds, megabytes / seconds
        started = self.counts.get("started_at")
        last = self.counts.get("finished_at")
        if not started or not last:
            return 0.0, 0.0
        seconds = max(last - started, 1.0)  # whole seconds: a batch that took under one
        return self.finished / seconds, self.counts.get("bytes_in", 0) / 1e6 / seconds

    def idle_seconds(self) -> float | None:
        """Seconds since an object of the batch last finished (or the first started),
        while objects are pending; None when nothing is pending or nothing ever ran."""
        last = self.counts.get("finished_at") or self.counts.get("started_at")
        if not self.pending or not last:
            return None
        return max(0.0, self.taken_at - last)

    @property
    def stalled(self) -> bool:
        """Objects are pending and none finished for STALL_SECONDS."""
        idle = self.idle_seconds()
        return idle is not None and idle > STALL_SECONDS

    def example(self, code: str) -> str:
        """The latest key that failed with ``code`` ('' if none is known)."""
        return self.info.get(f"example:{code}", "")

    def failures(self, limit: int = 5) -> list[tuple[str, int]]:
        """The most common failure codes.

        A code is a failure where the batch recorded a failed example of it: options
        such as ``unsupported=fail`` turn codes that are normally skips into failures.
        """
        codes = [
            (code, int(value))
            for code, value in (
                (name.removeprefix("code:"), value)
                for name, value in self.counts.items()
                if name.startswith("code:") and value > 0
            )
            if self.example(code) or CODES.get(code, CODES["internal_error"]).state == "failed"
        ]
        return sorted(codes, key=lambda item: -item[1])[:limit]

    def by_rule(self) -> list[tuple[str, int, float, float]]:
        """(rule name, finished objects, bytes in and out of those written) per rule of
        the batch's policy that decided any object, in the policy's order."""
        from worker.runtime.records import to_base36

        rows = []
        for number, name in enumerate(self.rule_names, 1):
            key = to_base36(number)
            objects = int(self.counts.get(f"rule:{key}", 0))
            if objects:
                written = (self.counts.get(f"rule_in:{key}", 0.0),
                           self.counts.get(f"rule_out:{key}", 0.0))  # fmt: skip
                rows.append((name, objects, *written))
        return rows


def snapshot(ledger: Ledger, batch: str, names: tuple[str, ...] | None = None) -> BatchStatus:
    """Read the batch's counters now; ``names`` are its policy's rule names, read from
    its spec when not given (a view that refreshes reads them once)."""
    from worker.runtime.breaker import read_pause
    from worker.settings import WorkerSettings

    default_queue = WorkerSettings.model_fields["queue"].default
    if names is None:
        names = rule_names(ledger, batch)
    info = ledger.batch_info(batch)
    # the breaker of the queue the batch's messages go to (the default one's if unknown)
    pause = read_pause(ledger.redis, info.get("queue") or default_queue)
    return BatchStatus(batch, ledger.counts(batch), info, time.time(), names,
                       pause.describe() if pause else "")  # fmt: skip


def rule_names(ledger: Ledger, batch: str) -> tuple[str, ...]:
    """The names of the batch's policy rules, in order; none without a policy."""
    spec = ledger.get_batch(batch)
    try:
        policy = spec.rules() if spec is not None else None
    except ConfigurationError:  # a policy this release cannot read: its objects say so
        policy = None
    return tuple(rule.name for rule in policy.rule) if policy is not None else ()


def _pacing(plan_json: str) -> str:
    """The feed's pacing in words, from its stored plan ("" if none)."""
    from pydantic import ValidationError

    from producer.feeder import FeedPlan

    try:
        return FeedPlan.model_validate_json(plan_json).pacing() if plan_json else ""
    except ValidationError:  # written by another release
        return ""


def render(status: BatchStatus, previous: BatchStatus | None = None, note: str = "") -> Table:
    """A table for humans: counts, bytes saved, rates, ETA, failures with an example.

    ``previous`` is the snapshot the rates are measured from (``--watch`` passes the
    one taken about a minute earlier); ``note`` is shown under the ETA (what a check
    of a stalled batch found). A batch that is not moving has no ETA.
    """
    counts = status.counts
    bytes_in, bytes_out = counts.get("bytes_in", 0.0), counts.get("bytes_out", 0.0)
    rate, megabytes = status.rates(previous)
    idle = status.idle_seconds()
    if status.paused and status.pending:
        eta = "none while the workers pause"
    elif status.stalled and idle is not None:
        eta = f"none: nothing finished for {dt.timedelta(seconds=round(idle))}"
    elif rate > 0 and status.pending:
        eta = str(dt.timedelta(seconds=max(1, round(status.pending / rate))))
    else:
        eta = "-"
    table = Table(title=f"batch {status.batch}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    listing = "complete" if "listing_done" in status.info else "in progress"
    table.add_row("listing", f"{listing}, {status.info.get('enqueued', '0')} enqueued")
    feed_state = status.info.get("feed_state", "")
    if feed_state and "listing_done" not in status.info:
        since = dt.datetime.fromtimestamp(int(status.info.get("feed_state_at", 0) or 0))
        table.add_row("feed", f"{escape(feed_state)} (since {since:%H:%M:%S})")
    pacing = _pacing(status.info.get("feed", ""))
    if pacing:
        table.add_row("pacing", escape(pacing))
    for state in ("queued", "running", "done", "skipped", "failed"):
        table.add_row(state, f"{int(counts.get(state, 0)):,}")
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(status.total, 1), completed=status.finished, width=30),
        f"{status.finished:,} / {status.total:,}",
    )
    table.add_row("progress", bar)
    table.add_row("bytes in", f"{bytes_in / 1e6:,.1f} MB")
    table.add_row("bytes out", f"{bytes_out / 1e6:,.1f} MB")
    written_in = counts.get("written_in", 0.0)  # failed inputs were never written: no saving
    saved = written_in - bytes_out if bytes_out else 0.0
    ratio = f" ({written_in / bytes_out:.2f}x)" if bytes_out else ""
    table.add_row("saved", f"{saved / 1e6:,.1f} MB{ratio}")
    window = "last minute" if previous is not None else "average"
    table.add_row(f"rate ({window})", f"{rate:,.1f} objects/s, {megabytes:,.2f} MB/s")
    table.add_row("ETA", eta)
    if status.paused and not status.complete:
        table.add_row("paused", f"{escape(status.paused)}; the workers resume when it answers")
    if note:
        table.add_row("check", note)
    resent = int(status.info.get("reconciled_sent", 0) or 0)
    if resent:
        at = dt.datetime.fromtimestamp(int(status.info.get("reconciled_at", 0)))
        table.add_row(
            "re-sent", f"{resent:,} object(s) had lost their message (last check {at:%H:%M:%S})"
        )
    for name, objects, written_in, written_out in status.by_rule():
        saved = (written_in - written_out) / 1e6
        gain = f", {saved:,.1f} MB saved ({written_in / written_out:.2f}x)" if written_out else ""
        table.add_row(f"rule: {escape(name)}", f"{objects:,} objects{gain}")
    for code, count in status.failures():
        example = status.example(code)
        table.add_row(f"failed: {code}", f"{count:,}" + (f"  e.g. {example}" if example else ""))
    return table


class RateWindow:
    """Snapshots of the last ``seconds``, so rates are measured over that window."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self.snapshots: deque[BatchStatus] = deque()

    def add(self, status: BatchStatus) -> BatchStatus | None:
        """Remember ``status``; return the oldest snapshot still inside the window."""
        self.snapshots.append(status)
        while self.snapshots and status.taken_at - self.snapshots[0].taken_at > self.seconds:
            self.snapshots.popleft()
        oldest = self.snapshots[0]
        return oldest if oldest is not status else None


def id_column(table: Table, header: str, values: list[str], **kwargs: Any) -> None:
    """A column that is never cut: identifiers a user types next, codes, numbers.

    Its minimum width is its longest value (or header word), so at 80 columns the other
    columns wrap, or are left out, instead.
    """
    width = max([*(len(word) for word in header.split()), *(len(value) for value in values)])
    table.add_column(header, no_wrap=True, min_width=width, **kwargs)


def batches_table(rows: list[dict[str, Any]], width: int) -> Table:
    """``dcmpress batches``: id and state whole; counts in columns when they fit.

    Narrower than 120 columns, the counts share one wrapping column and source and
    destination are left out (``dcmpress status BATCH`` shows them).
    """
    counts = ("done", "skipped", "failed", "pending")
    table = Table(title="dcmpress batches")
    id_column(table, "batch", [str(row["batch"]) for row in rows])
    id_column(table, "state", [str(row["state"]) for row in rows])
    wide = width >= 120
    if wide:
        for column in ("source", "dest"):
            table.add_column(column, overflow="fold")
    table.add_column("targets", overflow="fold")
    if wide:
        for column in counts:
            id_column(table, column, [str(row[column]) for row in rows], justify="right")
    else:
        table.add_column("objects", overflow="fold")
    for row in rows:
        places = [row["source"], row["dest"]] if wide else []
        if wide:
            numbers = [str(row[name]) for name in counts]
        else:
            numbers = [", ".join(f"{row[name]} {name}" for name in counts)]
        table.add_row(row["batch"], row["state"], *places, row["targets"], *numbers)
    return table


def doctor_table(statuses: list[PluginStatus], width: int) -> Table:
    """``dcmpress doctor``: every target's plugins, installed or what to install."""
    table = Table(title="dcmpress targets and plugins")
    id_column(table, "target", [status.target.name for status in statuses])
    id_column(table, "transfer syntax", [str(status.target.uid) for status in statuses])
    if width >= 100:
        table.add_column("lossy")
    id_column(table, "plugin", [status.plugin.name for status in statuses])
    table.add_column("status", overflow="fold")
    for status in statuses:
        state = "[green]available[/]" if status.available else "[red]missing[/]"
        if not status.available:
            state += f": {status.missing}; {status.install_hint}"
        lossy = ["yes" if status.target.lossy else "no"] if width >= 100 else []
        table.add_row(status.target.name, status.target.uid, *lossy, status.plugin.name, state)
    return table


def outcomes_table(rows: list[dict[str, Any]], width: int) -> Table:
    """One row per object: key, state, code and ratio always; the message if it fits.

    State, code and ratio are never cut; a long key wraps.
    """
    rows = sorted(rows, key=lambda row: str(row["key"]))
    ratios = [f"{row['ratio']:.2f}" if row["ratio"] else "-" for row in rows]
    table = Table(title="outcome per object")
    table.add_column("key", overflow="fold")
    id_column(table, "state", [str(row["state"]) for row in rows])
    id_column(table, "code", [str(row["code"]) for row in rows])
    id_column(table, "ratio", ratios, justify="right")
    show_message = width >= 110
    if show_message:
        table.add_column("message", overflow="ellipsis", no_wrap=True)
    for row, ratio in zip(rows, ratios, strict=True):
        message = [str(row["message"])] if show_message else []
        table.add_row(row["key"], row["state"], row["code"], ratio, *message)
    return table


@dataclass
class Tally:
    """Files and bytes of ``dcmpress compress`` records by outcome and code, added up
    as the records arrive: a run over millions of files keeps a few numbers, not every
    record, and the progress line costs the same at the last file as at the first."""

    groups: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # files, in, out
    written_in: int = 0  # bytes of the records that wrote an output
    written_out: int = 0

    def add(self, item: dict[str, Any]) -> None:
        """Count one record."""
        totals = self.groups.setdefault((item["outcome"], item["code"]), [0, 0, 0])
        totals[0] += 1
        totals[1] += item["bytes_in"]
        totals[2] += item["bytes_out"]
        if item["output"]:
            self.written_in += item["bytes_in"]
            self.written_out += item["bytes_out"]

    @property
    def failed(self) -> bool:
        """True if any record failed."""
        return any(outcome == "failed" for outcome, _ in self.groups)

    def saved_text(self) -> str:
        """What the outputs written so far saved, for the progress line."""
        if not self.written_out:
            return ""
        saved = (self.written_in - self.written_out) / 1e6
        return f"{saved:,.1f} MB saved ({self.written_in / self.written_out:.2f}x)"


def summary_table(tally: Tally) -> Table:
    """Counts, bytes and ratio by outcome and code (``dcmpress compress``)."""
    table = Table(title="dcmpress summary")
    for column in ("outcome", "code", "files", "MB in", "MB out", "ratio"):
        table.add_column(column, justify="left" if column in ("outcome", "code") else "right")
    order = {"done": 0, "skipped": 1, "failed": 2}
    for key in sorted(tally.groups, key=lambda k: (order.get(k[0], 3), k[1])):
        files, bytes_in, bytes_out = tally.groups[key]
        ratio = f"{bytes_in / bytes_out:.2f}" if bytes_out else "-"
        style = {"done": "green", "skipped": "yellow", "failed": "red"}.get(key[0], "")
        table.add_row(
            f"[{style}]{key[0]}[/]", key[1], str(files),
            f"{bytes_in / 1e6:,.2f}", f"{bytes_out / 1e6:,.2f}", ratio,
        )  # fmt: skip
    files = sum(totals[0] for totals in tally.groups.values())
    total_in = sum(totals[1] for totals in tally.groups.values())
    total_out = sum(totals[2] for totals in tally.groups.values())
    table.add_section()
    table.add_row(
        "all", "", str(files), f"{total_in / 1e6:,.2f}", f"{total_out / 1e6:,.2f}",
        f"{total_in / total_out:.2f}" if total_out else "-",
    )  # fmt: skip
    return table


def estimate_tables(report: dict[str, Any]) -> list[Table]:
    """``dcmpress estimate``'s tables: the projection, per modality, per target, per
    stratum, and the outcomes of the compressed sample."""
    from dcmpress.charts import human_bytes

    saving, cpu, money = report["saving"], report["cpu"], report["money"]
    population, sample = report["population"], report["sample"]
    level = f"{saving['confidence']:.0%}"
    summary = Table(title=f"dcmpress estimate: {escape(report['source'])}", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_column("interval", justify="right")
    ratio = f"{saving['ratio']:.2f}x" if saving["ratio"] else "-"
    rows = [
        ("objects listed", f"{population['objects']:,}", ""),
        ("bytes listed", human_bytes(population["bytes"]), ""),
        ("headers read / objects compressed",
         f"{sample['headers']:,} / {sample['compressed']:,}", ""),
        ("bytes saved", human_bytes(saving["bytes"]),
         f"{human_bytes(saving['low'])} - {human_bytes(saving['high'])} ({level})"),
        ("saved, of bytes listed", f"{saving['percent']:.1f} %", ""),
        ("destination size", human_bytes(saving["bytes_written"]),
         f"{human_bytes(saving['bytes_written_low'])} - "
         f"{human_bytes(saving['bytes_written_high'])}"),
        ("not written (no output)", human_bytes(saving["not_written"]), ""),
        ("ratio of written objects", ratio, ""),
        ("CPU core-hours", f"{cpu['core_hours']:,.4g}",
         f"{cpu['low']:,.4g} - {cpu['high']:,.4g} ({level})"),
        (f"saving per month ({money['storage_class']}, ${money['price_per_gb_month']:g}/GB)",
         f"${money['monthly']:,.2f}",
         f"${money['monthly_low']:,.2f} - ${money['monthly_high']:,.2f}"),
        ("saving per year", f"${money['yearly']:,.2f}",
         f"${money['yearly_low']:,.2f} - ${money['yearly_high']:,.2f}"),
    ]  # fmt: skip
    for row in rows:
        summary.add_row(*(escape(cell) for cell in row))
    tables = [summary]
    for name, title in (("by_modality", "modality"), ("by_target", "target")):
        table = Table(title=f"projected per {title}")
        for column in (title, "objects", "bytes in", "saved", "ratio", "core-hours", "samples"):
            table.add_column(column, justify="left" if column == title else "right")
        for item in report[name]:
            table.add_row(
                escape(str(item["label"])), f"{item['objects']:,}", human_bytes(item["bytes_in"]),
                human_bytes(item["saved"]), f"{item['ratio']:.2f}" if item["ratio"] else "-",
                f"{item['core_hours']:,.4g}", str(item["samples"]),
            )  # fmt: skip
        tables.append(table)
    strata = Table(title="strata (size class, kind, rule)")
    for column in ("size", "kind", "rule", "objects", "bytes", "headers", "samples", "ratio",
                   "saved"):  # fmt: skip
        strata.add_column(column, justify="left" if column in ("size", "kind", "rule") else "right")
    for item in report["strata"]:
        ratio = f"{item['ratio']:.2f}" if item["ratio"] else "-"
        if item["rates_from"] != "own sample":
            ratio = f"({item['rates_from']})"
        strata.add_row(
            escape(item["size_class"]), escape(item["kind"]), escape(item["rule"] or ""),
            f"{item['objects']:,}", human_bytes(item["bytes"]), str(item["headers"]),
            str(item["samples"]), escape(ratio),
            human_bytes(item["saved"]) if item["saved"] is not None else "-",
        )  # fmt: skip
    tables.append(strata)
    outcomes = Table(title="outcomes of the compressed sample")
    for column in ("outcome", "code", "objects"):
        outcomes.add_column(column)
    for item in report["outcomes"]:
        outcomes.add_row(escape(item["outcome"]), escape(item["code"]), str(item["count"]))
    for item in report["failed_samples"][:20]:
        outcomes.add_row(
            "failed", escape(item["code"]), escape(f"{item['key']}: {item['message']}")
        )
    tables.append(outcomes)
    return tables
