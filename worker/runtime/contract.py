"""What the producer and the workers agree on: task names, messages, batch specs.

A job message is small (one object reference and its batch id) so millions can sit in
Redis; everything shared by a batch - source, destination, compression options - is
stored once, as a :class:`BatchSpec`, in the ledger.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

from pydantic import BaseModel, ConfigDict, Field

from worker.codec.options import CompressionOptions
from worker.errors import TERMINAL, ConfigurationError
from worker.runtime.records import short_etag

if TYPE_CHECKING:
    from worker.policy import Policy

TASK_COMPRESS = "dcmpress.compress_object"
DEFAULT_QUEUE = "dcmpress"

# Object metadata (x-amz-meta-*) dcmpress writes on every output. The marker lets
# listeners and listings recognise our own outputs and never process them again.
META_MARKER = "dcmpress-output"
META_SOURCE_ETAG = "dcmpress-source-etag"
META_SOURCE_KEY = "dcmpress-source-key"
META_TRANSFER_SYNTAX = "dcmpress-transfer-syntax"
META_BYTES_IN = "dcmpress-bytes-in"
META_BYTES_OUT = "dcmpress-bytes-out"
META_OUTCOME = "dcmpress-outcome"
META_CODEC = "dcmpress-codec"  # target/plugin of a compressed output
META_MODALITY = "dcmpress-modality"
# a digest of the batch's compression options: an output is the same only if made
# from the same source (ETag) with the same options
META_OPTIONS = "dcmpress-options"
# what the record of a source that is itself one of our outputs says
OWN_OUTPUT_MESSAGE = "a dcmpress output; not processed again"
META_RULE = "dcmpress-rule"  # the number of the batch policy's rule that decided
META_WRITE_ID = "dcmpress-write-id"  # one write: tells a stored write whose answer was lost
META_COPIED = "dcmpress-copied"  # "1": the source unchanged (a skipped or failed object)
META_MAX_ERROR = "dcmpress-max-error"  # a lossy output's largest pixel error
META_PSNR = "dcmpress-psnr"  # a lossy output's PSNR in dB (absent: identical pixels)


def output_metadata(
    *,
    source_etag: str,
    source_key: str,
    bytes_in: int,
    bytes_out: int,
    outcome: str,
    options_digest: str,
    rule: int = 0,
    transfer_syntax: str | None = None,
    codec: str = "",
    modality: str = "",
    copied: bool = False,
    max_error: int | None = None,
    psnr: float | None = None,
) -> dict[str, str]:
    """The metadata of an output (compressed or copied): what its record says, so that
    the object alone tells where it came from and how it was made."""
    metadata = {
        META_MARKER: "1",
        META_SOURCE_ETAG: source_etag,
        META_SOURCE_KEY: quote(source_key, safe="/"),  # metadata must be ASCII
        META_BYTES_IN: str(bytes_in),
        META_BYTES_OUT: str(bytes_out),
        META_OUTCOME: outcome,
        META_OPTIONS: options_digest,
    }
    if rule:
        metadata[META_RULE] = str(rule)
    if transfer_syntax:
        metadata[META_TRANSFER_SYNTAX] = transfer_syntax
    if codec:
        metadata[META_CODEC] = codec
    if modality and modality.isascii() and modality.isprintable():
        metadata[META_MODALITY] = modality[:16]
    if copied:
        metadata[META_COPIED] = "1"
    if max_error is not None:
        metadata[META_MAX_ERROR] = str(max_error)
    if psnr is not None:
        metadata[META_PSNR] = f"{psnr:.2f}"
    return metadata


def is_output_of(metadata: dict[str, str] | None, source_etag: str, options: str) -> bool:
    """True if ``metadata`` is that of dcmpress's output of this very source version
    (its ETag) made with these options (a batch's :meth:`BatchSpec.digest`): writing it
    again would write the same thing twice."""
    return bool(
        metadata
        and metadata.get(META_MARKER)
        and source_etag
        and short_etag(metadata.get(META_SOURCE_ETAG)) == short_etag(source_etag)
        and metadata.get(META_OPTIONS) == options
        and metadata.get(META_OUTCOME, "").partition("/")[0] in TERMINAL
    )


def quality_from_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """``max_error`` and ``psnr`` of an output's metadata (a record's fields)."""
    quality: dict[str, Any] = {}
    if metadata.get(META_MAX_ERROR, "").isdigit():
        quality["max_error"] = int(metadata[META_MAX_ERROR])
    with contextlib.suppress(KeyError, ValueError):
        quality["psnr"] = float(metadata[META_PSNR])
    return quality


def options_digest(options: CompressionOptions, policy: str | None = None) -> str:
    """A short digest of the options that change an output (defaults left out), and of
    the policy's text when the batch has one."""
    identity = options.model_dump_json(exclude_defaults=True)
    if policy is not None:
        identity += "\0policy\0" + policy
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def parsed_policy(text: str) -> Policy:
    """The policy of a batch spec, parsed once per process (workers see many objects of
    the same few batches)."""
    from worker.policy import parse_policy  # pydicom: not for the producer's import

    return parse_policy(text, "the batch's policy")


