"""Every YAML file of deploy/ passes yamllint, warnings included."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.deploy.files import DEPLOY

# yamllint's defaults, with our line length (ruff's) and no "---" required at the top
# (Compose and kustomize files do not start with one)
YAMLLINT_CONFIG = {
    "extends": "default",
    "rules": {
        "line-length": {"max": 100},
        "document-start": "disable",
        "truthy": {"check-keys": True},
    },
}


def test_every_yaml_file_passes_yamllint() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 15
    proc = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "--format", "parsable",
         "--config-data", json.dumps(YAMLLINT_CONFIG), *map(str, files)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
