"""The ``auto`` target (worker/codec/auto.py): the smallest verified result of its
candidates, image by image, and a record that says what each candidate reached."""

from __future__ import annotations

import re
import tempfile
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import assert_lossless, from_file, options_probe, read, run, source_pixels
from worker.codec import auto
from worker.codec.engine import Result, process
from worker.codec.options import CompressionOptions
from worker.codec.targets import TARGETS
from worker.errors import PermanentError

DEFAULT_CANDIDATES = ["jpeg-ls", "j2k", "rle", "htj2k"]


def with_pixels(arr: np.ndarray, **kwargs: Any) -> Dataset:
    ds = make_image(arr.shape[0], arr.shape[1], **kwargs)
    ds.PixelData = arr.tobytes()
    return ds


def noisy_ct() -> Dataset:
    return make_image(128, 128, bits_stored=12)


def constant_rows() -> Dataset:
    """Each row one value: RLE codes a row in a few bytes, the predictors pay per row."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (256, 1))
    return with_pixels(np.repeat(rows, 256, axis=1).astype(np.uint8), bits_allocated=8)


def checkerboard() -> Dataset:
    """Alternating black and white pixels: the wavelet's best case."""
    board = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    return with_pixels(board, bits_allocated=8)


IMAGES = {"noisy CT": noisy_ct, "constant rows": constant_rows, "checkerboard": checkerboard}


def sizes_in(notice: str) -> dict[str, int]:
    return {
        name: int(size.replace(",", ""))
        for name, size in re.findall(r"([a-z0-9-]+) ([\d,]+) B in", notice)
    }


def seconds_in(notice: str) -> dict[str, float]:
    return {
        name: float(s) for name, s in re.findall(r"([a-z0-9-]+) [\d,]+ B in ([\d.]+) s", notice)
    }


def test_the_default_candidates_are_the_installed_lossless_targets_but_jpegxl() -> None:
    names = [target.name for target in CompressionOptions(target="auto").targets()]
    assert names == DEFAULT_CANDIDATES


def test_auto_keeps_the_smallest_and_the_winners_differ_by_image() -> None:
    winners = set()
    for name, make in IMAGES.items():
        ds = make()
        result = run(ds, target=["auto"], min_ratio=0)
        assert_lossless(result, source_pixels(ds))
        alone = {
            target: run(ds, target=[target], min_ratio=0).bytes_out for target in DEFAULT_CANDIDATES
        }
        smallest = min(alone, key=lambda target: alone[target])
        assert result.target == smallest, (name, alone)
        assert result.bytes_out == alone[smallest]
        assert sizes_in(result.notices[-1]) == alone  # the record says what each reached
        assert result.message.endswith(result.notices[-1])
        winners.add(result.target)
    assert len(winners) >= 2, winners  # measured: jpeg-ls, rle, j2k


def test_the_notice_names_the_winner_and_every_candidate_smallest_first() -> None:
    result = run(constant_rows(), target=["auto"], auto_candidates=["jpeg-ls", "rle"])
    notice = result.notices[-1]
    assert notice.startswith(f"auto chose {result.target}, the smallest: {result.target} ")
    sizes = list(sizes_in(notice).values())
    assert sizes == sorted(sizes) and len(sizes) == 2


def test_prefer_speed_zero_keeps_the_fastest_and_a_wide_margin_the_smallest() -> None:
    ds = noisy_ct()
    fastest = run(ds, target=["auto"], prefer_speed=0, min_ratio=0)
    times = seconds_in(fastest.notices[-1])
    assert times[fastest.target or ""] == min(times.values())
    assert "within 0 % of the fastest" in fastest.notices[-1]
    assert_lossless(fastest, source_pixels(ds))
    smallest = run(ds, target=["auto"], min_ratio=0)
    wide = run(ds, target=["auto"], prefer_speed=1e9, min_ratio=0)
    assert wide.target == smallest.target


def test_user_candidates_are_the_only_ones_tried() -> None:
    result = run(noisy_ct(), target=["auto"], auto_candidates=["rle", "htj2k"], min_ratio=0)
    assert set(sizes_in(result.notices[-1])) == {"rle", "htj2k"}
    assert result.target == "htj2k"


def test_jpegxl_is_tried_when_named() -> None:
    result = run(noisy_ct(), target=["auto"], auto_candidates=["jpegxl", "rle"], min_ratio=0)
    assert set(sizes_in(result.notices[-1])) == {"jpegxl", "rle"}
    assert_lossless(result, source_pixels(noisy_ct()))


