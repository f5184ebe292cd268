"""The local Prometheus (`amctl up --with-monitoring`): its config is the Kubernetes target's, with only
the target addresses changed, it passes promtool, and a missing binary stops `up` before anything starts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from amctl.cli import app
from amctl.k8s.profile import available_profiles, load_profile
from amctl.k8s.render import Manifest, render
from amctl.local import processes
from amctl.local.options import StackOptions
from amctl.local.stack import LocalStack
from amctl.prometheus import ALERTS_FILE, KUBERNETES_ONLY_JOBS
from amctl.settings import AmctlSettings, Ports

pytestmark = pytest.mark.unit
runner = CliRunner()
# how each side finds its targets; everything else in a job must be the same on both targets
DISCOVERY_KEYS = {"static_configs", "kubernetes_sd_configs", "relabel_configs"}


def local_config(state_dir: Path) -> dict[str, Any]:
    """The prometheus.yml `amctl up --with-monitoring` writes, for a stack on free ports."""
    ports = Ports(**{name: processes.free_port() for name in Ports.model_fields})
    stack = LocalStack(AmctlSettings(state_dir=state_dir, ports=ports), options=StackOptions(monitoring=True))
    prepare = stack.component("prometheus").prepare
    assert prepare is not None
    prepare()
    return dict(yaml.safe_load(stack.prometheus.config_path.read_text()))


def prometheus_configmap(manifests: list[Manifest]) -> dict[str, str]:
    return next(m for m in manifests if m["kind"] == "ConfigMap"
                and m["metadata"]["name"] == "prometheus-config")["data"]


def scrape_annotations(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    """Workload name → its pods' prometheus.io annotations, for every workload Prometheus scrapes."""
    found = {}
    for m in manifests:
        if m["kind"] in ("Deployment", "StatefulSet"):
            annotations = m["spec"]["template"]["metadata"].get("annotations") or {}
            if annotations.get("prometheus.io/scrape") == "true":
                found[m["metadata"]["name"]] = annotations
    return found


def test_the_local_config_passes_promtool_with_the_alert_rules(promtool: str, tmp_path: Path) -> None:
    local_config(tmp_path)
    config = tmp_path / "prometheus" / "prometheus.yml"
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {config} is valid prometheus config file syntax" in result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout + result.stderr


@pytest.mark.parametrize("profile", available_profiles())
def test_local_and_kubernetes_configs_share_jobs_paths_and_rules(profile: str, tmp_path: Path) -> None:
    manifests = render(load_profile(profile))
    data = prometheus_configmap(manifests)
    k8s, local = yaml.safe_load(data["prometheus.yml"]), local_config(tmp_path)

    assert local["global"] == k8s["global"]
    assert k8s["rule_files"] == ["/etc/prometheus/alerts.yml"]  # the ConfigMap's alerts.yml, mounted there
    assert [Path(f) for f in local["rule_files"]] == [ALERTS_FILE]
    assert Path(local["rule_files"][0]).read_text().strip() == data["alerts.yml"].strip()

    k8s_jobs = {job["job_name"]: job for job in k8s["scrape_configs"]}
    local_jobs = {job["job_name"]: job for job in local["scrape_configs"]}
    assert set(local_jobs) == set(k8s_jobs) - KUBERNETES_ONLY_JOBS == {"prometheus", "pods"}
    for name, job in local_jobs.items():
        shared = {k: v for k, v in job.items() if k not in DISCOVERY_KEYS}
        assert shared == {k: v for k, v in k8s_jobs[name].items() if k not in DISCOVERY_KEYS}, name

    # every process that runs on both targets is scraped on both, on the same metrics path
    local_targets = {group["labels"]["component"]: group["labels"]["__metrics_path__"]
                     for group in local_jobs["pods"]["static_configs"]}
    annotated = scrape_annotations(manifests)
    local_components = {c.name for c in LocalStack(AmctlSettings(state_dir=tmp_path)).components()}
    assert set(local_targets) == set(annotated) & local_components == {
        "segment-api", "ingestion-api", "communication-api", "email-worker", "delivery-worker", "rule-engine"}
    for component, path in local_targets.items():
        assert annotated[component]["prometheus.io/path"] == path, component


def test_up_without_the_prometheus_binary_starts_nothing_and_remembers_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AMCTL_PROMETHEUS_BINARY", str(tmp_path / "no-prometheus"))
    for name in Ports.model_fields:  # should anything start after all, it must not meet a running demo
        monkeypatch.setenv(f"AMCTL_PORT_{name.upper()}", str(processes.free_port()))
    result = runner.invoke(app, ["up", "--with-monitoring"])
    assert result.exit_code == 1
    assert "sudo apt-get install -y --no-install-recommends prometheus" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "state" / "run").exists()
    assert StackOptions.load(tmp_path / "state") == StackOptions()


def test_status_lists_prometheus_when_monitoring_was_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMCTL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("AMCTL_PORT_PROMETHEUS", "31090")
    assert "prometheus" not in {row["name"] for row in json.loads(runner.invoke(app, ["status", "--json"]).stdout)}
    StackOptions(monitoring=True).save(tmp_path)
    rows = {row["name"]: row for row in json.loads(runner.invoke(app, ["status", "--json"]).stdout)}
    assert rows["prometheus"]["state"] == "stopped" and rows["prometheus"]["port"] == 31090
