"""Policies: ordered rules that choose, object by object, how it is compressed.

A policy is a TOML file of ``[[rule]]`` tables, tried in order; the first whose
conditions all hold decides. The last rule has no conditions (the default), so every
object is decided by a named rule::

    [[rule]]
    name = "never lossy for segmentations and RT"
    when = { Modality = ["SEG", "RTSTRUCT", "RTDOSE"] }
    target = ["jpeg-ls", "rle"]

    [[rule]]
    name = "copy reports and documents"
    when = { Modality = ["SR", "DOC"] }
    action = "copy"

    [[rule]]
    name = "near-lossless CR"
    when = { Modality = "CR", "ImageType[3]" = { not = "LOCALIZER" }, size = { min = "2MB" } }
    target = ["jpeg-ls-near"]
    options = { jls_error = 2 }

    [[rule]]
    name = "default"
    target = ["jpeg-ls"]

A condition names a data set attribute - a keyword (``Modality``), a tag
(``"0008,0060"``), ``Keyword[n]`` for its n-th value (1-based, as DICOM numbers them)
or a file meta keyword (``TransferSyntaxUID``) - or ``key`` (the object key or path) or
``size`` (bytes). Its value is one value or a list (any of them), or a table:
``{ not = ... }``, ``{ regex = "..." }``, ``{ not_regex = "..." }``, ``{ min = ...,
max = ... }`` (numbers; sizes may say ``KB``/``MB``/``GB``/``KiB``...), ``{ present =
true }``, ``{ glob = "..." }`` (for ``key``). A multi-valued attribute matches when
any of its values does; ``not`` when none does. Matching reads the header only.

Errors name the rule, its line in the file and the field: the policy is checked before
any work.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from worker.codec.options import CompressionOptions
from worker.errors import ConfigurationError

Scalar = str | int | float | bool
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.I)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip
_INDEXED = re.compile(r"^(.+)\[(\d+)\]$")
_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_SPECIAL = ("key", "size")


def parse_size(value: Scalar) -> float:
    """Bytes from ``12``, ``"2MB"``, ``"1.5 GiB"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size (e.g. 500KB, 2MB, 1.5GiB)")
    return float(match.group(1)) * _UNITS[(match.group(2) or "").upper()]


class Condition(BaseModel):
    """What one attribute (or the key, or the size) must be."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    any: tuple[Scalar, ...] = ()
    not_: tuple[Scalar, ...] = Field(default=(), alias="not")
    regex: str | None = None
    not_regex: str | None = None
    glob: str | None = None
    min: Scalar | None = None
    max: Scalar | None = None
    present: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _as_tuple(v) if k in ("any", "not") else v for k, v in value.items()}
        return {"any": _as_tuple(value)}

    @field_validator("regex", "not_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regular expression {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _something(self) -> Condition:
        if not any(
            (self.any, self.not_, self.regex, self.not_regex, self.glob, self.present is not None,
             self.min is not None, self.max is not None)
        ):  # fmt: skip
            raise ValueError("an empty condition: give a value, a list or a table")
        return self

    def holds(self, values: list[str] | None, number: float | None = None) -> bool:
        """True if the values (None: the attribute is absent) satisfy the condition."""
        if values is None:
            return self.present is False or (bool(self.not_ or self.not_regex) and not (
                self.any or self.regex or self.glob or self.min is not None
                or self.max is not None or self.present
            ))  # fmt: skip
        if self.present is False:
            return False
        if self.any and not any(_equal(v, want) for v in values for want in self.any):
            return False
        if self.not_ and any(_equal(v, bad) for v in values for bad in self.not_):
            return False
        if self.regex and not any(re.fullmatch(self.regex, v) for v in values):
            return False
        if self.not_regex and any(re.fullmatch(self.not_regex, v) for v in values):
            return False
        if self.glob and not any(fnmatch.fnmatchcase(v, self.glob) for v in values):
            return False
        return self._in_range(values, number)

    def _in_range(self, values: list[str], number: float | None) -> bool:
        if self.min is None and self.max is None:
            return True
        numbers = [number] if number is not None else [_number(v) for v in values]
        usable = [n for n in numbers if n is not None]
        low = -float("inf") if self.min is None else parse_size(self.min)
        high = float("inf") if self.max is None else parse_size(self.max)
        return any(low <= n <= high for n in usable)


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def _equal(value: str, want: Scalar) -> bool:
    if isinstance(want, bool):
        return value.lower() == str(want).lower()
    if isinstance(want, int | float):
        number = _number(value)
        return number is not None and number == float(want)
    return value.strip() == want.strip()


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Attribute:
    """Where a condition's attribute is: a tag, the file meta or not, a value index."""

    name: str
    tag: int
    meta: bool
    index: int | None  # 1-based value number

    @classmethod
    def parse(cls, name: str) -> Attribute:
        """``Modality``, ``ImageType[3]``, ``"0008,0060"``, ``TransferSyntaxUID``."""
        base, index = name, None
        indexed = _INDEXED.match(name)
        if indexed:
            base, index = indexed.group(1), int(indexed.group(2))
            if index < 1:
                raise ValueError(f"{name}: values are numbered from 1")
        tag_match = _TAG.match(base)
        if tag_match:
            tag = int(Tag(int(tag_match.group(1), 16), int(tag_match.group(2), 16)))
        else:
            found = tag_for_keyword(base)
            if found is None:
                raise ValueError(f'{base!r} is no DICOM keyword (nor a tag like "0008,0060")')
            tag = int(found)
        return cls(name, tag, tag >> 16 == 0x0002, index)

    def values(self, ds: Dataset) -> list[str] | None:
        """The attribute's values as strings; None if absent (or the value index is)."""
        where = ds.get("file_meta") if self.meta else ds
        if where is None or self.tag not in where:
            return None
        value = where[self.tag].value
        items = list(value) if isinstance(value, list | tuple) or _multi(value) else [value]
        strings = ["" if item is None else str(item) for item in items]
        if self.index is not None:
            return [strings[self.index - 1]] if len(strings) >= self.index else None
        return strings


