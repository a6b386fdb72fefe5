"""Compression flags generated from :class:`~worker.codec.options.CompressionOptions`.

One source for every option: its name, type, default, help and ``DCMPRESS_*`` variable
are the model's field; ``compress``, ``enqueue`` and ``listen`` all take the same flags
through :func:`compression_flags`, so a new option cannot be forgotten by one of them.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from dcmpress.console import fail, validation_message
from worker.codec.options import CompressionOptions, EngineSettings
from worker.codec.targets import resolve_plugin
from worker.errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])

# Flag spellings that differ from the field name (``--jls-error`` for ``jls_error``).
FLAG_NAMES: dict[str, str] = {
    "encoding_plugin": "--plugin",
    "generate_instance_uid": "--new-uid/--keep-uid",
    "plugin_options": "--plugin-option",
}
PANEL = "Compression (also DCMPRESS_* variables; flags win)"


@dataclass(frozen=True)
class Flag:
    """One command-line flag for one CompressionOptions field."""

    field: str
    decls: tuple[str, ...]
    annotation: Any  # what typer parses
    help: str
    to_value: Callable[[Any], Any]  # parsed flag -> model value

    def parameter(self) -> inspect.Parameter:
        """The keyword-only parameter typer reads the flag from."""
        option = typer.Option(*self.decls, help=self.help, rich_help_panel=PANEL)
        return inspect.Parameter(
            self.field,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[self.annotation, option],
        )


def _flag(name: str, info: FieldInfo) -> Flag:
    annotation = info.annotation
    optional = _without_none(annotation)
    dashed = "--" + name.replace("_", "-")
    decl = FLAG_NAMES.get(name, dashed)
    env = f"DCMPRESS_{name.upper()}"
    help_text = f"{info.description or ''} [{env}]".strip()
    if optional is bool:
        decl = FLAG_NAMES.get(name, f"{dashed}/--no-{dashed[2:]}")
        return Flag(name, (decl,), bool | None, help_text, bool)
    if get_origin(optional) is Literal:
        return Flag(name, (decl,), optional | None, help_text, str)
    if optional in (int, float):
        return Flag(name, (decl,), optional | None, help_text, optional)
    if get_origin(optional) is list:
        # comma-separated, as in the environment: --target j2k,rle
        return Flag(name, (decl,), str | None, help_text, str)
    if get_origin(optional) is dict:
        return Flag(name, (decl,), list[str] | None, help_text + " KEY=VALUE, repeatable.",
                    _key_values)  # fmt: skip
    raise TypeError(f"no flag kind for option {name!r} of type {annotation!r}")


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _key_values(items: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise fail(f"--plugin-option {item!r}: expected KEY=VALUE")
        try:
            parsed[key] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[key] = raw
    return parsed


FLAGS: tuple[Flag, ...] = tuple(
    _flag(name, info) for name, info in CompressionOptions.model_fields.items()
)


def build_options(given: dict[str, Any]) -> CompressionOptions:
    """Environment settings (``DCMPRESS_*``) overlaid with the flags actually given.

    A missing plugin fails here, before any work, naming the package to install.
    """
    try:
        base = EngineSettings().compression_options()
        options = CompressionOptions.model_validate({**base.model_dump(), **given})
        for target in options.targets():
            resolve_plugin(target, options.plugin_for(target))
    except ValidationError as exc:
        raise fail(validation_message(exc)) from None
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    return options


def compression_flags(command: F) -> F:
    """Give ``command`` every compression flag; it receives ``options=`` built from them.

    ``command`` declares ``options: CompressionOptions``; typer sees the flags instead.
    """
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "options"]
    generated = [flag.parameter() for flag in FLAGS]

    def run(**kwargs: Any) -> Any:
        given = {}
        for flag in FLAGS:
            value = kwargs.pop(flag.field)
            if value is not None:
                given[flag.field] = flag.to_value(value)
        return command(options=build_options(given), **kwargs)

    run.__name__, run.__doc__ = command.__name__, command.__doc__
    run.__module__, run.__qualname__ = command.__module__, command.__qualname__
    parameters = [*kept, *generated]
    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run  # type: ignore[return-value]
