"""`amctl up/status/down --target k8s` against kmock's Kubernetes API emulator (no live cluster)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import kmock as km
import pytest
from typer.testing import CliRunner, Result

from amctl.cli import app
from amctl.k8s.profile import load_profile
from amctl.k8s.render import SECRET_NAME, render
from tests.k8s.conftest import FakeCluster

pytestmark = [pytest.mark.k8s, pytest.mark.asyncio]
NAMESPACE = "audience-manager-demo"


async def amctl(cluster: FakeCluster, *args: str) -> Result:
    """Run amctl in a thread: the emulator serves from this test's event loop."""
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=cluster.env)


async def test_up_applies_every_object_server_side_and_prints_the_urls(fake_cluster: FakeCluster) -> None:
    result = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert "ready in" in result.output
    for url in ("http://127.0.0.1:30081/docs", "http://127.0.0.1:30001", "localhost:30092", "http://127.0.0.1:30080"):
        assert url in result.output
    expected = {(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"])
                for m in render(load_profile("demo-8g"))}
    applied = {(kind, ns, name) for kind in {k for k, _, _ in expected}
               for (ns, name) in fake_cluster.objects(kind)}
    assert expected <= applied
    patches = fake_cluster.requests(lambda r: r.method.value == "PATCH")
    assert patches and all(r.params.get("fieldManager") == "amctl" and r.params.get("force") == "true"
                           and "apply-patch" in r.headers.get("Content-Type", "") for r in patches)
    assert len(patches) == len(expected)


async def test_passwords_are_generated_once_and_never_replaced(fake_cluster: FakeCluster) -> None:
    first = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")
    assert first.exit_code == 0, first.output
    secret = fake_cluster.objects("Secret")[(NAMESPACE, SECRET_NAME)]
    passwords = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(passwords) == {"postgres-password", "grafana-admin-password"}
    assert all(len(p) >= 24 for p in passwords.values())
    assert passwords["postgres-password"] != passwords["grafana-admin-password"]
    again = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")
    assert again.exit_code == 0, again.output
    assert fake_cluster.objects("Secret")[(NAMESPACE, SECRET_NAME)]["data"] == secret["data"]
    assert "generated" in first.stderr and "generated" not in again.stderr
    # the one-off Jobs (migrations, rule job submission) ran again: deleted once finished, then re-applied
    deleted = fake_cluster.requests(lambda r: r.method.value == "DELETE")
    assert sorted(r.url.path.rsplit("/", 1)[-1] for r in deleted) == ["migrations", "rule-job-submit"]
    assert all(r.data == {"propagationPolicy": "Background"} for r in deleted)
    assert {name for _, name in fake_cluster.objects("Job")} == {"migrations", "rule-job-submit"}


async def test_a_missing_image_is_named_with_a_hint_to_build_it(fake_cluster: FakeCluster) -> None:
    fake_cluster.stuck["segment-api"] = {"containerStatuses": [{
        "name": "segment-api", "image": "audience-manager:0.1.0", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff",
                              "message": 'Back-off pulling image "audience-manager:0.1.0"'}}}]}
    result = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "2")
    assert result.exit_code == 1
    assert "Deployment/segment-api" in result.output and "ImagePullBackOff" in result.output
    assert "timed out" in result.output and "amctl images build" in result.output
    assert "Deployment/ingestion-api" not in result.output  # ready ones are not listed


async def test_a_crash_loop_shows_its_last_log_lines(fake_cluster: FakeCluster) -> None:
    fake_cluster.stuck["ingestion-api"] = {"containerStatuses": [{
        "name": "ingestion-api", "image": "audience-manager:0.1.0", "ready": False, "restartCount": 4,
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
        "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
    fake_cluster.emulator[f"get /api/v1/namespaces/{NAMESPACE}/pods/ingestion-api-0/log"] << km.text(
        "starting ingestion-api\nwaiting for kafka-bootstrap:9092\n"
        "DependencyUnavailable: kafka unreachable after 120 s\n") << km.headers({"Content-Type": "text/plain"})
    result = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "2")
    assert result.exit_code == 1
    assert "CrashLoopBackOff" in result.output and "restarted 4 times" in result.output
    assert "DependencyUnavailable: kafka unreachable after 120 s" in result.output


async def test_unschedulable_for_memory_is_said_plainly(fake_cluster: FakeCluster) -> None:
    fake_cluster.stuck["kafka"] = {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient memory."}]}
    result = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "2")
    assert result.exit_code == 1
    assert "StatefulSet/kafka" in result.output and "unschedulable: not enough memory" in result.output


async def test_a_failed_job_stops_the_wait_at_once(fake_cluster: FakeCluster) -> None:
    fake_cluster.failed_jobs["migrations"] = "Job has reached the specified backoff limit"
    started = time.monotonic()
    result = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "60")
    assert result.exit_code == 1
    assert "Job/migrations failed: Job has reached the specified backoff limit" in result.output
    assert time.monotonic() - started < 30  # it did not wait for the timeout


async def test_status_lists_each_workload_and_fails_while_one_is_pending(fake_cluster: FakeCluster) -> None:
    fake_cluster.stuck["grafana"] = {"containerStatuses": [{
        "name": "grafana", "image": "grafana/grafana:11.2.0", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "CreateContainerConfigError",
                              "message": 'secret "audience-manager-secrets" not found'}}}]}
    await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "0.5")
    result = await amctl(fake_cluster, "status", "--target", "k8s", "--json")
    assert result.exit_code == 1
    rows = {row["workload"]: row for row in json.loads(result.stdout)}
    assert rows["Deployment/grafana"]["state"] == "CreateContainerConfigError"
    assert "not found" in rows["Deployment/grafana"]["detail"]
    assert rows["StatefulSet/postgres"]["state"] == "running"


async def test_down_deletes_the_namespace_and_waits_until_it_is_gone(fake_cluster: FakeCluster) -> None:
    assert (await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")).exit_code == 0
    assert fake_cluster.objects("ClusterRole")
    result = await amctl(fake_cluster, "down", "--target", "k8s", "--timeout", "10")
    assert result.exit_code == 0, result.output
    assert f"deleted namespace {NAMESPACE}" in result.output
    assert not fake_cluster.objects("Namespace") and not fake_cluster.objects("Deployment")
    assert not fake_cluster.objects("ClusterRole") and not fake_cluster.objects("ClusterRoleBinding")
    gets = fake_cluster.requests(lambda r: r.method.value == "GET" and r.url.path.endswith(f"/namespaces/{NAMESPACE}"))
    assert len(gets) >= 2  # it polled while the namespace was Terminating
    again = await amctl(fake_cluster, "down", "--target", "k8s")
    assert again.exit_code == 0 and "nothing to delete" in again.output


async def test_down_times_out_with_a_clear_message(fake_cluster: FakeCluster) -> None:
    fake_cluster.finalize_after_s = 3600
    assert (await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")).exit_code == 0
    result = await amctl(fake_cluster, "down", "--target", "k8s", "--timeout", "0.3")
    assert result.exit_code == 1
    assert f"namespace {NAMESPACE} still" in result.output


async def test_an_unknown_context_is_refused_before_anything_is_applied(fake_cluster: FakeCluster) -> None:
    result = await amctl(fake_cluster, "up", "--target", "k8s", "--context", "prod-cluster")
    assert result.exit_code == 1
    assert "kube context 'prod-cluster' not found (known: rancher-desktop)" in result.output
    assert not fake_cluster.requests(lambda r: True)
