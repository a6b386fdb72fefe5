"""``dcmpress compress --files-from``: the inputs named in a list, not on the command line.

A list of any length (a ``find`` over a whole archive, an export from a PACS) goes to
one run, so the start-up is paid once and no limit on the length of a command line
applies. The list is read a chunk at a time, once to count and check it and once to
run it, never held whole. Entries are separated by newlines (a trailing carriage
return is dropped) or by NUL bytes (``find -print0``); empty entries are ignored, and so
is a UTF-8 byte order mark before the first. An entry is a path as the operating system
takes it, in any encoding; a relative one is taken from the current directory.

Each entry's output is the entry as listed, normalised and without its leading ``/``,
under OUT: ``scans/a/IM1`` goes to ``OUT/scans/a/IM1`` and ``/data/b/IM1`` to
``OUT/data/b/IM1``; a listed directory's tree goes under its own. Unlike the file
names of PATHS, two entries cannot meet in one output unless the same file is listed
twice, which is refused as the run is counted. An entry that climbs out of where it
starts (``..`` left after normalising) is refused too: list it as an absolute path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from worker.errors import ConfigurationError

CHUNK_BYTES = 1024 * 1024
MAX_ENTRY_BYTES = 4096  # Linux's PATH_MAX: a longer entry is a list cut the wrong way
UTF8_BOM = b"\xef\xbb\xbf"  # what Windows editors and exports put before a UTF-8 text


@dataclass(frozen=True)
class Listing:
    """A file of paths, and what separates them."""

    path: Path
    separator: bytes = b"\n"
    name: str = ""  # how errors name the list (its path unless set)

    def entries(self) -> Iterator[tuple[int, str]]:
        """(number from 1, path) of each non-empty entry, read a chunk at a time."""
        number = 0
        rest = b""
        for index, chunk in enumerate(self._chunks()):
            if index == 0 and chunk.startswith(UTF8_BOM):
                chunk = chunk[len(UTF8_BOM) :]
            *complete, rest = (rest + chunk).split(self.separator)
            for raw in complete:
                number += 1
                entry = self._decoded(raw, number)
                if entry:
                    yield number, entry
            self._check_length(rest, number + 1)  # not held whole if it never ends
        entry = self._decoded(rest, number + 1)
        if entry:
            yield number + 1, entry

    def _chunks(self) -> Iterator[bytes]:
        try:
            with self.path.open("rb") as file:
                size = max(CHUNK_BYTES, len(UTF8_BOM))  # the first holds a whole mark
                while chunk := file.read(size):
                    yield chunk
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the list {self.name or self.path}: {exc}"
            ) from None

    def _decoded(self, raw: bytes, number: int) -> str:
        self._check_length(raw, number)
        if self.separator == b"\n" and raw.endswith(b"\r"):
            raw = raw[:-1]
        return os.fsdecode(raw)

    def _check_length(self, raw: bytes, number: int) -> None:
        if len(raw) > MAX_ENTRY_BYTES:
            other = "newlines, not --null" if self.separator == b"\0" else "NUL (--null)"
            raise ConfigurationError(
                f"{self.where(number)} is longer than any path ({MAX_ENTRY_BYTES} bytes): "
                f"are the entries separated by {other}?"
            )

    def where(self, number: int) -> str:
        """How an error names an entry."""
        return f"{self.name or self.path}, entry {number}"


@contextlib.contextmanager
def open_listing(files_from: Path | None, separator: bytes) -> Iterator[Listing | None]:
    """The --files-from list (None without one); standard input (``-``) is copied to a
    temporary file first, as the list is read twice (counted, then run)."""
    if files_from is None:
        yield None
    elif str(files_from) == "-":
        with tempfile.NamedTemporaryFile(prefix="dcmpress-list-") as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
            spool.flush()
            yield Listing(Path(spool.name), separator, name="standard input")
    else:
        yield Listing(files_from, separator)


def output_root(out_dir: Path, entry: str, where: str) -> Path:
    """Where the output of ``entry`` (a file, or a tree's root) goes under ``out_dir``.

    On strings, not path objects: a list of millions of files is planned twice.
    """
    normal = os.path.normpath(entry).lstrip(os.sep)
    if normal == os.pardir or normal.startswith(os.pardir + os.sep):
        raise ConfigurationError(
            f"{where}: {entry!r} climbs out of the directory it starts in; list it as an "
            "absolute path"
        )
    return out_dir if normal == os.curdir else Path(os.path.join(out_dir, normal))


class Outputs:
    """The outputs of a run's listed inputs so far, to refuse a file listed twice.

    Holds an 8-byte digest per output, not its path: about 100 bytes per file while a
    list is counted.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def claim(self, output: Path, source: Path, where: str) -> None:
        digest = hashlib.blake2b(os.fsencode(output), digest_size=8).digest()
        key = int.from_bytes(digest, "little")
        if key in self._seen:
            raise ConfigurationError(
                f"{where}: {source} would be written to {output} a second time (the same "
                "file listed twice, or inside a listed directory)"
            )
        self._seen.add(key)
