"""The reference sets: synthesised in a temporary directory (no downloads, no patient
data), each a directory of input files measured as one unit; and the targets measured."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread, examples
from pydicom.uid import ComputedRadiographyImageStorage, UltrasoundImageStorage

from dcmpress.stack.samples import make_image, to_bytes

LOSSLESS_TARGETS = ("jpeg-ls", "rle", "j2k")
# measured by the engine alone (no peer writes them): beside the targets above
NEWER_TARGETS = ("htj2k", "jpegxl", "auto")


@dataclass(frozen=True)
class SetSizes:
    """How much each part measures: the default run or ``--quick``."""

    ct_files: int
    volume_frames: int
    cr_side: int
    us_files: int
    # a migration-like mix (the issue's: CT 512x512 and CR 2560x2048): enough files that
    # one start-up of dcmpress weighs as little as it does in a long-running worker
    archive_ct: int
    archive_cr: int
    end_to_end_objects: int
    repeats: int
    # targets whose -j 2 scaling and fixed cost are measured (each costs whole
    # dcmpress start-ups, ~1.2 s apiece)
    extra_targets: tuple[str, ...]


DEFAULT_SIZES = SetSizes(
    ct_files=20,
    volume_frames=100,
    cr_side=3000,
    us_files=10,
    archive_ct=96,
    archive_cr=8,
    end_to_end_objects=60,
    repeats=3,
    extra_targets=LOSSLESS_TARGETS,
)
QUICK_SIZES = SetSizes(
    ct_files=3,
    volume_frames=10,
    cr_side=768,
    us_files=2,
    archive_ct=4,
    archive_cr=1,
    end_to_end_objects=8,
    repeats=1,
    extra_targets=LOSSLESS_TARGETS[:1],
)


@dataclass(frozen=True)
class ReferenceSet:
    """A directory of input files measured as one unit."""

    name: str
    description: str
    directory: Path
    files: tuple[Path, ...]
    mixed: bool = False  # some files may be beyond a target (checked file by file)

    @property
    def total_bytes(self) -> int:
        """Bytes of all input files."""
        return sum(path.stat().st_size for path in self.files)

    @property
    def largest_bytes(self) -> int:
        """Bytes of the largest input file (the largest object one process holds)."""
        return max(path.stat().st_size for path in self.files)


def ct_like_images(count: int) -> Iterator[bytes]:
    """CT-like 512x512 12-bit single frames, each with its own noise."""
    for seed in range(count):
        yield to_bytes(make_image(512, 512, bits_stored=12, seed=seed))


# Image Pixel (group 0028) and Pixel Data are the image's own; the rest of the header
# comes from pydicom's CT example
_IMAGE_GROUP = 0x0028


def with_real_header(count: int) -> Iterator[bytes]:
    """CT-like 512x512 12-bit slices carrying the 262-element header of pydicom's CT
    example (real files carry 100-300 elements; the other synthetic sets 18)."""
    header = dcmread(examples.get_path("ct"), stop_before_pixels=True)
    for seed in range(count):
        image = make_image(512, 512, bits_stored=12, seed=seed)
        for element in header:
            if element.tag not in image and element.tag.group != _IMAGE_GROUP:
                image.add(element)
        yield to_bytes(image)


def native_example_names() -> list[str]:
    """The ``pydicom.examples`` datasets whose pixel data is native (uncompressed)."""
    names = []
    for name in examples._DATASETS:  # pydicom lists its examples nowhere public
        ds = dcmread(examples.get_path(name), force=True, stop_before_pixels=False)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if "PixelData" in ds and syntax is not None and not syntax.is_compressed:
            names.append(name)
    return names


def _write_set(
    root: Path, name: str, description: str, files: dict[str, bytes], *, mixed: bool = False
) -> ReferenceSet:
    directory = root / name
    directory.mkdir(parents=True)
    for file_name, data in files.items():
        (directory / file_name).write_bytes(data)
    paths = tuple(sorted(directory.iterdir()))
    return ReferenceSet(name, description, directory, paths, mixed)


def make_reference_sets(root: Path, sizes: SetSizes) -> list[ReferenceSet]:
    """Synthesise every reference set under ``root``."""
    side, frames = sizes.cr_side, sizes.volume_frames
    volume = make_image(512, 512, frames=frames, bits_stored=12)
    cr = make_image(side, side, bits_stored=12, sop_class=ComputedRadiographyImageStorage)
    us = {
        f"us{i:03d}.dcm": to_bytes(
            make_image(
                480, 640, bits_allocated=8, samples=3, seed=i, sop_class=UltrasoundImageStorage
            )
        )
        for i in range(sizes.us_files)
    }
    ct = {f"ct{i:03d}.dcm": data for i, data in enumerate(ct_like_images(sizes.ct_files))}
    headed = {f"ct{i:03d}.dcm": data for i, data in enumerate(with_real_header(sizes.ct_files))}
    archive = {f"ct{i:03d}.dcm": data for i, data in enumerate(ct_like_images(sizes.archive_ct))}
    for i in range(sizes.archive_cr):
        image = make_image(2560, 2048, bits_stored=12, seed=100 + i,
                           sop_class=ComputedRadiographyImageStorage)  # fmt: skip
        archive[f"cr{i:03d}.dcm"] = to_bytes(image)
    names = native_example_names()
    shipped = [examples.get_path(name) for name in names]  # the files as pydicom ships them
    return [
        _write_set(root, "ct", f"{sizes.ct_files} x CT-like 512x512 12-bit", ct),
        _write_set(
            root,
            "ct-header",
            f"{sizes.ct_files} x CT-like 512x512 12-bit with pydicom's CT example's header",
            headed,
        ),
        _write_set(
            root, "volume", f"1 x {frames}-frame 512x512 12-bit", {"v.dcm": to_bytes(volume)}
        ),
        _write_set(root, "cr", f"1 x CR-like {side}x{side} 12-bit", {"cr.dcm": to_bytes(cr)}),
        _write_set(root, "us", f"{sizes.us_files} x US-like 640x480 RGB 8-bit", us),
        _write_set(
            root,
            "archive",
            f"{sizes.archive_ct} x CT-like 512x512 + {sizes.archive_cr} x CR-like 2560x2048, "
            "12-bit",
            archive,
        ),
        _write_set(
            root,
            "examples",
            f"pydicom.examples with native pixel data: {', '.join(names)}",
            {path.name: path.read_bytes() for path in shipped},
            mixed=True,
        ),
    ]
