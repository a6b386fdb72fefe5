"""What the stack-level fault tests check after a batch: nothing lost, duplicated,
corrupted or stuck.

- lost: every source has its output, and a terminal record;
- duplicated: the server stored each output once (the fault proxy's log), the ledger
  counts every object once (its byte counters equal the outputs' sizes);
- corrupt: every output decodes to its source's pixels;
- stuck: no object pending, no message left in the queue.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from dcmpress.stack.samples import to_bytes
from dcmpress.stack.services import SeaweedS3
from tests.faults.proxy import FaultProxy
from worker.runtime.ledger import Ledger


def put_sources(s3_server: SeaweedS3, bucket: str, images: dict[str, Dataset]) -> None:
    """Upload each image under its key."""
    client = s3_server.client()
    for key, ds in images.items():
        client.put_object(Bucket=bucket, Key=key, Body=to_bytes(ds))


@dataclass
class Tally:
    """The four counts a fault test must find at zero, and what was checked."""

    objects: int
    lost: int
    duplicated: int
    corrupt: int
    stuck: int
    details: tuple[str, ...] = ()  # what each non-zero count is made of

    @property
    def clean(self) -> bool:
        return self.lost == self.duplicated == self.corrupt == self.stuck == 0


def tally(
    s3_server: SeaweedS3, ledger: Ledger, batch: str, queue: str, dest: str,
    images: dict[str, Dataset], proxy: FaultProxy | None = None,
) -> Tally:  # fmt: skip
    """Compare the destination, the ledger and the queue with the sources."""
    client = s3_server.client()
    lost = duplicated = corrupt = stuck = 0
    sizes = 0
    details: list[str] = []
    for key, source in images.items():
        record = ledger.get_record(batch, key)
        if record is None or record.state in ("queued", "running"):
            stuck += record is not None
            lost += record is None
            details.append(f"{key}: record {record}")
            continue
        try:
            data = client.get_object(Bucket=dest, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            lost += 1
            details.append(f"{key}: no output")
            continue
        sizes += len(data)
        writes = proxy.stored_writes(f"/{dest}/{key}") if proxy is not None else 1
        if writes != 1:
            duplicated += 1
            exchanges = [e for e in proxy.log if e.path.endswith(key)] if proxy else []
            details.append(f"{key}: stored {writes} times; requests {exchanges}")
        if not _same_pixels(data, source):
            corrupt += 1
            details.append(f"{key}: pixels differ")
    counts = ledger.counts(batch)
    finished = sum(int(counts.get(state, 0)) for state in ("done", "skipped", "failed"))
    if finished != len(images) or int(counts.get("bytes_out", 0)) != sizes:
        duplicated += abs(finished - len(images)) or 1  # counted twice, or not at all
        details.append(f"ledger counts {counts}, outputs {sizes} bytes")
    stuck += int(counts.get("queued", 0) + counts.get("running", 0))
    stuck += int(ledger.redis.llen(queue))
    return Tally(len(images), lost, duplicated, corrupt, stuck, tuple(details))


def _same_pixels(data: bytes, source: Dataset) -> bool:
    written: Any = dcmread(io.BytesIO(data))
    return bool(np.array_equal(written.pixel_array, source.pixel_array))
