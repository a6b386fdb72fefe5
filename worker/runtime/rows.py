"""One object's report row: what ``dcmpress report`` prints and an archive shard holds.

Both the report (``dcmpress/reports.py``) and the workers' archiver
(:mod:`worker.runtime.archive`) build rows here, so a row read back from a shard is the
row the ledger's record would have given.
"""

from __future__ import annotations

from typing import Any

from worker.runtime.contract import BatchSpec
from worker.runtime.records import Record

REPORT_FIELDS = (
    "key", "state", "code", "message", "bytes_in", "bytes_out", "ratio", "target",
    "plugin", "attempts", "seconds", "worker", "etag", "updated", "modality", "rule",
    "copied", "max_error", "psnr",
)  # fmt: skip


def report_row(
    key: str, record: Record, message: str, workers: dict[str, str], spec: BatchSpec | None
) -> dict[str, Any]:
    """The row of ``key`` (its ``record`` and stored ``message``); ``workers`` maps worker
    tags to names (:meth:`~worker.runtime.ledger.Ledger.worker_names`)."""
    ratio = round(record.bytes_in / record.bytes_out, 4) if record.bytes_out else None
    return {
        "key": key,
        "state": record.state,
        "code": record.code,
        "message": message or (f"{record.target}/{record.plugin}" if record.target else ""),
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "ratio": ratio,
        "target": record.target,
        "plugin": record.plugin,
        "attempts": record.attempts,
        "seconds": record.millis / 1000,
        "worker": workers.get(record.worker, record.worker),
        "etag": record.etag,
        "updated": record.updated,
        "modality": record.modality,
        # the name of the batch policy's rule that decided ("" without a policy)
        "rule": (spec.rule_name(record.rule) if spec else None) or "",
        # the output is the source unchanged (a skipped or failed object)
        "copied": record.copied,
        # a lossy result's largest pixel error and PSNR (dB); empty for lossless ones
        "max_error": record.max_error,
        "psnr": record.psnr,
    }
