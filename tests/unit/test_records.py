"""The ledger's stored record: compact enough for Redis's listpack encoding, and
readable across releases."""

from __future__ import annotations

import pytest

from worker.codec.targets import ALIASES, TARGETS
from worker.errors import CODES
from worker.runtime.records import CODE_TAGS, PLUGIN_TAGS, TARGET_TAGS, Record, worker_tag

# Redis's default hash-max-listpack-value: one longer value makes its shard a hash table
LISTPACK_VALUE = 64
NOW = 1_796_650_000  # 2026-12


def _finished(**changes: object) -> Record:
    """A realistic finished record: a 0.5 MB slice, a worker, a full ETag."""
    base = Record(
        state="done", code="compressed", bytes_in=526_336, bytes_out=211_002, attempts=1,
        target="jpeg-ls", plugin="pyjpegls", millis=412,
        worker=worker_tag("celery@worker-7f9c6d5b8-x2x9q/4711"), etag="9a0364b9e99b",
        updated=NOW, modality="CT",
    )  # fmt: skip
    return base.__class__(**{**base.__dict__, **changes})


def test_every_code_target_and_plugin_has_its_own_short_tag() -> None:
    assert set(CODE_TAGS) == set(CODES)
    earlier_names = {name for name in ALIASES if not name[0].isdigit()}  # old records
    assert set(TARGET_TAGS) == set(TARGETS) | earlier_names
    plugins = {plugin.name for target in TARGETS.values() for plugin in target.plugins}
    assert set(PLUGIN_TAGS) == plugins
    for tags in (CODE_TAGS, TARGET_TAGS, PLUGIN_TAGS):
        assert len(set(tags.values())) == len(tags)  # a tag names one thing
        assert all(len(tag) <= 2 for tag in tags.values())
    names = set(CODES) | set(TARGETS) | set(PLUGIN_TAGS)
    tags = set(CODE_TAGS.values()) | set(TARGET_TAGS.values()) | set(PLUGIN_TAGS.values())
    assert not names & tags  # a stored name of an older record is never read as a tag


@pytest.mark.parametrize(
    "record",
    [
        _finished(),
        _finished(bytes_in=52_428_800, bytes_out=20_971_520, millis=95_000),  # 50 MB
        _finished(target="j2k-lossy", plugin="pylibjpeg", max_error=41, psnr=47.93, rule=3),
        _finished(target="htj2k-rpcl", plugin="imagecodecs", modality="RTIMAGE"),
        _finished(
            state="skipped", code="already_compressed", bytes_out=526_336, target="", plugin=""
        ),
        _finished(
            state="failed",
            code="verification_failed",
            bytes_out=526_336,
            copied=True,
            attempts=2,
            lost=1,
        ),
    ],
    ids=["lossless", "large", "lossy-rule", "htj2k-rpcl", "skipped", "failed-copied"],
)
def test_a_finished_record_fits_a_listpack_value_and_reads_back(record: Record) -> None:
    stored = record.encode()
    assert len(stored.encode()) <= LISTPACK_VALUE, (len(stored), stored)
    decoded = Record.decode(stored)
    assert decoded == record.__class__(
        **{**record.__dict__, "psnr": None if record.psnr is None else round(record.psnr, 1)}
    )


def test_records_of_the_earlier_release_still_read() -> None:
    """Full names, a stored lost count of 0 and trailing empty fields (before 2026-12-07)."""
    old = Record.decode("d||ba4g|4it6|1|jpeg-ls|pyjpegls|bg|1ou8s68|9a0364b9e99b|tpoghm|0|CT|")
    assert (old.state, old.code, old.target, old.plugin) == (
        "done", "compressed", "jpeg-ls", "pyjpegls")  # fmt: skip
    assert (old.bytes_in, old.lost, old.modality, old.rule, old.psnr, old.copied) == (
        526_336, 0, "CT", 0, None, False)  # fmt: skip
    failed = Record.decode("f|invalid_dicom|9ix|0|1|||3||e2|tpoghm|0||")
    assert (failed.state, failed.code, failed.bytes_in) == ("failed", "invalid_dicom", 12_345)


def test_a_failed_copy_and_a_lossy_quality_are_stored() -> None:
    record = _finished(state="failed", code="worker_lost", copied=True)
    assert Record.decode(record.encode()).copied
    lossy = Record.decode(_finished(max_error=0, psnr=None).encode())
    assert (lossy.max_error, lossy.psnr) == (0, None)  # identical: no PSNR, error 0
