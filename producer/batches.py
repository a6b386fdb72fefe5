"""Opening a batch: the one rule every entry point follows, and the batch's resume point.

A batch is one run of one job: one source, one destination, one set of options and
policy (a :class:`~worker.runtime.contract.BatchSpec` in the ledger). Opening a batch
id for a job

- creates the batch when the ledger does not know the id;
- resumes it when the ledger holds the same job under that id: objects already done
  are not queued again, and an enqueue that was interrupted continues after its
  :class:`ResumePoint`;
- on a conflict (the id holds another job) does what the entry point chose, never
  mixing two jobs in one batch: :attr:`OnConflict.REFUSE` raises
  :class:`BatchConflict`, :attr:`OnConflict.FORK` gives the job a batch of its own,
  ``{id}-{digest}``, created or resumed like any other.

The entry points and their choice (docs/guides/bucket.md, "Batches"):

- ``dcmpress enqueue``, from a listing or a manifest: refuse. The operator is there
  to read the error, and a batch they named is the one they will watch.
- ``dcmpress listen``: fork. A listener restarted with other options cannot stop
  taking events (a sender may never send them again), and its events must never run
  under the old options.
- ``dcmpress demo``: refuse. Its own empty Redis never holds the batch; one that does
  is someone else's ledger, not to be written into.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from worker.errors import ConfigurationError
from worker.runtime.contract import BatchSpec
from worker.runtime.ledger import Ledger

# the checkpoint of a manifest run: entries handled, not a listing key
MANIFEST_CHECKPOINT = "manifest:"


class OnConflict(enum.Enum):
    """What opening a batch id that holds another job does."""

    REFUSE = "refuse"
    FORK = "fork"


class BatchConflict(ConfigurationError):
    """The batch id holds another job: other source, destination, options or policy."""

    def __init__(self, batch: str) -> None:
        super().__init__(f"batch {batch!r} exists with other source/dest/options/policy")
        self.batch = batch


@dataclass(frozen=True)
class ResumePoint:
    """Where an enqueue into a batch stopped, as the batch's checkpoint says.

    A listing checkpoints the last key of each page it sent, a manifest run the number
    of entries it handled; ``interrupted`` is False once an enqueue finished.
    """

    interrupted: bool = False
    after_key: str = ""  # a listing continues after this key ("" from the start)
    after_entries: int = 0  # a manifest run skips this many entries

    @classmethod
    def read(cls, ledger: Ledger, batch: str) -> ResumePoint:
        """The resume point of ``batch``: nothing to resume once its enqueue finished."""
        info = ledger.batch_info(batch)
        if "listing_done" in info:
            return cls()
        checkpoint = info.get("checkpoint", "")
        if checkpoint.startswith(MANIFEST_CHECKPOINT):
            return cls(True, after_entries=int(checkpoint.removeprefix(MANIFEST_CHECKPOINT)))
        return cls(True, after_key=checkpoint)


def save_listing_point(ledger: Ledger, batch: str, last_key: str, enqueued: int) -> None:
    """A listing's page up to ``last_key`` is enqueued: a resumed run lists after it."""
    ledger.set_checkpoint(batch, last_key, enqueued)


def save_manifest_point(ledger: Ledger, batch: str, entries: int, enqueued: int) -> None:
    """A manifest's first ``entries`` are enqueued: a resumed run skips them."""
    ledger.set_checkpoint(batch, f"{MANIFEST_CHECKPOINT}{entries}", enqueued)


def save_restart(ledger: Ledger, batch: str) -> None:
    """The batch's source is to be fed again from its start (a later pass, or a forced
    run of a manifest fed in full): no checkpoint, not finished."""
    ledger.clear_checkpoint(batch)


def save_finished(ledger: Ledger, batch: str, enqueued: int) -> None:
    """The whole listing or manifest is enqueued: nothing is left to resume."""
    ledger.mark_listing_done(batch, enqueued)


@dataclass(frozen=True)
class OpenedBatch:
    """A batch ready to take jobs, and how it came to be."""

    spec: BatchSpec
    created: bool  # False: the ledger held the same job under this id (resumed)
    resume: ResumePoint  # where an interrupted enqueue into it stopped
    forked_from: str = ""  # the id whose other job made this batch a fork of it


def same_job(stored: BatchSpec, wanted: BatchSpec) -> bool:
    """True if both make the same outputs from the same source in the same place."""
    fields = ("source", "dest", "in_place", "options", "policy")
    return all(getattr(stored, name) == getattr(wanted, name) for name in fields)


def open_batch(ledger: Ledger, wanted: BatchSpec, on_conflict: OnConflict) -> OpenedBatch:
    """Create, resume, or refuse or fork, the batch ``wanted`` names (see the module).

    A created batch is stamped with its creation time; a resumed one keeps its stored
    spec. Raises :class:`BatchConflict` for a conflict with ``REFUSE``, and for a fork
    whose own id holds yet another job.
    """
    stored = ledger.get_batch(wanted.batch)
    forked_from = ""
    if stored is not None and not same_job(stored, wanted):
        if on_conflict is OnConflict.REFUSE:
            raise BatchConflict(wanted.batch)
        forked_from = wanted.batch
        wanted = wanted.model_copy(update={"batch": f"{wanted.batch}-{wanted.digest()[:8]}"})
        stored = ledger.get_batch(wanted.batch)
        if stored is not None and not same_job(stored, wanted):
            raise BatchConflict(wanted.batch)
    spec = stored or wanted.model_copy(update={"created": time.time()})
    ledger.save_batch(spec)  # a resumed batch's retention starts again
    resume = ResumePoint.read(ledger, spec.batch) if stored is not None else ResumePoint()
    return OpenedBatch(spec, created=stored is None, resume=resume, forked_from=forked_from)
