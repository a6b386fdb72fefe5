"""Every command the image, compose and the manifests run exists, with the options
they pass, and every DCMPRESS_* variable they set is one dcmpress reads."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from typing import Any

import flower.options  # noqa: F401 - defines Flower's options in tornado's registry
import pytest
import typer.main
from celery.bin.celery import celery as celery_cli
from pydantic_settings import BaseSettings
from tornado.options import options as tornado_options
from typer.testing import CliRunner

from dcmpress.cli import app as dcmpress_app
from tests import docs
from tests.deploy.files import (
    DOCKERFILE,
    KUSTOMIZATIONS,
    compose_environment,
    config_map_data,
    dockerfile_instructions,
    env_example,
    load_compose,
    our_containers,
    render,
    uses_our_image,
)
from worker.codec.options import EngineSettings
from worker.settings import WorkerSettings

DOCUMENTED = docs.everything()
HEALTHCHECK_SCRIPT = "/opt/dcmpress/healthcheck.py"


def _dockerfile_commands() -> Iterator[tuple[str, list[str]]]:
    for instruction in dockerfile_instructions():
        if instruction.keyword in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
            argv = instruction.exec_form()
            assert argv, f"{instruction.keyword} is not in exec form"
            yield f"Dockerfile {instruction.keyword}", argv


def _compose_commands() -> Iterator[tuple[str, list[str]]]:
    for name, service in load_compose()["services"].items():
        if not uses_our_image(service):
            continue
        if "command" in service:
            assert isinstance(service["command"], list), f"{name}: command must be a list"
            yield f"compose {name}", [str(part) for part in service["command"]]
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"{name}: healthcheck in exec form"
            yield f"compose {name} healthcheck", [str(part) for part in test[1:]]


def _kubernetes_commands() -> Iterator[tuple[str, list[str]]]:
    for directory in KUSTOMIZATIONS:
        for workload, container in our_containers(render(directory)):
            where = f"{directory.name} {workload}"
            yield where, [*container.get("command", []), *container.get("args", [])]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                command = container.get(probe, {}).get("exec", {}).get("command")
                if command:
                    yield f"{where} {probe}", command


def _all_commands() -> list[tuple[str, list[str]]]:
    return [*_dockerfile_commands(), *_compose_commands(), *_kubernetes_commands()]


def _option_names(command: Any) -> set[str]:
    """Option spellings of a click command (Typer's vendored click or Celery's)."""
    return {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}


def _options_in(argv: list[str]) -> list[str]:
    return [token.split("=", 1)[0] for token in argv if token.startswith("-")]


def _check_dcmpress(argv: list[str]) -> None:
    group: Any = typer.main.get_command(dcmpress_app)
    subcommand = argv[1]
    assert subcommand in group.commands, f"dcmpress has no command {subcommand!r}"
    known = _option_names(group.commands[subcommand]) | {"--help"}
    unknown = set(_options_in(argv[2:])) - known
    assert not unknown, f"dcmpress {subcommand} has no option {sorted(unknown)}"
    result = CliRunner().invoke(dcmpress_app, [subcommand, "--help"])
    assert result.exit_code == 0, result.output


def _check_celery(argv: list[str]) -> None:
    assert argv[1:3] == ["-A", "worker"], f"not the dcmpress app: {argv}"
    subcommand = argv[3]
    assert f"celery -A worker {subcommand}" in DOCUMENTED, f"the docs do not show {argv[:4]}"
    options = _options_in(argv[4:])
    if subcommand == "flower":  # Flower parses its own (tornado) options
        unknown = {o for o in options if o.lstrip("-").replace("_", "-") not in tornado_options}
    else:
        assert subcommand in celery_cli.commands, subcommand
        unknown = set(options) - _option_names(celery_cli.commands[subcommand])
    assert not unknown, f"celery {subcommand} has no option {sorted(unknown)}"


def test_the_dcmpress_console_script_is_the_typer_app() -> None:
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="dcmpress")
    assert script.value == "dcmpress.cli:main"


def test_every_command_run_is_a_dcmpress_subcommand_or_a_documented_celery_command() -> None:
    commands = _all_commands()
    assert len(commands) >= 10
    copied = {
        i.arguments.split()[-1]
        for i in dockerfile_instructions()
        if i.keyword == "COPY" and "healthcheck.py" in i.arguments
    }
    for where, argv in commands:
        if argv[0] == "dcmpress":
            _check_dcmpress(argv)
        elif argv[0] == "celery":
            _check_celery(argv)
        elif argv[0] == "python" and argv[1:] == [HEALTHCHECK_SCRIPT]:
            assert HEALTHCHECK_SCRIPT in copied, f"{where}: the image lacks {HEALTHCHECK_SCRIPT}"
        else:
            pytest.fail(f"{where} runs {argv}: neither dcmpress nor celery -A worker")


def test_the_options_check_catches_a_mistyped_option() -> None:
    with pytest.raises(AssertionError, match="--destination"):
        _check_dcmpress(["dcmpress", "listen", "--destination", "s3://x/"])
    with pytest.raises(AssertionError, match="--basic_auht"):
        _check_celery(["celery", "-A", "worker", "flower", "--basic_auht=a:b"])
    with pytest.raises(AssertionError, match="--concurency"):
        _check_celery(["celery", "-A", "worker", "worker", "--concurency", "2"])


def _settings_variables() -> set[str]:
    """DCMPRESS_* names the settings classes read, from their own fields and prefix."""
    names: set[str] = set()
    settings_classes: list[type[BaseSettings]] = [EngineSettings, WorkerSettings]
    for cls in settings_classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            names.add(
                str(alias).upper() if isinstance(alias, str) else f"{prefix}{field_name}".upper()
            )
    return names


def _cli_variables() -> set[str]:
    """Environment variables the dcmpress commands read for their options."""
    group: Any = typer.main.get_command(dcmpress_app)
    names: set[str] = set()
    for command in group.commands.values():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else list(envvar or []))
    return names


def _variables_set() -> Iterator[tuple[str, str, str | None]]:
    """(where, NAME, literal value or None) of every variable deploy/ sets for dcmpress."""
    for instruction in dockerfile_instructions(DOCKERFILE):
        if instruction.keyword == "ENV":
            for pair in instruction.arguments.split():
                name, _, value = pair.partition("=")
                yield "Dockerfile", name, value
    for name, value in env_example().items():
        yield ".env.example", name, value
    for service_name, service in load_compose()["services"].items():
        if uses_our_image(service):
            for name, value in compose_environment(service).items():
                yield f"compose {service_name}", name, value
    for directory in KUSTOMIZATIONS:
        docs = render(directory)
        for workload, container in our_containers(docs):
            where = f"{directory.name} {workload}"
            for item in container.get("env", []):
                yield where, item["name"], item.get("value")
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    data = config_map_data(docs, source["configMapRef"]["name"])
                    for name, value in data.items():
                        yield where, name, value


def test_every_dcmpress_variable_set_is_read_by_dcmpress() -> None:
    known = _settings_variables() | _cli_variables()
    assert "DCMPRESS_TASK_TIME_LIMIT" in known and "DCMPRESS_WEBHOOK_TOKEN" in known
    seen = 0
    for where, name, _ in _variables_set():
        if name.startswith("DCMPRESS_"):
            seen += 1
            assert name in known, f"{where}: {name} is not a dcmpress setting"
    assert seen >= 20


def test_every_value_set_is_accepted_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    by_place: dict[str, dict[str, str]] = {}
    for where, name, value in _variables_set():
        settings_names = _settings_variables()
        if name in settings_names and value is not None:
            by_place.setdefault(where.split(" healthcheck")[0], {})[name] = value
    assert by_place
    for where, values in by_place.items():
        with monkeypatch.context() as patched:
            for name, value in values.items():
                patched.setenv(name, value)
            try:
                WorkerSettings()
                EngineSettings()
            except Exception as exc:  # pydantic's ValidationError names the field
                pytest.fail(f"{where}: {exc}")


def test_every_flower_variable_set_is_a_flower_option() -> None:
    places: list[Any] = [*load_compose()["services"].values()]
    names = {name for service in places for name in compose_environment(service)}
    for directory in KUSTOMIZATIONS:
        for _, container in our_containers(render(directory)):
            names |= {item["name"] for item in container.get("env", [])}
    flower_names = {name for name in names if name.startswith("FLOWER_")}
    assert flower_names
    for name in flower_names:
        option = name.removeprefix("FLOWER_").lower().replace("_", "-")
        assert option in tornado_options, name
