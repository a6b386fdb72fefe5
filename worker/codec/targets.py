"""Compression targets described as data: name, transfer syntax, plugins and limits.

This is the one place that knows which pydicom encoding plugins exist for which
transfer syntax, which pip package brings each one, and what each target can take.
``dcmpress doctor`` prints it; :func:`resolve_plugin` turns a missing plugin into a
:class:`~worker.errors.ConfigurationError` at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from worker.codec.plugins import htj2k, jpegxl, packbits
from worker.codec.plugins.base import Plugin
from worker.codec.plugins.gdcm import GDCM_RLE
from worker.codec.plugins.htj2k import HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, IMAGECODECS_HTJ2K
from worker.codec.plugins.jpegxl import IMAGECODECS_JPEGXL, JPEG_XL_LOSSLESS
from worker.codec.plugins.packbits import IMAGECODECS_RLE
from worker.codec.plugins.pyjpegls import PYJPEGLS
from worker.codec.plugins.pylibjpeg import PYLIBJPEG_J2K, PYLIBJPEG_RLE
from worker.codec.plugins.rle import PYDICOM_RLE
from worker.errors import ConfigurationError

__all__ = [
    "AUTO",
    "TARGETS",
    "Plugin",
    "PluginStatus",
    "Target",
    "auto_candidates",
    "get_target",
    "resolve_plugin",
]

# The target that picks, image by image, the smallest verified result of its candidates
# (worker/codec/auto.py); not a transfer syntax of its own.
AUTO = "auto"


@dataclass(frozen=True)
class Target:
    """A compressed transfer syntax dcmpress can write.

    ``plugins`` is in order of preference when the user names none: fast and safe
    first. ``max_bits_stored`` / ``bits_allocated`` are what the encoders accept.
    """

    name: str
    uid: UID
    lossy: bool
    plugins: tuple[Plugin, ...]
    bits_allocated: frozenset[int]
    max_bits_stored: int
    options: frozenset[str]  # which compress() options apply to this target
    summary: str
    # pydicom decoding plugins for verification, the least CPU per decode first
    # (measured: benchmarks/RESULTS.md). Not the fastest in a lone process: python-gdcm decodes
    # JPEG 2000 on a thread per CPU, 1.4-1.5x faster alone but 1.1-1.2x the CPU, and slower
    # once every core runs a worker process
    decoders: tuple[str, ...] = ()
    # fewer bits stored than the encoders code reliably, and why (refused beforehand,
    # so a later target takes the image: a failed verification would be final)
    min_bits_stored: int = 1
    min_bits_stored_reason: str = ""
    # among ``auto``'s candidates unless the user lists them (JPEG XL: few viewers yet)
    auto_default: bool = True

    def decoder(self) -> str:
        """The fastest installed decoding plugin for verification ('' = pydicom's pick)."""
        available = get_decoder(self.uid).available_plugins
        return next((name for name in self.decoders if name in available), "")

    def allowed_error(self, jls_error: int) -> int | None:
        """Largest pixel error a result may show; None where only PSNR is recorded."""
        if not self.lossy:
            return 0
        return jls_error if "jls_error" in self.options else None

    def plugin(self, name: str) -> Plugin:
        """Return the plugin called ``name`` or raise ConfigurationError."""
        for plugin in self.plugins:
            if plugin.name == name:
                return plugin
        known = ", ".join(p.name for p in self.plugins)
        raise ConfigurationError(
            f"target {self.name!r} has no plugin {name!r}; choose one of: {known}"
        )


# pydicom does not know these imagecodecs plugins by itself; 3.0 has no HTJ2K encoder
# and no JPEG XL at all (see worker/codec/plugins/extend.py)
packbits.register()
htj2k.register()
jpegxl.register()

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="jpeg-ls",
            uid=JPEGLSLossless,
            lossy=False,
            plugins=(PYJPEGLS,),
            bits_allocated=frozenset({8, 16}),
            max_bits_stored=16,
            options=frozenset(),
            summary="JPEG-LS lossless: fast, about 2.5x on CT/CR.",
            decoders=("pyjpegls", "gdcm"),
        ),
        Target(
            name="jpeg-ls-near",
            uid=JPEGLSNearLossless,
            lossy=True,
            plugins=(PYJPEGLS,),
            bits_allocated=frozenset({8, 16}),
            max_bits_stored=16,
            options=frozenset({"jls_error"}),
            summary="JPEG-LS near-lossless: every pixel within jls_error of the source.",
            decoders=("pyjpegls", "gdcm"),
        ),
        Target(
            name="j2k",
            uid=JPEG2000Lossless,
            lossy=False,
            plugins=(PYLIBJPEG_J2K,),
            bits_allocated=frozenset({8, 16, 32}),
            max_bits_stored=24,
            options=frozenset(),
            summary="JPEG 2000 lossless: widely readable, slower to encode.",
            decoders=("pylibjpeg", "gdcm"),
            min_bits_stored=2,
            min_bits_stored_reason="openjpeg's 1-bit coding does not always decode back "
            "(pylibjpeg-openjpeg 2.6: about 1 in 30 noisy RGB images)",
        ),
        Target(
            name="j2k-lossy",
            uid=JPEG2000,
            lossy=True,
            plugins=(PYLIBJPEG_J2K,),
            bits_allocated=frozenset({8, 16, 32}),
            max_bits_stored=24,
            options=frozenset({"j2k_cr", "j2k_psnr"}),
            summary="JPEG 2000 lossy: size set by j2k_cr (ratios) or j2k_psnr (dB).",
            decoders=("pylibjpeg", "gdcm"),
            min_bits_stored=2,
            min_bits_stored_reason="openjpeg's 1-bit coding does not always decode back "
            "(pylibjpeg-openjpeg 2.6: about 1 in 30 noisy RGB images)",
        ),
        Target(
            name="rle",
            uid=RLELossless,
            lossy=False,
            plugins=(IMAGECODECS_RLE, PYLIBJPEG_RLE, PYDICOM_RLE, GDCM_RLE),
            bits_allocated=frozenset({8, 16}),  # pydicom 3.0 refuses 32-bit RLE
            max_bits_stored=32,
            options=frozenset(),
            summary="RLE lossless: readable everywhere, about 1.7x.",
            decoders=("pylibjpeg", "pydicom", "gdcm"),
        ),
        Target(
            name="htj2k",
            uid=HTJ2K_LOSSLESS_RPCL,
            lossy=False,
            plugins=(IMAGECODECS_HTJ2K,),
            bits_allocated=frozenset({8, 16}),  # openjpeg decodes no 32-bit precision
            max_bits_stored=16,
            options=frozenset(),
            summary="HTJ2K lossless with RPCL options (OpenJPH): JPEG 2000 with a block "
            "coder ~17x faster than openjpeg's, ~5 % larger; TLM markers and a tile-part "
            "per resolution, thumbnails first (what AWS HealthImaging serves).",
            decoders=("pylibjpeg",),  # OpenJPEG: not the library that encoded
        ),
        Target(
            name="jpegxl",
            uid=JPEG_XL_LOSSLESS,
            lossy=False,
            plugins=(IMAGECODECS_JPEGXL,),
            bits_allocated=frozenset({8, 16}),
            max_bits_stored=16,
            options=frozenset(),
            summary="JPEG XL lossless (libjxl, effort 1): fast; few viewers read it yet, "
            "so never a default.",
            decoders=("imagecodecs",),  # nothing else decodes JPEG XL here
            auto_default=False,
        ),
    )
}

