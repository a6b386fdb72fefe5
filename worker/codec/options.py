"""How to compress: the options the engine takes, and where their defaults come from.

:class:`CompressionOptions` is the plain, serialisable description of *how* to
compress: the CLI builds it from flags, a batch spec carries it to the workers, and the
engine takes nothing else. :class:`EngineSettings` reads the same fields from
``DCMPRESS_*`` environment variables.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.codec.targets import AUTO, Target, auto_candidates, get_target

# j2k-lossy's default ratio: the lowest upper limit of the German consensus (DRG, Loose
# et al., RöFo 2009; adopted by the SSK in 2011: CT brain 1:5, other CT 1:8, MR 1:7,
# RF/XA 1:6, CR/DR 1:10), and what readers found visually lossless in abdominal CT (Eur
# Radiol 2007;17:1529); counted against the stored bytes, as the record states it
DEFAULT_J2K_CR = (5.0,)
# The quality guard's default: the result's PSNR against the source's own value range
# (max - min) at least this, i.e. an RMS error of at most 1 % of that range
DEFAULT_MIN_PSNR = 40.0


def _split_list(value: Any) -> Any:
    """Accept ``"a,b"`` as well as ``["a", "b"]`` for list-valued settings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CompressionOptions(BaseModel):
    """How to compress one object. Field names match ``pydicom.pixels.compress``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: Annotated[list[str], NoDecode] = Field(
        default=["jpeg-ls"],
        min_length=1,
        description="Target names or transfer syntax UIDs; later ones are fallbacks for "
        "images the earlier ones cannot take. `auto` (alone): the smallest verified result "
        "of the auto candidates, image by image.",
    )
    auto_candidates: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Lossless targets `auto` tries on each image. Empty: every installed "
        "lossless target but jpegxl.",
    )
    prefer_speed: float | None = Field(
        default=None,
        ge=0,
        description="`auto`: the smallest result among the candidates that encoded within "
        "this many percent of the fastest one's time. Unset: the smallest of all.",
    )
    encoding_plugin: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Plugin to use: a name applied to every target that has it "
        "(`pylibjpeg`), or `target=plugin` pairs (`rle=gdcm`). Empty: the fastest "
        "safe installed plugin.",
    )
    jls_error: int = Field(
        default=2,
        ge=1,
        le=255,
        description="jpeg-ls-near: largest allowed pixel error, in stored values (2: 2 HU "
        "of a CT; verified for every pixel).",
    )
    j2k_cr: Annotated[list[float] | None, NoDecode] = Field(
        default=None,
        description="j2k-lossy: compression ratio per quality layer, against the stored "
        "pixel bytes (as the output's Lossy Image Compression Ratio says). Unset: 5, the "
        "lowest limit of the German consensus (CT brain 1:5).",
    )
    j2k_psnr: Annotated[list[float] | None, NoDecode] = Field(
        default=None,
        description="j2k-lossy: OpenJPEG's PSNR target in dB per quality layer (its peak "
        "is 2^Bits Stored - 1, not the image's range: on 12-bit values stored in 16 bits "
        "it keeps far less than it says; min_psnr still judges the result).",
    )
    max_error: int | None = Field(
        default=None,
        ge=0,
        description="Quality guard of lossy targets: a result whose largest pixel error "
        "exceeds this is discarded and the next target is tried. Unset: no limit.",
    )
    min_psnr: float | None = Field(
        default=DEFAULT_MIN_PSNR,
        ge=0,
        description="Quality guard of lossy targets: a result whose PSNR (dB, against the "
        "source's value range, max - min) is below this is discarded and the next target "
        "tried, else the source copied (skipped/quality_guard). 40: an RMS error of at "
        "most 1 % of the range. 0 turns the guard off.",
    )
    encapsulate_ext: bool = Field(
        default=False,
        description="Always add an Extended Offset Table (it is added anyway when the "
        "compressed data outgrow the Basic Offset Table's 4 GiB).",
    )
    generate_instance_uid: bool | None = Field(
        default=None,
        description="New SOP Instance UID? Unset: only for lossy targets, as DICOM asks.",
    )
    plugin_options: dict[str, Any] = Field(
        default={}, description="Extra keyword options passed to the encoding plugin."
    )
    verify: bool = Field(
        default=True, description="Decode every result and compare it with the source."
    )
    unsupported: Literal["skip", "fail"] = Field(
        default="skip",
        description="Images no target can take: copy unchanged and record `skipped`, "
        "or record `failed`.",
    )
    transcode: bool = Field(
        default=False,
        description="Decode and re-encode sources that are already losslessly compressed.",
    )
    no_pixel_data: Literal["copy", "skip"] = Field(
        default="copy",
        description="Objects without pixel data: copy unchanged, or skip without output.",
    )
    not_dicom: Literal["copy", "fail"] = Field(
        default="copy",
        description="Objects that are not DICOM: copy unchanged (`skipped/not_dicom`), so "
        "the destination stays a complete copy of the source, or record `failed`.",
    )
    viewer_safe: bool = Field(
        default=True,
        description="Refuse outputs that are valid but that OHIF's loader shows wrong "
        "(16-bit RGB under RLE, HTJ2K colour without the colour transform, 16-bit colour "
        "with a JPEG 2000 colour transform, signed 8-bit under RLE or JPEG 2000): the next "
        "target takes the image, else it is copied (`skipped/viewer_unsafe`); `auto` never "
        "picks them. false writes them.",
    )
    failed_output: Literal["copy", "none"] = Field(
        default="copy",
        description="Objects that fail because of what they contain (invalid_dicom, "
        "verification_failed, codec_crashed, worker_lost, time_limit...): `copy` the source "
        "unchanged to the destination (the record stays failed and says so), so it is a "
        "complete archive; `none` writes nothing. Storage failures never have an output.",
    )
    high_bits: Literal["clear", "keep"] = Field(
        default="clear",
        description="Bits set above High Bit that no overlay declares (not part of the "
        "pixel value): `clear` compresses without them and the record counts them; "
        "`keep` leaves such objects uncompressed (`skipped/high_bits_set`).",
    )
    min_ratio: float = Field(
        default=1.0,
        ge=0.0,
        description="Keep the source unchanged (`skipped/no_gain`) unless the result is "
        "at least this many times smaller. 0 keeps every result.",
    )
    max_inflated_mb: int | None = Field(
        default=None,
        ge=1,
        description="Deflated sources (Deflated Explicit VR Little Endian) are inflated "
        "into a temporary file; one whose data set inflates past this many MiB is "
        "stopped there and recorded `failed/inflated_too_large`, so a deflate bomb "
        "fills neither memory nor disk. Unset: sized on each worker from its memory "
        "(physical, or the cgroup limit) divided by its worker processes and by 8, as an "
        "object read whole costs about 6 times its size (a large multi-frame one, "
        "read frame group by frame group, far less).",
    )

    _split = field_validator(
        "target", "auto_candidates", "encoding_plugin", "j2k_cr", "j2k_psnr", mode="before"
    )(_split_list)

    @field_validator("target")
    @classmethod
    def _known_targets(cls, value: list[str]) -> list[str]:
        names = [AUTO if name.strip().lower() == AUTO else get_target(name).name for name in value]
        if AUTO in names and len(names) > 1:
            raise ValueError(
                f"{AUTO!r} tries its candidates itself: give it alone, with auto_candidates"
            )
        return names

    @field_validator("auto_candidates")
    @classmethod
    def _lossless_candidates(cls, value: list[str]) -> list[str]:
        targets = [get_target(name) for name in value]
        lossy = [target.name for target in targets if target.lossy]
        if lossy:
            raise ValueError(f"auto picks among lossless targets only, not {', '.join(lossy)}")
        return list(dict.fromkeys(target.name for target in targets))

    @model_validator(mode="after")
    def _one_j2k_quality_knob(self) -> CompressionOptions:
        if self.j2k_cr and self.j2k_psnr:
            raise ValueError("give j2k_cr or j2k_psnr, not both")
        return self

    @model_validator(mode="after")
    def _guard_needs_verify(self) -> CompressionOptions:
        # the default guard lapses with verification (the record says NOT verified); a
        # guard asked for does not
        asked = self.max_error is not None or self.min_psnr not in (None, 0, DEFAULT_MIN_PSNR)
        if asked and not self.verify:
            raise ValueError("max_error and min_psnr judge the decoded result: they need verify on")
        return self

    @property
    def auto(self) -> bool:
        """The target is ``auto``: the smallest of :meth:`targets` wins, image by image."""
        return self.target == [AUTO]

    def targets(self) -> list[Target]:
        """The targets in fallback order; for ``auto``, its candidates."""
        if self.auto:
            if self.auto_candidates:
                return [get_target(name) for name in self.auto_candidates]
            return auto_candidates()
        return [get_target(name) for name in self.target]

    def plugin_for(self, target: Target) -> str:
        """The plugin the user asked for on ``target`` ('' for automatic choice)."""
        plugin_names = {p.name for p in target.plugins}
        for entry in self.encoding_plugin:
            name, _, plugin = entry.partition("=")
            if plugin and get_target(name) == target:
                return plugin
            if not plugin and name in plugin_names:
                return name
        return ""


class EngineSettings(BaseSettings, CompressionOptions):
    """:class:`CompressionOptions` read from ``DCMPRESS_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="DCMPRESS_", extra="ignore", frozen=True)

    def compression_options(self) -> CompressionOptions:
        """The plain options, detached from the environment."""
        return CompressionOptions(**self.model_dump(include=set(CompressionOptions.model_fields)))
