"""Reading deploy/ as the tools would: the Dockerfile's instructions, the compose file
with its .env interpolated, the kustomizations rendered by ``kubectl kustomize``.

Nothing here talks to a container engine, a cluster or the network.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATIONS = [
    KUBERNETES / "base",
    *sorted(path for path in (KUBERNETES / "overlays").iterdir() if path.is_dir()),
]
IMAGE_NAME = "dcmpress"  # the name the manifests give the image before overlays rename it


# ---- Dockerfile ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, else None."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1] if " CMD " in f" {text}" else ""
        text = text.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        return [str(part) for part in value]


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of a Dockerfile, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split())))
    return instructions


# ---- compose ------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    """The variables of deploy/.env.example, as Compose reads a .env file."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example: not NAME=VALUE: {line!r}"
        values[name.strip()] = value.strip()
    return values


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}")


def compose_variables(text: str) -> dict[str, str | None]:
    """Every ``${NAME...}`` the compose file interpolates, with its default if any."""
    found: dict[str, str | None] = {}
    for match in _VARIABLE.finditer(text):
        if match.group("name"):
            op = match.group("op") or ""
            found[match.group("name")] = match.group("arg") if op.endswith("-") else None
    return found


def interpolate(text: str, environment: dict[str, str]) -> str:
    """Compose's interpolation: ``${X}``, ``${X:-default}``, ``${X:?error}``, ``$$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op") or "", match.group("arg")
        value = environment.get(name)
        if op.endswith("?") and not value:
            raise KeyError(f"{name}: {arg}")
        if op.endswith("-") and not value:
            return arg
        return value or ""

    return _VARIABLE.sub(replace, text)


def load_compose(interpolated: bool = True) -> dict[str, Any]:
    """compose.yaml as Compose sees it with .env.example as its .env (anchors merged)."""
    text = COMPOSE.read_text()
    if interpolated:
        text = interpolate(text, env_example())
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def uses_our_image(service: dict[str, Any]) -> bool:
    """Whether a compose service runs the dcmpress image."""
    return str(service.get("image", "")).split(":")[0].endswith(IMAGE_NAME)


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (compose allows a list of NAME=VALUE)."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {str(name): str(value) for name, value in environment.items()}


def duration_seconds(text: str) -> float:
    """A Compose duration (``36m``, ``1h30m``, ``90s``, ``2160``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)?", text.strip())
    assert parts and "".join(number + unit for number, unit in parts) == text.strip(), text
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


# ---- Kubernetes ---------------------------------------------------------------------


def kubectl() -> str:
    """Path of kubectl (it embeds kustomize), or skip the test with the reason."""
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: the kustomizations cannot be rendered here")
    return path


@functools.cache
def _render(directory: Path, executable: str) -> tuple[dict[str, Any], ...]:
    proc = subprocess.run(
        [executable, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory}: {proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize DIRECTORY`` prints (rendered once per session)."""
    return [json.loads(json.dumps(doc)) for doc in _render(directory, kubectl())]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of one kind."""
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of that kind and name."""
    matches = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) of every Deployment and StatefulSet."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def our_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, container) of every container that runs the dcmpress image."""
    for workload, spec in pod_specs(docs):
        for container in spec["containers"] + spec.get("initContainers", []):
            if container["image"].split("/")[-1].split(":")[0] == IMAGE_NAME:
                yield workload, container


def config_map_data(docs: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    """Data of the ConfigMap whose (hashed) name starts with ``prefix``."""
    maps = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].startswith(prefix)]
    assert len(maps) == 1, prefix
    return dict(maps[0].get("data") or {})
