"""What several commands share: option declarations, and what those options become
(the policy read once, the key filter, the settings and the ledger)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from dcmpress.console import fail, validation_message
from worker.codec.options import CompressionOptions
from worker.errors import ConfigurationError
from worker.policy import Policy, read_policy
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from producer.sources import KeyFilter
    from worker.runtime.contract import S3Location
    from worker.runtime.ledger import Ledger

Dest = Annotated[
    str | None, typer.Option(help="s3://bucket/prefix for outputs (keys are mirrored).")
]

# the key filter's options, the same for enqueue, listen and estimate
Suffix = Annotated[list[str] | None, typer.Option(help="Only keys ending so (repeatable).")]
ExcludeSuffix = Annotated[list[str] | None, typer.Option(help="Skip keys ending so.")]
MinSize = Annotated[int, typer.Option(help="Skip smaller objects (bytes).")]
MaxSize = Annotated[int | None, typer.Option(help="Skip larger objects (bytes).")]

BATCH_HELP = "Batch id, or a unique start of one (see `dcmpress batches`)."
BatchId = Annotated[str, typer.Argument(help=BATCH_HELP)]

POLICY_HELP = "A policy file (TOML): its first matching rule decides each object."


def read_checked_policy(
    path: Path | None, options: CompressionOptions
) -> tuple[str, Policy] | None:
    """The policy file at ``path``, read and parsed once, and checked against
    ``options``: its text (what a batch stores) and its rules; exit 2 naming the line
    and field if it is not valid. None without a policy."""
    if path is None:
        return None
    try:
        text, rules = read_policy(path)
        rules.check(options)
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    return text, rules


def policy_text(path: Path | None, options: CompressionOptions) -> str | None:
    """:func:`read_checked_policy`'s text."""
    read = read_checked_policy(path, options)
    return read[0] if read else None


def policy_rules(path: Path | None, options: CompressionOptions) -> Policy | None:
    """:func:`read_checked_policy`'s rules."""
    read = read_checked_policy(path, options)
    return read[1] if read else None


def key_filter(
    source: S3Location | None,
    dest: S3Location | None,
    suffix: list[str] | None,
    exclude_suffix: list[str] | None,
    min_size: int,
    max_size: int | None,
) -> KeyFilter:
    """The listing's filter from the key-filter options; it never takes our own outputs
    when the destination lies inside the source, nor the workers' archive shards
    (``DCMPRESS_REPORT_PREFIX``) where they go to the source's bucket."""
    from producer.sources import KeyFilter

    excluded: tuple[str, ...] = ()
    if source and dest and dest.bucket == source.bucket and dest.prefix:
        excluded = (dest.prefix,)
    if source is not None and (dest is None or dest.bucket == source.bucket):
        excluded += (settings_or_exit().report_prefix,)
    return KeyFilter(
        suffixes=tuple(suffix or ()),
        exclude_suffixes=tuple(exclude_suffix or ()),
        exclude_prefixes=excluded,
        min_size=min_size,
        max_size=max_size,
    )


def settings_or_exit() -> WorkerSettings:
    """The settings from the environment; exit 2 saying which variable is wrong."""
    try:
        return WorkerSettings()
    except ValidationError as exc:
        raise fail(validation_message(exc)) from None


def connect() -> tuple[WorkerSettings, Ledger]:
    """The settings and a client of the ledger they name."""
    from worker.runtime.ledger import Ledger

    settings = settings_or_exit()
    return settings, Ledger.from_url(
        settings.redis_url, settings.retention_seconds, outbox=settings.archive
    )
