"""The "Deploying" page of the docs: where it stands, and that what it says is so."""

from __future__ import annotations

import re

import yaml

from tests import docs
from tests.deploy.files import DEPLOY, ROOT, duration_seconds, env_example


def _section() -> str:
    return docs.section("Deploying")


def test_deploying_comes_immediately_before_development() -> None:
    titles = docs.nav_titles()
    assert titles.index("Deploy") + 1 == titles.index("Development")
    assert docs.where("Deploying") == docs.DOCS / "deploy.md"


def test_every_deploy_path_the_docs_name_exists() -> None:
    named = set(re.findall(r"`(deploy/[\w./-]+)`", docs.everything()))
    assert len(named) >= 6
    for path in named:
        assert (ROOT / path).exists(), path
    for path in re.findall(r"`\.\.\./(overlays/\w+)`", _section()):
        assert (DEPLOY / "kubernetes" / path).is_dir(), path


def test_deploy_is_drawn_in_the_docs_layout() -> None:
    layout = docs.holding("<!-- layout -->").split("<!-- layout -->", 1)[1].split("```", 2)[1]
    lines = layout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("deploy/")))
    drawn = {line.split()[0] for line in lines[start + 1 :] if line.startswith("  ")}
    assert drawn == {"Dockerfile", "compose.yaml", "kubernetes/", "grafana/", "prometheus/"}
    for name in drawn:
        assert (DEPLOY / name.rstrip("/")).exists(), name


def test_the_numbers_the_section_quotes_are_the_files_numbers() -> None:
    section = _section()
    worker = next(
        doc
        for doc in yaml.safe_load_all((DEPLOY / "kubernetes/base/worker.yaml").read_text())
        if doc["kind"] == "Deployment"
    )
    pod = worker["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    assert f"`terminationGracePeriodSeconds` ({grace} s)" in section
    memory = pod["containers"][0]["resources"]["limits"]["memory"]
    assert f"= {memory}" in section
    minutes = duration_seconds(env_example()["WORKER_STOP_GRACE_PERIOD"]) / 60
    assert f"`WORKER_STOP_GRACE_PERIOD` ({minutes:.0f} min)" in section
