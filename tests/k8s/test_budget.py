"""`amctl budget`: requests and limits against the node, heaps and Aerospike namespaces against their containers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from amctl.cli import app
from amctl.k8s.profile import profile_path

pytestmark = pytest.mark.k8s
GiB = 2**30


def _budget(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    result = CliRunner().invoke(app, ["budget", "--target", "k8s", *args], env={"COLUMNS": "200"})
    data = json.loads(result.stdout) if "--json" in args and result.stdout.strip() else None
    return result.exit_code, data, result.output


def _variant(tmp_path: Path, change: dict[str, Any]) -> str:
    """demo-8g with `change` merged in (one level deep), as a profile file."""
    values = yaml.safe_load(profile_path("demo-8g").read_text())
    for key, value in change.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_demo_fits_eight_gib_of_limits() -> None:
    code, data, _ = _budget("--profile", "demo-8g", "--json")
    assert code == 0 and data is not None and data["ok"] is True
    steady = [c for c in data["containers"] if not c["one_off"]]
    assert sum(c["totalLimit"] for c in steady) <= 8 * GiB
    assert {c["container"] for c in steady} >= {
        "segment-api", "ingestion-api", "communication-api", "postgres", "aerospike", "kafka", "flink-jobmanager",
        "flink-taskmanager", "prometheus", "grafana", "kafka-ui", "email-worker", "delivery-worker", "mailpit"}
    limits = {c["container"]: c["limit"] // 2**20 for c in steady}
    assert limits["kafka"] == 1536 and limits["flink-taskmanager"] == 1536 and limits["aerospike"] == 1024
    assert all(limits[name] == 512 for name in ("segment-api", "ingestion-api", "communication-api", "postgres",
                                                "flink-jobmanager", "prometheus"))
    assert limits["kafka-ui"] == 256
    # the delivery worker's 160 MiB come out of Grafana's 512, the one seed limit far above what it uses
    assert limits["delivery-worker"] == 160 and limits["grafana"] == 352 and limits["email-worker"] == 96


def test_the_table_shows_components_and_checks() -> None:
    code, _, output = _budget("--profile", "demo-8g")
    assert code == 0
    for text in ("kafka", "flink-taskmanager", "rule-job-submit (one-off)", "JVM heap + overhead",
                 "namespaces + asd", "within budget: 8,192 MiB of limits"):
        assert text in output


def test_over_the_node_fails_naming_the_amount_and_the_largest(tmp_path: Path) -> None:
    profile = _variant(tmp_path, {"components": {"kafka": {"memory": "2Gi", "memory_request": "2Gi"}}})
    code, _, output = _budget("--profile", profile)
    assert code == 1
    assert "limits over by 512 MiB" in output and "kafka 2,048 MiB" in output
    assert "over budget" in output


def test_a_heap_larger_than_its_container_is_named(tmp_path: Path) -> None:
    profile = _variant(tmp_path, {"kafka": {"heap": "1408Mi"}})
    code, data, _ = _budget("--profile", profile, "--json")
    assert code == 1 and data is not None
    assert data["problems"] == ["JVM heap + overhead over by 128 MiB in kafka: 1,664 MiB of 1,536 MiB"]


def test_rocksdb_needs_its_managed_memory_in_every_slot(tmp_path: Path) -> None:
    # 1,280 MiB less 192 of JVM overhead and 256 of metaspace leaves 832 MiB; a tenth of it for two slots
    profile = _variant(tmp_path, {"flink": {"managed_fraction": 0.1}})
    code, data, _ = _budget("--profile", profile, "--json")
    assert code == 1 and data is not None
    assert data["problems"] == ["RocksDB's managed memory (128 MiB per slot) over by 173 MiB in flink-taskmanager: "
                                "256 MiB of 83 MiB"]


def test_aerospike_namespaces_must_fit_its_limit(tmp_path: Path) -> None:
    profile = _variant(tmp_path, {"aerospike": {"base": "96Mi", "namespaces": [
        {"name": "user_profiles", "size": "600Mi"}, {"name": "cache", "size": "300Mi", "ttl_s": 3600},
        {"name": "analytics", "size": "200Mi"}]}})
    code, data, _ = _budget("--profile", profile, "--json")
    assert code == 1 and data is not None
    assert data["problems"] == ["namespaces + asd over by 172 MiB in aerospike: 1,196 MiB of 1,024 MiB"]


def test_autoscaled_apis_count_at_their_maximum() -> None:
    code, data, _ = _budget("--profile", "prod", "--json")
    assert code == 0 and data is not None
    api = next(c for c in data["containers"] if c["container"] == "segment-api")
    assert api["replicas"] == 8 and api["totalLimit"] == 8 * 512 * 2**20


def test_up_refuses_an_over_budget_profile_before_touching_a_cluster(tmp_path: Path) -> None:
    profile = _variant(tmp_path, {"node": {"memory": "6Gi"}})
    result = CliRunner().invoke(app, ["up", "--target", "k8s", "--profile", profile],
                                env={"KUBECONFIG": str(tmp_path / "absent")})
    assert result.exit_code == 1
    assert "refusing to deploy" in result.output and "limits over by 2,048 MiB" in result.output
    assert "kubeconfig" not in result.output  # it stopped before connecting


def test_quantities_are_read_as_the_api_server_reads_them(tmp_path: Path) -> None:
    # binary suffixes beyond Gi and exponents are quantities too: 2Ti of node memory, a 129e6-byte limit
    profile = _variant(tmp_path, {"node": {"memory": "2Ti", "allocatable": "1.5Ti"},
                                  "components": {"mailpit": {"memory": "129e6", "memory_request": "64e6"}}})
    code, data, output = _budget("--profile", profile, "--json")
    assert code == 0 and data is not None, output
    limits = next(c for c in data["checks"] if c["name"] == "limits")
    assert limits["available"] == 2 * 2**40
    mailpit = next(c for c in data["containers"] if c["container"] == "mailpit")
    assert (mailpit["limit"], mailpit["request"]) == (129_000_000, 64_000_000)


@pytest.mark.parametrize("quantity", ["12e", "1.5.Gi", "512MB", "-1Mi"])
def test_a_profile_with_a_wrong_quantity_is_refused_naming_the_field(tmp_path: Path, quantity: str) -> None:
    profile = _variant(tmp_path, {"components": {"mailpit": {"memory": quantity, "memory_request": "16Mi"}}})
    code, _, output = _budget("--profile", profile)
    assert code != 0
    assert "components.mailpit.memory" in output and repr(quantity) in output
