"""`amctl up`, `down` and `smoke` with --target k8s and --json, against kmock's API emulator: the typed
results of the k8s Platform as JSON on stdout, progress and errors on stderr."""

from __future__ import annotations

import json

import pytest

from tests.k8s.conftest import FakeCluster
from tests.k8s.test_apply import NAMESPACE, amctl

pytestmark = [pytest.mark.k8s, pytest.mark.asyncio]


async def test_up_and_down_answer_json(fake_cluster: FakeCluster) -> None:
    up = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30", "--json")
    assert up.exit_code == 0, up.output
    result = json.loads(up.stdout)
    assert result["platform"] == "k8s, demo-8g" and result["where"] == f"namespace {NAMESPACE}"
    assert result["started"] == ["platform", "migrations", "services", "rule-job"]
    endpoints = {e["name"]: e["address"] for e in result["endpoints"]}
    assert endpoints["Segment API"] == "http://127.0.0.1:30081/docs" and "Grafana" in endpoints
    assert "✓ services" in up.stderr  # the progress still goes to stderr
    down = await amctl(fake_cluster, "down", "--target", "k8s", "--timeout", "10", "--json")
    assert down.exit_code == 0, down.output
    assert json.loads(down.stdout) == {"stopped": [f"Namespace/{NAMESPACE}"],
                                       "summary": f"deleted namespace {NAMESPACE}"}


async def test_smoke_answers_json_and_still_fails_in_one_line(fake_cluster: FakeCluster) -> None:
    assert (await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")).exit_code == 0
    result = await amctl(fake_cluster, "smoke", "--target", "k8s", "--json",
                         env={"AMCTL_PORT_SEGMENT_API": "1", "AMCTL_API_KEY": None})  # no Segment API there
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["passed"] is False and report["scenario"]["passed"] is False
    assert {row["state"] for row in report["components"]} == {"running"}
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        "error: the basic scenario failed (see the step above)"]
