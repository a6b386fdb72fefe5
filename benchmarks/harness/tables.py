"""The results as tables: per target, every tool on every set; every target through
the engine; start-up payoff; the engine's stages; output size and peak memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from benchmarks.harness.cells import measured_cells
from benchmarks.harness.commands import PEERS
from benchmarks.harness.timing import MB


@dataclass(frozen=True)
class TextTable:
    """A table as strings, rendered by rich for the terminal and as Markdown for a file."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""
    text_columns: int = 1  # the leading columns that are words, left-aligned; numbers follow

    def rich(self) -> Table:
        """For the terminal."""
        table = Table(title=self.title, caption=self.note or None, title_justify="left")
        for index, header in enumerate(self.headers):
            table.add_column(header, justify="left" if index < self.text_columns else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        """For RESULTS.md."""
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append(
            "|"
            + "|".join("---" if i < self.text_columns else "---:" for i in range(len(self.headers)))
            + "|"
        )
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def rate(numbers: dict[str, Any] | None) -> str:
    return f"{numbers['mb_per_s']:.1f}" if numbers else "-"


def throughput_tables(results: dict[str, Any]) -> list[TextTable]:
    """One table per target: MB/s of every tool on every set, and dcmpress / peer."""
    tables = []
    for target, per_target in results["targets"].items():
        peer_labels = [p.label for p in PEERS[target]]
        headers: tuple[str, ...] = ("set", "files", "MB", "bare", "engine", "compress -j1")
        for label in peer_labels:
            headers += (label, "dcmpress / peer")
        rows = []
        for set_name, cell in per_target["sets"].items():
            if not cell["files"]:
                rows.append((set_name, "0", *["-"] * (len(headers) - 2)))
                continue
            row: tuple[str, ...] = (
                set_name,
                str(cell["files"]),
                f"{cell['bytes'] / MB:.1f}",
                rate(cell["bare"]),
                rate(cell["engine"]),
                rate(cell["compress_j1"]),
            )
            for label in peer_labels:
                peer = cell["peers"][label]
                if peer["available"]:
                    row += (rate(peer), f"{peer['dcmpress_over_peer']:.2f}")
                else:
                    row += ("n/a", "-")
            rows.append(row)
        plugin = results["machine"]["plugins"][target]
        tables.append(
            TextTable(
                f"{target}: MB/s of input files (encoder {plugin['encoder']}, "
                f"verification {plugin['verification_decoder']})",
                headers,
                tuple(rows),
                "dcmpress / peer = compress -j1 MB/s / peer MB/s (> 1.00: dcmpress faster)",
            )
        )
    return tables


def memory_table(results: dict[str, Any]) -> TextTable:
    """Output size and peak RSS of every command, per target and set."""
    rows = []
    for target, set_name, cell in measured_cells(results):
        tools = {"dcmpress compress -j1": cell["compress_j1"]}
        tools.update({label: p for label, p in cell["peers"].items() if p["available"]})
        for label, numbers in tools.items():
            rows.append(
                (
                    target,
                    set_name,
                    label,
                    f"{cell['largest_file_bytes'] / MB:.2f}",
                    f"{numbers['size_ratio']:.2f}",
                    f"{numbers['peak_rss_mib']:.0f}",
                    f"{numbers['peak_rss_per_largest_input']:.1f}",
                )
            )
    return TextTable(
        "Output size and peak memory",
        (
            "target",
            "set",
            "command",
            "largest input MB",
            "size ratio",
            "peak RSS MiB",
            "RSS / input",
        ),
        tuple(rows),
        "peak RSS: ru_maxrss of each child from os.wait4 (dcmpress: the larger of the "
        "command and its pool worker, not their sum; peers: the largest of their per-file "
        f"runs), never below the launcher's own {results['rss_floor_mib']} MiB; "
        "RSS / input = peak RSS / largest input file of the set",
        text_columns=3,
    )


def stage_table(results: dict[str, Any]) -> TextTable:
    """Where the engine's time goes, per target and set."""
    names: list[str] = []
    for _, _, cell in measured_cells(results):
        names += [name for name in cell["engine"]["stage_shares"] if name not in names]
    rows = []
    for target, set_name, cell in measured_cells(results):
        shares = cell["engine"]["stage_shares"]
        rows.append(
            (
                target,
                set_name,
                *(f"{shares[name]:.0%}" if name in shares else "-" for name in names),
            )
        )
    return TextTable(
        "Engine time by stage (share of process() wall time)",
        ("target", "set", *names),
        tuple(rows),
        text_columns=2,
    )


def payoff_table(results: dict[str, Any]) -> TextTable:
    """:func:`start_up_payoff` as a table."""
    return TextTable(
        "Start-up paid off: files of each set's kind a dcmpress run needs to beat the peer "
        "run once per file",
        (
            "target",
            "set",
            "peer",
            "dcmpress ms per file after start-up",
            "peer ms per file",
            "files to pay off start-up",
        ),
        tuple(
            (
                row["target"],
                row["set"],
                row["peer"],
                f"{row['dcmpress_seconds_per_file'] * 1000:.1f}",
                f"{row['peer_seconds_per_file'] * 1000:.1f}",
                "never" if row["files_to_pay_off"] is None else str(row["files_to_pay_off"]),
            )
            for row in results["start_up_payoff"]
        ),
        "dcmpress: its run over the set less the fixed cost of one invocation (below), per "
        "file; peer: one invocation per file, its start-up included; files = start-up / "
        "(peer - dcmpress) per file, rounded up; never: dcmpress is slower per file even "
        "once started",
        text_columns=3,
    )


def newer_targets_table(results: dict[str, Any]) -> TextTable:
    """Engine MB/s and size ratio of every target on every set; auto's gain."""
    fixed = list(results["targets"]) + [t for t in results["newer_targets"] if t != "auto"]

    def cell(target: str, set_name: str) -> dict[str, Any] | None:
        per_set = (
            results["targets"][target]["sets"]
            if target in results["targets"]
            else results["newer_targets"][target]
        )
        found = per_set.get(set_name)
        return found if found and found.get("files") else None

    headers: tuple[str, ...] = ("set",)
    for target in [*fixed, "auto"]:
        headers += (f"{target} MB/s", "ratio")
    headers += ("auto size gain over " + " / ".join(fixed),)
    rows = []
    for set_name in results["sets"]:
        row: tuple[str, ...] = (set_name,)
        for target in [*fixed, "auto"]:
            found = cell(target, set_name)
            row += (
                (rate(found["engine"]), f"{found['engine_size_ratio']:.2f}")
                if found
                else ("-", "-")
            )
        chosen = cell("auto", set_name)
        gains = []
        for target in fixed:
            found = cell(target, set_name)
            gains.append(
                f"{chosen['engine_size_ratio'] / found['engine_size_ratio']:.3f}"
                if chosen and found
                else "-"
            )
        rows.append((*row, " / ".join(gains)))
    return TextTable(
        "Every target through the engine (verification on): MB/s of input files and mean "
        "size ratio",
        headers,
        tuple(rows),
        "auto tries its default candidates (every installed lossless target but jpegxl) and "
        "keeps the smallest; its gain is its mean size ratio over the fixed target's (on "
        "the files each took); its MB/s is the time cost",
    )