def _multi(value: Any) -> bool:
    return isinstance(value, MultiValue)


@functools.lru_cache(maxsize=1024)
def _attribute(name: str) -> Attribute:
    """:meth:`Attribute.parse`, once per name: matching runs on every object."""
    return Attribute.parse(name)


class Rule(BaseModel):
    """One rule: conditions (all must hold), and what to do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    when: dict[str, Condition] = Field(default_factory=dict)
    action: Literal["compress", "copy", "skip"] = "compress"
    target: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("when")
    @classmethod
    def _known_attributes(cls, value: dict[str, Condition]) -> dict[str, Condition]:
        for name in value:
            if name not in _SPECIAL:
                Attribute.parse(name)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Rule:
        if self.action == "compress" and not self.target and "target" not in self.options:
            raise ValueError("a rule that compresses needs a target (a list, first choice first)")
        if self.action != "compress" and (self.target or self.options):
            raise ValueError(f"action {self.action!r} takes no target or options")
        if self.action == "compress":
            self.compression(CompressionOptions())  # every option validated now
        return self

    def compression(self, base: CompressionOptions) -> CompressionOptions:
        """``base`` with this rule's target and options."""
        update = dict(self.options)
        if self.target:
            update["target"] = self.target
        return CompressionOptions.model_validate({**base.model_dump(), **update})

    def matches(self, ds: Dataset, key: str, size: int) -> bool:
        """True if every condition holds for this header, key and size."""
        for name, condition in self.when.items():
            if name == "key":
                held = condition.holds([key])
            elif name == "size":
                held = condition.holds([str(size)], float(size))
            else:
                held = condition.holds(_attribute(name).values(ds))
            if not held:
                return False
        return True


class Policy(BaseModel):
    """Rules in order; the last one has no conditions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _default_last(self) -> Policy:
        names = [rule.name for rule in self.rule]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate:
            raise ValueError(f"two rules are named {duplicate!r}")
        defaults = [i for i, rule in enumerate(self.rule) if not rule.when]
        if not defaults:
            raise ValueError("no default rule: the last rule must have no `when`")
        if defaults[0] != len(self.rule) - 1:
            after = self.rule[defaults[0] + 1].name
            raise ValueError(
                f"rule {self.rule[defaults[0]].name!r} has no `when`, so rule {after!r} "
                "after it can never apply: the rule without conditions goes last"
            )
        return self

    def check(self, base: CompressionOptions) -> None:
        """Raise ConfigurationError if a rule's options do not go with ``base``."""
        for index, rule in enumerate(self.rule, 1):
            if rule.action == "compress":
                try:
                    rule.compression(base)
                except ValidationError as exc:
                    reasons = "; ".join(
                        str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()
                    )
                    raise ConfigurationError(
                        f"rule {index} ({rule.name!r}) with these options: {reasons}"
                    ) from None

    def decide(self, ds: Dataset, key: str, size: int) -> Rule:
        """The first rule that matches (the default one at the latest)."""
        return next(rule for rule in self.rule if rule.matches(ds, key, size))


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; ConfigurationError names the line and field."""
    return read_policy(path)[1]


def read_policy(path: Path) -> tuple[str, Policy]:
    """A policy file's text (what a batch stores) and its rules, read once."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the policy {path}: {exc}") from exc
    return text, parse_policy(text, str(path))


def parse_policy(text: str, where: str = "policy") -> Policy:
    """Parse a policy from TOML text (see the module's documentation)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{where}: not valid TOML: {exc}") from exc
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(_explain(exc, text, where)) from None


def _explain(exc: ValidationError, text: str, where: str) -> str:
    """Each error with the rule's name, its line and the field."""
    rules = [m.start() for m in re.finditer(r"^\s*\[\[rule\]\]", text, re.M)]
    parts = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        message = str(error["msg"]).removeprefix("Value error, ")
        line = None
        label = ".".join(loc) or "policy"
        if len(loc) >= 2 and loc[0] == "rule" and loc[1].isdigit() and int(loc[1]) < len(rules):
            index = int(loc[1])
            start = rules[index]
            end = rules[index + 1] if index + 1 < len(rules) else len(text)
            line = text.count("\n", 0, start) + 1
            field = next((part for part in loc[2:] if not part.isdigit()), "")
            block = text[start:end]
            named = re.search(r'^\s*name\s*=\s*"([^"]*)"', block, re.M)
            label = f"rule {index + 1}" + (f" ({named.group(1)!r})" if named else "")
            if field:
                found = re.search(rf'(^|[\s{{,"]){re.escape(field)}"?\s*=', block, re.M)
                if found:
                    line += block.count("\n", 0, found.end())
                label += f", field {'.'.join(loc[2:])}"
        elif loc == [] or loc[0] == "rule":
            label = "policy"
        parts.append(f"{where}{f':{line}' if line else ''}: {label}: {message}")
    return "; ".join(parts)
