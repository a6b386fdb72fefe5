"""The quality guard of lossy targets: ``max_error`` and ``min_psnr`` discard a lossy
result outside them and try the next target; the record says why."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import from_file, run, source_pixels
from worker.codec.engine import process
from worker.policy import parse_policy
from worker.settings import CompressionOptions


def noisy(rows: int = 64, cols: int = 64, frames: int = 1) -> Dataset:
    """12-bit white noise: JPEG 2000 at ratio 10 cannot keep it near (about 20 dB)."""
    ds = make_image(rows, cols, bits_stored=12, frames=frames)
    shape = (frames, rows, cols) if frames > 1 else (rows, cols)
    pixels = np.random.default_rng(7).integers(0, 4096, shape, dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def smooth() -> Dataset:
    """A gentle gradient: lossy JPEG 2000 keeps it well above 40 dB."""
    ds = make_image(64, 64, bits_stored=12)
    ramp = (np.add.outer(np.arange(64), np.arange(64)) * 16).astype(np.uint16)
    ds.PixelData = ramp.tobytes()
    return ds


def test_without_a_guard_a_poor_lossy_result_is_kept() -> None:
    """The default (no guard): what the site asked for is what it gets, said plainly."""
    result = run(noisy(), target=["j2k-lossy", "jpeg-ls"], j2k_cr=[10])
    assert (result.state, result.target) == ("done", "j2k-lossy")
    assert result.psnr is not None and result.psnr < 30
    assert "PSNR" in result.message


def test_a_result_below_min_psnr_falls_back_to_the_next_target() -> None:
    ds = noisy()
    result = run(ds, target=["j2k-lossy", "jpeg-ls"], j2k_cr=[10], min_psnr=40)
    assert (result.state, result.code, result.target) == ("done", "compressed", "jpeg-ls")
    assert result.output is not None
    assert len(result.notices) == 1
    assert result.notices[0].startswith("j2k-lossy discarded: PSNR ")
    assert "below min_psnr 40" in result.notices[0]
    assert result.notices[0] in result.message  # the record's message says why
    from tests.support import independent_decode

    np.testing.assert_array_equal(independent_decode(result.output), source_pixels(ds))


def test_a_result_above_max_error_falls_back() -> None:
    result = run(noisy(), target=["jpeg-ls-near", "jpeg-ls"], jls_error=6, max_error=2)
    assert (result.state, result.target) == ("done", "jpeg-ls")
    assert "jpeg-ls-near discarded: max error" in result.message
    assert "above max_error 2" in result.message


def test_a_result_inside_the_guard_is_kept() -> None:
    result = run(smooth(), target=["j2k-lossy", "jpeg-ls"], j2k_cr=[4], min_psnr=40)
    assert (result.state, result.target) == ("done", "j2k-lossy")
    assert result.psnr is None or result.psnr >= 40
    assert result.notices == []
    near = run(noisy(), target=["jpeg-ls-near"], jls_error=2, max_error=2)
    assert (near.state, near.target) == ("done", "jpeg-ls-near")


@pytest.mark.parametrize(("unsupported", "state"), [("skip", "skipped"), ("fail", "failed")])
def test_no_target_inside_the_guard_is_recorded_quality_guard(unsupported: str, state: str) -> None:
    result = run(noisy(), target=["j2k-lossy"], j2k_cr=[10], min_psnr=45, unsupported=unsupported)
    assert (result.state, result.code, result.output) == (state, "quality_guard", None)
    assert result.copy_source  # skipped or failed: the source is copied unchanged
    assert "j2k-lossy discarded: PSNR" in result.message


def test_lossless_targets_are_not_guarded() -> None:
    result = run(noisy(), target=["jpeg-ls"], max_error=0, min_psnr=200)
    assert (result.state, result.target) == ("done", "jpeg-ls")


def test_the_guard_needs_verification() -> None:
    with pytest.raises(ValidationError, match="need verify on"):
        CompressionOptions(target=["j2k-lossy"], min_psnr=40, verify=False)
    with pytest.raises(ValidationError):
        CompressionOptions(max_error=-1)


def test_a_large_multi_frame_object_falls_back_as_a_whole(deferred: None) -> None:
    """The frame path judges the whole object (the worst frame): one frame outside the
    guard discards the lossy result of every frame."""
    ds = noisy(32, 32, frames=3)
    options = CompressionOptions(target=["j2k-lossy", "jpeg-ls"], j2k_cr=[10], min_psnr=40)
    result, written = from_file(to_bytes(ds), options)
    assert (result.state, result.target) == ("done", "jpeg-ls")
    assert "j2k-lossy discarded: PSNR" in result.message
    whole = process(to_bytes(ds), options)
    assert whole.output == written and whole.message == result.message


def test_a_policy_rule_sets_the_guard_for_its_objects() -> None:
    policy = parse_policy(
        """
[[rule]]
name = "lossy CR, guarded"
when = { Modality = "CR" }
target = ["j2k-lossy", "jpeg-ls"]
options = { j2k_cr = [10], min_psnr = 40, max_error = 50 }

[[rule]]
name = "default"
target = ["jpeg-ls"]
"""
    )
    ds = noisy()
    ds.Modality = "CR"
    result = process(to_bytes(ds), CompressionOptions(), policy=policy)
    assert (result.target, result.rule) == ("jpeg-ls", "lossy CR, guarded")
    assert "j2k-lossy discarded: max error" in result.message and "min_psnr 40" in result.message
