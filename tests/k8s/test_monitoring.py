"""Monitoring: alert rules checked and unit-tested with promtool, the Prometheus config, and every
metric a dashboard or alert queries is one that is really exported (ours derived from the code)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

import flinkjob
import server
from amctl.k8s.dashboards import DATASOURCE, THIRD_PARTY_METRICS, dashboard_files
from amctl.k8s.render import Manifest
from amctl.prometheus import ALERTS_FILE
from server.communication_api.dispatch import Recipients
from server.delivery_worker.metrics import DeliveryMetrics
from server.ingestion_api.metrics import IngestionMetrics
from server.runtime.metrics import METRIC_NAMES, HttpMetrics
from tests.k8s.conftest import by_kind

pytestmark = pytest.mark.k8s
HERE = Path(__file__).parent
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, strings and durations removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return {m.group(0) for m in re.finditer(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr)} - PROMQL_WORDS


def exported_by_the_code() -> set[str]:
    """Every series name our processes expose: import every module (metrics register their names
    there), then expand histograms as Prometheus exposes them."""
    for package in (server, flinkjob):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    names: set[str] = set()
    for name in METRIC_NAMES:  # a counter ends in _total; any other name is a gauge's or a histogram's
        names |= {name} if name.endswith("_total") else {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def queries(rendered: list[Manifest]) -> dict[str, str]:
    """Where each query lives → its PromQL, for the dashboards as rendered and the alert rules."""
    found = {}
    for file, text in by_kind(rendered, "ConfigMap")["grafana-dashboards"]["data"].items():
        for panel in json.loads(text)["panels"]:
            for target in panel["targets"]:
                found[f"{file}: {panel['title']} ({target['refId']})"] = target["expr"]
    for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            found[f"alert {rule['alert']}"] = rule["expr"]
    return found


def _prometheus_config(rendered: list[Manifest]) -> dict[str, object]:
    return dict(yaml.safe_load(by_kind(rendered, "ConfigMap")["prometheus-config"]["data"]["prometheus.yml"]))


def test_the_metric_name_parser_finds_names_and_only_names() -> None:
    assert metric_names('sum by (service, le) (rate(am_x_bucket{route!~"/a|/b"}[5m])) / on (pod) up > 0.9') == {
        "am_x_bucket", "up"}
    assert metric_names("histogram_quantile(0.95, sum(rate(nope_total[1m])) by (le))") == {"nope_total"}


def test_metric_names_of_the_code_match_its_registries() -> None:
    registry = CollectorRegistry()
    HttpMetrics("probe", registry)
    IngestionMetrics(registry)
    Recipients(None, None, None, None, "email-jobs", registry)  # type: ignore[arg-type]  # only its counters
    metrics = DeliveryMetrics(registry)
    metrics.outcome("d1", "delivered")
    metrics.queue_depth.labels("d1").set(3)
    metrics.paused.labels("d1").set(0)
    exposed = {s.name for family in registry.collect() for s in family.samples if not s.name.endswith("_created")}
    assert exposed and exposed <= exported_by_the_code()


@pytest.mark.parametrize("profile", ["demo-8g", "prod"])
def test_every_queried_metric_is_exported(profile: str, rendered: dict[str, list[Manifest]]) -> None:
    ours = exported_by_the_code()
    config = _prometheus_config(rendered[profile])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}  # type: ignore[attr-defined]
    cadvisor_keep = next(r["regex"] for r in jobs["cadvisor"]["metric_relabel_configs"]
                         if r.get("source_labels") == ["__name__"])
    problems = []
    for where, expr in queries(rendered[profile]).items():
        for name in metric_names(expr):
            if name.startswith("am_"):
                if name not in ours:
                    problems.append(f"{where}: {name} is not exported by server/ or flinkjob/")
            elif THIRD_PARTY_METRICS.get(name) not in jobs:
                problems.append(f"{where}: {name} comes from no scrape job")
            elif THIRD_PARTY_METRICS[name] == "cadvisor" and not re.fullmatch(cadvisor_keep, name):
                problems.append(f"{where}: {name} is dropped by the cadvisor job's keep rule")
    assert not problems, "\n".join(problems)
    assert len(queries(rendered[profile])) > 25


def test_four_dashboards_use_the_provisioned_datasource(rendered: dict[str, list[Manifest]]) -> None:
    titles = {json.loads(text)["title"] for text in dashboard_files().values()}
    assert titles == {"System Overview", "API Performance", "Data Flow", "Business Metrics"}
    provisioning = by_kind(rendered["demo-8g"], "ConfigMap")["grafana-provisioning"]["data"]
    datasource = yaml.safe_load(provisioning["datasources.yaml"])["datasources"][0]
    assert datasource["uid"] == DATASOURCE.uid and datasource["url"] == "http://prometheus:9090"
    for text in dashboard_files().values():
        for panel in json.loads(text)["panels"]:
            assert panel["datasource"]["uid"] == DATASOURCE.uid and panel["targets"], panel["title"]


def test_prometheus_scrapes_services_flink_kube_metrics_and_exporters_where_they_fit(
        rendered: dict[str, list[Manifest]]) -> None:
    demo, prod = rendered["demo-8g"], rendered["prod"]
    assert {j["job_name"] for j in _prometheus_config(demo)["scrape_configs"]} == {  # type: ignore[attr-defined]
        "prometheus", "pods", "cadvisor", "kube-state-metrics"}
    scraped = {m["metadata"]["name"]: m["spec"]["template"]["metadata"].get("annotations", {})
               for m in demo if m["kind"] in ("Deployment", "StatefulSet")}
    for name in ("segment-api", "ingestion-api", "communication-api", "email-worker", "delivery-worker",
                 "rule-engine"):
        assert scraped[name]["prometheus.io/port"] == "8080"
    assert scraped["flink-jobmanager"]["prometheus.io/port"] == scraped["flink-taskmanager"]["prometheus.io/port"] \
        == "9249"
    assert "kafka-exporter" not in by_kind(demo, "Deployment") and "kafka-exporter" in by_kind(prod, "Deployment")
    aerospike = by_kind(prod, "StatefulSet")["aerospike"]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in aerospike] == ["aerospike", "aerospike-exporter"]
    ui = by_kind(demo, "Deployment")["kafka-ui"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS", "value": "kafka-bootstrap:9092"} in ui["env"]


def test_alert_rules_pass_promtool_check(promtool: str, rendered: dict[str, list[Manifest]]) -> None:
    rendered_rules = by_kind(rendered["demo-8g"], "ConfigMap")["prometheus-config"]["data"]["alerts.yml"]
    assert rendered_rules.strip() == ALERTS_FILE.read_text().strip()
    result = subprocess.run([promtool, "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_alert_rules_unit_tests_pass(promtool: str) -> None:
    result = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=HERE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_catch_a_wrong_threshold(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "alerts.yml").write_text(ALERTS_FILE.read_text().replace("> 0.9", "> 0.99"))
    tests = yaml.safe_load((HERE / "alerts_test.yml").read_text())
    tests["rule_files"] = ["alerts.yml"]
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode != 0 and "HighMemoryUsage" in result.stdout + result.stderr


@pytest.mark.parametrize("profile", ["demo-8g", "prod"])
def test_rendered_prometheus_config_passes_promtool(promtool: str, profile: str,
                                                    rendered: dict[str, list[Manifest]], tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes service discovery, so each `kubernetes_sd_configs`
    becomes a static target here; relabelling, TLS, auth and rule files are checked as rendered."""
    data = by_kind(rendered[profile], "ConfigMap")["prometheus-config"]["data"]
    (tmp_path / "alerts.yml").write_text(data["alerts.yml"])
    config = yaml.safe_load(data["prometheus.yml"])
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    discovered = [job for job in config["scrape_configs"] if job.pop("kubernetes_sd_configs", None)]
    assert {job["job_name"] for job in discovered} == {"pods", "cadvisor"}
    for job in discovered:
        job["static_configs"] = [{"targets": ["discovered:80"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", "--syntax-only", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
