"""The whole Kubernetes target on a real cluster (Rancher Desktop): opt in with AMCTL_LIVE_K8S=1.

Needs the images built first (`amctl images build`) and the kube context `rancher-desktop`
(or AMCTL_K8S_CONTEXT). Runs amctl as a user would, as a separate process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = [
    pytest.mark.k8s,
    pytest.mark.live,
    pytest.mark.skipif(os.environ.get("AMCTL_LIVE_K8S") != "1", reason="live cluster tests: set AMCTL_LIVE_K8S=1"),
    pytest.mark.timeout(1800),
]


def amctl(*args: str, timeout_s: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amctl", *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def deployed() -> Iterator[subprocess.CompletedProcess[str]]:
    up = amctl("up", "--target", "k8s")
    try:
        yield up
    finally:
        amctl("down", "--target", "k8s")


def test_up_gets_every_workload_ready(deployed: subprocess.CompletedProcess[str]) -> None:
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "http://127.0.0.1:30081/docs" in deployed.stdout


def test_smoke_passes_on_the_cluster(deployed: subprocess.CompletedProcess[str]) -> None:
    assert deployed.returncode == 0
    smoke = amctl("smoke", "--target", "k8s", timeout_s=600)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "smoke passed" in smoke.stdout


def test_down_removes_the_namespace(deployed: subprocess.CompletedProcess[str]) -> None:
    assert deployed.returncode == 0
    down = amctl("down", "--target", "k8s")
    assert down.returncode == 0, down.stdout + down.stderr
    status = amctl("status", "--target", "k8s", "--json")
    assert status.returncode == 1 and '"state": "not created"' in status.stdout