_BY_UID: dict[str, Target] = {t.uid: t for t in TARGETS.values()}
# Earlier names: htj2k-rpcl (.202) is what htj2k writes now, and it writes no .201 (a
# .202 codestream is a .201 one with RPCL options)
ALIASES = {"htj2k-rpcl": "htj2k", HTJ2K_LOSSLESS: "htj2k"}


def get_target(name_or_uid: str) -> Target:
    """Return the target for a short name (``jpeg-ls``) or transfer syntax UID."""
    key = name_or_uid.strip()
    key = ALIASES.get(key.lower(), key)
    target = TARGETS.get(key.lower()) or _BY_UID.get(key)
    if target is None:
        known = ", ".join(TARGETS)
        raise ConfigurationError(
            f"unknown target {name_or_uid!r}; choose one of: {known} (or their UIDs)"
        )
    return target


def auto_candidates() -> list[Target]:
    """What ``auto`` tries when the user names no candidates: every lossless target
    with an installed plugin, but those only ever written when asked for (jpegxl)."""
    return [
        target
        for target in TARGETS.values()
        if not target.lossy
        and target.auto_default
        and any(plugin_status(target, plugin).available for plugin in target.plugins)
    ]


# Decoding plugins for *source* pixels, safest first. python-gdcm is last: on some
# inconsistent inputs it aborts the whole process, so it is used only when nothing
# else decodes the syntax, and then in a throw-away fork (see compress.decode_source).
SOURCE_DECODERS = ("pylibjpeg", "pyjpegls", "pydicom", "pillow", "gdcm")


def source_decoding_plugin(uid: str) -> str:
    """The decoding plugin for an untrusted source in ``uid`` ('' for native data)."""
    try:
        available = get_decoder(uid).available_plugins
    except NotImplementedError:  # no decoder at all: decoding will say so
        return ""
    ordered = [name for name in SOURCE_DECODERS if name in available]
    return (ordered or [*available, ""])[0]


@dataclass(frozen=True)
class PluginStatus:
    """Whether a plugin is usable here, and if not, what to install."""

    target: Target
    plugin: Plugin
    available: bool
    missing: str  # pydicom's own explanation, empty when available

    @property
    def install_hint(self) -> str:
        """The pip command that would make the plugin available."""
        return self.plugin.install_hint


def plugin_status(target: Target, plugin: Plugin) -> PluginStatus:
    """Ask pydicom whether ``plugin`` can encode ``target`` on this machine."""
    encoder = get_encoder(target.uid)
    available = plugin.name in encoder.available_plugins
    missing = ""
    if not available:
        # pydicom's own words: "gdcm - requires gdcm"
        reasons = [
            text.split(" - ", 1)[1]
            for text in encoder.missing_dependencies
            if text.split(" - ", 1)[0] == plugin.name
        ]
        missing = reasons[0] if reasons else "not registered in pydicom"
    return PluginStatus(target, plugin, available, missing)


def all_plugin_status() -> list[PluginStatus]:
    """Availability of every plugin of every target, for ``dcmpress doctor``."""
    return [plugin_status(t, p) for t in TARGETS.values() for p in t.plugins]


def resolve_plugin(target: Target, requested: str = "") -> Plugin:
    """Pick the plugin to encode ``target`` with, failing early if it is missing.

    With ``requested`` empty, the first available plugin in preference order wins.
    """
    if requested:
        status = plugin_status(target, target.plugin(requested))
        if not status.available:
            raise ConfigurationError(
                f"plugin {requested!r} for target {target.name!r} is not usable: "
                f"{status.missing}. Install it with: {status.install_hint}"
            )
        return status.plugin
    statuses = [plugin_status(target, p) for p in target.plugins]
    for status in statuses:
        if status.available:
            return status.plugin
    hints = "; ".join(f"{s.plugin.name}: {s.install_hint}" for s in statuses)
    raise ConfigurationError(
        f"no encoding plugin is installed for target {target.name!r}. Install one: {hints}"
    )
