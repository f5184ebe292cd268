"""NetworkPolicies: who may connect to which pod and port, evaluated as Kubernetes does, against what
the code and the rendered manifests say each workload needs (never against a copy of the template)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml

from amctl.k8s.profile import available_profiles, load_profile
from amctl.k8s.render import Manifest
from tests.k8s.conftest import by_kind, containers_of
from tests.k8s.sources import REPO_ROOT, flinkjob_imports, module_files, stores_used

pytestmark = pytest.mark.k8s
ANYWHERE = "anywhere"
Admitted = set[str] | str  # workload names, or ANYWHERE
PROFILES = available_profiles()


def pod_labels(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    """Workload name → the labels of its pods."""
    return {m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"]
            for m in manifests if m["kind"] in ("Deployment", "StatefulSet", "Job")}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against a pod's labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        ok = {"In": present and labels.get(key) in values, "NotIn": not present or labels[key] not in values,
              "Exists": present, "DoesNotExist": not present}[operator]
        if not ok:
            return False
    return True


def _container_ports(workload: Manifest) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", []) if "name" in p}


def admitted(manifests: list[Manifest], pod: str, port: int) -> Admitted:
    """Who may open a TCP connection to `pod`'s pods on `port`, as the NetworkPolicy API defines it."""
    labels, workloads = pod_labels(manifests), {m["metadata"]["name"]: m for m in manifests
                                                if m["kind"] in ("Deployment", "StatefulSet", "Job")}
    named = _container_ports(workloads[pod])
    policies = [n["spec"] for n in by_kind(manifests, "NetworkPolicy").values()
                if "Ingress" in n["spec"].get("policyTypes", ["Ingress"]) and selects(n["spec"]["podSelector"],
                                                                                      labels[pod])]
    if not policies:
        return ANYWHERE  # a pod no policy selects is not isolated
    sources: set[str] = set()
    for policy in policies:
        for rule in policy.get("ingress") or []:
            ports = [named.get(p["port"], p["port"]) if isinstance(p.get("port"), str) else p.get("port")
                     for p in rule.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
            if rule.get("ports") and port not in ports:
                continue
            if not rule.get("from"):
                return ANYWHERE
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"peers are pods of this namespace only: {peer}"
                sources |= {name for name, other in labels.items() if selects(peer["podSelector"], other)}
    return sources


def target(manifests: list[Manifest], service: str, port: int) -> tuple[str, int]:
    """The workload and container port behind `service:port`."""
    spec = by_kind(manifests, "Service")[service]["spec"]
    selector = {"matchLabels": spec["selector"]}
    pod = next(name for name, labels in pod_labels(manifests).items() if selects(selector, labels))
    wanted = next(p for p in spec["ports"] if p["port"] == port).get("targetPort", port)
    if isinstance(wanted, str):  # a named port
        workload = next(m for m in manifests if m["metadata"]["name"] == pod and m["kind"] != "Service")
        return pod, _container_ports(workload)[wanted]
    return pod, int(wanted)


def egress_isolated(manifests: list[Manifest]) -> set[str]:
    """The workloads whose outgoing connections some policy limits."""
    labels = pod_labels(manifests)
    return {name for name, pod in labels.items() for n in by_kind(manifests, "NetworkPolicy").values()
            if "Egress" in n["spec"].get("policyTypes", []) and selects(n["spec"]["podSelector"], pod)}


def egress_allows(manifests: list[Manifest], pod: str, to: str, port: int, protocol: str = "TCP") -> bool:
    """Whether `pod`'s pods may connect to `to` (a workload of the namespace, or an IP address) on `port`."""
    labels = pod_labels(manifests)
    policies = [n["spec"] for n in by_kind(manifests, "NetworkPolicy").values()
                if "Egress" in n["spec"].get("policyTypes", []) and selects(n["spec"]["podSelector"], labels[pod])]
    if not policies:
        return True
    for policy in policies:
        for rule in policy.get("egress") or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports):
                continue
            for peer in rule.get("to") or [{}]:
                if not peer:
                    return True  # no `to`: any destination
                if "podSelector" in peer and to in labels and selects(peer["podSelector"], labels[to]):
                    return True
                if "ipBlock" in peer and to not in labels:
                    address = ipaddress.ip_address(to)
                    block = peer["ipBlock"]
                    inside = address.version == ipaddress.ip_network(block["cidr"]).version and \
                        address in ipaddress.ip_network(block["cidr"])
                    if inside and not any(address in ipaddress.ip_network(e) for e in block.get("except", [])
                                          if ipaddress.ip_network(e).version == address.version):
                        return True
    return False


