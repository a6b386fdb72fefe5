"""``dcmpress compress``'s running totals: the summary table and the progress line."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from dcmpress.views import Tally, summary_table


def item(outcome: str, code: str, bytes_in: int, bytes_out: int, output: bool) -> dict[str, Any]:
    """A record as ``dcmpress compress`` makes them."""
    return {
        "path": "p",
        "output": "o" if output else None,
        "outcome": outcome,
        "code": code,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    }


def rendered(tally: Tally) -> dict[str, list[str]]:
    """The summary table's rows by their first cell: the other cells, stripped."""
    console = Console(width=200, record=True, color_system=None)
    console.print(summary_table(tally))
    rows = {}
    for line in console.export_text().splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.split("│")[1:-1]]
            rows[cells[0]] = cells[1:]
    return rows


def test_groups_and_totals_of_the_summary() -> None:
    tally = Tally()
    for record in (
        item("done", "compressed", 3_000_000, 1_000_000, True),
        item("done", "compressed", 1_000_000, 1_000_000, True),
        item("skipped", "not_dicom", 500_000, 500_000, True),  # copied as it was
        item("failed", "invalid_dicom", 250_000, 0, False),
    ):
        tally.add(record)
    rows = rendered(tally)
    assert rows["done"] == ["compressed", "2", "4.00", "2.00", "2.00"]
    assert rows["skipped"] == ["not_dicom", "1", "0.50", "0.50", "1.00"]
    assert rows["failed"] == ["invalid_dicom", "1", "0.25", "0.00", "-"]
    assert rows["all"] == ["", "4", "4.75", "2.50", "1.90"]
    assert tally.failed
    # saved: only what was written (4.5 MB in, 2.5 MB out), not the failed file's bytes
    assert tally.saved_text() == "2.0 MB saved (1.80x)"


def test_nothing_written_yet_and_no_failure() -> None:
    tally = Tally()
    assert tally.saved_text() == "" and not tally.failed
    tally.add(item("skipped", "already_compressed", 100, 0, False))
    assert tally.saved_text() == "" and not tally.failed
    assert rendered(tally)["skipped"] == ["already_compressed", "1", "0.00", "0.00", "-"]


def test_a_long_run_keeps_one_entry_per_outcome_and_code() -> None:
    """A million-file run holds a few totals, not a million records."""
    tally = Tally()
    for i in range(10_000):
        tally.add(item("done", "compressed", 1000, 400, True))
        if i % 100 == 0:
            tally.add(item("failed", "not_dicom", 10, 0, False))
    assert tally.groups == {
        ("done", "compressed"): [10_000, 10_000_000, 4_000_000],
        ("failed", "not_dicom"): [100, 1000, 0],
    }