def test_candidates_that_refuse_are_named_and_the_rest_compete() -> None:
    ds = make_image(16, 16, bits_stored=12)  # sides below openjpeg's 32
    result = run(ds, target=["auto"], auto_candidates=["j2k", "rle"], min_ratio=0)
    assert (result.state, result.target) == ("done", "rle")
    assert "j2k refused (image_too_small" in result.notices[-1]


def test_when_every_candidate_refuses_the_image_is_skipped_with_their_reasons() -> None:
    ds = make_image(16, 16, bits_allocated=8, bits_stored=1)
    result = run(ds, target=["auto"], auto_candidates=["j2k"])
    assert (result.state, result.code, result.copy_source) == (
        "skipped", "unsupported_bits_stored", True
    )  # fmt: skip


def test_a_result_that_fails_verification_gives_way_to_the_next_smallest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = auto.verify

    def broken_jpeg_ls(output: bytes, source: Any, target: Any, jls_error: int) -> Any:
        if target.name == "jpeg-ls":
            raise PermanentError("verification_failed", "injected mismatch")
        return real(output, source, target, jls_error)

    monkeypatch.setattr(auto, "verify", broken_jpeg_ls)
    ds = noisy_ct()
    result = run(ds, target=["auto"], auto_candidates=["jpeg-ls", "rle"], min_ratio=0)
    assert (result.state, result.target) == ("done", "rle")
    assert_lossless(result, source_pixels(ds))
    assert "the smallest that verified" in result.notices[-1]
    assert "not kept (verification_failed: injected mismatch)" in result.notices[-1]
    alone = run(ds, target=["auto"], auto_candidates=["jpeg-ls"])
    assert (alone.state, alone.code) == ("failed", "verification_failed")


def test_options_refuse_auto_with_fallbacks_and_lossy_candidates() -> None:
    with pytest.raises(ValidationError, match="alone"):
        CompressionOptions(target=["auto", "rle"])
    with pytest.raises(ValidationError, match="lossless targets only"):
        CompressionOptions(target="auto", auto_candidates="jpeg-ls-near")
    with pytest.raises(ValidationError, match="unknown target"):
        CompressionOptions(target="auto", auto_candidates="webp")
    options = CompressionOptions(target="AUTO", auto_candidates="rle,1.2.840.10008.1.2.4.80")
    assert options.target == ["auto"] and options.auto_candidates == ["rle", "jpeg-ls"]


def test_the_auto_flags_reach_the_options() -> None:
    probe, seen = options_probe()
    result = CliRunner().invoke(probe, [
        "run", "x", "--target", "auto", "--auto-candidates", "rle,htj2k", "--prefer-speed", "25",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    [options] = seen
    assert (options.target, options.auto_candidates, options.prefer_speed) == (
        ["auto"], ["rle", "htj2k"], 25.0
    )  # fmt: skip
    assert [target.name for target in options.targets()] == ["rle", "htj2k"]


# -- large multi-frame files: candidates tried on a sample of frames -------------------


@pytest.mark.parametrize("frames", [2, 9])
def test_large_multi_frame_files_are_ranked_on_a_sample_of_frames(
    frames: int, deferred: None
) -> None:
    ds = make_image(40, 48, frames=frames, bits_stored=12)
    data = to_bytes(ds)
    result, written = from_file(data, CompressionOptions(target="auto"))
    notice = result.notices[-1]
    sampled = min(frames, auto.SAMPLE_FRAMES)
    assert f"on {sampled} of {frames} frames" in notice
    sizes = sizes_in(notice)
    assert set(sizes) == set(DEFAULT_CANDIDATES)
    assert result.target == min(sizes, key=lambda name: sizes[name])
    assert result.message.endswith(notice)
    out = assert_lossless(
        Result("done", "compressed", "", len(data), output=written), source_pixels(ds)
    )
    assert out.file_meta.TransferSyntaxUID == TARGETS[result.target or ""].uid
    # the frames path wrote what the same target writes for the whole object
    assert written == run(data, target=[result.target or ""]).output


def test_the_sample_is_spread_over_the_object() -> None:
    assert auto.sample_indices(1) == [0]
    assert auto.sample_indices(3) == [0, 1, 2]
    assert auto.sample_indices(400) == [0, 200, 399]


def test_a_sample_no_candidate_takes_leaves_the_refusals_to_the_frames_path(
    deferred: None,
) -> None:
    ds = make_image(16, 16, frames=4, bits_stored=12)  # below openjpeg's 32-pixel sides
    data = to_bytes(ds)
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.seek(0)
        options = CompressionOptions(target="auto", auto_candidates=["j2k"])
        result = process(file, options, frames_above=1)
    assert (result.state, result.code) == ("skipped", "image_too_small")
    assert read(data).SOPInstanceUID == ds.SOPInstanceUID
