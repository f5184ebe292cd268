"""`amctl up/status/down --target k8s` against kmock's Kubernetes API emulator (no live cluster)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kmock as km
import pytest
from typer.testing import CliRunner, Result

from amctl.cli import app
from amctl.k8s.apply import API_KEYS_ENTRY, SECRETS_KEY_ENTRY
from amctl.k8s.profile import load_profile
from amctl.k8s.render import SECRET_NAME, render
from server.runtime.api_keys import Scope, parse_api_keys
from server.runtime.secrets import SecretBox
from tests.k8s.conftest import FakeCluster

pytestmark = [pytest.mark.k8s, pytest.mark.asyncio]
NAMESPACE = "audience-manager-demo"


async def amctl(cluster: FakeCluster, *args: str, env: dict[str, str | None] | None = None) -> Result:
    """Run amctl in a thread: the emulator serves from this test's event loop."""
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env={**cluster.env, **(env or {})})


def secret_data(cluster: FakeCluster) -> dict[str, str]:
    """The generated Secret's entries, decoded."""
    secret = cluster.objects("Secret")[(NAMESPACE, SECRET_NAME)]
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


async def test_up_applies_every_object_server_side_and_prints_the_urls(fake_cluster: FakeCluster) -> None:
    result = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert "ready in" in result.output
    for url in ("http://127.0.0.1:30081/docs", "http://127.0.0.1:30001", "localhost:30092", "http://127.0.0.1:30080"):
        assert url in result.output
    # the stores admit in-cluster clients only: the way in from the host is a port-forward
    assert "kubectl -n audience-manager-demo port-forward svc/postgres 30432:5432" in result.output
    assert "port-forward svc/kafka 30092:9094, then localhost:30092" in result.output
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
    passwords = secret_data(fake_cluster)
    assert set(passwords) == {"postgres-password", "grafana-admin-password", API_KEYS_ENTRY, SECRETS_KEY_ENTRY}
    assert all(len(p) >= 24 for p in passwords.values())
    assert passwords["postgres-password"] != passwords["grafana-admin-password"]
    box = SecretBox(passwords[SECRETS_KEY_ENTRY])  # AM_SECRETS_KEY as the Communication API will read it
    assert box.open(box.seal("whsec_x")) == "whsec_x"
    again = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")
    assert again.exit_code == 0, again.output
    assert fake_cluster.objects("Secret")[(NAMESPACE, SECRET_NAME)]["data"] == secret["data"]
    assert "generated" in first.stderr and "generated" not in again.stderr
    # the one-off Jobs (migrations, rule job submission) ran again: deleted once finished, then re-applied
    deleted = fake_cluster.requests(lambda r: r.method.value == "DELETE")
    assert sorted(r.url.path.rsplit("/", 1)[-1] for r in deleted) == ["migrations", "rule-job-submit"]
    assert all(r.data == {"propagationPolicy": "Background"} for r in deleted)
    assert {name for _, name in fake_cluster.objects("Job")} == {"migrations", "rule-job-submit"}


async def test_up_generates_one_api_key_per_scope_and_says_how_to_use_the_admin_key(
        fake_cluster: FakeCluster) -> None:
    result = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")
    assert result.exit_code == 0, result.output
    keys = parse_api_keys(secret_data(fake_cluster)[API_KEYS_ENTRY], API_KEYS_ENTRY)  # what the APIs will read
    assert sorted(scope for _, scope in keys) == [Scope.READ, Scope.WRITE, Scope.ADMIN]
    assert len({key for key, _ in keys}) == 3 and all(len(key) >= 40 for key, _ in keys)
    assert "export AMCTL_API_KEY=$(kubectl -n audience-manager-demo get secret audience-manager-secrets " \
           "-o jsonpath='{.data.api-keys}' | base64 -d | sed -n 's/:admin$//p')" in result.stdout
    assert all(key not in result.output for key, _ in keys)


async def test_a_deployment_from_before_api_keys_gets_them_and_keeps_its_passwords(fake_cluster: FakeCluster) -> None:
    assert (await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")).exit_code == 0
    before = secret_data(fake_cluster)
    key = next(k for k in fake_cluster.emulator.objects if k[1] == NAMESPACE and k[2] == SECRET_NAME)
    raw = fake_cluster.emulator.objects[key].raw
    fake_cluster.emulator.objects[key] = {**raw, "data": {k: v for k, v in raw["data"].items() if k != API_KEYS_ENTRY}}
    again = await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")
    assert again.exit_code == 0, again.output
    after = secret_data(fake_cluster)
    assert f"generated {SECRET_NAME}: {API_KEYS_ENTRY}" in again.stderr
    assert after["postgres-password"] == before["postgres-password"]
    assert after[API_KEYS_ENTRY] != before[API_KEYS_ENTRY] and len(parse_api_keys(after[API_KEYS_ENTRY], "new")) == 3


class _RecordingApi(BaseHTTPRequestHandler):
    """Answers every call 401 and remembers the X-API-Key it was sent."""

    seen: list[str | None]

    def do_POST(self) -> None:
        self.seen.append(self.headers.get("X-API-Key"))
        body = b'{"detail": "unknown API key", "error": "Unauthenticated"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def segment_api_stub() -> Iterator[tuple[int, list[str | None]]]:
    """A stand-in Segment API on a free port: (port, the X-API-Key of every call)."""
    seen: list[str | None] = []
    handler = type("Recording", (_RecordingApi,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_smoke_authenticates_with_the_deployments_admin_key(
        fake_cluster: FakeCluster, segment_api_stub: tuple[int, list[str | None]]) -> None:
    port, seen = segment_api_stub
    assert (await amctl(fake_cluster, "up", "--target", "k8s", "--timeout", "30")).exit_code == 0
    admin = next(k for k, scope in parse_api_keys(secret_data(fake_cluster)[API_KEYS_ENTRY], "keys")
                 if scope is Scope.ADMIN)
    env: dict[str, str | None] = {"AMCTL_PORT_SEGMENT_API": str(port), "AMCTL_API_KEY": None}
    result = await amctl(fake_cluster, "smoke", "--target", "k8s", env=env)
    assert result.exit_code == 1  # the stand-in refuses everything
    assert seen and seen[0] == admin
    explicit = await amctl(fake_cluster, "smoke", "--target", "k8s",
                           env={**env, "AMCTL_API_KEY": "operator-chosen-key-1234"})
    assert explicit.exit_code == 1 and seen[-1] == "operator-chosen-key-1234"  # AMCTL_API_KEY wins


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
