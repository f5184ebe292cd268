"""The codebase stays ruff- and mypy --strict-clean (configuration in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from amctl.paths import REPO_ROOT as ROOT

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("tool", [["ruff", "check", "amctl", "server", "flinkjob", "tests"], ["mypy"]])
def test_static_checks_pass(tool: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", *tool], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
