"""The HTML batch report: its chart data match the ledger, and it renders offline.

A real batch goes through the session's Redis, SeaweedFS and Celery worker; the page
written from the ledger is then checked three ways: the embedded JSON against the
ledger records, every SVG bar against the JSON, and the page rendered by headless
Chromium (screenshot and DOM). Chromium is looked up on PATH; the test is skipped,
saying so, when there is none (CI installs the Debian ``chromium`` package).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from pydicom import examples

from dcmpress.report_html import chart_data, ratio_bin, ratio_labels, render_html, write_html
from dcmpress.reports import report_rows
from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from worker.errors import TERMINAL
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration

# the field each chart's bars show (kept here, independent of dcmpress.report_html)
BAR_VALUE = {
    "by_modality": "saved",
    "by_target": "saved",
    "ratio_histogram": "count",
    "failures_by_code": "count",
    "throughput": "objects",
}
TITLES = (
    "Savings by modality",
    "Savings by target",
    "Compression ratio distribution",
    "Failures by code",
    "Throughput over time",
)
ODD_KEY = 'odd/<i>not</i> "dicom" & co.txt'  # untrusted text must be escaped


def _mr() -> bytes:
    ds = make_image(64, 64, bits_stored=12, seed=3)
    ds.Modality = "MR"
    return to_bytes(ds)


def _objects() -> dict[str, bytes]:
    return {
        "ct/a.dcm": to_bytes(make_image(96, 96, bits_stored=12, seed=1)),
        "ct/tiny.dcm": to_bytes(make_image(16, 128, bits_stored=12, seed=2)),  # j2k: < 32
        "ot/rgb.dcm": to_bytes(make_image(64, 80, bits_allocated=8, samples=3)),
        "mr/b.dcm": _mr(),
        "plan/rt.dcm": to_bytes(examples.rt_plan),  # no pixel data: copied, skipped
        ODD_KEY: b"not an image at all\n" * 10,
    }


class Bars(HTMLParser):
    """Collects (data-label, data-value) of every <rect> per <svg data-chart>."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, list[tuple[str, str]]] = {}
        self.current: str | None = None
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "svg":
            self.current = found.get("data-chart")
            if self.current is not None:
                self.charts[self.current] = []
        elif tag == "rect" and self.current is not None and "data-label" in found:
            self.charts[self.current].append((found["data-label"] or "", found["data-value"] or ""))
        elif tag == "script":
            self.scripts.append(found)

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.current = None


def embedded_json(page: str) -> dict[str, Any]:
    """The JSON of ``<script type="application/json" id="chart-data">``."""
    opening = '<script type="application/json" id="chart-data">'
    assert page.count(opening) == 1
    start = page.index(opening) + len(opening)
    return dict(json.loads(page[start : page.index("</script>", start)]))


def check_bars(page: str, data: dict[str, Any]) -> Bars:
    """Every chart is an svg whose bars carry exactly the JSON's labels and values."""
    bars = Bars()
    bars.feed(page)
    bars.close()
    drawn = {**BAR_VALUE, **({"psnr_histogram": "count"} if data["psnr_histogram"] else {})}
    assert sorted(bars.charts) == sorted(drawn)
    for chart, field in drawn.items():
        expected = [(str(item["label"]), str(item[field])) for item in data[chart]]
        assert bars.charts[chart] == expected, chart
    return bars


