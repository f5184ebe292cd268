"""The demo scenarios and the smoke check, run by amctl against a running stack (as CI does)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, amctl

pytestmark = pytest.mark.e2e


def test_smoke(running_stack: Stack) -> None:
    result = amctl(running_stack.env, "smoke")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke passed" in result.stdout


def test_all_demo_scenarios_pass_with_junit(running_stack: Stack, tmp_path: Path) -> None:
    junit = tmp_path / "out.xml"
    result = amctl(running_stack.env, "scenario", "run", "--all", "--junit", str(junit))
    assert result.returncode == 0, result.stdout + result.stderr
    suites = {s.get("name"): s for s in ET.parse(junit).getroot().iter("testsuite")}
    assert set(suites) == {"basic-segmentation", "rule-engine-testing", "communication-campaign",
                           "destination-delivery", "anonymous-to-known"}
    for name, suite in suites.items():
        assert suite.get("failures") == "0" and int(suite.get("tests", "0")) >= 8, name
        assert not list(suite.iter("skipped")), name


def test_a_failing_scenario_names_the_step(running_stack: Stack, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nsteps:\n  - name: expect a segment that is not there\n"
                      "    request: {path: /api/segments/00000000-0000-0000-0000-000000000000, status: 200}\n")
    result = amctl(running_stack.env, "scenario", "run", str(broken))
    assert result.returncode == 1
    assert "✗ expect a segment that is not there" in result.stdout and "expected status 200, got 404" in result.stdout
