"""Rates and ETA of the status view, from ledger snapshots."""

from __future__ import annotations

from dcmpress.views import BatchStatus, RateWindow, render


def snap(at: float, done: int, queued: int, bytes_in: float) -> BatchStatus:
    """A snapshot taken at ``at`` seconds."""
    counts = {"done": float(done), "queued": float(queued), "bytes_in": bytes_in}
    return BatchStatus("b", counts, {"listing_done": "1"}, at)


def test_rates_are_measured_over_the_last_minute_only() -> None:
    window = RateWindow(60.0)
    assert window.add(snap(0, 0, 1000, 0)) is None
    window.add(snap(30, 300, 700, 3e8))  # a fast start...
    oldest = window.add(snap(90, 360, 640, 3.6e8))  # ...then slow: 60 objects in 60 s
    assert oldest is not None and oldest.taken_at == 30
    rate, megabytes = snap(90, 360, 640, 3.6e8).rates(oldest)
    assert (round(rate, 3), round(megabytes, 3)) == (1.0, 1.0)


def test_eta_and_failures_with_an_example_key_are_shown() -> None:
    status = BatchStatus(
        "b",
        {"done": 10.0, "failed": 2.0, "queued": 20.0, "code:not_dicom": 2.0, "bytes_in": 1e6},
        {"example:not_dicom": "scans/readme.txt"},
        100.0,
    )
    previous = BatchStatus("b", {"done": 0.0, "queued": 32.0}, {}, 90.0)
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(render(status, previous))
    text = console.export_text()
    assert "1.2 objects/s" in text  # 12 finished in 10 s
    assert "0:00:17" in text  # 20 pending at 1.2/s
    assert "failed: not_dicom" in text and "e.g. scans/readme.txt" in text


def test_saved_bytes_count_only_objects_that_were_written() -> None:
    counts = {"done": 1.0, "failed": 1.0, "bytes_in": 5e6, "bytes_out": 1e6,
              "written_in": 3e6}  # fmt: skip
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(render(BatchStatus("b", counts, {}, 0.0)))
    text = console.export_text()
    assert "2.0 MB (3.00x)" in text  # not 4.0 MB (5.00x): the failed 2 MB saved nothing


def test_a_batch_that_is_not_moving_has_no_eta_but_a_check() -> None:
    from rich.console import Console

    status = BatchStatus(
        "b", {"done": 10.0, "queued": 3.0, "started_at": 1000.0, "finished_at": 1100.0},
        {"listing_done": "1"}, 1100.0 + 7 * 60,
    )  # fmt: skip
    assert status.stalled and status.idle_seconds() == 420
    console = Console(width=120, record=True)
    console.print(render(status, note="3 pending object(s) have no live message"))
    text = console.export_text()
    assert "none: nothing finished for 0:07:00" in text and "0:00:00" not in text
    assert "3 pending object(s) have no live message" in text
    moving = BatchStatus("b", {**status.counts, "finished_at": 1100.0 + 6 * 60},
                         {"listing_done": "1"}, 1100.0 + 7 * 60)  # fmt: skip
    assert not moving.stalled


def test_rules_are_shown_by_name_with_their_objects_and_saving() -> None:
    from rich.console import Console

    counts = {"done": 3.0, "skipped": 1.0, "rule:1": 1.0, "rule:2": 3.0,
              "rule_in:2": 3e6, "rule_out:2": 1e6}  # fmt: skip
    names = ("copy [reports]", "default", "never used")
    status = BatchStatus("b", counts, {"listing_done": "1"}, 10.0, names)
    assert status.by_rule() == [("copy [reports]", 1, 0.0, 0.0), ("default", 3, 3e6, 1e6)]
    console = Console(width=120, record=True)
    console.print(render(status))
    text = console.export_text()
    assert "rule: copy [reports]" in text  # markup in a name is shown, not interpreted
    assert "rule: default" in text and "3 objects, 2.0 MB saved (3.00x)" in text
    assert "never used" not in text


def test_a_record_names_its_rule_compactly_and_old_records_still_read() -> None:
    from worker.runtime.records import Record

    record = Record(state="done", code="compressed", bytes_in=10, bytes_out=4, rule=37)
    assert record.encode().endswith("|11")  # base 36
    assert Record.decode(record.encode()) == record
    old = "|".join(Record(state="done", code="compressed").encode().split("|")[:13])
    assert Record.decode(old).rule == 0
    assert Record.decode(Record(state="queued").encode()).rule == 0


def test_workers_paused_by_failing_storage_say_so_and_promise_no_eta() -> None:
    from rich.console import Console

    from worker.runtime.breaker import Pause

    pause = Pause(since=0.0, error="head s3://a/k.dcm: 503 Service Unavailable", bucket="a",
                  key="k.dcm")  # fmt: skip
    status = BatchStatus("b", {"done": 10.0, "queued": 20.0, "started_at": 1.0,
                               "finished_at": 50.0}, {"listing_done": "1"}, 60.0,
                         paused=pause.describe())  # fmt: skip
    console = Console(width=120, record=True)
    console.print(render(status))
    text = " ".join(console.export_text().replace("│", " ").split())  # cells' lines joined
    assert "paused storage failing since" in text
    assert "503 Service Unavailable; the workers resume when it answers" in text
    assert "none while the workers pause" in text
