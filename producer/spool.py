"""The listener's spool: event messages accepted while Redis could not take them.

Many senders never retry (the SeaweedFS filer dead-letters an event on the first 503 or
refused connection; Ceph's non-persistent topics and MinIO without ``queue_dir`` drop
it), so "503, the sender retries" loses events whenever Redis is away, hung or full.
The webhook writes such a message here instead (appended, then ``fsync``), answers it
as accepted, and a drain thread hands the messages to the intake in the order they
came once Redis answers again. A listener restarted replays what its spool holds.

One file of records and one file holding the offset of the first record not yet
handled. A record is one line of JSON: when it came, where from, and the body
(base64). A crash while appending leaves at most a torn last line, cut off when the
spool is opened again; a crash after a record was handled but before the offset moved
hands it over twice, which the ledger absorbs (same key and ETag: queued once). Once
every record is handled both files are emptied. The spool is bounded: past
``max_bytes`` an append raises :class:`SpoolFull` (the webhook answers 503).
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

RECORDS = "events.spool"
OFFSET = "events.offset"
LOCK = "spool.lock"


def default_directory() -> Path:
    """The spool of this user's listener: ``$XDG_STATE_HOME/dcmpress/spool``, else
    ``~/.local/state/dcmpress/spool``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dcmpress" / "spool"


class SpoolFull(Exception):
    """The spool holds ``max_bytes`` already: the message is not accepted."""


class SpoolInUse(Exception):
    """Another listener process holds this spool directory."""


@dataclass(frozen=True)
class SpooledMessage:
    """One message as it was accepted."""

    received: float  # Unix time it came in (its batch is that day's)
    source: str
    body: bytes
    end: int  # the file offset just past it


class Spool:
    """A durable, bounded, ordered queue of message bodies in one directory."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(directory / LOCK, "a")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolInUse(
                f"another listener uses the spool {directory}; give each listener a "
                "spool directory of its own (--spool-dir)"
            ) from None
        self._lock = threading.Lock()
        self._records: IO[bytes] = open(directory / RECORDS, "a+b")  # noqa: SIM115
        self._offset_path = directory / OFFSET
        self._offset = self._read_offset()
        self._cut_torn_tail()
        self.arrived = threading.Condition(self._lock)

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _cut_torn_tail(self) -> None:
        """Drop a last record an interrupted append left without its newline."""
        size = self._records.seek(0, os.SEEK_END)
        # (emptied, then stopped before the offset was written: nothing is pending)
        self._offset = min(self._offset, size)
        if size == 0:
            return
        keep = size
        self._records.seek(max(0, size - 65536))
        tail = self._records.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail))
            log.warning("spool: a torn last record (%d bytes) cut off", size - keep)
            self._records.truncate(keep)
            os.fsync(self._records.fileno())
        if self._offset > keep:
            self._offset = keep

    @property
    def size(self) -> int:
        """Bytes of records not handled yet."""
        with self._lock:
            return self._size()

    def _size(self) -> int:
        return self._records.seek(0, os.SEEK_END) - self._offset

    def __len__(self) -> int:
        """Records not handled yet (reads them: for tests and status)."""
        with self._lock:
            self._records.seek(self._offset)
            return sum(1 for _ in self._records)

    def append(self, body: bytes, source: str, received: float) -> None:
        """Keep one message durably (it is on disk when this returns)."""
        line = json.dumps(
            {"at": received, "source": source, "body": base64.b64encode(body).decode()}
        ).encode()
        with self._lock:
            end = self._records.seek(0, os.SEEK_END)
            if end - self._offset + len(line) + 1 > self.max_bytes:
                raise SpoolFull(
                    f"the spool {self.directory} holds {end - self._offset:,} bytes "
                    f"(limit {self.max_bytes:,})"
                )
            self._records.write(line + b"\n")
            self._records.flush()
            os.fsync(self._records.fileno())
            self.arrived.notify_all()

    def first(self) -> SpooledMessage | None:
        """The oldest message not handled yet, or None."""
        with self._lock:
            self._records.seek(self._offset)
            line = self._records.readline()
            if not line.endswith(b"\n"):
                return None
            end = self._offset + len(line)
        try:
            record = json.loads(line)
            return SpooledMessage(
                float(record["at"]), str(record["source"]), base64.b64decode(record["body"]), end
            )
        except (ValueError, KeyError, TypeError):
            # a record this code did not write (a damaged disk): kept aside, skipped
            log.error("spool: an unreadable record at offset %d skipped", self._offset)
            (self.directory / f"unreadable-{self._offset}").write_bytes(line)
            self.handled(SpooledMessage(0, "", b"", end))
            return self.first()

    def handled(self, message: SpooledMessage) -> None:
        """Move past ``message`` durably; empty the files once every record is handled."""
        with self._lock:
            self._offset = message.end
            if self._offset >= self._records.seek(0, os.SEEK_END):
                self._records.truncate(0)
                os.fsync(self._records.fileno())
                self._offset = 0
            temporary = self._offset_path.with_suffix(".tmp")
            with open(temporary, "w") as out:
                out.write(str(self._offset))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self._offset_path)

    def wait(self, timeout: float) -> None:
        """Return when a message arrives, or after ``timeout`` seconds."""
        with self._lock:
            if self._size() == 0:
                self.arrived.wait(timeout)

    def close(self) -> None:
        """Close the files and give the directory up."""
        with self._lock:
            self._records.close()
        self._lock_file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
