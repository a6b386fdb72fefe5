"""Where object keys come from: bucket listings (manifests and events come later).

Each source yields pages of :class:`ObjectRef` so the producer never holds a whole
listing in memory, and can checkpoint after each page.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from worker.runtime.contract import ObjectRef
from worker.runtime.storage import Listed, Storage

__all__ = ["KeyFilter", "ObjectRef", "listing_pages"]


@dataclass(frozen=True)
class KeyFilter:
    """Which listed objects to enqueue."""

    suffixes: tuple[str, ...] = ()  # keep only keys ending with one of these (any case)
    exclude_suffixes: tuple[str, ...] = ()
    exclude_prefixes: tuple[str, ...] = ()  # e.g. the destination inside the source
    min_size: int = 1  # zero-byte objects are never DICOM
    max_size: int | None = None
    # a later pass of a listing: only objects modified since (the storage's clock)
    changed_since: float = 0.0
    rejected: dict[str, int] = field(default_factory=dict, compare=False)

    def accepts(self, item: Listed) -> bool:
        """True to enqueue ``item``; counts the reason otherwise."""
        key = item.key.lower()
        reason = ""
        if item.key.endswith("/"):
            reason = "folder marker"
        elif self.suffixes and not key.endswith(tuple(s.lower() for s in self.suffixes)):
            reason = "suffix"
        elif self.exclude_suffixes and key.endswith(
            tuple(s.lower() for s in self.exclude_suffixes)
        ):
            reason = "excluded suffix"
        elif self.exclude_prefixes and item.key.startswith(self.exclude_prefixes):
            reason = "excluded prefix"
        elif item.size < self.min_size or (self.max_size is not None and item.size > self.max_size):
            reason = "size"
        elif item.modified and item.modified < self.changed_since:
            reason = "unchanged"  # fed by an earlier pass of the same batch
        if reason:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return not reason


def listing_pages(
    storage: Storage, bucket: str, prefix: str, start_after: str, key_filter: KeyFilter
) -> Iterator[tuple[list[ObjectRef], str]]:
    """Pages of accepted objects, each with the last key listed (the checkpoint)."""
    for page in storage.list_pages(bucket, prefix, start_after=start_after):
        if not page:
            continue
        refs = [
            ObjectRef(bucket, item.key, item.etag, item.size)
            for item in page
            if key_filter.accepts(item)
        ]
        yield refs, page[-1].key
