"""Typed settings. Every knob is a ``DCMPRESS_*`` environment variable.

:class:`CompressionOptions` is the plain, serialisable description of *how* to
compress: the CLI builds it from flags, a job message will carry it, and the engine
takes nothing else. :class:`EngineSettings` reads the same fields from the
environment.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.codecs import Target, get_target

DEFAULT_J2K_CR = (10.0,)


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
        "images the earlier ones cannot take.",
    )
    encoding_plugin: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Plugin to use: a name applied to every target that has it "
        "(`pylibjpeg`), or `target=plugin` pairs (`rle=gdcm`). Empty: the fastest "
        "safe installed plugin.",
    )
    jls_error: int = Field(
        default=2, ge=1, le=255, description="jpeg-ls-near: largest allowed pixel error."
    )
    j2k_cr: Annotated[list[float] | None, NoDecode] = Field(
        default=None, description="j2k-lossy: compression ratio per quality layer."
    )
    j2k_psnr: Annotated[list[float] | None, NoDecode] = Field(
        default=None, description="j2k-lossy: PSNR in dB per quality layer."
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
    min_ratio: float = Field(
        default=1.0,
        ge=0.0,
        description="Keep the source unchanged (`skipped/no_gain`) unless the result is "
        "at least this many times smaller. 0 keeps every result.",
    )

    _split = field_validator("target", "encoding_plugin", "j2k_cr", "j2k_psnr", mode="before")(
        _split_list
    )

    @field_validator("target")
    @classmethod
    def _known_targets(cls, value: list[str]) -> list[str]:
        return [get_target(name).name for name in value]

    @model_validator(mode="after")
    def _one_j2k_quality_knob(self) -> CompressionOptions:
        if self.j2k_cr and self.j2k_psnr:
            raise ValueError("give j2k_cr or j2k_psnr, not both")
        return self

    def targets(self) -> list[Target]:
        """The targets in fallback order."""
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