class S3Location(BaseModel):
    """``s3://bucket/prefix``."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Parse ``s3://bucket[/prefix]`` or raise ConfigurationError."""
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigurationError(f"{url!r} is not an s3://bucket/prefix URL")
        return cls(bucket=parsed.netloc, prefix=parsed.path.lstrip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class ObjectRef:
    """An object to enqueue: what a job message names."""

    bucket: str
    key: str
    etag: str = ""
    size: int | None = None
    version_id: str | None = None


class JobMessage(BaseModel):
    """One object to compress: the argument of the ``compress_object`` task.

    ``target`` is informational (readable in Flower); the batch spec is authoritative.
    """

    model_config = ConfigDict(frozen=True)

    batch: str
    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    version_id: str | None = None
    target: str | None = None
    # deliveries that waited for another worker's claim on the object: Celery counts
    # them as retries too, but they are not failures and must not use up max_retries
    claim_waits: int = 0
    # `enqueue --force`: write the output again even if one made from this source with
    # these options exists already
    rewrite: bool = False


class BatchSpec(BaseModel):
    """Everything the objects of one batch share."""

    model_config = ConfigDict(frozen=True)

    batch: str
    source: S3Location
    dest: S3Location | None = Field(
        default=None, description="Where outputs go; None only with in_place."
    )
    in_place: bool = False
    options: CompressionOptions = CompressionOptions()
    created: float = 0.0
    # the policy file's text (TOML), stored with the batch so every worker applies the
    # same rules; its rules decide per object, ``options`` is their base
    policy: str | None = None

    def rules(self) -> Policy | None:
        """The parsed policy, or None."""
        return None if self.policy is None else parsed_policy(self.policy)

    def rule_number(self, name: str | None) -> int:
        """The 1-based number of the policy's rule ``name`` (0: no policy or rule)."""
        policy = self.rules()
        if policy is None or name is None:
            return 0
        return next((i for i, rule in enumerate(policy.rule, 1) if rule.name == name), 0)

    def rule_name(self, number: int) -> str | None:
        """The name of the policy's rule ``number`` (None: no policy, or no such rule)."""
        policy = self.rules() if number else None
        if policy is None or not 0 < number <= len(policy.rule):
            return None
        return policy.rule[number - 1].name

    def digest(self) -> str:
        """:func:`options_digest` of this batch: its options and its policy."""
        return options_digest(self.options, self.policy)

    def output_key(self, key: str) -> tuple[str, str]:
        """(bucket, key) of the output of source ``key``: the key mirrored under dest."""
        if self.in_place or self.dest is None:
            return self.source.bucket, key
        return self.dest.bucket, self.dest.prefix + key

    def to_json(self) -> str:
        """Serialised for the ledger."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> BatchSpec:
        """Inverse of :meth:`to_json`."""
        return cls.model_validate_json(raw)


def default_batch_id(
    source: S3Location,
    dest: S3Location | None,
    options: CompressionOptions,
    policy: str | None = None,
) -> str:
    """A stable batch id for the same job, so running the same command again resumes it.

    Readable slug of the source bucket and targets (``policy`` with a policy), plus a
    short digest of everything.
    """
    identity: dict[str, Any] = {
        "source": str(source),
        "dest": str(dest) if dest else "in-place",
        # defaults left out: a release adding an option keeps the ids of existing jobs
        "options": options.model_dump(mode="json", exclude_defaults=True),
    }
    if policy is not None:
        identity["policy"] = policy
    what = "policy" if policy is not None else "-".join(options.target)
    digest = hashlib.sha256(repr(sorted(identity.items())).encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{source.bucket}-{what}".lower())
    return f"{slug.strip('-')[:40]}-{digest}"