# -- what the code says each process talks to ------------------------------------------------------


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def store_addresses(manifests: list[Manifest]) -> dict[str, tuple[str, int]]:
    """Where our processes are told each store is (their AM_* settings): store → (service, port)."""
    env = next(_env(c) for _, c in containers_of(manifests) if c["name"] == "segment-api")
    database = dict(pair.split("=", 1) for pair in env["AM_DATABASE_URL"].split())
    kafka_host, kafka_port = env["AM_KAFKA_BOOTSTRAP"].split(",")[0].rsplit(":", 1)
    aerospike_host, aerospike_port = env["AM_AEROSPIKE_HOSTS"].split(",")[0].rsplit(":", 1)
    return {"postgres": (database["host"], int(database["port"])), "kafka": (kafka_host, int(kafka_port)),
            "aerospike": (aerospike_host, int(aerospike_port)), "smtp": (env["AM_SMTP_HOST"], int(env["AM_SMTP_PORT"]))}


def expected_clients(manifests: list[Manifest], profile: str, store: str) -> set[str]:
    """Every workload that talks to `store`: our processes by their code, the Flink cluster by the job
    graph it runs, third-party containers by the address in their configuration, a cluster by itself."""
    host, port = store_addresses(manifests)[store]
    flink_image = load_profile(profile).images.flink
    job_stores = stores_used(flinkjob_imports(REPO_ROOT / "flinkjob" / "job.py"))
    clients = set()
    for workload, container in containers_of(manifests):
        command = container.get("command", [])
        if "-m" in command:
            uses = store in stores_used(module_files(command[command.index("-m") + 1]))
        elif container["image"] == flink_image:
            uses = store in job_stores
        else:
            settings = [*_env(container).values(), *container.get("args", []), *command]
            uses = any(f"{host}:{port}" in text for text in settings)
        if uses:
            clients.add(workload["metadata"]["name"])
    server, _ = target(manifests, host, port)
    headless = [s for s in by_kind(manifests, "Service").values() if s["spec"].get("clusterIP") == "None"
                and selects({"matchLabels": s["spec"]["selector"]}, pod_labels(manifests)[server])]
    return clients | ({server} if headless else set())


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_ingress_is_denied_unless_a_policy_allows_it(profile: str, rendered: dict[str, list[Manifest]]) -> None:
    policies = by_kind(rendered[profile], "NetworkPolicy").values()
    deny_all = [p for p in policies if p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
                and not p["spec"].get("ingress")]
    assert deny_all, "no default-deny ingress policy"
    names = [m["metadata"]["name"] for m in rendered[profile]]
    assert names.index(deny_all[0]["metadata"]["name"]) < min(
        names.index(w) for w in pod_labels(rendered[profile]))  # applied before any workload


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("store", ["postgres", "kafka", "aerospike", "smtp"])
def test_each_store_admits_exactly_the_workloads_that_use_it(profile: str, store: str,
                                                             rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[profile]
    host, port = store_addresses(manifests)[store]
    server, container_port = target(manifests, host, port)
    expected = expected_clients(manifests, profile, store)
    assert expected, f"nothing uses {store}: the derivation is broken"
    assert admitted(manifests, server, container_port) == expected


@pytest.mark.parametrize("profile", PROFILES)
def test_only_the_apis_and_uis_behind_node_ports_are_open_to_anyone(profile: str,
                                                                     rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[profile]
    stores = {target(manifests, host, port)[0] for host, port in store_addresses(manifests).values()}
    exposed = set()
    for service in by_kind(manifests, "Service").values():
        for entry in service["spec"]["ports"]:
            if "nodePort" in entry:
                pod, port = target(manifests, service["metadata"]["name"], entry["port"])
                if pod not in stores:
                    exposed.add((pod, port))
    assert {"segment-api", "ingestion-api", "communication-api", "rule-engine", "flink-jobmanager", "grafana",
            "prometheus", "kafka-ui"} <= {pod for pod, _ in exposed}
    for name, workload in {m["metadata"]["name"]: m for m in manifests
                           if m["kind"] in ("Deployment", "StatefulSet", "Job")}.items():
        for port in _container_ports(workload).values():
            is_open = admitted(manifests, name, port) == ANYWHERE
            assert is_open == ((name, port) in exposed), f"{name}:{port} open={is_open}"


@pytest.mark.parametrize("profile", PROFILES)
def test_prometheus_reaches_every_port_it_scrapes(profile: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[profile]
    scraped = []
    for m in manifests:
        if m["kind"] in ("Deployment", "StatefulSet"):
            annotations = m["spec"]["template"]["metadata"].get("annotations") or {}
            if annotations.get("prometheus.io/scrape") == "true":
                scraped.append((m["metadata"]["name"], int(annotations["prometheus.io/port"])))
    config = yaml.safe_load(by_kind(manifests, "ConfigMap")["prometheus-config"]["data"]["prometheus.yml"])
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for address in static["targets"]:
                host, port = address.rsplit(":", 1)
                if host != "localhost":
                    scraped.append(target(manifests, host, int(port)))
    assert len(scraped) >= 8
    for pod, port in scraped:
        who = admitted(manifests, pod, port)
        assert who == ANYWHERE or "prometheus" in who, f"prometheus cannot scrape {pod}:{port}"


@pytest.mark.parametrize("profile", PROFILES)
def test_flink_taskmanagers_reach_the_jobmanager_and_each_other(profile: str,
                                                                  rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[profile]
    for entry in by_kind(manifests, "Service")["flink-jobmanager"]["spec"]["ports"]:
        pod, port = target(manifests, "flink-jobmanager", entry["port"])
        who = admitted(manifests, pod, port)
        assert who == ANYWHERE or "flink-taskmanager" in who, f"{pod}:{port}"
    data_port = 43123  # the records between TaskManagers travel on a port Flink picks at start
    assert {"flink-jobmanager", "flink-taskmanager"} <= set(admitted(manifests, "flink-taskmanager", data_port))
    assert "segment-api" not in admitted(manifests, "flink-taskmanager", data_port)


@pytest.mark.parametrize("profile", PROFILES)
def test_clustered_stores_reach_their_peers_on_every_port(profile: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[profile]
    for service in by_kind(manifests, "Service").values():
        if service["spec"].get("clusterIP") != "None":
            continue
        for entry in service["spec"]["ports"]:
            pod, port = target(manifests, service["metadata"]["name"], entry["port"])
            assert pod in admitted(manifests, pod, port), f"{pod} peers on {port}"


@pytest.mark.parametrize("profile", PROFILES)
def test_the_delivery_worker_reaches_dns_its_stores_and_the_web_but_not_instance_metadata(
        profile: str, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered[profile]
    assert egress_isolated(manifests) == {"delivery-worker"}  # the one pod that calls the internet
    worker = "delivery-worker"
    assert egress_allows(manifests, worker, "10.43.0.10", 53, "UDP") and egress_allows(manifests, worker,
                                                                                         "10.43.0.10", 53)
    for store, (host, port) in store_addresses(manifests).items():
        server, container_port = target(manifests, host, port)
        uses = worker in expected_clients(manifests, profile, store)
        assert egress_allows(manifests, worker, server, container_port) == uses, store
    for address in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"):
        assert egress_allows(manifests, worker, address, 443) and egress_allows(manifests, worker, address, 80)
        assert not egress_allows(manifests, worker, address, 8080)
    assert not egress_allows(manifests, worker, "169.254.169.254", 80)
    assert not egress_allows(manifests, worker, "fe80::1", 443)
    assert not egress_allows(manifests, worker, "segment-api", 8080)


def test_the_evaluator_follows_the_api(rendered: dict[str, list[Manifest]]) -> None:
    """The checks above are only as good as `admitted`: a policy it misreads must show."""
    manifests = [m for m in rendered["demo-8g"] if m["kind"] != "NetworkPolicy"]
    assert admitted(manifests, "postgres", 5432) == ANYWHERE  # nothing isolates the pod
    deny = {"kind": "NetworkPolicy", "metadata": {"name": "deny"}, "spec": {"podSelector": {},
                                                                             "policyTypes": ["Ingress"]}}
    assert admitted([*manifests, deny], "postgres", 5432) == set()
    allow = {"kind": "NetworkPolicy", "metadata": {"name": "allow"}, "spec": {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgres"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "app.kubernetes.io/name", "operator": "In", "values": ["migrations"]}]}}],
            "ports": [{"port": "postgres"}]}]}}
    assert admitted([*manifests, deny, allow], "postgres", 5432) == {"migrations"}
    assert admitted([*manifests, deny, allow], "postgres", 5433) == set()