def chromium_binary() -> str:
    """Headless Chromium on PATH, or skip the test saying what is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "the ledger, JSON and SVG checks passed, but no chromium, chromium-browser or "
        "google-chrome is on PATH to render the page (CI: apt-get install chromium)"
    )


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium once, offline: no sync, updates, QUIC or first-run work."""
    return subprocess.run(
        [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def test_html_report_matches_the_ledger_and_renders_offline(
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    celery_worker: Any,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    source, dest = bucket_pair
    objects = _objects()
    client = s3_server.client()
    for key, body in objects.items():
        client.put_object(Bucket=source, Key=key, Body=body)
    batch = f"html-{uuid.uuid4().hex[:8]}"
    proc = run_cli(
        stack_env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
        "--target", "j2k,rle", "--batch", batch, "--not-dicom", "fail",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    counts = wait_for_batch(ledger, batch, len(objects))

    path = tmp_path / "report.html"
    write_html(ledger, batch, path)
    page = path.read_text(encoding="utf-8")
    data = embedded_json(page)

    # the embedded data is chart_data over the ledger ...
    assert data == chart_data(report_rows(ledger, batch), ledger.counts(batch))

    # ... and agrees with the ledger's records, counted here independently
    records = {key: record for key, record, _ in ledger.iter_records(batch)}
    assert sorted(records) == sorted(objects)
    assert {key: r.state for key, r in records.items()} == {
        "ct/a.dcm": "done", "ct/tiny.dcm": "done", "ot/rgb.dcm": "done", "mr/b.dcm": "done",
        "plan/rt.dcm": "skipped", ODD_KEY: "failed",
    }  # fmt: skip
    groups = (("by_modality", "modality", "unknown"), ("by_target", "target", "none"))
    for group, field, empty in groups:
        sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for record in records.values():
            if record.bytes_out:
                entry = sums[getattr(record, field) or empty]
                entry[0] += 1
                entry[1] += record.bytes_in
                entry[2] += record.bytes_out
        assert {
            item["label"]: [item["objects"], item["bytes_in"], item["bytes_out"]]
            for item in data[group]
        } == sums, group
        for item in data[group]:
            assert item["saved"] == item["bytes_in"] - item["bytes_out"]
    modalities = {item["label"]: item["objects"] for item in data["by_modality"]}
    assert {name: modalities.get(name) for name in ("CT", "OT", "MR")} == {
        "CT": 2, "OT": 1, "MR": 1,
    }  # fmt: skip
    targets = {item["label"]: item["objects"] for item in data["by_target"]}
    assert targets["j2k"] == 3 and targets["rle"] == 1  # the 16-row CT fell back to rle
    assert data["failures_by_code"] == [{"label": "not_dicom", "count": 1}]
    done = [r for r in records.values() if r.state == "done"]
    histogram = Counter(ratio_bin(round(r.bytes_in / r.bytes_out, 4)) for r in done)
    assert data["ratio_histogram"] == [
        {"label": label, "count": histogram[index]} for index, label in enumerate(ratio_labels())
    ]
    assert all(r.bytes_out < r.bytes_in for r in done)  # every ratio above 1
    finished = [r for r in records.values() if r.state in TERMINAL]
    assert sum(item["objects"] for item in data["throughput"]) == len(finished)
    assert sum(item["bytes_in"] for item in data["throughput"]) == sum(r.bytes_in for r in finished)
    minutes = [item["start"] for item in data["throughput"]]
    assert minutes == sorted(minutes)
    assert {r.updated // 60 * 60 for r in finished} <= set(minutes)
    totals = data["totals"]
    for state in ("done", "skipped", "failed", "queued", "running"):
        assert totals[state] == int(counts.get(state, 0)), state
    assert (totals["done"], totals["skipped"], totals["failed"]) == (4, 1, 1)
    assert totals["objects"] == len(objects)
    assert totals["bytes_in"] == int(counts["bytes_in"]) == sum(r.bytes_in for r in finished)
    assert totals["bytes_out"] == int(counts["bytes_out"]) == sum(r.bytes_out for r in finished)
    assert totals["saved"] == sum(item["saved"] for item in data["by_target"]) > 0
    assert [item["key"] for item in data["failed_objects"]] == [ODD_KEY]
    assert data["by_rule"] == [] and "Savings by policy rule" not in page  # no policy

    # every bar carries its JSON value; the page is self-contained and escaped
    bars = check_bars(page, data)
    assert bars.scripts == [{"type": "application/json", "id": "chart-data"}]
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "<i>not</i>" not in page
    assert "&lt;i&gt;not&lt;/i&gt; &quot;dicom&quot; &amp; co.txt" in page

    # rendered by headless Chromium: a screenshot and the DOM it built
    binary = chromium_binary()
    screenshot = tmp_path / "report.png"
    started = time.monotonic()
    shot = chromium(
        binary, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,2000",
        path.as_uri(),
    )  # fmt: skip
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000, screenshot.stat().st_size
    dom = chromium(binary, tmp_path / "profile-dom", "--dump-dom", path.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert batch in dom.stdout
    for title in TITLES:
        assert title in dom.stdout, title
    assert dom.stdout.count("<rect") == sum(len(bars.charts[name]) for name in BAR_VALUE)
    print(f"\nHTML report: {path}\nscreenshot: {screenshot} ({time.monotonic() - started:.1f} s)")


def test_hostile_text_cannot_break_out_of_the_page() -> None:
    evil = '</script><script>alert(1)</script><!--"&'
    rows = [
        {
            "key": evil, "state": "failed", "code": evil, "message": evil, "bytes_in": 10,
            "bytes_out": 0, "ratio": None, "target": "", "plugin": "", "attempts": 1,
            "seconds": 0.1, "worker": "w", "etag": "", "updated": 1_700_000_000,
            "modality": "",
        },
        {
            "key": "a.dcm", "state": "done", "code": "compressed", "message": "",
            "bytes_in": 300, "bytes_out": 100, "ratio": 3.0, "target": evil, "plugin": "p",
            "attempts": 1, "seconds": 0.1, "worker": "w", "etag": "", "updated": 1_700_000_061,
            "modality": evil,
        },
    ]  # fmt: skip
    counts = {"done": 1.0, "failed": 1.0, "bytes_in": 310.0, "bytes_out": 100.0}
    data = chart_data(rows, counts)
    page = render_html(evil, data)
    assert "<script>" not in page and "alert(1)</script>" not in page
    assert embedded_json(page) == data
    bars = check_bars(page, data)
    assert bars.scripts == [{"type": "application/json", "id": "chart-data"}]
    assert bars.charts["by_modality"] == [(evil, "200")]
    assert bars.charts["failures_by_code"] == [(evil, "1")]
    assert [item["label"] for item in data["throughput"]] == ["22:13", "22:14"]
    assert data["ratio_histogram"][4] == {"label": "2.5-3.0", "count": 0}
    assert data["ratio_histogram"][5] == {"label": "3.0-4.0", "count": 1}


def _lossy_row(key: str, modality: str, psnr: float | None, max_error: int) -> dict[str, Any]:
    return {
        "key": key, "state": "done", "code": "compressed", "message": "", "bytes_in": 500,
        "bytes_out": 100, "ratio": 5.0, "target": "j2k-lossy", "plugin": "pylibjpeg",
        "attempts": 1, "seconds": 0.1, "worker": "w", "etag": "", "updated": 1_700_000_000,
        "modality": modality, "rule": "", "copied": False, "max_error": max_error, "psnr": psnr,
    }  # fmt: skip


def test_lossy_quality_is_shown_as_a_distribution_per_modality() -> None:
    """The HTML report of lossy results: a PSNR histogram and, per modality, the lowest,
    5th-percentile and median PSNR and the largest error (from the records' quality)."""
    rows = [_lossy_row(f"ct/{n}.dcm", "CT", 40.0 + n, n) for n in range(20)]
    rows += [_lossy_row("mr/a.dcm", "<b>MR</b>", 52.34, 3), _lossy_row("mr/b.dcm", "<b>MR</b>",
             None, 0)]  # fmt: skip
    rows.append({**_lossy_row("lossless.dcm", "CT", None, 0), "max_error": None,
                 "target": "jpeg-ls"})  # fmt: skip
    counts = {"done": 23.0, "bytes_in": 23 * 500.0, "bytes_out": 23 * 100.0}
    data = chart_data(rows, counts)
    ct, mr = data["quality_by_modality"]
    assert ct == {"label": "CT", "objects": 20, "identical": 0, "psnr_min": 40.0,
                  "psnr_p5": 40.0, "psnr_median": 49.0, "max_error": 19}  # fmt: skip
    assert mr == {"label": "<b>MR</b>", "objects": 2, "identical": 1, "psnr_min": 52.3,
                  "psnr_p5": 52.3, "psnr_median": 52.3, "max_error": 3}  # fmt: skip
    histogram = {item["label"]: item["count"] for item in data["psnr_histogram"]}
    assert histogram["40-45"] == 5 and histogram["55-60"] == 5 and histogram["identical"] == 1
    assert sum(histogram.values()) == 22  # the lossless object is not a lossy result
    page = render_html("b", data)
    check_bars(page, data)
    assert "<b>MR</b>" not in page and "&lt;b&gt;MR&lt;/b&gt;" in page
    assert 'id="quality"' in page and "PSNR p5" in page
    # each column chart says what its bins are (the PSNR histogram's axis once said UTC)
    psnr_svg = page.split('data-chart="psnr_histogram"', 1)[1].split("</svg>", 1)[0]
    assert ">PSNR (dB)</text>" in psnr_svg and ">UTC<" not in psnr_svg
    plain = chart_data(rows[-1:], {"done": 1.0})
    assert plain["psnr_histogram"] == plain["quality_by_modality"] == []
    assert 'id="quality"' not in render_html("b", plain)
