"""Codec engine throughput: bare ``pydicom.pixels.compress`` vs. dcmpress's full path.

For each target, on the same synthetic images in one run and on one core:

* bare: ``compress(ds, uid, arr, encoding_plugin=...)`` on an already-decoded dataset,
  nothing else (the baseline);
* dcmpress: bytes in -> parse -> decode -> check -> encode -> serialise -> verify
  (decode the result again and compare) -> bytes out.

Prints MB/s of raw pixel data for both and their ratio. Run from the repository's root:
``python -m benchmarks.codec_engine [--images N] [--size 512]``.
"""

from __future__ import annotations

import argparse
import copy
import io
import time
from typing import Any

from pydicom import dcmread
from pydicom.pixels.utils import compress

from dcmpress.stack.samples import make_image, to_bytes
from worker.codec.engine import process
from worker.codec.options import CompressionOptions
from worker.codec.targets import TARGETS, resolve_plugin


def bare_seconds(files: list[bytes], target_name: str, plugin: str) -> float:
    """Seconds pydicom alone needs to encode every file (decode excluded)."""
    target = TARGETS[target_name]
    prepared = []
    for data in files:
        ds = dcmread(io.BytesIO(data))
        prepared.append((ds, ds.pixel_array))
    kwargs: dict[str, Any] = {}
    if "jls_error" in target.options:
        kwargs["jls_error"] = 2
    if "j2k_cr" in target.options:
        kwargs["j2k_cr"] = [10]
    started = time.perf_counter()
    for ds, arr in prepared:
        compress(
            copy.copy(ds), target.uid, arr, encoding_plugin=plugin,
            generate_instance_uid=False, **kwargs,
        )  # fmt: skip
    return time.perf_counter() - started


def engine_seconds(files: list[bytes], target_name: str) -> tuple[float, float, dict[str, float]]:
    """Seconds of the full engine path, the mean file ratio and seconds per stage."""
    options = CompressionOptions(target=[target_name], min_ratio=0)
    stages: dict[str, float] = {}
    ratios = []
    started = time.perf_counter()
    for data in files:
        result = process(data, options)
        assert result.state == "done", result.message
        ratios.append(result.ratio or 0.0)
        for name, seconds in result.timings.items():
            stages[name] = stages.get(name, 0.0) + seconds
    return time.perf_counter() - started, sum(ratios) / len(ratios), stages


def main() -> None:
    """Measure and print one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    files = [
        to_bytes(make_image(args.size, args.size, bits_stored=12, seed=i))
        for i in range(args.images)
    ]
    megabytes = args.images * args.size * args.size * 2 / 1e6
    print(f"{args.images} images {args.size}x{args.size} 16-bit, {megabytes:.1f} MB of pixels")
    header = (
        f"{'target':<13}{'plugin':<10}{'bare MB/s':>10}{'dcmpress MB/s':>15}"
        f"{'ratio':>8}{'size ratio':>12}  dcmpress stage shares"
    )
    print(header)
    for target in TARGETS.values():
        plugin = resolve_plugin(target).name
        bare = bare_seconds(files, target.name, plugin)
        full, size_ratio, stages = engine_seconds(files, target.name)
        shares = " ".join(f"{k}={v / full:.0%}" for k, v in stages.items())
        print(
            f"{target.name:<13}{plugin:<10}{megabytes / bare:>10.1f}{megabytes / full:>15.1f}"
            f"{bare / full:>8.2f}{size_ratio:>12.2f}  {shares}"
        )
    print("ratio = dcmpress throughput / bare pydicom compress throughput (1.00 = no overhead)")


if __name__ == "__main__":
    main()
